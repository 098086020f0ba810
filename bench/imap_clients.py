"""IMAP clients for bench/harness.py: timed mailbox reads with imaplib, and many idle sessions.

- `MailboxReader` is the Python standard library's imaplib (what the issue's reference
  figures for Dovecot were measured with): SELECT, FETCH of the whole mailbox, SEARCH, each
  answer checked (every message there, every body its full size, every planted word found).
- `hold_idle` opens many sessions with a small asyncio client (LOGIN, SELECT INBOX, IDLE,
  until the server's "+" continuation, RFC 2177), calls back while they all idle, then ends
  them. Bounded in time: every step has a timeout and the whole a deadline.

Only 127.0.0.1 is used. TLS, when asked for, is TLS 1.2+ without certificate checks (the
servers use throwaway self-signed certificates).
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pop3_retr

NEEDLE = "needle"
NEEDLE_EVERY = 50  # one message in 50 has the word in its body
ENVELOPE_ITEMS = "(UID FLAGS RFC822.SIZE ENVELOPE)"
T = TypeVar("T")


def message(n: int, size: int) -> bytes:
    """bench/pop3_retr.py's message `n` of about `size` bytes; every NEEDLE_EVERY-th one has
    NEEDLE as a word in the body (nowhere else has it)."""
    data = pop3_retr.make_message(n, size)
    if n % NEEDLE_EVERY == 0:
        head, body = data.split(b"\r\n\r\n", 1)
        word = f"{NEEDLE} ".encode()
        data = head + b"\r\n\r\n" + word + body[len(word) :]
    return data


def needles(count: int) -> int:
    """How many of messages 0..count-1 have the NEEDLE."""
    return len(range(0, count, NEEDLE_EVERY))


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_FETCH_START = re.compile(rb"\d+ \(")


class MailboxReader:
    """One logged-in imaplib session on 127.0.0.1:`port`."""

    def __init__(self, port: int, *, tls: bool, user: str, password: str) -> None:
        self.conn: imaplib.IMAP4
        if tls:
            self.conn = imaplib.IMAP4_SSL(
                "127.0.0.1", port, ssl_context=client_context(), timeout=120
            )
        else:
            self.conn = imaplib.IMAP4("127.0.0.1", port, timeout=120)
        try:
            self._ok(self.conn.login(user, password), "LOGIN")
        except BaseException:
            self.conn.shutdown()
            raise

    @staticmethod
    def _ok(answer: tuple[str, list[Any]], what: str) -> list[Any]:
        status, data = answer
        if status != "OK":
            raise RuntimeError(f"{what}: {status} {data!r}")
        return data

    def cipher(self) -> str:
        """The TLS cipher suite in use, or "none"."""
        sock = self.conn.sock
        found = sock.cipher() if isinstance(sock, ssl.SSLSocket) else None
        return f"{found[1]} {found[0]}" if found else "none"

    def select(self, expected: int) -> None:
        """SELECT INBOX, which must hold `expected` messages."""
        data = self._ok(self.conn.select("INBOX"), "SELECT")
        exists = int(data[0] or b"0")
        if exists != expected:
            raise RuntimeError(f"INBOX holds {exists} messages, expected {expected}")

    def fetch_envelopes(self, expected: int) -> None:
        """FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE): one answer per message."""
        data = self._ok(self.conn.fetch("1:*", ENVELOPE_ITEMS), "FETCH")
        answers = sum(
            1
            for item in data
            if isinstance(item, tuple)
            or (isinstance(item, bytes) and _FETCH_START.match(item) and b"ENVELOPE" in item)
        )
        if answers != expected:
            raise RuntimeError(f"FETCH ENVELOPE answered for {answers} of {expected} messages")

    def select_and_fetch_envelopes(self, expected: int) -> None:
        self.select(expected)
        self.fetch_envelopes(expected)

    def fetch_bodies(self, expected: int, size: int) -> int:
        """FETCH 1:* BODY.PEEK[]: every message, each at least `size` - 2% long (line ends
        and headers differ a little between the stores). Returns the bytes received."""
        data = self._ok(self.conn.fetch("1:*", "BODY.PEEK[]"), "FETCH")
        bodies = [item[1] for item in data if isinstance(item, tuple)]
        if len(bodies) != expected:
            raise RuntimeError(f"FETCH BODY[] answered for {len(bodies)} of {expected} messages")
        short = [len(body) for body in bodies if len(body) < size * 0.98]
        if short:
            raise RuntimeError(f"{len(short)} bodies shorter than {size} bytes: {short[:5]}")
        return sum(len(body) for body in bodies)

    def search_text(self, word: str, expected: int) -> None:
        """SEARCH TEXT "word", which must find `expected` messages."""
        data = self._ok(self.conn.search(None, "TEXT", f'"{word}"'), "SEARCH")
        found = len((data[0] or b"").split())
        if found != expected:
            raise RuntimeError(f'SEARCH TEXT "{word}" found {found}, expected {expected}')

    def close(self) -> None:
        try:
            self.conn.logout()
        except (OSError, imaplib.IMAP4.error):
            self.conn.shutdown()


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# --- idle sessions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleRun:
    port: int
    tls: bool
    users: Sequence[str]  # one session each
    password: str
    concurrency: int = 25  # sessions being opened at the same time
    step_timeout: float = 60.0
    seconds: float = 300.0  # the whole run, measurement included


async def _line(reader: asyncio.StreamReader, timeout: float) -> bytes:
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line.endswith(b"\n"):
        raise ConnectionError(f"connection closed after {line!r}")
    return line


async def _tagged(reader: asyncio.StreamReader, tag: bytes, timeout: float) -> None:
    """Read until the tagged answer, which must be OK (untagged lines here carry no literal:
    LOGIN and SELECT answers)."""
    while True:
        line = await _line(reader, timeout)
        if line.startswith(tag + b" "):
            if not line[len(tag) + 1 :].upper().startswith(b"OK"):
                raise RuntimeError(f"{tag.decode()}: {line!r}")
            return


async def _open_idle(
    run: IdleRun, user: str, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", run.port, ssl=context), run.step_timeout
    )
    try:
        greeting = await _line(reader, run.step_timeout)
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting: {greeting!r}")
        writer.write(f'a LOGIN "{user}" "{run.password}"\r\n'.encode())
        await _tagged(reader, b"a", run.step_timeout)
        writer.write(b"b SELECT INBOX\r\n")
        await _tagged(reader, b"b", run.step_timeout)
        writer.write(b"c IDLE\r\n")
        answer = await _line(reader, run.step_timeout)
        if not answer.startswith(b"+"):
            raise RuntimeError(f"IDLE: {answer!r}")
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _hold_idle(run: IdleRun, measure: Callable[[], T]) -> T:
    context = client_context() if run.tls else None
    gate = asyncio.Semaphore(run.concurrency)
    sessions: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one(user: str) -> None:
        async with gate:
            sessions.append(await _open_idle(run, user, context))

    try:
        async with asyncio.timeout(run.seconds):
            await asyncio.gather(*(one(user) for user in run.users))
        return measure()
    finally:
        for _, writer in sessions:
            if not writer.is_closing():
                writer.write(b"DONE\r\nd LOGOUT\r\n")
                writer.close()
        await asyncio.wait_for(
            asyncio.gather(*(w.wait_closed() for _, w in sessions), return_exceptions=True),
            run.step_timeout,
        )


def hold_idle(run: IdleRun, measure: Callable[[], T]) -> T:
    """Open one session per user, each logged in, INBOX selected, in IDLE; with all of them
    idling call `measure()`, then end them all. Returns what `measure` returned."""
    return asyncio.run(_hold_idle(run, measure))
