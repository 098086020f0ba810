"""`homing domain`: the local domains, whose mail is delivered here.

A domain is local if it is listed in homing.toml (`domains`) or was added to the database with
`homing domain add`; the second way needs no restart.
"""

from __future__ import annotations

import click

from homing.cli._common import (
    HomingGroup,
    State,
    UserError,
    check_domain,
    emit_table,
    json_option,
    open_store,
    pass_state,
)


@click.group(cls=HomingGroup)
def domain() -> None:
    """Add, list and remove local domains."""


@domain.command("add")
@click.argument("name", metavar="DOMAIN")
@pass_state
def add(state: State, name: str) -> None:
    """Make DOMAIN local: mail for its accounts and aliases is accepted and delivered here.

    \b
    Example:
      homing domain add example.net
    """
    config = state.config()
    name = check_domain(name)
    with open_store(config) as store:
        store.add_domain(name)
    click.echo(f"Added domain {name}")


@domain.command("list")
@json_option
@pass_state
def list_(state: State, as_json: bool) -> None:
    """List local domains: name, number of accounts, and where each is defined."""
    config = state.config()
    with open_store(config) as store:
        stored = set(store.list_domains())
        names = sorted(stored | set(config.domains))
        rows = []
        for name in names:
            sources = [
                src
                for src, has in (("config", name in config.domains), ("store", name in stored))
                if has
            ]
            rows.append((name, len(store.list_accounts(domain=name)), "+".join(sources)))
    emit_table(("domain", "accounts", "source"), rows, as_json=as_json)


@domain.command("remove")
@click.argument("name", metavar="DOMAIN")
@pass_state
def remove(state: State, name: str) -> None:
    """Stop treating DOMAIN as local. Its accounts must be removed first."""
    config = state.config()
    name = check_domain(name)
    if name in config.domains:
        where = config.config_path or "the configuration file"
        raise UserError(f"{name} is listed in {where} (domains); remove it there first")
    with open_store(config) as store:
        store.remove_domain(name)
    click.echo(f"Removed domain {name}")
