"""The IMAP extensions synchronising clients use, end to end over TLS: LIST-EXTENDED (RFC 5258),
LIST-STATUS (RFC 5819), STATUS=SIZE (RFC 8438), APPENDLIMIT (RFC 7889), MULTIAPPEND (RFC 3502),
BINARY (RFC 3516), UTF8=ACCEPT (RFC 6855) and CREATE-SPECIAL-USE (RFC 6154)."""

from __future__ import annotations

import imaplib
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from homing.store import Store, make_credentials
from tests.integration import test_imap as base
from tests.integration.conftest import Server
from tests.integration.test_imap import Raw, mailbox_state, msg

server = base.server
store = base.store
account = base.account
_close_raw_sockets = base._close_raw_sockets

PLAIN = b"Subject: a\r\n\r\none\r\n"
BASE64 = (
    b"Subject: b\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n"
)


def login(server: Server, user: str) -> Raw:
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    return raw


def literal(data: bytes, *, binary: bool = False) -> bytes:
    return b"%s{%d+}\r\n%s" % (b"~" if binary else b"", len(data), data)


def test_capabilities_advertise_the_extensions(server: Server, account: Callable[..., str]) -> None:
    raw = login(server, account())
    caps = raw.cmd(b"C", b"CAPABILITY")[0].split()
    for name in (
        b"LIST-EXTENDED",
        b"LIST-STATUS",
        b"STATUS=SIZE",
        b"MULTIAPPEND",
        b"BINARY",
        b"UTF8=ACCEPT",
        b"CREATE-SPECIAL-USE",
        b"CONDSTORE",
        b"QRESYNC",
        b"APPENDLIMIT=52428800",
    ):
        assert name in caps, name


def test_list_extended_selection_and_return_options(
    server: Server, account: Callable[..., str]
) -> None:
    raw = login(server, account(msg(1), msg(2)))
    for command in (b"CREATE Work/A", b"CREATE Work/B", b"UNSUBSCRIBE Work/B"):
        assert raw.cmd(b"A", command)[-1].startswith(b"A OK"), command
    # SUBSCRIBED with RECURSIVEMATCH: "Work" is not subscribed, but a child is (CHILDINFO).
    lines = raw.cmd(b"L", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "W%"')
    assert lines == [
        b'* LIST (\\HasChildren) "/" "Work" ("CHILDINFO" ("SUBSCRIBED"))\r\n',
        b"L OK LIST completed\r\n",
    ]
    lines = raw.cmd(b"L", b'LIST (SUBSCRIBED) "" "Work/*"')
    assert lines == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "Work/A"\r\n',
        b"L OK LIST completed\r\n",
    ]
    # RECURSIVEMATCH alone is an error (RFC 5258 §3); REMOTE is accepted (nothing remote).
    assert raw.cmd(b"L", b'LIST (RECURSIVEMATCH) "" %')[-1].startswith(b"L BAD ")
    assert raw.cmd(b"L", b'LIST (REMOTE) "" Work')[0] == b'* LIST (\\HasChildren) "/" "Work"\r\n'
    # Several patterns, with RETURN (SUBSCRIBED CHILDREN) and LIST-STATUS (RFC 5819).
    lines = raw.cmd(
        b"L",
        b'LIST "" (INBOX "Work/%") RETURN (SUBSCRIBED CHILDREN STATUS (MESSAGES SIZE UIDNEXT))',
    )
    size = sum(len(msg(n)) for n in (1, 2))
    assert lines == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX\r\n',
        b"* STATUS INBOX (MESSAGES 2 SIZE %d UIDNEXT 3)\r\n" % size,
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "Work/A"\r\n',
        b'* STATUS "Work/A" (MESSAGES 0 SIZE 0 UIDNEXT 1)\r\n',
        b'* LIST (\\HasNoChildren) "/" "Work/B"\r\n',
        b'* STATUS "Work/B" (MESSAGES 0 SIZE 0 UIDNEXT 1)\r\n',
        b"L OK LIST completed\r\n",
    ]
    lines = raw.cmd(b"L", b'LIST (SPECIAL-USE) "" "*"')
    assert [line.split(b")")[0] for line in lines[:-1]] == [
        b"* LIST (\\HasNoChildren \\Archive",
        b"* LIST (\\HasNoChildren \\Drafts",
        b"* LIST (\\HasNoChildren \\Junk",
        b"* LIST (\\HasNoChildren \\Sent",
        b"* LIST (\\HasNoChildren \\Trash",
    ]
    # STATUS=SIZE and APPENDLIMIT (RFC 8438, RFC 7889).
    assert raw.cmd(b"S", b"STATUS INBOX (SIZE APPENDLIMIT)")[0] == (
        b"* STATUS INBOX (SIZE %d APPENDLIMIT 52428800)\r\n" % size
    )
    # CREATE-SPECIAL-USE (RFC 6154 §3).
    assert raw.cmd(b"C", b"CREATE Old (USE (\\Archive))")[-1].startswith(b"C OK")
    assert raw.cmd(b"L", b'LIST "" Old')[0] == b'* LIST (\\HasNoChildren \\Archive) "/" "Old"\r\n'
    assert raw.cmd(b"C", b"CREATE Old2 (USE (\\Bogus))")[-1] == (
        b"C NO [USEATTR] Unsupported special-use attribute\r\n"
    )


def test_multiappend_is_atomic(server: Server, store: Store, account: Callable[..., str]) -> None:
    user = account()
    raw = login(server, user)
    lines = raw.cmd(b"A", b"APPEND INBOX (\\Seen) " + literal(PLAIN) + b" " + literal(BASE64))
    assert len(lines) == 1 and lines[0].startswith(b"A OK [APPENDUID ")
    assert lines[0].split(b"] ")[0].endswith(b" 1:2"), lines
    # One bad message refuses the whole command: nothing of it is stored (RFC 3502 §6.3.11).
    lines = raw.cmd(b"A", b"APPEND INBOX " + literal(PLAIN) + b" (\\Bogus) " + literal(PLAIN))
    assert lines[-1].startswith(b"A BAD "), lines
    lines = raw.cmd(b"A", b"APPEND Nowhere " + literal(PLAIN) + b" " + literal(PLAIN))
    assert lines[-1].startswith(b"A NO [TRYCREATE]"), lines
    assert mailbox_state(store, user) == {1: frozenset({"\\Seen"}), 2: frozenset()}


def test_binary_fetch_and_literal8_append(server: Server, account: Callable[..., str]) -> None:
    raw = login(server, account())
    assert raw.cmd(b"A", b"APPEND INBOX " + literal(BASE64))[-1].startswith(b"A OK")
    assert raw.cmd(b"A", b"APPEND INBOX " + literal(b"a\x00b\r\n", binary=True))[-1].startswith(
        b"A OK"
    )
    raw.cmd(b"S", b"EXAMINE INBOX")
    # The decoded part, its decoded size, and the encoded part beside it.
    assert raw.cmd(b"F", b"FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1] BODY.PEEK[1])") == [
        b"* 1 FETCH (BINARY[1] ~{4}\r\n\x00\x01\x02\x03 BINARY.SIZE[1] 4"
        b" BODY[1] {10}\r\nAAECAw==\r\n)\r\n",
        b"F OK FETCH completed\r\n",
    ]
    # NUL stored as sent; BINARY[] gives it back in a literal8, BODY[] never sends NUL.
    assert raw.cmd(b"F", b"FETCH 2 (BINARY.PEEK[] BODY.PEEK[])") == [
        b"* 2 FETCH (BINARY[] ~{5}\r\na\x00b\r\n BODY[] {5}\r\na\x80b\r\n)\r\n",
        b"F OK FETCH completed\r\n",
    ]


def test_utf8_accept(server: Server, account: Callable[..., str]) -> None:
    raw = login(server, account())
    # Before ENABLE: modified UTF-7 names only, no 8-bit quoted strings, no UTF8 APPEND.
    assert raw.cmd(b"C", b'CREATE "Entw&APw-rfe"')[-1].startswith(b"C OK")
    assert raw.cmd(b"L", b'LIST "" Entw*')[0] == b'* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"\r\n'
    assert raw.cmd(b"C", b'CREATE "K\xc3\xa4se"')[-1].startswith(b"C BAD ")
    lines = raw.cmd(b"A", b"APPEND INBOX UTF8 (" + literal(PLAIN, binary=True) + b")")
    assert lines[-1] == b"A BAD UTF8 data needs ENABLE UTF8=ACCEPT first\r\n"
    assert raw.cmd(b"E", b"ENABLE UTF8=ACCEPT") == [
        b"* ENABLED UTF8=ACCEPT\r\n",
        b"E OK ENABLE completed\r\n",
    ]
    assert raw.cmd(b"L", b'LIST "" Entw*')[0] == (
        b'* LIST (\\HasNoChildren) "/" "Entw\xc3\xbcrfe"\r\n'
    )
    assert raw.cmd(b"C", b'CREATE "K\xc3\xa4se"')[-1].startswith(b"C OK")
    lines = raw.cmd(b"A", b'APPEND "K\xc3\xa4se" UTF8 (' + literal(PLAIN, binary=True) + b")")
    assert lines[-1].startswith(b"A OK [APPENDUID "), lines
    assert raw.cmd(b"S", b'STATUS "K\xc3\xa4se" (MESSAGES)')[0] == (
        b'* STATUS "K\xc3\xa4se" (MESSAGES 1)\r\n'
    )


def test_allow_plaintext_loopback(tmp_path: Path) -> None:
    """[imap] allow_plaintext_loopback: LOGIN without TLS from 127.0.0.1 (off by default)."""
    plain = base.start_server(tmp_path / "s", {"imap": {"allow_plaintext_loopback": True}})
    try:
        with Store.open(plain.data / "homing.db") as db:
            user = f"plain@{base.DOMAIN}"
            db.add_account(
                user, make_credentials(base.PASSWORD, hasher=base.FAST, scram_iterations=4096)
            )
        client = imaplib.IMAP4(*plain.address("imap"), timeout=10)
        assert "LOGINDISABLED" not in client.capabilities
        assert {"STARTTLS", "AUTH=PLAIN"} <= set(client.capabilities)
        assert client.login(user, base.PASSWORD)[0] == "OK"
        assert client.select("INBOX")[0] == "OK"
        client.logout()
    finally:
        plain.stop(signal.SIGKILL)


def test_plaintext_login_refused_by_default(server: Server, account: Callable[..., str]) -> None:
    client = imaplib.IMAP4(*server.address("imap"), timeout=10)
    assert "LOGINDISABLED" in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(account(), base.PASSWORD)
    client.logout()
