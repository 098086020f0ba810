"""`homing queue`: look at and manage outbound mail waiting for delivery.

Every command takes an entry id ("<queue id>.<n>", one per message and destination
domain) or a queue id (all the entries of that message). Changes are written to the store at
once; a running `homing serve` is poked (SIGUSR1) so `retry`, `release` and `bounce` take
effect now rather than at its next look at the queue.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from homing.cli._common import (
    HomingGroup,
    State,
    UserError,
    as_datetime,
    emit_table,
    json_option,
    open_store,
    pass_state,
)
from homing.config import Config
from homing.store import QueueEntry, Store


@click.group(cls=HomingGroup)
def queue() -> None:
    """List, inspect, retry, hold, release, drop and bounce queued outbound mail."""


def _reply_text(entry: QueueEntry) -> str | None:
    """The most telling last reply of an entry's open recipients, or its last error."""
    for r in entry.open_recipients:
        if r.reply is not None:
            return str(r.reply)
    return entry.last_error


def _state(entry: QueueEntry) -> str:
    if entry.held:
        return "held"
    if entry.bounce:
        return "bouncing"
    return "deferred" if entry.attempts else "new"


@queue.command("list")
@click.option("--domain", metavar="DOMAIN", help="Only entries for this destination domain.")
@click.option("--held", is_flag=True, help="Only held entries.")
@json_option
@pass_state
def list_(state: State, domain: str | None, held: bool, as_json: bool) -> None:
    """List queued entries, oldest first."""
    config = state.config()
    with open_store(config) as store:
        entries = store.spool.entries(domain=domain, held=True if held else None)
    rows = [
        (
            e.id,
            _state(e),
            e.mail_from or "<>",
            e.domain,
            len(e.open_recipients),
            e.size,
            as_datetime(e.created),
            e.attempts,
            None if e.held else as_datetime(e.next_attempt),
            _reply_text(e),
        )
        for e in entries
    ]
    emit_table(
        (
            "id",
            "state",
            "from",
            "domain",
            "recipients",
            "size",
            "queued",
            "attempts",
            "next_attempt",
            "last_reply",
        ),
        rows,
        as_json=as_json,
    )


def _entry_json(e: QueueEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "queue_id": e.queue_id,
        "state": _state(e),
        "from": e.mail_from,
        "domain": e.domain,
        "envid": e.envid,
        "ret": e.ret,
        "smtputf8": e.smtputf8,
        "body_8bit": e.body_8bit,
        "size": e.size,
        "queued": as_datetime(e.created).isoformat(),
        "attempts": e.attempts,
        "last_attempt": None if e.last_attempt is None else as_datetime(e.last_attempt).isoformat(),
        "next_attempt": as_datetime(e.next_attempt).isoformat(),
        "warned": e.warned,
        "held": e.held,
        "last_error": e.last_error,
        "recipients": [
            {
                "address": r.address,
                "state": r.state,
                "notify": None if r.notify is None else sorted(r.notify),
                "orcpt": r.orcpt,
                "reply": None if r.reply is None else str(r.reply),
                "remote_mta": r.remote_mta,
                "updated": None if r.updated is None else as_datetime(r.updated).isoformat(),
            }
            for r in e.recipients
        ],
    }


def _find(store: Store, ident: str) -> list[QueueEntry]:
    entries = store.spool.get(ident)
    if not entries:
        raise UserError(f"no queue entry or message {ident}")
    return entries


@queue.command("show")
@click.argument("ident", metavar="ID")
@json_option
@pass_state
def show(state: State, ident: str, as_json: bool) -> None:
    """Show an entry (or every entry of a message): envelope, recipients, last replies and
    the next attempt."""
    config = state.config()
    with open_store(config) as store:
        entries = _find(store, ident)
    if as_json:
        click.echo(json.dumps([_entry_json(e) for e in entries], indent=2, ensure_ascii=False))
        return
    for n, e in enumerate(entries):
        if n:
            click.echo()
        data = _entry_json(e)
        for key in (
            "id",
            "state",
            "from",
            "domain",
            "size",
            "queued",
            "attempts",
            "last_attempt",
            "next_attempt",
            "warned",
            "envid",
            "ret",
            "last_error",
        ):
            value = data[key]
            if key == "from":
                value = f"<{value}>"
            click.echo(f"{key + ':':14}{'-' if value is None else value}")
        rows = [
            (r.address, r.state, r.remote_mta, None if r.reply is None else str(r.reply))
            for r in e.recipients
        ]
        emit_table(("recipient", "state", "remote_mta", "last_reply"), rows, as_json=False)


def _wake_server(config: Config) -> bool:
    """SIGUSR1 to a running `homing serve` of this data directory, if there is one (its pid
    is in run/listeners.json, and /proc confirms it is Homing)."""
    try:
        info = json.loads((config.run_dir / "listeners.json").read_text())
        pid = int(info["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if b"homing" not in cmdline or b"serve" not in cmdline:
        return False  # a stale file whose pid now belongs to another program
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True


def _done(config: Config, count: int, what: str, *, wake: bool) -> None:
    if not count:
        raise UserError("no such queue entry")
    noun = "entry" if count == 1 else "entries"
    click.echo(f"{what} {count} {noun}")
    if wake and not _wake_server(config):
        click.echo("(no running server found; it happens when `homing serve` next runs)")


@queue.command("retry")
@click.argument("ident", metavar="ID", required=False)
@click.option("--all", "all_", is_flag=True, help="Every entry in the queue.")
@pass_state
def retry(state: State, ident: str | None, all_: bool) -> None:
    """Try an entry again now (held entries stay held)."""
    if (ident is None) == (not all_):
        raise UserError("give an ID or --all (not both)")
    config = state.config()
    with open_store(config) as store:
        count = store.spool.retry(None if all_ else ident, time.time())
    if all_ and not count:
        click.echo("The queue is empty")
        return
    _done(config, count, "Retrying", wake=True)


@queue.command("hold")
@click.argument("ident", metavar="ID")
@pass_state
def hold(state: State, ident: str) -> None:
    """Make no more delivery attempts until `release`."""
    config = state.config()
    with open_store(config) as store:
        count = store.spool.hold(ident)
    _done(config, count, "Held", wake=False)


@queue.command("release")
@click.argument("ident", metavar="ID")
@pass_state
def release(state: State, ident: str) -> None:
    """Undo `hold`: the entry is tried again at once."""
    config = state.config()
    with open_store(config) as store:
        count = store.spool.release(ident, time.time())
    _done(config, count, "Released", wake=True)


@queue.command("drop")
@click.argument("ident", metavar="ID")
@pass_state
def drop(state: State, ident: str) -> None:
    """Delete an entry without delivering it and without telling the sender."""
    config = state.config()
    with open_store(config) as store:
        count = store.spool.drop(ident)
    _done(config, count, "Dropped", wake=False)


@queue.command("bounce")
@click.argument("ident", metavar="ID")
@pass_state
def bounce(state: State, ident: str) -> None:
    """Return an entry to its sender now: a failure DSN for every recipient not yet
    delivered (made by the running server)."""
    config = state.config()
    with open_store(config) as store:
        count = store.spool.bounce(ident, time.time())
    _done(config, count, "Bouncing", wake=True)
