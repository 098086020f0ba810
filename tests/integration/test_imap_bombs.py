"""MIME bombs delivered over SMTP to a real `homing serve`, then read over IMAP (993).

Three messages built to hurt a naive server: multiparts nested 10,000 deep, one multipart
of 100,000 parts, and 20 MB of header fields. Each must be accepted, and every IMAP answer
about it (BODYSTRUCTURE, the header, sections deep inside it and past the parser's caps,
SEARCH TEXT over all of it) must come within `BOUND` seconds, while the server's resident
memory grows by less than `RSS_BOUND`. The body structure computed at delivery caps nesting
at `MAX_DEPTH` (100) and parts at `MAX_PARTS` (10,000), as Dovecot does, and that is what
FETCH reports. SEARCH over the 20 MB header peaks at less than `SEARCH_PEAK` times the
message size above the server's resident size: the message as read from the store and
copies of it, never an object per header field.
"""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from homing.mail.mime import MAX_DEPTH, MAX_PARTS, parse_message
from homing.store import NewMessage, Store, make_credentials
from tests.integration.conftest import DOMAIN, Server, make_config

#: Seconds any one answer may take (generous: this is a 2-core machine running other tests).
BOUND = 10.0
#: How much the server's VmRSS may grow while a bomb is delivered and read.
RSS_BOUND = 200 * 1024 * 1024
#: SEARCH TEXT's peak above the resident size, in message sizes (about 2 here: the bytes
#: read from the store and the session's prefix + body; the old extraction took ~14).
SEARCH_PEAK = 4
PASSWORD = "bomb secret"
FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
TLS = ssl.create_default_context()
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE


# ----------------------------------------------------------------------------------- bombs


def _head(name: str) -> bytes:
    return (
        f"From: Mallory <mallory@remote.example>\r\nTo: victim-{name}@{DOMAIN}\r\n"
        f"Subject: bomb {name}\r\nMessage-ID: <{name}@remote.example>\r\nMIME-Version: 1.0\r\n"
    ).encode()


def deep(levels: int = 10_000) -> bytes:
    """Multiparts nested `levels` deep, a text part at the bottom."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(levels)))
    return _head("deep") + opening + b"Content-Type: text/plain\r\n\r\nbottom\r\n" + closing


def wide(parts: int = 100_000) -> bytes:
    """One multipart of `parts` tiny text parts."""
    return (
        _head("wide")
        + b'Content-Type: multipart/mixed; boundary="w"\r\n\r\n'
        + b"--w\r\n\r\nx\r\n" * parts
        + b"--w--\r\n"
    )


def headers(size: int = 20 * 1024 * 1024) -> bytes:
    """`size` octets of header fields (lines well under SMTP's 1,000), then a short body."""
    line = b"X-Filler: " + b"h" * 88 + b"\r\n"
    return _head("headers") + line * (size // len(line)) + b"\r\nthe body\r\n"


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("bombs") / "s"
    base.mkdir()
    data, config = make_config(
        base,
        {
            "listen": {"smtp": ["127.0.0.1:0"], "imaps": ["127.0.0.1:0"]},
            "limits": {"message_size": 64 * 1024 * 1024},
        },
    )
    s = Server(data=data, config=config, log_path=base / "serve.log")
    s.start()
    yield s
    if s.proc is not None:
        s.stop(signal.SIGKILL)


def add_account(server: Server, address: str) -> None:
    with Store.open(server.data / "homing.db") as store:
        store.add_account(address, make_credentials(PASSWORD, hasher=FAST, scram_iterations=4096))


def status(server: Server) -> dict[str, int]:
    """VmRSS and VmHWM of the server process, in bytes."""
    assert server.proc is not None
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{server.proc.pid}/status").read_text().split("\n")
        if ":" in line
    )
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


def reset_peak(server: Server) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux clear_refs "5"); False if denied."""
    assert server.proc is not None
    try:
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Client:
    """A byte-level IMAP client over TLS that times each command."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = TLS.wrap_socket(socket.create_connection(address, timeout=2 * BOUND))
        self.buf = bytearray()
        self.tags = iter(range(1, 1_000_000))
        assert self.line().startswith(b"* OK ")

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        assert chunk, "the server closed the connection"
        self.buf += chunk

    def line(self) -> bytes:
        """One response line, with the literals it announces inlined."""
        out = bytearray()
        while True:
            while (end := self.buf.find(b"\r\n")) < 0:
                self._fill()
            line = bytes(self.buf[: end + 2])
            del self.buf[: end + 2]
            out += line
            literal = re.search(rb"\{(\d+)\}\r\n$", line)
            if literal is None:
                return bytes(out)
            size = int(literal.group(1))
            while len(self.buf) < size:
                self._fill()
            out += self.buf[:size]
            del self.buf[:size]

    def run(self, command: bytes) -> tuple[list[bytes], float]:
        """The response lines to `command` (tagged OK checked) and how long they took."""
        tag = b"t%d" % next(self.tags)
        started = time.monotonic()
        self.sock.sendall(tag + b" " + command + b"\r\n")
        lines = [self.line()]
        while not lines[-1].startswith(tag + b" "):
            lines.append(self.line())
        elapsed = time.monotonic() - started
        assert lines[-1].startswith(tag + b" OK "), (command[:80], lines[-1])
        return lines[:-1], elapsed


def literal_of(response: bytes, item: bytes) -> bytes:
    """The literal following `item` (e.g. b"BODY[HEADER]") in one FETCH response."""
    at = response.index(item + b" {")
    start = response.index(b"}\r\n", at) + 3
    size = int(response[at + len(item) + 2 : start - 3])
    return response[start : start + size]


# ------------------------------------------------------------------------------------ tests


def deliver_and_open(server: Server, name: str, message: bytes) -> Client:
    """Send `message` to a new account over SMTP (within BOUND), log in over IMAPS and
    select INBOX, where it is message 1."""
    address = f"victim-{name}@{DOMAIN}"
    add_account(server, address)
    started = time.monotonic()
    with smtplib.SMTP(*server.smtp, local_hostname="mta.remote.example", timeout=2 * BOUND) as smtp:
        refused = smtp.sendmail("mallory@remote.example", [address], message)
    assert refused == {}
    assert time.monotonic() - started < BOUND
    client = Client(server.address("imaps"))
    client.run(b'LOGIN "%s" "%s"' % (address.encode(), PASSWORD.encode()))
    lines, _ = client.run(b"SELECT INBOX")
    assert b"* 1 EXISTS\r\n" in lines
    return client


def fetch(client: Client, items: bytes) -> bytes:
    lines, elapsed = client.run(b"FETCH 1 (" + items + b")")
    assert elapsed < BOUND, (items[:60], elapsed)
    (response,) = lines
    return response


def search_text(client: Client) -> list[bytes]:
    """SEARCH TEXT for a string that is nowhere: the worst case, every octet looked at."""
    lines, elapsed = client.run(b'SEARCH TEXT "nowhere-in-this-message"')
    assert elapsed < BOUND, elapsed
    return lines


def search(client: Client, criteria: bytes) -> list[bytes]:
    lines, elapsed = client.run(b"SEARCH " + criteria)
    assert elapsed < BOUND, (criteria, elapsed)
    return lines


def sections(depth: int) -> bytes:
    return b".".join([b"1"] * depth)


def test_deeply_nested_multiparts(server: Server) -> None:
    message = deep()
    before = status(server)["VmRSS"]
    client = deliver_and_open(server, "deep", message)
    try:
        structure = fetch(client, b"BODYSTRUCTURE")
        # Levels 0 to MAX_DEPTH - 1 are multiparts; the one at MAX_DEPTH is a leaf typed
        # MULTIPART/MIXED holding everything below it, unparsed.
        assert structure.count(b'"MIXED" ("BOUNDARY" "b') == MAX_DEPTH + 1
        leaf = b'("MULTIPART" "MIXED" ("BOUNDARY" "b%d") NIL NIL "7BIT" ' % MAX_DEPTH
        assert structure.startswith(b"* 1 FETCH (BODYSTRUCTURE " + b"(" * MAX_DEPTH + leaf)
        assert len(structure) < 64 * 1024
        header = literal_of(fetch(client, b"BODY.PEEK[HEADER]"), b"BODY[HEADER]")
        assert b"Subject: bomb deep\r\n" in header and header.endswith(b"\r\n\r\n")
        # The deepest part the structure has holds everything below it, unparsed.
        bottom = literal_of(
            fetch(client, b"BODY.PEEK[%s]" % sections(MAX_DEPTH)), b"BODY[%s]" % sections(MAX_DEPTH)
        )
        assert bottom.startswith(b"--b%d\r\n" % MAX_DEPTH) and b"bottom" in bottom
        for depth in (MAX_DEPTH + 1, 5_000):  # past the cap: no such part, empty
            section = sections(depth)
            assert (
                literal_of(fetch(client, b"BODY.PEEK[%s]" % section), b"BODY[%s]" % section) == b""
            )
        assert search_text(client) == [b"* SEARCH\r\n"]
        # The text at the bottom lies below the MIME parser's depth cap: not searched.
        assert search(client, b"BODY bottom") == [b"* SEARCH\r\n"]
        assert search(client, b'TEXT "bomb deep"') == [b"* SEARCH 1\r\n"]
    finally:
        client.close()
    assert status(server)["VmRSS"] - before < RSS_BOUND


def test_hundred_thousand_parts(server: Server) -> None:
    message = wide()
    before = status(server)["VmRSS"]
    client = deliver_and_open(server, "wide", message)
    try:
        structure = fetch(client, b"BODYSTRUCTURE")
        # The multipart and MAX_PARTS - 1 children: the rest stay inside the last one's
        # parent, unparsed.
        assert structure.count(b'("TEXT" "PLAIN" ') == MAX_PARTS - 1
        assert literal_of(fetch(client, b"BODY.PEEK[HEADER]"), b"BODY[HEADER]").endswith(
            b'Content-Type: multipart/mixed; boundary="w"\r\n\r\n'
        )
        last = MAX_PARTS - 1
        assert literal_of(fetch(client, b"BODY.PEEK[%d]" % last), b"BODY[%d]" % last) == b"x"
        for part in (MAX_PARTS, 50_000, 100_000):
            assert literal_of(fetch(client, b"BODY.PEEK[%d]" % part), b"BODY[%d]" % part) == b""
        deep_section = b"1." + sections(200)  # a leaf has no subparts
        assert (
            literal_of(fetch(client, b"BODY.PEEK[%s]" % deep_section), b"BODY[%s]" % deep_section)
            == b""
        )
        assert search_text(client) == [b"* SEARCH\r\n"]
        assert search(client, b"BODY x") == [b"* SEARCH 1\r\n"]  # the text parts
    finally:
        client.close()
    assert status(server)["VmRSS"] - before < RSS_BOUND


def test_twenty_megabytes_of_header(server: Server) -> None:
    message = headers()
    header_size = message.index(b"\r\n\r\n") + 4
    before = status(server)["VmRSS"]
    peak_known = reset_peak(server)
    client = deliver_and_open(server, "headers", message)
    try:
        structure = fetch(client, b"BODYSTRUCTURE ENVELOPE")
        assert b'"bomb headers"' in structure and len(structure) < 4096
        header = literal_of(fetch(client, b"BODY.PEEK[HEADER]"), b"BODY[HEADER]")
        # The stored trace fields (Return-Path, Received, ...) come first.
        assert header.endswith(message[:header_size]) and len(header) < header_size + 4096
        fields = literal_of(
            fetch(client, b"BODY.PEEK[HEADER.FIELDS (SUBJECT)]"), b"BODY[HEADER.FIELDS (SUBJECT)]"
        )
        assert fields == b"Subject: bomb headers\r\n\r\n"
        assert literal_of(fetch(client, b"BODY.PEEK[TEXT]"), b"BODY[TEXT]") == b"the body\r\n"
        for section in (b"1", sections(MAX_DEPTH)):  # not multipart: 1 is the body, 1.1... none
            expected = b"the body\r\n" if section == b"1" else b""
            assert (
                literal_of(fetch(client, b"BODY.PEEK[%s]" % section), b"BODY[%s]" % section)
                == expected
            )
        # Reading the message out streams it: the server never holds it many times over.
        if peak_known:
            assert status(server)["VmHWM"] - before < RSS_BOUND
        assert search_text(client) == [b"* SEARCH\r\n"]
    finally:
        client.close()
    assert status(server)["VmRSS"] - before < RSS_BOUND


def test_search_text_peak_memory_on_twenty_megabytes_of_header(server: Server) -> None:
    address = f"victim-search@{DOMAIN}"
    add_account(server, address)
    message = headers()
    with Store.open(server.data / "homing.db") as store:
        account = store.get_account(address)
        assert account is not None
        new = NewMessage(account.id, "INBOX", b"", message, parse_message(message))
        store.deliver([new]).result(timeout=BOUND)
    client = Client(server.address("imaps"))
    try:
        client.run(b'LOGIN "%s" "%s"' % (address.encode(), PASSWORD.encode()))
        client.run(b"SELECT INBOX")
        before = status(server)["VmRSS"]
        if not reset_peak(server):
            pytest.skip("cannot reset the server's VmHWM (/proc/PID/clear_refs)")
        assert search_text(client) == [b"* SEARCH\r\n"]
        peak = status(server)["VmHWM"] - before
        # What is there is found, each within BOUND seconds: the filler fields, the subject,
        # the body after 20 MB of header.
        for criteria in (
            b'TEXT "bomb headers"',
            b'HEADER X-Filler "HHHH"',
            b"SUBJECT bomb",
            b'BODY "the body"',
            b'OR SUBJECT nowhere FROM "mallory@remote"',
        ):
            assert search(client, criteria) == [b"* SEARCH 1\r\n"], criteria
        assert search(client, b'HEADER X-Filler "hhhhx"') == [b"* SEARCH\r\n"]
    finally:
        client.close()
    assert peak < min(RSS_BOUND, SEARCH_PEAK * len(message)), peak
