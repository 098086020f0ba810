"""`homing`: the command group, its `--config` option, and the console-script entry point."""

from __future__ import annotations

from collections.abc import Sequence

import click

import homing
from homing.cli._common import HomingGroup, State
from homing.cli.account import account
from homing.cli.alias import alias
from homing.cli.domain import domain
from homing.cli.init import init
from homing.cli.mailbox import mailbox
from homing.cli.message import message
from homing.cli.queue import queue
from homing.cli.send import send
from homing.cli.sendmail import sendmail
from homing.cli.serve import serve

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=HomingGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--config",
    "config_option",
    metavar="FILE",
    help="Configuration file. Default: $HOMING_CONFIG, else ./homing.toml if it exists, "
    "else /etc/homing/homing.toml.",
)
@click.version_option(homing.__version__, prog_name="homing", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, config_option: str | None) -> None:
    """Homing: a mail server (SMTP, submission, IMAP, POP3) for your own domains.

    Start with `homing init`, add accounts with `homing account add`, then run
    `homing serve`. Every command takes --help.
    """
    ctx.obj = State(config_option)


for command in (init, serve, domain, account, alias, mailbox, message, send, sendmail, queue):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status (0 ok, 1 error, 2 usage)."""
    try:
        # In standalone mode click always ends with SystemExit, after printing any error.
        cli.main(args=list(argv) if argv is not None else None, prog_name="homing")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        click.echo(exc.code, err=True)
        return 1
