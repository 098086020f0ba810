"""POP3 with clients nobody here wrote: Debian's fetchmail, getmail6 and curl, each fetching
and deleting over TLS that they verify (the server's self-signed certificate is their trust
anchor, its name mx.local.test checked)."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from homing.mail.mime import parse_message
from homing.store import NewMessage, Store, make_credentials
from tests.integration.conftest import (
    DOMAIN,
    POP3_LISTEN,
    Server,
    module_server,
    module_store,
    require_tool,
)

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "client pw"
HOSTNAME = "mx.local.test"  # the name in the certificate `homing init` made
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from module_server(tmp_path_factory, "pop3clients", {"listen": POP3_LISTEN})


@pytest.fixture(scope="module")
def store(server: Server) -> Iterator[Store]:
    yield from module_store(server)


@pytest.fixture
def account(store: Store) -> Callable[..., str]:
    def make(*messages: bytes) -> str:
        address = f"client{next(_names)}@{DOMAIN}"
        account_id = store.add_account(
            address, make_credentials(PASSWORD, hasher=FAST, scram_iterations=4096)
        ).id
        deliver(store, address, *messages)
        assert account_id
        return address

    return make


def deliver(store: Store, address: str, *messages: bytes) -> None:
    acct = store.get_account(address)
    assert acct is not None
    news = [NewMessage(acct.id, "INBOX", b"", m, parse_message(m)) for m in messages]
    store.deliver(news).result(timeout=10)


def msg(n: int) -> bytes:
    return (
        f"From: sender@remote.example\r\nSubject: fetch {n}\r\nMessage-ID: <fetch{n}@remote>\r\n"
        f"\r\n.a line with a leading dot\r\nbody {n}\r\n"
    ).encode()


def inbox_count(store: Store, address: str) -> int:
    acct = store.get_account(address)
    assert acct is not None
    mailbox = store.get_mailbox(acct.id, "INBOX")
    assert mailbox is not None
    return len(store.list_messages(mailbox.id))


def delivered(directory: Path) -> list[bytes]:
    """Messages an MDA wrote to `directory`, ordered by their Subject."""
    found = [path.read_bytes() for path in directory.iterdir() if path.name.startswith("msg.")]
    return sorted(found, key=lambda data: data[data.index(b"Subject:") :])


def run(args: list[str], *, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout + result.stderr


# ---------------------------------------------------------------------------------- fetchmail


@pytest.mark.parametrize("service", ["pop3s", "pop3"])
def test_fetchmail_downloads_and_deletes(
    server: Server, store: Store, account: Callable[..., str], tmp_path: Path, service: str
) -> None:
    fetchmail = require_tool("fetchmail")
    user = account(msg(1), msg(2), msg(3))
    out = tmp_path / "out"
    out.mkdir()
    # pop3s: TLS from the first byte. pop3: fetchmail must upgrade with STLS (sslproto
    # without "ssl"), and refuses to go on in clear text.
    tls = "ssl" if service == "pop3s" else 'sslproto "TLS1.2+"'
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"set no syslog\n"
        f"poll {HOSTNAME} via 127.0.0.1 service {server.address(service)[1]} protocol pop3"
        f" timeout 20\n"
        f'  user "{user}" there with password "{PASSWORD}" is "nobody" here\n'
        f'  {tls} sslcertck sslcertfile "{server.cert}" sslcommonname "{HOSTNAME}"\n'
        f"  fetchall nokeep\n"
        f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n"
    )
    rc.chmod(0o600)
    log = run(
        [fetchmail, "-f", str(rc), "-v", "--nodetach", "--pidfile", str(tmp_path / "pid")],
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert "SSL/TLS: using protocol TLSv1.3" in log
    if service == "pop3":
        assert "POP3> STLS" in log
    assert "POP3< +OK Bye, 3 messages deleted" in log
    messages = delivered(out)
    assert len(messages) == 3
    for n, data in enumerate(messages, start=1):
        assert data.endswith(msg(n).replace(b"\r\n", b"\n"))  # fetchmail's MDA gets LF lines
    assert inbox_count(store, user) == 0


# ----------------------------------------------------------------------------------- getmail6


def getmail(server: Server, user: str, directory: Path, *, delete: bool) -> str:
    getmail_bin = require_tool("getmail")
    rc = directory / "getmailrc"
    rc.write_text(
        "[retriever]\n"
        "type = SimplePOP3SSLRetriever\n"
        f"server = 127.0.0.1\nport = {server.pop3s[1]}\n"
        f"username = {user}\npassword = {PASSWORD}\n"
        f"ca_certs = {server.cert}\nssl_cert_hostname = {HOSTNAME}\n"
        "\n[destination]\n"
        # getmail refuses Maildir/mbox delivery as root (as CI runs); an MDA it accepts.
        "type = MDA_external\npath = /bin/sh\n"
        f'arguments = ("-c", "cat > {directory}/msg.$$")\n'
        "allow_root_commands = true\n"
        "\n[options]\n"
        f"read_all = false\ndelete = {'true' if delete else 'false'}\nverbose = 2\n"
    )
    return run([getmail_bin, "--getmaildir", str(directory), "--rcfile", "getmailrc"])


def test_getmail_fetches_new_messages_by_uidl_then_deletes(
    server: Server, store: Store, account: Callable[..., str], tmp_path: Path
) -> None:
    user = account(msg(1), msg(2))
    log = getmail(server, user, tmp_path, delete=False)
    assert "2 messages" in log and "retrieved" in log
    assert len(delivered(tmp_path)) == 2
    assert inbox_count(store, user) == 2  # kept on the server
    # getmail remembers UIDLs: a second run fetches only what is new, so the UIDLs held.
    deliver(store, user, msg(3))
    log = getmail(server, user, tmp_path, delete=True)
    assert "1 messages" in log, log
    messages = delivered(tmp_path)
    assert len(messages) == 3
    assert messages[2].endswith(msg(3).replace(b"\r\n", b"\n"))
    # With delete on, getmail removes what it fetched now and what it had fetched before.
    assert inbox_count(store, user) == 0


def test_getmail_downloads_and_deletes_everything(
    server: Server, store: Store, account: Callable[..., str], tmp_path: Path
) -> None:
    user = account(msg(1), msg(2), msg(3))
    log = getmail(server, user, tmp_path, delete=True)
    assert log.count(", deleted") == 3, log
    assert len(delivered(tmp_path)) == 3
    assert inbox_count(store, user) == 0


# --------------------------------------------------------------------------------------- curl


def curl_run(server: Server, url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """curl trusting only the server's certificate, with mx.local.test pointing at it."""
    curl_bin = require_tool("curl")
    port = int(url.split(":")[2].split("/")[0])
    return subprocess.run(
        [
            curl_bin,
            "-sS",
            "--cacert",
            str(server.cert),
            "--resolve",
            f"{HOSTNAME}:{port}:127.0.0.1",
            *args,
            url,
        ],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def curl_as(server: Server, url: str, *args: str) -> str:
    result = curl_run(server, url, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def test_curl_pop3s_list_retr_dele(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    user = account(msg(1), msg(2))
    base = f"pop3s://{HOSTNAME}:{server.pop3s[1]}"
    login = ("--user", f"{user}:{PASSWORD}")
    listing = curl_as(server, base + "/", *login)
    assert listing == f"1 {len(msg(1))}\r\n2 {len(msg(2))}\r\n"
    assert curl_as(server, base + "/2", *login).encode() == msg(2)
    curl_as(server, base + "/", *login, "-X", "DELE 1", "-I")
    assert inbox_count(store, user) == 1
    assert curl_as(server, base + "/1", *login).encode() == msg(2)


def test_curl_stls_is_required_and_works(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(1))
    url = f"pop3://{HOSTNAME}:{server.pop3[1]}/1"
    got = curl_as(server, url, "--user", f"{user}:{PASSWORD}", "--ssl-reqd")
    assert got.encode() == msg(1)
    uidl = curl_as(
        server,
        f"pop3://{HOSTNAME}:{server.pop3[1]}/",
        "--user",
        f"{user}:{PASSWORD}",
        "--ssl-reqd",
        "-X",
        "UIDL",
    )
    assert uidl.startswith("1 ") and "." in uidl


def test_curl_wrong_password_is_refused(server: Server, account: Callable[..., str]) -> None:
    user = account()
    url = f"pop3s://{HOSTNAME}:{server.pop3s[1]}/"
    result = curl_run(server, url, "--user", f"{user}:wrong")
    assert result.returncode == 67  # CURLE_LOGIN_DENIED
    assert b"Login denied" in result.stderr
