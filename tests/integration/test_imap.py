"""IMAP end to end (ports 143 with STARTTLS and 993): Python's imaplib and a raw line client
against a real `homing serve`, with the store checked directly.

Most tests share one server (accounts are per test); the idle-timeout test gets its own. The
store is opened beside the server (as the CLI does) to set accounts and mail up: changes made
that way come from another process, so sessions learn of them on NOOP (or an IDLE poll).
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import itertools
import random
import re
import signal
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from homing.auth import Authenticator
from homing.imapd import IMAPService
from homing.imapd import session as imapd_session
from homing.mail.mime import parse_message
from homing.net.memory import DEFAULT_TLS_INFO, MemoryStream
from homing.store import NewMessage, Store, make_credentials
from tests.integration.conftest import DOMAIN, Server, make_config
from tests.unit.test_sasl import ScramClient

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "imap secret"
IMAP_LISTEN = {"imap": ["127.0.0.1:0"], "imaps": ["127.0.0.1:0"], "smtp": ["127.0.0.1:0"]}
TLS = ssl.create_default_context()
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE
_names = itertools.count()


# ---------------------------------------------------------------------------------- fixtures


def start_server(base: Path, overrides: dict[str, dict[str, object]]) -> Server:
    base.mkdir(parents=True)
    data, config = make_config(base, {"listen": IMAP_LISTEN, **overrides})
    server = Server(data=data, config=config, log_path=base / "serve.log")
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No slowdown and a high lockout limit: some tests fail logins on purpose.
    s = start_server(
        tmp_path_factory.mktemp("imap") / "s",
        {"auth": {"failure_delay": "0s", "failures_per_ip": 1000}},
    )
    yield s
    if s.proc is not None:
        s.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def store(server: Server) -> Iterator[Store]:
    s = Store.open(server.data / "homing.db")
    yield s
    s.close()


@pytest.fixture
def account(store: Store) -> Callable[..., str]:
    """A new account (cheap hash, so logins are fast) with the given messages in its INBOX."""

    def make(*messages: bytes, password: str = PASSWORD) -> str:
        address = f"user{next(_names)}@{DOMAIN}"
        store.add_account(address, make_credentials(password, hasher=FAST, scram_iterations=4096))
        deliver(store, address, *messages)
        return address

    return make


def deliver(store: Store, address: str, *messages: bytes, mailbox: str = "INBOX") -> list[int]:
    acct = store.get_account(address)
    assert acct is not None
    news = [NewMessage(acct.id, mailbox, b"", m, parse_message(m)) for m in messages]
    return [m.uid for m in store.deliver(news).result(timeout=10)] if news else []


def msg(n: int, extra: str = "") -> bytes:
    return (
        f"From: Sender <sender@remote.example>\r\nTo: someone@{DOMAIN}\r\n"
        f"Subject: message {n}\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        f"Message-ID: <m{n}@remote.example>\r\n\r\nbody of message {n}\r\n{extra}"
    ).encode()


def mailbox_state(store: Store, address: str, name: str = "INBOX") -> dict[int, frozenset[str]]:
    acct = store.get_account(address)
    assert acct is not None
    mailbox = store.get_mailbox(acct.id, name)
    assert mailbox is not None
    return {m.uid: m.flags for m in store.list_messages(mailbox.id)}


def imaps(server: Server, user: str, password: str = PASSWORD) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(*server.address("imaps"), ssl_context=TLS, timeout=10)
    client.login(user, password)
    return client


OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_raw_sockets() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


class Raw:
    """A byte-level IMAP client, for what imaplib will not send or does not show."""

    def __init__(self, address: tuple[str, int], *, tls: bool = False) -> None:
        sock = socket.create_connection(address, timeout=10)
        self.sock: socket.socket = TLS.wrap_socket(sock) if tls else sock
        OPEN.append(self.sock)
        self.buf = b""
        self.greeting = self.line()
        assert self.greeting.startswith(b"* OK ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One response line with its CRLF and any literals it announces, or b"" at EOF."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    rest, self.buf = self.buf, b""
                    return out + rest
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            out += line + b"\r\n"
            literal = re.search(rb"\{(\d+)\}$", line)
            if literal is None:
                return out
            size = int(literal.group(1))
            while len(self.buf) < size:
                chunk = self.sock.recv(65536)
                assert chunk, "EOF inside a literal"
                self.buf += chunk
            out += self.buf[:size]
            self.buf = self.buf[size:]

    def response(self, tag: bytes) -> list[bytes]:
        """Lines up to and including the tagged response of `tag`."""
        lines = []
        while True:
            line = self.line()
            assert line, f"EOF before the response to {tag!r}: {lines}"
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def cmd(self, tag: bytes, command: bytes) -> list[bytes]:
        self.send(tag + b" " + command + b"\r\n")
        return self.response(tag)

    def login(self, user: str, password: str = PASSWORD) -> None:
        lines = self.cmd(b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
        assert b"L OK " in lines[-1], lines

    def closed(self) -> bool:
        """True if the server closed the connection (which is then closed here too)."""
        try:
            eof = self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError, ssl.SSLError, OSError):
            eof = True
        if eof:
            self.sock.close()
        return eof


def tagged(lines: list[bytes]) -> bytes:
    return lines[-1]


# ---------------------------------------------------------------------------- logins, TLS


def test_imaplib_starttls_session(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(1), msg(2))
    client = imaplib.IMAP4(*server.address("imap"), timeout=10)
    # RFC 9051 §6.2.3: no passwords in clear; STARTTLS offered.
    assert {"IMAP4REV2", "IMAP4REV1", "STARTTLS", "LOGINDISABLED"} <= set(client.capabilities)
    assert not any(c.startswith("AUTH=") for c in client.capabilities)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login(user, PASSWORD)
    client.starttls(TLS)
    assert "STARTTLS" not in client.capabilities and "LOGINDISABLED" not in client.capabilities
    assert {"AUTH=PLAIN", "AUTH=SCRAM-SHA-256"} <= set(client.capabilities)
    typ, data = client.login(user, PASSWORD)
    assert typ == "OK" and b"[CAPABILITY IMAP4rev2" in data[0]
    assert client.select("INBOX") == ("OK", [b"2"])
    typ, data = client.fetch("1:*", "(UID FLAGS)")
    assert data == [b"1 (UID 1 FLAGS ())", b"2 (UID 2 FLAGS ())"]
    assert client.logout()[0] == "BYE"


def test_imaps_authenticate_plain_and_scram(server: Server, account: Callable[..., str]) -> None:
    user = account()
    client = imaplib.IMAP4_SSL(*server.address("imaps"), ssl_context=TLS, timeout=10)
    typ, _ = client.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
    assert typ == "OK"
    client.logout()
    client = imaplib.IMAP4_SSL(*server.address("imaps"), ssl_context=TLS, timeout=10)
    scram = ScramClient(user, PASSWORD)
    steps = iter([lambda _: scram.first(), scram.final, lambda data: verified(scram, data)])

    def verified(scram: ScramClient, data: bytes) -> bytes:
        assert scram.verify(data)
        return b""

    typ, _ = client.authenticate("SCRAM-SHA-256", lambda data: next(steps)(data))
    assert typ == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_sasl_ir_and_failed_logins(server: Server, account: Callable[..., str]) -> None:
    user = account()
    raw = Raw(server.address("imaps"), tls=True)
    wrong = base64.b64encode(f"\0{user}\0wrong".encode())
    lines = raw.cmd(b"a", b"AUTHENTICATE PLAIN " + wrong)  # RFC 4959 SASL-IR
    assert lines == [b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    assert raw.cmd(b"b", b"LOGIN nobody@local.test x")[-1].startswith(b"b NO [AUTH")
    lines = raw.cmd(b"c", b"LOGIN nobody@local.test y")
    assert lines[0].startswith(b"c NO [AUTHENTICATIONFAILED]")
    assert raw.line() == b"* BYE Too many failed logins\r\n"
    assert raw.closed()
    raw = Raw(server.address("imaps"), tls=True)
    right = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
    assert tagged(raw.cmd(b"a", b"AUTHENTICATE PLAIN " + right)).endswith(b"Logged in\r\n")


# ---------------------------------------------------------------------------- the commands


imaplib.Commands.setdefault("MOVE", ("SELECTED",))  # RFC 6851; imaplib 3.11 lacks it


def test_every_command_with_imaplib(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    user = account(msg(1), msg(2), msg(3, "needle in the body\r\n"))
    c = imaps(server, user)
    assert c.capability()[0] == "OK"
    assert c.noop()[0] == "OK"
    assert c.xatom("ID", "NIL")[0] == "OK"
    assert c.response("ID") == ("ID", [b'("name" "Homing")'])
    assert c.namespace() == ("OK", [b'(("" "/")) NIL NIL'])
    assert c.enable("IMAP4rev2")[0] == "OK"
    assert c.response("ENABLED") == ("ENABLED", [b"IMAP4rev2"])
    # Mailboxes.
    assert c.create("Projects/2024")[0] == "OK"
    typ, data = c.list()
    assert b'(\\HasChildren) "/" "Projects"' in data
    assert b'(\\HasNoChildren) "/" "Projects/2024"' in data
    assert b'(\\HasNoChildren \\Trash) "/" "Trash"' in data
    assert c.rename("Projects/2024", "Projects/Done")[0] == "OK"
    assert c.unsubscribe("Projects/Done")[0] == "OK"
    assert b"Projects/Done" not in b"".join(c.lsub()[1])
    assert c.subscribe("Projects/Done")[0] == "OK"
    assert b"Projects/Done" in b"".join(c.lsub()[1])
    assert c.delete("Projects/Done")[0] == "OK"
    # IMAP4rev2: UTF-8 names on the wire (imaplib sends str as ASCII: give it the octets).
    assert c.create('"Caf\u00e9 \u2615"'.encode())[0] == "OK"
    assert "Caf\u00e9 \u2615" in {m.name for m in store.list_mailboxes(_id(store, user))}
    typ, data = c.status("INBOX", "(MESSAGES UIDNEXT UNSEEN DELETED SIZE)")
    assert typ == "OK" and re.match(
        rb"INBOX \(MESSAGES 3 UIDNEXT 4 UNSEEN 3 DELETED 0 SIZE \d+\)", data[0]
    )
    # APPEND with APPENDUID.
    typ, data = c.append("INBOX", "(\\Flagged)", None, msg(4))
    assert typ == "OK" and re.fullmatch(rb"\[APPENDUID \d+ 4\] Append completed", data[0])
    # SELECT / EXAMINE.
    assert c.select("INBOX", readonly=True)[0] == "OK"
    typ, data = c.store("1", "+FLAGS", "\\Seen")
    assert typ == "NO"
    assert c.select("INBOX") == ("OK", [b"4"])
    assert c.check()[0] == "OK"
    # FETCH and UID FETCH.
    typ, data = c.fetch("1", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)")
    assert typ == "OK" and b'ENVELOPE ("Mon, 1 Jan 2024 10:00:00 +0000" "message 1"' in data[0]
    typ, data = c.uid("FETCH", "2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: message 2\r\n\r\n"
    typ, data = c.fetch("3", "(BODY[TEXT])")
    assert data[0][1] == b"body of message 3\r\nneedle in the body\r\n"
    assert b"\\Seen" in data[1]  # the implicit \Seen comes back as FLAGS
    typ, data = c.fetch("1", "(RFC822.HEADER)")
    assert data[0][1].startswith(b"From: Sender")
    # SEARCH and UID SEARCH: ESEARCH responses under IMAP4rev2 (imaplib files them apart).
    assert c.search(None, "UNSEEN")[0] == "OK"
    assert re.fullmatch(rb'\(TAG "\w+"\) ALL 1:2,4', c.response("ESEARCH")[1][0])
    assert c.uid("SEARCH", "BODY", "needle")[0] == "OK"
    assert c.response("ESEARCH")[1][0].endswith(b"UID ALL 3")
    assert c.search(None, "FLAGGED")[0] == "OK"
    assert c.response("ESEARCH")[1][0].endswith(b"ALL 4")
    # STORE and UID STORE.
    typ, data = c.store("1:2", "+FLAGS", "(\\Deleted)")
    assert data == [b"1 (FLAGS (\\Deleted))", b"2 (FLAGS (\\Deleted))"]
    typ, data = c.uid("STORE", "3", "-FLAGS", "(\\Seen)")
    assert data == [b"3 (UID 3 FLAGS ())"]
    # UID EXPUNGE only removes the named one; EXPUNGE the rest.
    assert c.uid("EXPUNGE", "2")[0] == "OK"
    assert c.response("EXPUNGE") == ("EXPUNGE", [b"2"])
    typ, data = c.expunge()
    assert data == [b"1"]
    assert sorted(mailbox_state(store, user)) == [3, 4]
    # COPY / UID COPY with COPYUID, MOVE / UID MOVE.
    typ, data = c.copy("1", "Trash")
    assert typ == "OK" and re.fullmatch(rb"\[COPYUID \d+ 3 1\] Copy completed", data[0])
    typ, data = c._simple_command("UID", "COPY", "4", "Archive")  # the tagged OK's code
    assert typ == "OK" and re.fullmatch(rb"\[COPYUID \d+ 4 1\] Copy completed", data[0])
    assert c.copy("1", "Nope")[1][0].startswith(b"[TRYCREATE]")
    typ, data = c.uid("MOVE", "4", "Archive")
    assert typ == "OK"
    typ, data = c._simple_command("MOVE", "1", "Junk")  # imaplib has no move()
    assert typ == "OK" and c.response("EXPUNGE") == ("EXPUNGE", [b"2", b"1"])  # UID MOVE 4, MOVE 1
    assert mailbox_state(store, user) == {}
    assert len(mailbox_state(store, user, "Archive")) == 2
    # CLOSE expunges, UNSELECT does not.
    assert c.select("Archive")[0] == "OK"
    c.store("1", "+FLAGS", "\\Deleted")
    assert c.unselect()[0] == "OK"
    assert len(mailbox_state(store, user, "Archive")) == 2
    assert c.select("Archive")[0] == "OK"
    assert c.close()[0] == "OK"
    assert len(mailbox_state(store, user, "Archive")) == 1
    assert c.logout()[0] == "BYE"


def _id(store: Store, user: str) -> int:
    acct = store.get_account(user)
    assert acct is not None
    return acct.id


def test_rename_inbox_moves_its_messages(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    user = account(msg(1), msg(2))
    c = imaps(server, user)
    assert c.rename("INBOX", '"Old mail"')[0] == "OK"  # imaplib does not quote
    assert mailbox_state(store, user) == {}
    assert len(mailbox_state(store, user, "Old mail")) == 2
    assert c.select("INBOX") == ("OK", [b"0"])
    c.logout()


def test_imap4rev1_names_are_modified_utf7(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    user = account()
    c = imaps(server, user)
    assert c.create("&ZeVnLIqe-")[0] == "OK"  # RFC 3501 §5.1.3 example: 日本語
    assert "\u65e5\u672c\u8a9e" in {m.name for m in store.list_mailboxes(_id(store, user))}
    assert b'"&ZeVnLIqe-"' in b"\n".join(c.list()[1])
    c.logout()


def test_two_sessions_see_each_others_changes(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    user = account(msg(1), msg(2), msg(3))
    a, b = Raw(server.address("imaps"), tls=True), Raw(server.address("imaps"), tls=True)
    a.login(user)
    b.login(user)
    a.cmd(b"s", b"SELECT INBOX")
    b.cmd(b"s", b"SELECT INBOX")
    assert tagged(a.cmd(b"1", b"STORE 2 +FLAGS.SILENT (\\Deleted \\Flagged)")) == (
        b"1 OK STORE completed\r\n"
    )
    # B hears of the flags on its next command; by number, no EXPUNGE while FETCH runs.
    a.cmd(b"2", b"EXPUNGE")
    lines = b.cmd(b"f", b"FETCH 1:3 (UID)")
    assert b"* 2 EXPUNGE\r\n" not in lines
    assert lines[-1].startswith(b"f NO [EXPUNGEISSUED]")
    lines = b.cmd(b"n", b"NOOP")
    assert lines == [b"* 2 EXPUNGE\r\n", b"n OK NOOP completed\r\n"]
    # New mail delivered from another process: heard on NOOP.
    deliver(store, user, msg(4))
    lines = b.cmd(b"n2", b"NOOP")
    assert b"* 3 EXISTS\r\n" in lines


def test_idle_hears_smtp_delivery_within_a_second(
    server: Server, account: Callable[..., str]
) -> None:
    user = account(msg(1))
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    raw.cmd(b"s", b"SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    assert raw.line() == b"+ idling\r\n"
    start = time.monotonic()
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.sendmail("sender@remote.example", [user], msg(2))
    sent = time.monotonic()
    assert raw.line() == b"* 2 EXISTS\r\n"
    heard = time.monotonic()
    assert heard - sent < 1.0, f"IDLE heard the delivery {heard - sent:.3f}s after it"
    assert heard - start < 5.0
    assert raw.line() == b"* 1 RECENT\r\n"
    raw.send(b"DONE\r\n")
    assert raw.line() == b"i OK IDLE completed\r\n"
    lines = raw.cmd(b"f", b"FETCH 2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"\\Recent" in lines[0] and b"Subject: message 2" in lines[0]


# ---------------------------------------------------------------------------- hostile input


def test_toobig_literals(server: Server, account: Callable[..., str]) -> None:
    user = account()
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    # Synchronising and over the APPENDLIMIT: BAD [TOOBIG], and no "+": nothing is sent.
    lines = raw.cmd(b"a", b"APPEND INBOX {999999999999}")
    assert lines == [b"a BAD [TOOBIG] Literal too large\r\n"]
    assert tagged(raw.cmd(b"b", b"NOOP")) == b"b OK NOOP completed\r\n"
    # Non-synchronising and over the limit: it cannot be skipped; BYE [TOOBIG], closed.
    raw.send(b"c APPEND INBOX {999999999999+}\r\nxxxx")
    assert raw.line() == b"* BYE [TOOBIG] Literal too large\r\n"
    assert raw.closed()


def test_deep_nesting_gets_bad(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(1))
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    raw.cmd(b"s", b"SELECT INBOX")
    lines = raw.cmd(b"a", b"SEARCH " + b"(" * 100_000 + b"ALL" + b")" * 100_000)
    assert tagged(lines).startswith(b"a BAD ")
    lines = raw.cmd(b"b", b"SEARCH " + b"OR ALL " * 100_000 + b"ALL")
    assert tagged(lines).startswith(b"b BAD ")
    assert raw.cmd(b"c", b"SEARCH NOT NOT ALL") == [b"* SEARCH 1\r\n", b"c OK SEARCH completed\r\n"]


def test_uid_fetch_of_the_whole_range_is_cheap(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(1), msg(2))
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    raw.cmd(b"s", b"SELECT INBOX")
    start = time.monotonic()
    for i in range(20):
        lines = raw.cmd(b"u%d" % i, b"UID FETCH 1:4294967295 (UID)")
        assert len(lines) == 3
    assert time.monotonic() - start < 5.0  # about a millisecond each, not 2^32 of anything
    lines = raw.cmd(b"v", b"UID FETCH 1:4294967295,1:4294967295 (FLAGS)")
    assert len(lines) == 3


@pytest.mark.parametrize(
    "command",
    [b"FETCH 0 FLAGS", b"FETCH 1:-1 FLAGS", b"FETCH 4294967296 FLAGS", b"UID FETCH 0:1 FLAGS",
     b"FETCH 3 FLAGS", b"STORE 9 +FLAGS (\\Seen)"],
)  # fmt: skip
def test_bad_message_numbers(server: Server, account: Callable[..., str], command: bytes) -> None:
    user = account(msg(1), msg(2))
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    raw.cmd(b"s", b"SELECT INBOX")
    assert raw.cmd(b"a", command)[0].startswith(b"a BAD ")


def test_commands_before_login(server: Server) -> None:
    raw = Raw(server.address("imaps"), tls=True)
    for tag, command in ((b"a", b"SELECT INBOX"), (b"b", b"FETCH 1:* (BODY[])")):
        assert raw.cmd(tag, command) == [tag + b" BAD Log in first\r\n"]  # no data at all
    assert raw.cmd(b"c", b'LIST "" *') == [b"c BAD Log in first\r\n"]
    assert raw.line() == b"* BYE Too many invalid commands\r\n"
    assert raw.closed()


def test_twenty_bad_commands_after_login(server: Server, account: Callable[..., str]) -> None:
    user = account()
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    for i in range(19):
        assert raw.cmd(b"x%d" % i, b"FROB") == [b"x%d BAD Unknown command\r\n" % i]
    assert raw.cmd(b"y", b"FROB") == [b"y BAD Unknown command\r\n"]
    assert raw.line() == b"* BYE Too many invalid commands\r\n"
    assert raw.closed()


def test_starttls_pipelining_is_discarded(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(1))
    raw = Raw(server.address("imap"))
    # CVE-2011-0411: commands sent in clear after STARTTLS must never run inside TLS.
    raw.send(b"a STARTTLS\r\nb LOGIN " + user.encode() + b" x\r\nc LOGOUT\r\n")
    assert raw.line() == b"a OK Begin TLS negotiation now\r\n"
    raw.sock = TLS.wrap_socket(raw.sock)
    OPEN.append(raw.sock)
    lines = raw.cmd(b"d", b"NOOP")
    assert lines == [b"d OK NOOP completed\r\n"]


@pytest.mark.parametrize(
    "name",
    [b'".."', b'"../../etc"', b'"/etc/passwd"', b'"~root"', b'"a//b"', b'"x/./y"',
     b'"' + b"x" * 256 + b'"', b"{4+}\r\na\x01\x7fb", b'"&Jjo!"', b'"&AGE-"'],
)  # fmt: skip
def test_mailbox_name_attacks(
    server: Server, store: Store, account: Callable[..., str], name: bytes
) -> None:
    user = account()
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    before = sorted(p.name for p in server.data.iterdir())
    for tag, command in ((b"a", b"CREATE "), (b"b", b"SELECT "), (b"c", b"RENAME INBOX ")):
        lines = raw.cmd(tag, command + name)
        assert lines[-1].startswith(tag + b" NO [CANNOT] "), lines
    assert raw.cmd(b"e", b"ENABLE IMAP4rev2")[-1] == b"e OK ENABLE completed\r\n"
    lines = raw.cmd(b"d", b"CREATE " + name)
    assert lines[-1].startswith(b"d NO [CANNOT] ") or name in (b'"&Jjo!"', b'"&AGE-"')
    # Only the defaults exist, and the data directory is untouched.
    names = {m.name for m in store.list_mailboxes(_id(store, user))}
    assert names <= {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "&Jjo!", "&AGE-"}
    assert sorted(p.name for p in server.data.iterdir()) == before


def test_invalid_modified_utf7_is_no(server: Server, account: Callable[..., str]) -> None:
    user = account()
    c = imaps(server, user)
    typ, data = c.create("&Jjo!")
    assert typ == "NO" and data == [b"[CANNOT] Mailbox name is not valid modified UTF-7"]
    c.logout()


# ---------------------------------------------------------------------------- consistency


class Viewer(Raw):
    """A session that keeps its own sequence-number map from what the server says, and
    checks every FETCH response against it."""

    def __init__(self, address: tuple[str, int], user: str) -> None:
        super().__init__(address, tls=True)
        self.login(user)
        self.uids: list[int] = []
        self.flags: dict[int, set[str]] = {}
        self.tags = itertools.count()
        self.run(b"SELECT INBOX")
        self.run(b"FETCH 1:* (UID FLAGS)")

    def run(self, command: bytes) -> bytes:
        """Send a command, apply its untagged responses in order; the tagged line."""
        tag = b"t%d" % next(self.tags)
        for line in self.cmd(tag, command):
            self.apply(line)
            if line.startswith(tag + b" "):
                assert b" BAD " not in line, line
                return line
        raise AssertionError("no tagged response")

    def apply(self, line: bytes) -> None:
        if m := re.match(rb"\* (\d+) EXPUNGE", line):
            del self.uids[int(m.group(1)) - 1]
        elif m := re.match(rb"\* (\d+) EXISTS", line):
            count = int(m.group(1))
            assert count >= len(self.uids), line
            self.uids += [0] * (count - len(self.uids))  # UIDs learnt by the next FETCH
        elif m := re.match(rb"\* (\d+) FETCH \((.*)\)\r\n", line, re.DOTALL):
            seq, items = int(m.group(1)), m.group(2)
            uid = re.search(rb"UID (\d+)", items)
            if uid is not None:
                if self.uids[seq - 1] == 0:
                    self.uids[seq - 1] = int(uid.group(1))
                assert self.uids[seq - 1] == int(uid.group(1)), (seq, line, self.uids)
            flags = re.search(rb"FLAGS \(([^)]*)\)", items)
            if flags is not None and self.uids[seq - 1]:
                self.flags[self.uids[seq - 1]] = set(flags.group(1).decode().split())

    def learn(self) -> None:
        unknown = [i + 1 for i, uid in enumerate(self.uids) if uid == 0]
        if unknown:
            self.run(b"FETCH %d:%d (UID FLAGS)" % (unknown[0], unknown[-1]))


def test_concurrent_sessions_stay_consistent(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    user = account(*(msg(i) for i in range(30)))
    errors: list[BaseException] = []
    stop = threading.Event()

    def session(seed: int) -> None:
        rng = random.Random(seed)
        viewer = Viewer(server.address("imaps"), user)
        try:
            for _ in range(40):
                viewer.learn()
                count = len(viewer.uids)
                if count == 0:
                    viewer.run(b"NOOP")
                    continue
                n = rng.randint(1, count)
                choice = rng.random()
                if choice < 0.3:
                    viewer.run(b"STORE %d +FLAGS (\\Flagged)" % n)
                elif choice < 0.45:
                    viewer.run(b"STORE %d +FLAGS.SILENT (\\Deleted)" % n)
                elif choice < 0.55:
                    viewer.run(b"EXPUNGE")
                elif choice < 0.65:
                    viewer.run(b"COPY %d INBOX" % n)
                elif choice < 0.7:
                    viewer.run(b"MOVE %d Archive" % n)
                elif choice < 0.8:
                    viewer.run(b"FETCH %d:%d (UID FLAGS)" % (max(1, n - 3), n))
                elif choice < 0.9:
                    viewer.run(b"SEARCH ALL")
                else:
                    viewer.run(b"NOOP")
            viewer.run(b"NOOP")
            viewer.learn()
            viewer.run(b"FETCH 1:* (UID FLAGS)")
            stop.wait(timeout=30)  # every session finishes before the final comparison
            viewer.run(b"NOOP")
            viewer.learn()
            viewer.run(b"FETCH 1:* (UID FLAGS)")
            truth = mailbox_state(store, user)
            assert viewer.uids == sorted(truth)
            for uid, flags in truth.items():
                assert viewer.flags[uid] - {"\\Recent"} == set(flags), uid
        except BaseException as err:  # reported from the main thread
            errors.append(err)

    def smtp() -> None:
        try:
            with smtplib.SMTP(*server.smtp, timeout=10) as client:
                for i in range(15):
                    client.sendmail("sender@remote.example", [user], msg(100 + i))
                    time.sleep(0.01)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=session, args=(seed,)) for seed in range(4)]
    threads.append(threading.Thread(target=smtp))
    for t in threads:
        t.start()
    threads[-1].join(timeout=60)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    assert store.integrity_check() == []


# ---------------------------------------------------------------------------- timers


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IMAPService]:
    """The IMAP service in this process over MemoryStreams: a 0.3 s idle timeout, and IDLE
    polls and keep-alives every 0.1 s."""
    monkeypatch.setattr(imapd_session, "POLL_INTERVAL", 0.1)
    monkeypatch.setattr(imapd_session, "KEEPALIVE_INTERVAL", 0.1)
    store = Store.open(tmp_path / "homing.db", create=True)
    store.add_domain(DOMAIN)
    store.add_account(f"t@{DOMAIN}", make_credentials(PASSWORD, hasher=FAST))
    auth = Authenticator(store)
    service = IMAPService(store, auth, None, idle_timeout=0.3, max_message_size=1 << 20)
    yield service
    service.close()
    auth.close()
    store.close()


async def _logged_in(service: IMAPService) -> tuple[MemoryStream, asyncio.Task[None]]:
    stream = MemoryStream("imaps", peer=("127.0.0.1", 40000), tls=DEFAULT_TLS_INFO)
    task = asyncio.create_task(service.handler(implicit_tls=True)(stream))
    await stream.read_output(until=b"ready\r\n")
    stream.feed(b'a LOGIN t@%s "%s"\r\n' % (DOMAIN.encode(), PASSWORD.encode()))
    assert (await stream.read_output(until=b"\r\n")).endswith(b"Logged in\r\n")
    return stream, task


async def test_idle_timeout_logs_out(service: IMAPService) -> None:
    stream, task = await _logged_in(service)
    start = time.monotonic()
    assert await stream.read_output(until=b"\r\n") == b"* BYE Autologout; idle for too long\r\n"
    assert 0.25 < time.monotonic() - start < 2
    await asyncio.wait_for(task, 5)
    assert stream.closed


async def test_idle_is_not_timed_out_and_hears_other_processes(service: IMAPService) -> None:
    stream, task = await _logged_in(service)
    stream.feed(b"s SELECT INBOX\r\ni IDLE\r\n")
    await stream.read_output(until=b"+ idling\r\n")
    # A delivery by another Store object publishes nothing here: the IDLE poll finds it.
    other = Store.open(service.store.path)
    try:
        deliver(other, f"t@{DOMAIN}", msg(1))
    finally:
        other.close()
    out = await stream.read_output(until=b"* 1 EXISTS\r\n", timeout=2)
    await stream.read_output(until=b"* OK Still here\r\n", timeout=2)  # keep-alives
    await asyncio.sleep(0.5)  # longer than the idle timeout
    assert b"BYE" not in out + stream.take_output()
    stream.feed(b"DONE\r\n")
    assert await stream.read_output(until=b"i OK IDLE completed\r\n")
    # Shutdown: a session waiting for a command says BYE at once.
    service.drain()
    assert (
        await stream.read_output(until=b"\r\n") == b"* BYE [UNAVAILABLE] Server shutting down\r\n"
    )
    await asyncio.wait_for(task, 5)
