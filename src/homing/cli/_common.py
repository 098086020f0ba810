"""What every command shares: the group that turns user errors into one line, lazy config
loading, opening the store, table/JSON output, and passwords from stdin.

Error policy: a mistake the operator can fix (bad argument, bad config, missing account,
unreadable file) becomes `UserError`, which click prints as one "Error: ..." line on stderr
with exit status 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import click

from homing.config import Config, ConfigError, config_path_from, load_config, parse_local_domain
from homing.mail.address import parse_mailbox
from homing.notify import notifier_for
from homing.store import Credentials, Store, StoreError
from homing.store import make_credentials as store_make_credentials


class UserError(click.ClickException):
    """A problem the operator can fix: printed as one line on stderr, exit status 1."""

    exit_code = 1


class HomingGroup(click.Group):
    """A click group whose commands may raise config, store and OS errors as user errors.

    Translating here, around the whole invocation, keeps command bodies free of
    try/except boilerplate and means nested groups (`homing account add`) are covered too.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, StoreError) as exc:
            raise UserError(str(exc) or type(exc).__name__) from exc
        except OSError as exc:
            # BrokenPipeError (`homing account list | head`) is left to click, which
            # handles it quietly.
            if isinstance(exc, BrokenPipeError):
                raise
            raise UserError(_describe_os_error(exc)) from exc


def _describe_os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


@dataclass
class State:
    """The group's context object: the `--config` option and the config, loaded on first use."""

    config_option: str | None
    _config: Config | None = field(default=None, repr=False)

    def config(self) -> Config:
        if self._config is None:
            path = config_path_from(self.config_option)
            if not path.exists():
                raise UserError(
                    f"configuration file {path} not found (give --config FILE, "
                    "set HOMING_CONFIG, or create one with `homing init`)"
                )
            self._config = load_config(path)
        return self._config


pass_state = click.make_pass_decorator(State)


@contextmanager
def open_store(config: Config) -> Iterator[Store]:
    """The store at `config.db_path`, closed on exit; a clear error if there is none yet.
    A running `homing serve` is told of every commit (homing.notify)."""
    if not config.db_path.exists():
        raise UserError(f"no database at {config.db_path} (create one with `homing init`)")
    store = Store.open(config.db_path)
    # A running server hears of what this command commits at once (homing.notify).
    notifier = notifier_for(config.run_dir)
    if notifier is not None:
        notifier.attach(store)
    try:
        yield store
    finally:
        store.close()  # runs what was submitted, notifying, before the socket closes
        if notifier is not None:
            notifier.close()


def is_local_domain(store: Store, config: Config, domain: str) -> bool:
    """Local domains are those in the config file plus those added to the store."""
    return domain in config.domains or store.has_domain(domain)


# --------------------------------------------------------------------------------------------
# Addresses


def check_address(text: str, *, what: str = "address") -> str:
    """The canonical form of a mailbox address given on the command line, or UserError.

    The local part keeps its case; the domain is lower-cased with U-labels (as the store and
    router compare it).
    """
    try:
        return str(parse_mailbox(text))
    except ValueError as exc:
        raise UserError(f"{what} {text!r} is not valid: {exc}") from None


def check_domain(text: str) -> str:
    """A domain given on the command line, in canonical form, or UserError."""
    try:
        return parse_local_domain(text)
    except ValueError as exc:
        raise UserError(f"domain {text!r} is not valid: {exc}") from None


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


# --------------------------------------------------------------------------------------------
# Passwords

_PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
"""Letters and digits without the look-alikes 0 O 1 l I: 57 symbols."""
GENERATED_PASSWORD_LENGTH = 20
"""20 symbols of 57 give about 116 bits of entropy."""


def generate_password() -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(GENERATED_PASSWORD_LENGTH))


def read_password_stdin() -> str:
    """One line from standard input without its line ending (nothing else is stripped).

    On a terminal the password is asked for twice, without echo, instead.
    """
    if stdin_is_tty():
        password: str = click.prompt(
            "Password", hide_input=True, confirmation_prompt=True, err=True
        )
        if not password:
            raise UserError("empty password")
        return password
    raw = binary_stream(sys.stdin).readline()
    raw = raw.removesuffix(b"\n").removesuffix(b"\r")
    try:
        password = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("the password on standard input is not valid UTF-8") from None
    if not password:
        raise UserError("empty password on standard input")
    return password


def make_credentials(password: str) -> Credentials:
    """Hash `password` for the store; a password SASLprep refuses is a user error."""
    try:
        return store_make_credentials(password)
    except ValueError as exc:
        # The message describes the offending character class, never the password.
        raise UserError(f"password not accepted: {exc}") from None


def announce_password(address: str, password: str) -> None:
    """Print a generated password once, clearly labelled, on stdout."""
    click.echo(f"Password for {address} (shown only this once): {password}")


# --------------------------------------------------------------------------------------------
# Output


def binary_stream(stream: TextIO) -> BinaryIO:
    """The byte stream under a text stream (sys.stdin/sys.stdout), flushed first."""
    buffer: BinaryIO | None = getattr(stream, "buffer", None)
    if buffer is None:
        raise UserError(f"{getattr(stream, 'name', 'standard stream')} is not available")
    if stream.writable():
        stream.flush()
    return buffer


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def stdin_is_tty() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def json_option(function: Any) -> Any:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print a JSON array of objects instead."
    )(function)


def emit_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, as_json: bool) -> None:
    """Rows as JSON objects (`--json`), a rich table on a terminal, else tab-separated lines.

    The plain form has no header and one line per row, for `cut` and `while read`; a tab,
    CR or LF inside a value is written as \\t, \\r or \\n (use --json to be exact).
    """
    if as_json:
        objects = [dict(zip(columns, map(_json_value, row), strict=True)) for row in rows]
        click.echo(json.dumps(objects, indent=2, ensure_ascii=False))
    elif stdout_is_tty():
        _rich_table(columns, rows)
    else:
        for row in rows:
            click.echo("\t".join(_plain(value) for value in row))


def _rich_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for index, column in enumerate(columns):
        numeric = bool(rows) and all(_is_number(row[index]) for row in rows)
        table.add_column(column.replace("_", " "), justify="right" if numeric else "left")
    for row in rows:
        # Text(), not markup: values such as "[Gmail]/Sent" must print as they are.
        table.add_row(*(Text(_display(value)) for value in row))
    Console(soft_wrap=True).print(table)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return value


def _display(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, list | tuple):
        return ", ".join(_display(item) for item in value)
    return str(value)


def _plain(value: Any) -> str:
    text = _display(value)
    return text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def as_datetime(value: Any) -> Any:
    """Store timestamps (epoch seconds or datetime) as an aware UTC datetime."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def relative_to_cwd(path: Path) -> str:
    """`path` as the operator would type it from here (for "next steps" hints)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
