"""App passwords in the store (schema version 2) and `homing account app-password`."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner, Result

import homing.cli._common as common
import homing.cli.account as account_cli
from homing.cli.main import cli
from homing.clock import FakeClock
from homing.store import (
    AlreadyExists,
    Credentials,
    InvalidName,
    NotFound,
    Store,
    StoreError,
    make_credentials,
    verify_password,
)
from homing.store import schema as schema_module
from homing.store.sqlitestore import MAX_APP_PASSWORDS, AppPassword

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = "alice@example.com"


def creds(password: str) -> Credentials:
    return make_credentials(password, hasher=FAST_HASHER, scram_iterations=4096)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = Store.open(tmp_path / "homing.db", create=True, clock=clock)
    s.add_domain("example.com")
    s.add_account(ALICE, creds("account pw"))
    yield s
    problems = s.integrity_check()
    s.close()
    assert problems == []


def passwords_of(store: Store, address: str, password: str) -> list[str | None]:
    """Which of the account's credentials accept `password` (None: the account password)."""
    return [
        name for name, cred in store.get_all_credentials(address) if verify_password(cred, password)
    ]


def test_add_list_remove(store: Store, clock: FakeClock) -> None:
    added = store.add_app_password(ALICE, "phone", creds("phone pw"))
    assert added == AppPassword(added.id, added.account_id, "phone", clock.now(), None)
    clock.advance(60)
    store.add_app_password("Alice@EXAMPLE.com", "laptop mail", creds("laptop pw"))
    listed = store.list_app_passwords(ALICE)
    assert [(a.name, a.created, a.last_used) for a in listed] == [
        ("phone", clock.now() - 60, None),
        ("laptop mail", clock.now(), None),
    ]
    assert passwords_of(store, ALICE, "account pw") == [None]
    assert passwords_of(store, ALICE, "phone pw") == ["phone"]
    assert passwords_of(store, ALICE, "laptop pw") == ["laptop mail"]

    store.remove_app_password(ALICE, "phone")
    assert [a.name for a in store.list_app_passwords(ALICE)] == ["laptop mail"]
    assert passwords_of(store, ALICE, "phone pw") == []
    assert passwords_of(store, ALICE, "laptop pw") == ["laptop mail"]  # the others stay
    assert passwords_of(store, ALICE, "account pw") == [None]


def test_get_all_credentials_order_and_unknown(store: Store) -> None:
    for name in ("b", "a", "c"):
        store.add_app_password(ALICE, name, creds(name))
    assert [name for name, _ in store.get_all_credentials(ALICE)] == [None, "b", "a", "c"]
    assert store.get_all_credentials("nobody@example.com") == []
    assert store.get_all_credentials("not an address") == []
    assert store.get_all_credentials("") == []


def test_errors(store: Store) -> None:
    store.add_app_password(ALICE, "phone", creds("x"))
    with pytest.raises(AlreadyExists):
        store.add_app_password(ALICE, "phone", creds("y"))
    with pytest.raises(NotFound):
        store.add_app_password("nobody@example.com", "phone", creds("y"))
    with pytest.raises(NotFound):
        store.list_app_passwords("nobody@example.com")
    with pytest.raises(NotFound):
        store.remove_app_password(ALICE, "tablet")
    with pytest.raises(NotFound):
        store.remove_app_password("nobody@example.com", "phone")
    for bad in ("", " phone", "phone ", "a\nb", "tab\there", "x" * 65):
        with pytest.raises(InvalidName):
            store.add_app_password(ALICE, bad, creds("y"))
    store.add_app_password(ALICE, "x" * 64, creds("y"))
    store.add_app_password(ALICE, "Téléphone de Zoë", creds("y"))


def test_names_are_per_account(store: Store) -> None:
    store.add_account("bob@example.com", creds("bob pw"))
    store.add_app_password(ALICE, "phone", creds("alice phone"))
    store.add_app_password("bob@example.com", "phone", creds("bob phone"))
    store.remove_app_password(ALICE, "phone")
    assert [a.name for a in store.list_app_passwords("bob@example.com")] == ["phone"]
    assert store.list_app_passwords(ALICE) == []


def test_at_most_max_app_passwords(store: Store) -> None:
    for i in range(MAX_APP_PASSWORDS):
        store.add_app_password(ALICE, f"p{i}", creds("x"))
    with pytest.raises(StoreError, match="remove one first"):
        store.add_app_password(ALICE, "one too many", creds("x"))
    store.remove_app_password(ALICE, "p3")
    store.add_app_password(ALICE, "one too many", creds("x"))


def test_last_used(store: Store, clock: FakeClock) -> None:
    store.add_app_password(ALICE, "phone", creds("x"))
    clock.advance(3600)
    store.app_password_used("ALICE@example.com", "phone").result(timeout=10)
    (phone,) = store.list_app_passwords(ALICE)
    assert phone.last_used == clock.now()
    # A password revoked meanwhile (or never there) is not an error.
    store.app_password_used(ALICE, "gone").result(timeout=10)
    with pytest.raises(InvalidName):
        store.app_password_used("not an address", "phone").result(timeout=10)


def test_removing_the_account_removes_its_app_passwords(store: Store) -> None:
    store.add_app_password(ALICE, "phone", creds("x"))
    store.remove_account(ALICE)
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM app_passwords").fetchone() == (0,)
    finally:
        conn.close()
    store.add_account(ALICE, creds("new"))
    assert store.list_app_passwords(ALICE) == []


def test_changing_the_account_password_keeps_app_passwords(store: Store) -> None:
    store.add_app_password(ALICE, "phone", creds("phone pw"))
    store.set_credentials(ALICE, creds("changed"))
    assert passwords_of(store, ALICE, "phone pw") == ["phone"]
    assert passwords_of(store, ALICE, "changed") == [None]
    assert passwords_of(store, ALICE, "account pw") == []


def test_installation_secret(tmp_path: Path, store: Store) -> None:
    secret = store.get_secret("scram")
    assert len(secret) == 32
    path = store.path
    with Store.open(path) as again:
        assert again.get_secret("scram") == secret  # stable across restarts
    with Store.open(tmp_path / "other.db", create=True) as other:
        assert other.get_secret("scram") != secret  # random per installation
    with pytest.raises(NotFound):
        store.get_secret("nope")


def test_version_1_store_is_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written before app passwords existed gains the tables and a secret, and keeps
    its accounts."""
    path = tmp_path / "old.db"
    monkeypatch.setattr(schema_module, "MIGRATIONS", schema_module.MIGRATIONS[:1])
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", 1)
    with Store.open(path, create=True) as old:
        old.add_domain("example.com")
        old.add_account(ALICE, creds("old pw"))
    monkeypatch.undo()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    finally:
        conn.close()
    with Store.open(path) as new:
        assert passwords_of(new, ALICE, "old pw") == [None]
        new.add_app_password(ALICE, "phone", creds("phone pw"))
        assert passwords_of(new, ALICE, "phone pw") == ["phone"]
        assert len(new.get_secret("scram")) == 32
        assert new.integrity_check() == []


# --- the command line -------------------------------------------------------------------------


class Homing:
    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.config = self.data / "homing.toml"
        self.runner = CliRunner()

    def run(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(
            cli, ["--config", str(self.config), *args], input=input, catch_exceptions=False
        )

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self.run(*args, input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    def fails(self, *args: str) -> str:
        result = self.run(*args)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: ")
        return line

    def store(self) -> Store:
        return Store.open(self.data / "homing.db")


@pytest.fixture
def homing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Homing:
    cheap = functools.partial(make_credentials, hasher=FAST_HASHER, scram_iterations=4096)
    monkeypatch.setattr(common, "store_make_credentials", cheap)
    monkeypatch.setattr(account_cli, "app_password_credentials", cheap)
    setup = Homing(tmp_path)
    result = setup.runner.invoke(
        cli, ["init", "--data", str(setup.data), "--domain", "example.org", "--dev"]
    )
    assert result.exit_code == 0, result.output
    setup.ok("account", "add", "alice@example.org", "--password-stdin", input="main pw\n")
    return setup


def test_cli_add_prints_the_password_once(homing: Homing) -> None:
    out = homing.ok("account", "app-password", "add", "alice@example.org", "phone").stdout
    lines = out.splitlines()
    assert lines[0] == "Created app password phone for alice@example.org"
    prefix = "App password (shown only this once): "
    (shown,) = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    assert len(shown) == common.GENERATED_PASSWORD_LENGTH
    with homing.store() as store:
        assert passwords_of(store, "alice@example.org", shown) == ["phone"]
        assert passwords_of(store, "alice@example.org", "main pw") == [None]
    listed = homing.ok("account", "app-password", "list", "alice@example.org").stdout
    assert listed.startswith("phone\t") and shown not in listed
    again = homing.ok("account", "app-password", "add", "alice@example.org", "laptop").stdout
    assert shown not in again


def test_cli_list_json_and_remove(homing: Homing) -> None:
    import json

    homing.ok("account", "app-password", "add", "alice@example.org", "phone")
    homing.ok("account", "app-password", "add", "alice@example.org", "laptop")
    rows = json.loads(
        homing.ok("account", "app-password", "list", "alice@example.org", "--json").stdout
    )
    assert [(r["name"], r["last_used"]) for r in rows] == [("phone", None), ("laptop", None)]
    assert rows[0]["created"].endswith("+00:00")
    out = homing.ok("account", "app-password", "remove", "alice@example.org", "phone").stdout
    assert out == "Removed app password phone of alice@example.org\n"
    rows = json.loads(
        homing.ok("account", "app-password", "list", "alice@example.org", "--json").stdout
    )
    assert [r["name"] for r in rows] == ["laptop"]


def test_cli_errors_are_one_line(homing: Homing) -> None:
    assert "no account" in homing.fails("account", "app-password", "add", "bob@example.org", "x")
    assert "no account" in homing.fails("account", "app-password", "list", "bob@example.org")
    assert "has no app password" in homing.fails(
        "account", "app-password", "remove", "alice@example.org", "x"
    )
    homing.ok("account", "app-password", "add", "alice@example.org", "x")
    assert "already has" in homing.fails("account", "app-password", "add", "alice@example.org", "x")
    assert "not valid" in homing.fails("account", "app-password", "add", "no-at-sign", "x")
    assert "name" in homing.fails("account", "app-password", "add", "alice@example.org", " x")
