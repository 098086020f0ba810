"""`homing mailbox`: look at an account's mailboxes (IMAP folders)."""

from __future__ import annotations

import click

from homing.cli._common import (
    HomingGroup,
    State,
    UserError,
    check_address,
    emit_table,
    json_option,
    open_store,
    pass_state,
)


@click.group(cls=HomingGroup)
def mailbox() -> None:
    """Inspect mailboxes."""


@mailbox.command("list")
@click.argument("address")
@json_option
@pass_state
def list_(state: State, address: str, as_json: bool) -> None:
    """List the mailboxes of ADDRESS: name, special use, messages, unseen, size in bytes.

    \b
    Example:
      homing mailbox list alice@example.org
    """
    config = state.config()
    address = check_address(address)
    with open_store(config) as store:
        account = store.get_account(address)
        if account is None:
            raise UserError(f"no account {address}")
        mailboxes = store.list_mailboxes(account.id)
    rows = [(box.name, box.special_use, box.messages, box.unseen, box.size) for box in mailboxes]
    emit_table(("name", "special_use", "messages", "unseen", "size"), rows, as_json=as_json)
