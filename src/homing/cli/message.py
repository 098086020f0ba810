"""`homing message`: read stored messages exactly as they were delivered."""

from __future__ import annotations

import sys

import click

from homing.cli._common import (
    HomingGroup,
    State,
    UserError,
    binary_stream,
    check_address,
    open_store,
    pass_state,
)


@click.group(cls=HomingGroup)
def message() -> None:
    """Inspect stored messages."""


@message.command("show")
@click.argument("address")
@click.argument("mailbox_name", metavar="MAILBOX")
@click.argument("uid", type=click.IntRange(min=1))
@pass_state
def show(state: State, address: str, mailbox_name: str, uid: int) -> None:
    """Write message UID of MAILBOX of ADDRESS to stdout, byte for byte (RFC 5322 with CRLF).

    \b
    Example:
      homing message show alice@example.org INBOX 1 > message.eml
    """
    config = state.config()
    address = check_address(address)
    with open_store(config) as store:
        account = store.get_account(address)
        if account is None:
            raise UserError(f"no account {address}")
        box = store.get_mailbox(account.id, mailbox_name)
        if box is None:
            raise UserError(f"{address} has no mailbox {mailbox_name!r}")
        data = store.read_message(box.id, uid)
    if data is None:
        raise UserError(f"no message with UID {uid} in {mailbox_name!r} of {address}")
    out = binary_stream(sys.stdout)
    out.write(data)
    out.flush()
