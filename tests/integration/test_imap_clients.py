"""IMAP with clients nobody here wrote: curl (imaps:// and imap:// with STARTTLS, verifying the
server's self-signed certificate and its name mx.local.test) and the imapclient library."""

from __future__ import annotations

import itertools
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from argon2 import PasswordHasher
from imapclient import IMAPClient

from homing.mail.mime import parse_message
from homing.store import NewMessage, Store, make_credentials
from tests.integration.conftest import (
    DOMAIN,
    Server,
    module_server,
    module_store,
    require_tool,
)

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "client pw"
HOSTNAME = "mx.local.test"  # the name in the certificate `homing init` made
LISTEN = {"imap": ["127.0.0.1:0"], "imaps": ["127.0.0.1:0"], "smtp": ["127.0.0.1:0"]}
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from module_server(tmp_path_factory, "imapclients", {"listen": LISTEN})


@pytest.fixture(scope="module")
def store(server: Server) -> Iterator[Store]:
    yield from module_store(server)


@pytest.fixture
def account(store: Store) -> Callable[..., str]:
    def make(*messages: bytes) -> str:
        address = f"client{next(_names)}@{DOMAIN}"
        acct = store.add_account(
            address, make_credentials(PASSWORD, hasher=FAST, scram_iterations=4096)
        )
        news = [NewMessage(acct.id, "INBOX", b"", m, parse_message(m)) for m in messages]
        if news:
            store.deliver(news).result(timeout=10)
        return address

    return make


def msg(n: int) -> bytes:
    return (
        f"From: sender@remote.example\r\nTo: someone@{DOMAIN}\r\nSubject: hello {n}\r\n"
        f"Message-ID: <c{n}@remote>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nbody {n}\r\n"
    ).encode()


def tls_context(server: Server) -> ssl.SSLContext:
    """Trust the server's own certificate, and check its name."""
    context = ssl.create_default_context(cafile=str(server.cert))
    context.check_hostname = True
    return context


# ---------------------------------------------------------------------------- curl


def curl(server: Server, user: str, url_path: str, *, service: str = "imaps") -> str:
    tool = require_tool("curl")
    port = server.address(service)[1]
    scheme = "imaps" if service == "imaps" else "imap"
    args = [
        tool, "--silent", "--show-error", "--max-time", "20",
        "--cacert", str(server.cert),
        "--resolve", f"{HOSTNAME}:{port}:127.0.0.1",
        "--user", f"{user}:{PASSWORD}",
        f"{scheme}://{HOSTNAME}:{port}/{url_path}",
    ]  # fmt: skip
    if service == "imap":
        args.insert(1, "--ssl-reqd")  # STARTTLS, required
    out = subprocess.run(args, capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def test_curl_lists_and_fetches_over_imaps(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(1), msg(2))
    listing = curl(server, user, "")
    assert '* LIST (\\HasNoChildren) "/" INBOX' in listing
    assert '* LIST (\\HasNoChildren \\Sent) "/" "Sent"' in listing
    body = curl(server, user, "INBOX;UID=2")
    assert body.replace("\r\n", "\n") == msg(2).decode().replace("\r\n", "\n")
    assert curl(server, user, "INBOX?SUBJECT%20%22hello%201%22").strip() == "* SEARCH 1"


def test_curl_with_starttls(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(7))
    body = curl(server, user, "INBOX;UID=1;SECTION=HEADER.FIELDS%20(SUBJECT)", service="imap")
    assert body.strip() == "Subject: hello 7"


# ---------------------------------------------------------------------------- imapclient


def test_imapclient_session(server: Server, store: Store, account: Callable[..., str]) -> None:
    user = account(msg(1), msg(2), msg(3))
    port = server.address("imaps")[1]
    with IMAPClient(HOSTNAME, port, ssl=True, ssl_context=tls_context(server)) as client:
        client.login(user, PASSWORD)
        assert {b"IMAP4REV2", b"MOVE", b"UIDPLUS", b"IDLE"} <= set(client.capabilities())
        folders = {name: flags for flags, _, name in client.list_folders()}
        assert b"\\Sent" in folders["Sent"] and b"\\HasNoChildren" in folders["INBOX"]
        assert client.find_special_folder(b"\\Trash") == "Trash"
        info = client.select_folder("INBOX")
        assert info[b"EXISTS"] == 3 and info[b"UIDNEXT"] == 4
        assert client.search(["SUBJECT", "hello 2"]) == [2]
        data = client.fetch([1, 3], ["ENVELOPE", "FLAGS", "RFC822.SIZE"])
        assert data[1][b"ENVELOPE"].subject == b"hello 1"
        assert data[3][b"RFC822.SIZE"] == len(msg(3))
        client.add_flags([1], [b"\\Flagged"])
        assert client.get_flags([1]) == {1: (b"\\Flagged",)}
        client.create_folder("Done")
        client.move([2], "Done")  # UID MOVE
        assert client.search() == [1, 3]
        client.copy([3], "Done")
        assert client.folder_status("Done", [b"MESSAGES"]) == {b"MESSAGES": 2}
        client.append("INBOX", msg(4), flags=[b"\\Seen"])
        client.delete_messages([1])
        client.expunge()
        assert client.search() == [3, 4]
        client.logout()


def test_imapclient_idle_hears_new_mail(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(1))
    port = server.address("imaps")[1]
    with IMAPClient(HOSTNAME, port, ssl=True, ssl_context=tls_context(server)) as client:
        client.login(user, PASSWORD)
        client.select_folder("INBOX")
        client.idle()
        start = time.monotonic()
        with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
            smtp.sendmail("sender@remote.example", [user], msg(2))
        responses = client.idle_check(timeout=5)
        assert (2, b"EXISTS") in responses
        assert time.monotonic() - start < 3
        client.idle_done()
        assert client.search(["SUBJECT", "hello 2"]) == [2]


def test_imapclient_starttls(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(1))
    host, port = server.address("imap")
    client = IMAPClient(host, port, ssl=False)
    context = tls_context(server)
    context.check_hostname = False  # connected by IP; the name is checked by the curl tests
    client.starttls(context)
    client.login(user, PASSWORD)
    assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 1
    client.logout()


@pytest.fixture(autouse=True)
def _resolve_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    """imapclient connects to mx.local.test (the name its TLS check wants): make that name
    mean 127.0.0.1 in this process."""
    real = socket.getaddrinfo

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host == HOSTNAME:
            host = "127.0.0.1"
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
