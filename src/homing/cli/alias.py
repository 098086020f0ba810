"""`homing alias`: addresses that forward to other addresses, local or remote.

An alias "@example.org" is the domain's catch-all: it receives mail for every address of the
domain that is neither an account nor another alias.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from homing.cli._common import (
    HomingGroup,
    State,
    UserError,
    check_address,
    check_domain,
    domain_of,
    emit_table,
    is_local_domain,
    json_option,
    open_store,
    pass_state,
)


def _check_alias(text: str) -> str:
    """An address, or "@domain" for a catch-all, in canonical form."""
    if text.startswith("@"):
        return "@" + check_domain(text[1:])
    return check_address(text, what="alias")


@click.group(cls=HomingGroup)
def alias() -> None:
    """Add, list and remove aliases and catch-alls."""


@alias.command("add")
@click.argument("name", metavar="ALIAS")
@click.argument("targets", metavar="TARGET...", nargs=-1, required=True)
@pass_state
def add(state: State, name: str, targets: Sequence[str]) -> None:
    """Deliver mail for ALIAS to every TARGET address (added to any it already has).

    ALIAS is an address in a local domain, or @DOMAIN to catch all addresses of DOMAIN
    that have no account or alias of their own.

    \b
    Examples:
      homing alias add postmaster@example.org alice@example.org
      homing alias add sales@example.org bob@example.org carol@example.net
      homing alias add @example.org alice@example.org
    """
    config = state.config()
    name = _check_alias(name)
    checked = [check_address(target, what="target") for target in targets]
    with open_store(config) as store:
        domain = domain_of(name)
        if not is_local_domain(store, config, domain):
            raise UserError(f"{domain} is not a local domain; add it with `homing domain add`")
        if not store.has_domain(domain):
            store.add_domain(domain)
        store.add_alias(name, checked)
    click.echo(f"{name} -> {', '.join(checked)}")


@alias.command("list")
@json_option
@pass_state
def list_(state: State, as_json: bool) -> None:
    """List aliases and their targets (comma-separated; use --json to script)."""
    config = state.config()
    with open_store(config) as store:
        aliases = store.list_aliases()
    rows = [(name, list(targets)) for name, targets in aliases]
    emit_table(("alias", "targets"), rows, as_json=as_json)


@alias.command("remove")
@click.argument("name", metavar="ALIAS")
@click.argument("targets", metavar="[TARGET...]", nargs=-1)
@pass_state
def remove(state: State, name: str, targets: Sequence[str]) -> None:
    """Remove the given TARGETs from ALIAS, or the whole alias if none are given.

    \b
    Examples:
      homing alias remove sales@example.org carol@example.net
      homing alias remove @example.org
    """
    config = state.config()
    name = _check_alias(name)
    checked = [check_address(target, what="target") for target in targets]
    with open_store(config) as store:
        store.remove_alias(name, checked or None)
    click.echo(f"Removed {', '.join(checked) + ' from ' if checked else ''}{name}")
