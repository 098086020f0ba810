"""`homing send`: a small mail program for people and scripts.

It composes a correct MIME message and submits it like any mail client would: over SMTP
submission with STARTTLS (or implicit TLS) and AUTH, using Homing's own SMTP client. Without
`--server` it talks to this installation's submission service and trusts its certificate.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import sys
from pathlib import Path

import click

from homing.cli._common import State, UserError, check_address, pass_state, read_password_stdin
from homing.mail.address import Path as SMTPPath
from homing.mail.address import parse_mailbox
from homing.mail.compose import compose
from homing.outbound.attempt import AttemptSettings, Job, deliver
from homing.outbound.route import Attempt, RoutePlan
from homing.proto.smtp.client import ClientSettings
from homing.proto.smtp.grammar import MailArgs, RcptArgs

_QUEUED = re.compile(r"queued as (\S+)")


def _own_server(state: State) -> tuple[str, str, int, bool, ssl.SSLContext]:
    """(host name, address, port, implicit TLS, context) of this installation's submission."""
    config = state.config()
    try:  # a running server says where it really listens (port 0 in the config is resolved)
        bound = json.loads((config.run_dir / "listeners.json").read_text())["listeners"]
    except (OSError, ValueError, KeyError):
        bound = {}
    for service, implicit in (("submission", False), ("submissions", True)):
        listens = [(a.host, a.port) for a in config.listen.for_service(service)]
        for host, port in bound.get(service) or listens:
            address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            ctx = ssl.create_default_context(cafile=str(config.tls.cert))
            return config.hostname, address, int(port), implicit, ctx
    raise UserError("no submission listener in the configuration; give --server HOST:PORT")


def _server(text: str, tls: str, insecure: bool) -> tuple[str, str, int, bool, ssl.SSLContext]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--server wants HOST:PORT, got {text!r}")
    host = host.strip("[]")
    ctx = ssl.create_default_context()
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return host, host, int(port), tls == "implicit", ctx


@click.command()
@click.option("--from", "sender", required=True, help="Your address (also the login name).")
@click.option("--to", "to", multiple=True, help="Recipient (repeatable).")
@click.option("--cc", "cc", multiple=True, help="Copy recipient (repeatable).")
@click.option("--bcc", "bcc", multiple=True, help="Blind copy recipient (repeatable).")
@click.option("--subject", default="", help="Subject (any language: encoded as RFC 2047).")
@click.option(
    "--attach",
    "attachments",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File to attach (repeatable).",
)
@click.option(
    "--body-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Message text (UTF-8); default: standard input.",
)
@click.option("--server", help="HOST:PORT of a submission server; default: this installation.")
@click.option(
    "--tls",
    type=click.Choice(["starttls", "implicit"]),
    default="starttls",
    help="With --server: STARTTLS (587) or TLS from the first byte (465).",
)
@click.option("--user", help="Login name (default: the --from address).")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from standard input (else $HOMING_PASSWORD).",
)
@click.option("--insecure", is_flag=True, help="With --server: do not check the certificate.")
@pass_state
def send(  # noqa: PLR0917 (one parameter per click option)
    state: State,
    sender: str,
    to: tuple[str, ...],
    cc: tuple[str, ...],
    bcc: tuple[str, ...],
    subject: str,
    attachments: tuple[Path, ...],
    body_file: Path | None,
    server: str | None,
    tls: str,
    user: str | None,
    password_stdin: bool,
    insecure: bool,
) -> None:
    """Compose a message and submit it over SMTP with STARTTLS and AUTH; prints the queue id.

    \b
    Example:
      echo "See attached." | HOMING_PASSWORD=... homing send --from me@example.org \\
          --to you@example.net --subject "Report" --attach report.pdf
    """
    sender = check_address(sender, what="--from address")
    rcpts = [check_address(a, what="recipient") for a in (*to, *cc, *bcc)]
    if not rcpts:
        raise UserError("give at least one --to, --cc or --bcc")
    if password_stdin:
        if body_file is None:
            raise UserError("--password-stdin needs --body-file (standard input is the password)")
        password = read_password_stdin()
    else:
        password = os.environ.get("HOMING_PASSWORD", "")
        if not password:
            raise UserError("no password: use --password-stdin or set HOMING_PASSWORD")
    body = body_file.read_text("utf-8") if body_file else sys.stdin.read()
    name, address, port, implicit, ctx = (
        _server(server, tls, insecure) if server else _own_server(state)
    )
    message = compose(
        sender=sender,
        to=list(to),
        cc=list(cc),
        subject=subject,
        body=body,
        attachments=list(attachments),
        message_id_domain=sender.rpartition("@")[2],
    )
    settings = AttemptSettings(
        client=ClientSettings(
            helo_name=name if server is None else "homing-send.localhost",
            require_tls=True,
            auth=(user or sender, password),
        ),
        tls_context=ctx,
        implicit_tls=implicit,
        max_sessions=1,
    )
    job = Job(
        key="send",
        mail=MailArgs(path=SMTPPath(parse_mailbox(sender))),
        rcpts=tuple(RcptArgs(path=SMTPPath(parse_mailbox(r))) for r in rcpts),
        message=message,
    )
    plan = RoutePlan(domain=name, attempts=(Attempt(name, address, port),), smarthost=True)
    result = asyncio.run(deliver(plan, [job], settings))[0]
    refused = [
        (r, o) for r, o in zip(rcpts, result.outcomes, strict=True) if o.state != "delivered"
    ]
    for rcpt, outcome in refused:
        click.echo(f"{rcpt}: {outcome.reply}", err=True)
    if refused:
        raise UserError(result.last_error or "the server did not take the message")
    match = _QUEUED.search(result.outcomes[0].reply.text)
    click.echo(match.group(1) if match else result.outcomes[0].reply.text)
