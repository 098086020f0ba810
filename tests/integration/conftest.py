"""Fixtures that run a real `homing serve` process on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from homing.store import Store

HOMING = [str(Path(sys.executable).with_name("homing"))]  # the installed console script
DOMAIN = "local.test"
#: `make_server({"listen": POP3_LISTEN})`: POP3 (STLS) and POP3S on ephemeral ports.
POP3_LISTEN = {"pop3": ["127.0.0.1:0"], "pop3s": ["127.0.0.1:0"]}


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def idle_hears(
    imap: imaplib.IMAP4, action: Callable[[], object], exists: int, timeout: float = 1.0
) -> None:
    """In IDLE, run `action` and require `* <exists> EXISTS` within `timeout` seconds, then
    end the IDLE. (A session polls for other processes' changes only every 30 s: hearing of
    them within a second means it was told.)"""
    imap.send(b"I1 IDLE\r\n")
    assert imap.readline().startswith(b"+")
    action()
    started = time.monotonic()
    imap.socket().settimeout(timeout)
    line = b""
    while time.monotonic() - started < timeout:
        try:
            line = imap.readline()
        except TimeoutError:
            break
        if line.endswith(b"EXISTS\r\n"):
            break
    assert line == b"* %d EXISTS\r\n" % exists, (line, time.monotonic() - started)
    imap.socket().settimeout(10)
    imap.send(b"DONE\r\n")
    while not (tagged := imap.readline()).startswith(b"I1 "):
        pass
    assert tagged.startswith(b"I1 OK"), tagged


def toml_dump(data: dict[str, Any]) -> str:
    """Enough TOML for a homing.toml: scalars, lists of scalars, one level of tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    top = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [
        f"\n[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
        for k, v in data.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def run_cli(
    config: Path, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HOMING, "--config", str(config), *args],
        input=input,
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


@dataclass
class Server:
    data: Path
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    listeners: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def address(self, service: str = "smtp") -> tuple[str, int]:
        host, port = self.listeners[service][0]
        return host, port

    @property
    def smtp(self) -> tuple[str, int]:
        return self.address("smtp")

    @property
    def pop3(self) -> tuple[str, int]:
        return self.address("pop3")

    @property
    def pop3s(self) -> tuple[str, int]:
        return self.address("pop3s")

    @property
    def cert(self) -> Path:
        """The server's (self-signed) TLS certificate, for clients that pin it."""
        return self.data / "tls" / "cert.pem"

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config, *args, input=input, check=check)

    def add_account(self, address: str, password: str = "secret-password-1") -> str:
        self.cli("account", "add", address, "--password-stdin", input=password + "\n")
        return password

    def message(self, address: str, uid: int, mailbox: str = "INBOX") -> bytes:
        out = subprocess.run(
            [*HOMING, "--config", str(self.config), "message", "show", address, mailbox, str(uid)],
            capture_output=True,
            check=True,
            timeout=60,
        )
        return out.stdout

    def mailbox_count(self, address: str, mailbox: str = "INBOX") -> int:
        out = self.cli("mailbox", "list", address, "--json").stdout
        for row in json.loads(out):
            if row["name"] == mailbox:
                return int(row["messages"])
        raise KeyError(mailbox)

    def start(self, timeout: float = 20.0) -> None:
        run_file = self.data / "run" / "listeners.json"
        run_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [*HOMING, "--config", str(self.config), "serve"], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"homing serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                info = json.loads(run_file.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.05)
                continue
            if info.get("pid") == self.proc.pid:
                self.listeners = {k: [tuple(a) for a in v] for k, v in info["listeners"].items()}  # type: ignore[misc]
                return
            time.sleep(0.05)
        raise TimeoutError(f"homing serve did not start:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def make_config(tmp: Path, overrides: dict[str, dict[str, Any]] | None = None) -> tuple[Path, Path]:
    data = tmp / "data"
    subprocess.run(
        [
            *HOMING,
            "init",
            "--data",
            str(data),
            "--domain",
            DOMAIN,
            "--hostname",
            "mx.local.test",
            "--dev",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = data / "homing.toml"
    doc = tomllib.loads(config.read_text())
    doc["listen"] = {k: [] for k in doc.get("listen", {})} | {"smtp": ["127.0.0.1:0"]}
    for table, values in (overrides or {}).items():
        if isinstance(values, dict):
            doc.setdefault(table, {}).update(values)
        else:
            doc[table] = values
    config.write_text(toml_dump(doc))
    return data, config


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def factory(
        overrides: dict[str, Any] | None = None, *, start: bool = True, name: str = "s"
    ) -> Server:
        base = tmp_path / name
        base.mkdir()
        data, config = make_config(base, overrides)
        server = Server(data=data, config=config, log_path=base / "serve.log")
        servers.append(server)
        if start:
            server.start()
        return server

    yield factory
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.stop(signal.SIGKILL)


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    s = make_server()
    s.add_account(f"alice@{DOMAIN}")
    s.add_account(f"bob@{DOMAIN}")
    return s


def remote_homing(
    make_server: Callable[..., Server], make_dns_server: Callable[..., Any], address: str
) -> tuple[Server, int, str]:
    """Another Homing listening on `address` (a 127.0.0.x of its own) as the MX of
    remote.test, with the account bob@remote.test, and a DNS server on loopback saying so.
    Returns the remote server, its port, and "host:port" of the DNS server (for `[dns]
    nameservers` of the sending server, whose `[outbound] port` must be that port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    remote = make_server(
        {"hostname": "mx.remote.test", "listen": {"smtp": [f"{address}:{port}"]}}, name="remote"
    )
    remote.cli("domain", "add", "remote.test")
    remote.add_account("bob@remote.test")
    dns = make_dns_server(
        {"remote.test": {"MX": [(10, "mx.remote.test")]}, "mx.remote.test": {"A": [address]}}
    )
    host, dns_port = dns.address
    return remote, port, f"{host}:{dns_port}"


def inbox_count(server: Server, address: str) -> int:
    """Messages in `address`'s INBOX, read from the store beside the running server."""
    with Store.open(server.data / "homing.db") as store:
        account = store.get_account(address)
        assert account is not None
        inbox = store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        return inbox.messages


def require_tool(name: str) -> str:
    """A Debian client the test drives; in CI its absence is an error, elsewhere a skip."""
    # Debian puts some of them (Postfix's smtp-sink) in /usr/sbin, off a normal user's PATH.
    path = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (.ci/run should install it)")
        pytest.skip(f"{name} not installed")
    return path


def module_server(
    factory: pytest.TempPathFactory, name: str, overrides: dict[str, dict[str, Any]]
) -> Iterator[Server]:
    """A `homing serve` shared by a test module (use with `yield from` in a module-scoped
    fixture); killed at the end."""
    base = factory.mktemp(name) / "s"
    base.mkdir()
    data, config = make_config(base, overrides)
    s = Server(data=data, config=config, log_path=base / "serve.log")
    s.start()
    yield s
    if s.proc is not None:
        s.stop(signal.SIGKILL)


def module_store(server: Server) -> Iterator[Store]:
    """The store of a running `module_server`, opened beside it as the CLI does."""
    s = Store.open(server.data / "homing.db")
    yield s
    s.close()
