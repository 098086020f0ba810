"""`homing serve`: run the mail server in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import click

from homing.cli._common import State, pass_state


@click.command()
@click.option("--worker", "worker", hidden=True, help="Internal: run as an SMTP worker process.")
@pass_state
@click.pass_context
def serve(ctx: click.Context, state: State, worker: str | None) -> None:
    """Run the mail server in the foreground.

    Starts every listener of the [listen] table (SMTP, submission, IMAP, POP3).

    Logs go to standard error. SIGTERM or SIGINT (Ctrl-C) stops accepting connections,
    lets sessions finish for a moment, and exits.
    """
    config = state.config()
    # Imported here: the server pulls in asyncio, TLS and every protocol, which the other
    # commands do not need.
    from homing.app import serve as run
    from homing.workers import WorkerArgs

    ctx.exit(run(config, worker=WorkerArgs.parse(worker) if worker else None))
