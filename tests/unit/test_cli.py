"""The `homing` command line, through click's CliRunner and through the real console script."""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner, Result

import homing.cli._common as common
import homing.cli.init as init_module
from homing.cli.main import cli, main
from homing.config import ListenAddress, load_config
from homing.mail.mime import parse_message
from homing.store import NewMessage, Store, make_credentials, verify_password
from homing.workers import WorkerArgs

HOMING = Path(sys.executable).parent / "homing"


class Homing:
    """A Homing setup made by `homing init --dev` in a temporary directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.data = tmp_path / "data"
        self.config_path = self.data / "homing.toml"
        self.runner = CliRunner()

    def run(self, *args: str, input: str | bytes | None = None) -> Result:
        return self.runner.invoke(
            cli, ["--config", str(self.config_path), *args], input=input, catch_exceptions=False
        )

    def ok(self, *args: str, input: str | bytes | None = None) -> Result:
        result = self.run(*args, input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    def fails(self, *args: str, input: str | bytes | None = None) -> str:
        """Run a command that must fail as a user error; return its one-line message."""
        result = self.run(*args, input=input)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        return lines[0]

    def store(self) -> Store:
        return Store.open(self.data / "homing.db")


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 with its real cost takes ~0.1 s a hash; the parameters travel in the hash, so
    verify_password checks these cheap ones just the same."""
    hasher = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    monkeypatch.setattr(
        common,
        "store_make_credentials",
        functools.partial(make_credentials, hasher=hasher, scram_iterations=4096),
    )


@pytest.fixture
def homing(tmp_path: Path) -> Homing:
    setup = Homing(tmp_path)
    result = setup.runner.invoke(
        cli, ["init", "--data", str(setup.data), "--domain", "example.org", "--dev"]
    )
    assert result.exit_code == 0, result.output
    return setup


@pytest.fixture
def store(homing: Homing) -> Iterator[Store]:
    opened = homing.store()
    yield opened
    opened.close()


def plain_rows(result: Result) -> list[list[str]]:
    return [line.split("\t") for line in result.stdout.splitlines()]


# --- init ------------------------------------------------------------------------------------


def test_init_dev_creates_a_working_setup(homing: Homing) -> None:
    assert stat.S_IMODE(homing.data.stat().st_mode) == 0o750
    assert stat.S_IMODE((homing.data / "tls" / "key.pem").stat().st_mode) == 0o600
    assert (homing.data / "tls" / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    config = load_config(homing.config_path)
    assert config.hostname == "localhost"
    assert config.domains == ("example.org",)
    assert config.data_dir == homing.data
    assert config.tls.key == homing.data / "tls" / "key.pem"
    ports = {service: config.listen.for_service(service) for service in init_module.DEV_PORTS}
    assert ports == {
        service: (ListenAddress("127.0.0.1", port),)
        for service, port in init_module.DEV_PORTS.items()
    }
    assert 'smtp = ["127.0.0.1:2525"]' in homing.config_path.read_text()
    with homing.store() as store:
        assert store.list_domains() == ["example.org"]


def test_init_refuses_to_overwrite(homing: Homing) -> None:
    before = homing.config_path.read_bytes()
    result = homing.runner.invoke(cli, ["init", "--data", str(homing.data), "--domain", "x.org"])
    assert result.exit_code == 1
    assert "already exists" in result.stderr
    assert homing.config_path.read_bytes() == before
    homing.config_path.unlink()
    result = homing.runner.invoke(cli, ["init", "--data", str(homing.data), "--domain", "x.org"])
    assert result.exit_code == 1
    assert "homing.db already exists" in result.stderr


def test_init_production_listens_everywhere_on_standard_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("socket.getfqdn", lambda: "mx1.example.org")
    result = CliRunner().invoke(
        cli, ["init", "--data", str(tmp_path / "d"), "--domain", "example.org"]
    )
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "d" / "homing.toml")
    assert config.hostname == "mx1.example.org"
    assert config.listen.smtp == (ListenAddress("0.0.0.0", 25), ListenAddress("::", 25))
    assert config.listen.imaps == (ListenAddress("0.0.0.0", 993), ListenAddress("::", 993))
    assert config.listen.submission[0].port == 587


def test_init_needs_a_real_hostname(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.getfqdn", lambda: "localhost.localdomain")
    result = CliRunner().invoke(cli, ["init", "--data", str(tmp_path / "d"), "--domain", "a.org"])
    assert result.exit_code == 1
    assert "--hostname" in result.stderr
    assert not (tmp_path / "d").exists()
    result = CliRunner().invoke(
        cli,
        ["init", "--data", str(tmp_path / "d"), "--domain", "a.org", "--hostname", "mx.a.org"],
    )
    assert result.exit_code == 0
    assert load_config(tmp_path / "d" / "homing.toml").hostname == "mx.a.org"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--domain", "bad domain"], "domains[0]"),
        (["--domain", "a.org", "--domain", "A.org"], "listed twice"),
        (["--domain", "a.org", "--hostname", "not a host"], "hostname"),
    ],
)
def test_init_validates_before_creating_anything(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["init", "--data", str(tmp_path / "d"), "--dev", *args])
    assert result.exit_code == 1
    assert message in result.stderr
    assert not (tmp_path / "d").exists()


def test_init_keeps_an_existing_certificate(tmp_path: Path) -> None:
    tls = tmp_path / "d" / "tls"
    tls.mkdir(parents=True)
    (tls / "cert.pem").write_text("mine")
    (tls / "key.pem").write_text("my key")
    result = CliRunner().invoke(
        cli, ["init", "--data", str(tmp_path / "d"), "--domain", "a.org", "--dev"]
    )
    assert result.exit_code == 0
    assert "existing, kept" in result.stdout
    assert (tls / "cert.pem").read_text() == "mine"


def test_init_refuses_half_a_certificate(tmp_path: Path) -> None:
    tls = tmp_path / "d" / "tls"
    tls.mkdir(parents=True)
    (tls / "key.pem").write_text("my key")
    result = CliRunner().invoke(
        cli, ["init", "--data", str(tmp_path / "d"), "--domain", "a.org", "--dev"]
    )
    assert result.exit_code == 1
    assert "provide both or neither" in result.stderr
    assert not (tmp_path / "d" / "homing.db").exists()
    assert not (tmp_path / "d" / "homing.toml").exists()


def test_init_removes_what_it_made_when_a_step_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_open(path: Path, create: bool = False) -> Store:
        path.write_bytes(b"half-written")
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Store, "open", broken_open)
    data = tmp_path / "new" / "d"
    result = CliRunner().invoke(cli, ["init", "--data", str(data), "--domain", "a.org", "--dev"])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {data / 'homing.db'}: Permission denied"
    assert not (tmp_path / "new").exists()


# --- accounts --------------------------------------------------------------------------------


def test_account_add_with_password_from_stdin(homing: Homing) -> None:
    result = homing.ok(
        "account", "add", "Alice@Example.ORG", "--password-stdin", input=" s3cret pw \r\n"
    )
    assert result.stdout == "Created account Alice@example.org\n"
    assert "s3cret" not in result.output
    with homing.store() as store:
        credentials = store.get_credentials("alice@example.org")
        assert credentials is not None
        # Only the line ending is removed: the spaces are part of the password.
        assert verify_password(credentials, " s3cret pw ")
        assert not verify_password(credentials, "s3cret pw")


def test_password_stdin_on_a_terminal_prompts_twice(
    homing: Homing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "stdin_is_tty", lambda: True)
    result = homing.run("account", "add", "t@example.org", "--password-stdin", input="a b\na c\n")
    assert result.exit_code == 1  # the two entries differ: asked again, then input ends
    assert "Repeat for confirmation" in result.stderr
    homing.ok("account", "add", "t@example.org", "--password-stdin", input="a b\na b\n")
    with homing.store() as store:
        credentials = store.get_credentials("t@example.org")
        assert credentials is not None and verify_password(credentials, "a b")


def test_account_add_generates_and_shows_a_password_once(homing: Homing) -> None:
    result = homing.ok("account", "add", "bob@example.org")
    label = "Password for bob@example.org (shown only this once): "
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(label)]
    password = line.removeprefix(label)
    assert len(password) == common.GENERATED_PASSWORD_LENGTH
    assert result.stdout.count(password) == 1
    with homing.store() as store:
        credentials = store.get_credentials("bob@example.org")
        assert credentials is not None and verify_password(credentials, password)


def test_generated_passwords_differ() -> None:
    assert len({common.generate_password() for _ in range(50)}) == 50


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["x@example.org", "--password-stdin"], "", "empty password"),
        (["x@example.org", "--password-stdin"], "\n", "empty password"),
        (["x@example.org", "--password-stdin"], b"\xff\xfe\n", "not valid UTF-8"),
        (["x@example.org", "--password-stdin"], "bell\x07\n", "password not accepted"),
        (["not-an-address", "--password-stdin"], "pw\n", "is not valid"),
        (["x@elsewhere.org", "--password-stdin"], "pw\n", "not a local domain"),
    ],
)
def test_account_add_errors(
    homing: Homing, args: list[str], stdin: str | bytes, message: str
) -> None:
    assert message in homing.fails("account", "add", *args, input=stdin)


def test_account_add_twice_is_one_error_line(homing: Homing) -> None:
    homing.ok("account", "add", "a@example.org", "--password-stdin", input="pw\n")
    assert "exists" in homing.fails(
        "account", "add", "A@example.org", "--password-stdin", input="pw\n"
    )


def test_account_in_a_domain_only_listed_in_the_config(homing: Homing) -> None:
    text = homing.config_path.read_text().replace(
        'domains = ["example.org"]', 'domains = ["example.org", "example.net"]'
    )
    homing.config_path.write_text(text)
    homing.ok("account", "add", "c@example.net", "--password-stdin", input="pw\n")
    with homing.store() as store:
        assert store.has_domain("example.net")


def test_account_list(homing: Homing) -> None:
    homing.ok("domain", "add", "example.net")
    for address in ("b@example.org", "a@example.org", "z@example.net"):
        homing.ok("account", "add", address, "--password-stdin", input="pw\n")
    rows = plain_rows(homing.ok("account", "list"))
    assert sorted(row[0] for row in rows) == ["a@example.org", "b@example.org", "z@example.net"]
    assert all(len(row) == 4 and row[2] == "no" and row[3].endswith("+00:00") for row in rows)
    rows = plain_rows(homing.ok("account", "list", "--domain", "example.net"))
    assert [row[:3] for row in rows] == [["z@example.net", "example.net", "no"]]
    objects = json.loads(homing.ok("account", "list", "--json", "--domain", "example.org").stdout)
    assert sorted(obj["address"] for obj in objects) == ["a@example.org", "b@example.org"]
    assert set(objects[0]) == {"address", "domain", "disabled", "created"}
    assert objects[0]["disabled"] is False
    assert "not a local domain" in homing.fails("account", "list", "--domain", "nowhere.org")


def test_account_list_empty(homing: Homing) -> None:
    assert homing.ok("account", "list").stdout == ""
    assert json.loads(homing.ok("account", "list", "--json").stdout) == []


def test_account_passwd(homing: Homing) -> None:
    homing.ok("account", "add", "a@example.org", "--password-stdin", input="old\n")
    result = homing.ok("account", "passwd", "a@example.org", "--password-stdin", input="new\n")
    assert result.stdout == "Changed password of a@example.org\n"
    with homing.store() as store:
        credentials = store.get_credentials("a@example.org")
        assert credentials is not None
        assert verify_password(credentials, "new") and not verify_password(credentials, "old")
    result = homing.ok("account", "passwd", "a@example.org")
    password = result.stdout.splitlines()[-1].rpartition(": ")[2]
    with homing.store() as store:
        credentials = store.get_credentials("a@example.org")
        assert credentials is not None and verify_password(credentials, password)
    assert "no account" in homing.fails(
        "account", "passwd", "zz@example.org", "--password-stdin", input="x\n"
    )


def test_account_remove_asks_unless_yes(homing: Homing) -> None:
    homing.ok("account", "add", "a@example.org", "--password-stdin", input="pw\n")
    result = homing.run("account", "remove", "a@example.org", input="n\n")
    assert result.exit_code == 1
    assert "Remove a@example.org" in result.stderr
    with homing.store() as store:
        assert store.get_account("a@example.org") is not None
    homing.ok("account", "remove", "a@example.org", input="y\n")
    with homing.store() as store:
        assert store.get_account("a@example.org") is None
    homing.ok("account", "add", "b@example.org", "--password-stdin", input="pw\n")
    assert (
        homing.ok("account", "remove", "--yes", "b@example.org").stdout
        == "Removed account b@example.org\n"
    )
    assert "no account" in homing.fails("account", "remove", "--yes", "b@example.org")


# --- domains ---------------------------------------------------------------------------------


def test_domains(homing: Homing) -> None:
    assert homing.ok("domain", "add", "Example.NET").stdout == "Added domain example.net\n"
    homing.ok("domain", "add", "xn--bcher-kva.de")
    homing.ok("account", "add", "a@example.net", "--password-stdin", input="pw\n")
    assert plain_rows(homing.ok("domain", "list")) == [
        ["bücher.de", "0", "store"],
        ["example.net", "1", "store"],
        ["example.org", "0", "config+store"],
    ]
    objects = json.loads(homing.ok("domain", "list", "--json").stdout)
    assert objects[1] == {"domain": "example.net", "accounts": 1, "source": "store"}
    assert "exists" in homing.fails("domain", "add", "example.net")
    assert "still has 1 accounts" in homing.fails("domain", "remove", "example.net")
    assert "listed in" in homing.fails("domain", "remove", "example.org")
    assert "is not valid" in homing.fails("domain", "add", "exa mple.org")
    assert "is not valid" in homing.fails("domain", "add", "192.0.2.1")
    homing.ok("account", "remove", "--yes", "a@example.net")
    homing.ok("domain", "remove", "example.net")
    assert "not hosted" in homing.fails("domain", "remove", "example.net")


# --- aliases ---------------------------------------------------------------------------------


def test_aliases(homing: Homing) -> None:
    result = homing.ok("alias", "add", "Sales@example.org", "bob@example.org", "carol@Example.NET")
    assert result.stdout == "Sales@example.org -> bob@example.org, carol@example.net\n"
    homing.ok("alias", "add", "@EXAMPLE.org", "bob@example.org")
    assert plain_rows(homing.ok("alias", "list")) == [
        ["@example.org", "bob@example.org"],
        ["sales@example.org", "bob@example.org, carol@example.net"],
    ]
    assert json.loads(homing.ok("alias", "list", "--json").stdout)[0] == {
        "alias": "@example.org",
        "targets": ["bob@example.org"],
    }
    homing.ok("alias", "remove", "sales@example.org", "bob@example.org")
    assert plain_rows(homing.ok("alias", "list"))[1] == ["sales@example.org", "carol@example.net"]
    homing.ok("alias", "remove", "@example.org")
    assert len(plain_rows(homing.ok("alias", "list"))) == 1
    assert "not a local domain" in homing.fails("alias", "add", "x@other.org", "a@example.org")
    assert "target" in homing.fails("alias", "add", "x@example.org", "nobody")
    assert "domain" in homing.fails("alias", "add", "@bad domain", "a@example.org")
    result = homing.run("alias", "add", "x@example.org")
    assert result.exit_code == 2  # usage error: a target is required


# --- mailboxes and messages ------------------------------------------------------------------

MESSAGE = b"From: a@example.net\r\nSubject: caf\xc3\xa9 \xff\r\n\r\nbody\x00\x80\r\n"


def deliver(homing: Homing, address: str, data: bytes) -> None:
    with homing.store() as store:
        account = store.get_account(address)
        assert account is not None
        copy = NewMessage(
            account_id=account.id,
            mailbox="INBOX",
            prefix=b"Return-Path: <a@example.net>\r\n",
            body=data,
            parsed=parse_message(data),
        )
        store.deliver([copy]).result(timeout=10)


def test_mailbox_list_and_message_show(homing: Homing) -> None:
    homing.ok("account", "add", "alice@example.org", "--password-stdin", input="pw\n")
    deliver(homing, "alice@example.org", MESSAGE)
    rows = plain_rows(homing.ok("mailbox", "list", "alice@example.org"))
    inbox = next(row for row in rows if row[0] == "INBOX")
    size = len(b"Return-Path: <a@example.net>\r\n" + MESSAGE)
    assert inbox == ["INBOX", "-", "1", "1", str(size)]
    assert ["Sent", "\\Sent", "0", "0", "0"] in rows
    objects = json.loads(homing.ok("mailbox", "list", "--json", "alice@example.org").stdout)
    assert objects[0] == {
        "name": "INBOX",
        "special_use": None,
        "messages": 1,
        "unseen": 1,
        "size": size,
    }
    shown = homing.ok("message", "show", "alice@example.org", "INBOX", "1")
    assert shown.stdout_bytes == b"Return-Path: <a@example.net>\r\n" + MESSAGE
    assert "no message with UID 2" in homing.fails(
        "message", "show", "alice@example.org", "INBOX", "2"
    )
    assert "no mailbox 'Nope'" in homing.fails("message", "show", "alice@example.org", "Nope", "1")
    assert "no account" in homing.fails("message", "show", "bob@example.org", "INBOX", "1")
    assert "no account" in homing.fails("mailbox", "list", "bob@example.org")
    assert homing.run("message", "show", "alice@example.org", "INBOX", "0").exit_code == 2


def test_tables_on_a_terminal_use_rich(homing: Homing, monkeypatch: pytest.MonkeyPatch) -> None:
    homing.ok("account", "add", "alice@example.org", "--password-stdin", input="pw\n")
    monkeypatch.setattr(common, "stdout_is_tty", lambda: True)
    output = homing.ok("mailbox", "list", "alice@example.org").stdout
    assert "special use" in output and "\t" not in output
    assert "\\Trash" in output


# --- configuration, errors and help ----------------------------------------------------------


def test_missing_config_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "none.toml"), "account", "list"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: configuration file {tmp_path / 'none.toml'} not found (give --config FILE, "
        "set HOMING_CONFIG, or create one with `homing init`)\n"
    )


def test_config_from_environment(homing: Homing) -> None:
    result = homing.runner.invoke(
        cli, ["domain", "list"], env={"HOMING_CONFIG": str(homing.config_path)}
    )
    assert result.exit_code == 0
    assert result.stdout.startswith("example.org\t")


def test_bad_config_names_the_key(homing: Homing) -> None:
    homing.config_path.write_text(
        homing.config_path.read_text().replace("recipients = 1000", "recipients = 5")
    )
    message = homing.fails("account", "list")
    assert message == f"Error: {homing.config_path}: limits.recipients: must be at least 100, got 5"


def test_missing_database(homing: Homing) -> None:
    (homing.data / "homing.db").unlink()
    assert "no database at" in homing.fails("account", "list")


def test_serve_calls_the_app(homing: Homing, monkeypatch: pytest.MonkeyPatch) -> None:
    import homing.app as app_module

    seen: list[Any] = []

    def fake_serve(config: Any, *, worker: Any = None) -> int:
        seen.append((config, worker))
        return 3

    monkeypatch.setattr(app_module, "serve", fake_serve)
    result = homing.run("serve")
    assert result.exit_code == 3
    assert seen[0] == (load_config(homing.config_path), None)
    result = homing.run("serve", "--worker", "2:7:5,6")
    assert result.exit_code == 3
    assert seen[1] == (load_config(homing.config_path), WorkerArgs(2, 7, (5, 6)))


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


@pytest.mark.parametrize("path", list(_commands(cli)), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ")


def test_main_returns_the_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "homing 0.1.0\n"
    assert main(["--config", str(tmp_path / "none.toml"), "domain", "list"]) == 1
    assert main(["no-such-command"]) == 2


# --- the real console script -----------------------------------------------------------------


def run_script(
    *args: str, env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HOMING), *args], input=input, capture_output=True, text=True, env=env, timeout=60
    )


def test_console_script_end_to_end(tmp_path: Path) -> None:
    assert HOMING.exists()
    data = tmp_path / "mail"
    env = {**os.environ, "HOMING_CONFIG": str(data / "homing.toml")}
    created = run_script("init", "--data", str(data), "--domain", "example.org", "--dev", env=env)
    assert created.returncode == 0, created.stderr
    assert "Created Homing setup" in created.stdout
    added = run_script(
        "account", "add", "alice@example.org", "--password-stdin", env=env, input="hunter2 x\n"
    )
    assert added.returncode == 0, added.stderr
    assert "hunter2" not in added.stdout + added.stderr
    listed = run_script("account", "list", env=env)
    assert listed.returncode == 0
    assert [line.split("\t")[:3] for line in listed.stdout.splitlines()] == [
        ["alice@example.org", "example.org", "no"]
    ]
    again = run_script("init", "--data", str(data), "--domain", "example.org", "--dev", env=env)
    assert again.returncode == 1
    assert again.stderr.startswith("Error: ") and "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    assert tomllib.loads((data / "homing.toml").read_text())["listen"]["smtp"] == ["127.0.0.1:2525"]
