"""`homing account`: mail accounts (an address with a password and mailboxes).

Passwords are read from stdin (`--password-stdin`) or generated and shown once; they are
hashed with `store.make_credentials` at once and never printed, logged or stored otherwise.
"""

from __future__ import annotations

import click

from homing import auth
from homing.cli._common import (
    HomingGroup,
    State,
    UserError,
    announce_password,
    as_datetime,
    check_address,
    check_domain,
    domain_of,
    emit_table,
    generate_password,
    is_local_domain,
    json_option,
    make_credentials,
    open_store,
    pass_state,
    read_password_stdin,
)

#: How app passwords are hashed (light argon2id: they are generated, see homing.auth).
app_password_credentials = auth.make_app_password_credentials

_PASSWORD_STDIN_HELP = (
    "Read the password from the first line of standard input (the line ending is removed, "
    "nothing else); on a terminal, prompt for it twice without echo. Without this option, "
    "a strong password is generated and printed once."
)


@click.group(cls=HomingGroup)
def account() -> None:
    """Add, list, change and remove mail accounts."""


@account.command("add")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help=_PASSWORD_STDIN_HELP)
@pass_state
def add(state: State, address: str, password_stdin: bool) -> None:
    """Create the account ADDRESS in a local domain.

    Its mailboxes are INBOX, Archive, Drafts, Junk, Sent and Trash (with their special-use
    attributes, RFC 6154).

    \b
    Example:
      printf '%s\\n' "$PASSWORD" | homing account add alice@example.org --password-stdin
    """
    config = state.config()
    address = check_address(address)
    password = read_password_stdin() if password_stdin else generate_password()
    credentials = make_credentials(password)
    with open_store(config) as store:
        domain = domain_of(address)
        if not is_local_domain(store, config, domain):
            raise UserError(
                f"{domain} is not a local domain; add it first with `homing domain add {domain}`"
            )
        if not store.has_domain(domain):
            # Listed in homing.toml but not yet in the database: record it there too.
            store.add_domain(domain)
        store.add_account(address, credentials)
    click.echo(f"Created account {address}")
    if not password_stdin:
        announce_password(address, password)


@account.command("list")
@click.option("--domain", metavar="DOMAIN", help="Only accounts of this domain.")
@json_option
@pass_state
def list_(state: State, domain: str | None, as_json: bool) -> None:
    """List accounts: address, domain, disabled, created (UTC)."""
    config = state.config()
    with open_store(config) as store:
        if domain is not None:
            domain = check_domain(domain)
            if not is_local_domain(store, config, domain):
                raise UserError(f"{domain} is not a local domain")
        accounts = store.list_accounts(domain=domain)
    rows = [
        (item.address, item.domain, bool(item.disabled), as_datetime(item.created))
        for item in accounts
    ]
    emit_table(("address", "domain", "disabled", "created"), rows, as_json=as_json)


@account.command("passwd")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help=_PASSWORD_STDIN_HELP)
@pass_state
def passwd(state: State, address: str, password_stdin: bool) -> None:
    """Set a new password for ADDRESS.

    \b
    Example:
      homing account passwd alice@example.org --password-stdin < new-password.txt
    """
    config = state.config()
    address = check_address(address)
    with open_store(config) as store:
        if store.get_account(address) is None:
            raise UserError(f"no account {address}")
        password = read_password_stdin() if password_stdin else generate_password()
        store.set_credentials(address, make_credentials(password))
    click.echo(f"Changed password of {address}")
    if not password_stdin:
        announce_password(address, password)


@account.command("remove")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def remove(state: State, address: str, yes: bool) -> None:
    """Remove ADDRESS and all its mail.

    Every mailbox and message of the account is deleted; this cannot be undone. Asks for
    confirmation unless --yes is given.
    """
    config = state.config()
    address = check_address(address)
    with open_store(config) as store:
        if store.get_account(address) is None:
            raise UserError(f"no account {address}")
        if not yes:
            click.confirm(
                f"Remove {address} with all its mail? This cannot be undone.",
                abort=True,
                err=True,
            )
        store.remove_account(address)
    click.echo(f"Removed account {address}")


@account.group("app-password", cls=HomingGroup)
def app_password() -> None:
    """Extra passwords for one program each, revocable on their own.

    Give each mail program (phone, laptop, another server fetching mail) its own app
    password: it works for SMTP, IMAP and POP3 with PLAIN, LOGIN or USER/PASS (over TLS), and
    removing it locks out that program only. SCRAM-SHA-256 uses the account password.
    """


@app_password.command("add")
@click.argument("address")
@click.argument("name")
@pass_state
def app_password_add(state: State, address: str, name: str) -> None:
    """Create an app password called NAME for ADDRESS; it is printed once.

    \b
    Example:
      homing account app-password add alice@example.org "phone"
    """
    config = state.config()
    address = check_address(address)
    password = generate_password()
    credentials = app_password_credentials(password)
    with open_store(config) as store:
        if store.get_account(address) is None:
            raise UserError(f"no account {address}")
        store.add_app_password(address, name, credentials)
    click.echo(f"Created app password {name} for {address}")
    click.echo(f"App password (shown only this once): {password}")


@app_password.command("list")
@click.argument("address")
@json_option
@pass_state
def app_password_list(state: State, address: str, as_json: bool) -> None:
    """List the app passwords of ADDRESS: name, created, last used (UTC); never the secret."""
    config = state.config()
    address = check_address(address)
    with open_store(config) as store:
        if store.get_account(address) is None:
            raise UserError(f"no account {address}")
        items = store.list_app_passwords(address)
    rows = [
        (
            item.name,
            as_datetime(item.created),
            None if item.last_used is None else as_datetime(item.last_used),
        )
        for item in items
    ]
    emit_table(("name", "created", "last_used"), rows, as_json=as_json)


@app_password.command("remove")
@click.argument("address")
@click.argument("name")
@pass_state
def app_password_remove(state: State, address: str, name: str) -> None:
    """Revoke the app password NAME of ADDRESS (the others keep working)."""
    config = state.config()
    address = check_address(address)
    with open_store(config) as store:
        store.remove_app_password(address, name)
    click.echo(f"Removed app password {name} of {address}")
