"""One accepted connection as a `Stream`: read, write, STARTTLS, close.

`Stream` is the interface every session (smtpd, imapd, pop3d) is written against;
`TCPStream` is the real thing, an `asyncio.Protocol` that is its own stream (one object
per connection, no StreamReader/StreamWriter layer), and `homing.net.memory.MemoryStream`
is the in-memory fake beside it.

Theory of operation (`TCPStream`):

- Received bytes are kept as the chunks the transport delivered (a deque of `bytes`);
  `read()` hands back the first chunk as is when it is alone, so the common case copies
  nothing. Reading is paused above `READ_HIGH_WATER` buffered bytes and resumed once a
  `read()` brings the buffer down to `READ_LOW_WATER`: a peer that floods a handler which
  does not read fills the kernel's socket buffers, not ours.
- `write()` hands the bytes to the transport and, when the transport says its buffer is
  above its high-water mark (`pause_writing`), waits for it to drain, at most
  `write_timeout` seconds; a peer that never reads gets the connection aborted
  (ConnectionAbortedError) rather than an ever-growing write buffer.
- `start_tls()` first throws away every byte received and not yet read (RFC 3207 §4.2,
  CVE-2011-0411): plaintext a client pipelined after its STARTTLS command must never be
  taken as if it had come over TLS. Then it swaps the transport for an SSL one.
- End of input is `b""` from `read()`. A plaintext peer that half-closes (shutdown of its
  write side) can still be answered: `eof_received` keeps the transport open until the
  handler closes it.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import ipaddress
import itertools
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

#: Most bytes one `read()` returns.
READ_MAX: Final = 256 * 1024
#: Above this many buffered bytes, reading from the socket is paused.
READ_HIGH_WATER: Final = 1024 * 1024
#: Reading resumes once the buffer is down to this many bytes.
READ_LOW_WATER: Final = 256 * 1024
#: Transport write buffer above which `write()` waits for the peer to read.
WRITE_HIGH_WATER: Final = 256 * 1024
#: Seconds `close()` lets queued output (and a TLS close_notify) drain before aborting.
CLOSE_TIMEOUT: Final = 10.0
#: Seconds the TLS layer waits for the peer's close_notify once we sent ours.
TLS_SHUTDOWN_TIMEOUT: Final = 5.0

#: Attribute the server context's SNI callback leaves on the SSLObject (see net/tls.py).
SNI_ATTRIBUTE: Final = "_homing_sni"

_ids = itertools.count(random.getrandbits(24))


def new_conn_id() -> str:
    """A short id for log lines: 24 bits of a process counter, 16 random bits, base32.

    Eight lower-case characters; consecutive ids look unrelated, so grepping one never
    matches its neighbour.
    """
    value = ((next(_ids) & 0xFFFFFF) << 16) | random.getrandbits(16)
    return base64.b32encode(value.to_bytes(5, "big")).decode("ascii").lower()


def unmap_address(host: str) -> str:
    """An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) as plain IPv4; others unchanged."""
    if ":" not in host:
        return host  # IPv4
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return str(mapped) if mapped is not None else host


def _host_port(address: object) -> tuple[str, int]:
    """(host, port) from a `getpeername()`/`getsockname()` value of either family."""
    if isinstance(address, tuple) and len(address) >= 2:
        return unmap_address(str(address[0])), int(address[1])
    return ("", 0)


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What was negotiated on a TLS connection, for logs and Received headers."""

    version: str
    """Protocol version as OpenSSL names it: "TLSv1.3", "TLSv1.2"."""
    cipher: str
    """Cipher suite name, e.g. "TLS_AES_256_GCM_SHA384"."""
    bits: int
    """Secret bits of the cipher."""
    sni: str | None
    """The server name the client asked for (RFC 6066 §3), if it sent one."""

    @classmethod
    def from_ssl_object(cls, obj: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
        cipher = obj.cipher()
        name, bits = (cipher[0], int(cipher[2])) if cipher else ("", 0)
        sni = getattr(obj, SNI_ATTRIBUTE, None)
        return cls(obj.version() or "", name, bits, sni if isinstance(sni, str) else None)

    def __str__(self) -> str:
        return f"{self.version}/{self.cipher}"


class Stream(abc.ABC):
    """One connection as a session sees it. See `TCPStream` and `MemoryStream`."""

    conn_id: str
    """Short unique id for log lines."""
    service: str
    """The listener's service name: "smtp", "submission", "imaps", ..."""
    peer: tuple[str, int]
    """Client address and port (an IPv4-mapped IPv6 address is given as IPv4)."""
    local: tuple[str, int]
    """Our address and port for this connection."""
    tls: TLSInfo | None
    """None until TLS is up (at once for implicit TLS, after `start_tls` otherwise)."""
    bytes_in: int
    """Bytes received (after TLS decryption), including bytes discarded by `start_tls`."""
    bytes_out: int
    """Bytes handed to `write` (before TLS encryption)."""

    @abc.abstractmethod
    async def read(self, timeout: float | None = None) -> bytes:
        """Everything buffered (at most `READ_MAX` bytes), waiting for at least one byte.

        Returns b"" at end of input (or when the connection is gone). Raises TimeoutError
        when nothing arrives within `timeout` seconds; the stream stays usable.
        """

    @abc.abstractmethod
    def buffered(self) -> int:
        """Bytes received and not yet read."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None:
        """Send `data`, waiting while the peer is not reading (flow control).

        Raises ConnectionResetError when the connection is closed or lost, and
        ConnectionAbortedError (after aborting the connection) when the peer reads nothing
        for the write timeout: either way the connection is gone.
        """

    @abc.abstractmethod
    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Server-side STARTTLS: discard unread input (RFC 3207 §4.2), then handshake.

        Sets `tls` on success; raises ConnectionError (the connection is then gone) when
        the handshake fails or times out.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending output, close, and wait until the connection is gone."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection now, discarding pending output."""

    @property
    @abc.abstractmethod
    def closing(self) -> bool:
        """True once the connection is closing or lost."""


class TCPStream(Stream, asyncio.Protocol):
    """A `Stream` over an asyncio transport; also the transport's protocol.

    Created by `Listeners` for each accepted connection; `on_connect` is called from
    `connection_made` once the addresses are known.
    """

    def __init__(
        self,
        service: str,
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        *,
        on_connect: Callable[[TCPStream], None] | None = None,
        handshake_timeout: float = 30.0,
        write_timeout: float | None = 300.0,
    ) -> None:
        self.conn_id = new_conn_id()
        self.service = service
        self.peer = ("", 0)
        self.local = ("", 0)
        self.tls = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.opened = time.monotonic()
        self.handshake_timeout = handshake_timeout
        self.write_timeout = write_timeout
        self._loop = loop
        self._logger = logger
        self._on_connect = on_connect
        self._transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._lost = False
        self._error: BaseException | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._handshaking = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._lost_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<TCPStream {self.conn_id} {self.service} {self.peer[0]}:{self.peer[1]}>"

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self.peer = _host_port(transport.get_extra_info("peername"))
        self.local = _host_port(transport.get_extra_info("sockname"))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the peer may already be gone; the first read will say so
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if self._on_connect is not None:
            self._on_connect(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self.bytes_in += len(data)
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._buffered > READ_HIGH_WATER and not self._handshaking:
            self._pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        # Keep a half-closed plaintext connection open so the handler can still answer
        # (e.g. "QUIT" then shutdown(SHUT_WR)). asyncio's SSL transport ignores True and
        # warns, so only ask for it without TLS.
        return self.tls is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection_gone(exc)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writers()

    # -- Stream ----------------------------------------------------------------------

    async def read(self, timeout: float | None = None) -> bytes:
        if not self._chunks:
            if self._eof or self._lost:
                return b""
            await self._wait_readable(timeout)
            if not self._chunks:
                return b""
        return self._take()

    def buffered(self) -> int:
        return self._buffered

    async def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            raise ConnectionResetError("connection closed")
        transport.write(data)
        self.bytes_out += len(data)
        if self._writing_paused:
            await self._drain()

    async def start_tls(self, context: ssl.SSLContext) -> None:
        if self.tls is not None:
            raise RuntimeError("TLS is already active")
        discarded = self._discard()
        if discarded:
            self._logger.info(
                "conn=%s discarded %d bytes received before the TLS handshake",
                self.conn_id,
                discarded,
            )
        await self.handshake(context)

    async def close(self) -> None:
        transport = self._transport
        if transport is None or self._lost:
            return
        if not transport.is_closing():
            transport.close()
        if not await self._wait_lost(CLOSE_TIMEOUT):
            transport.abort()
            if not await self._wait_lost(1.0):
                self._connection_gone(None)  # the loop never told us; do not hang

    def abort(self) -> None:
        if self._transport is not None and not self._lost:
            self._transport.abort()

    @property
    def closing(self) -> bool:
        return self._lost or self._transport is None or self._transport.is_closing()

    # -- used by Listeners -----------------------------------------------------------

    async def handshake(self, context: ssl.SSLContext, *, replay: bool = False) -> None:
        """TLS handshake over the current transport (implicit TLS, and `start_tls`).

        With `replay` (implicit TLS), bytes already buffered are the start of the
        ClientHello and are handed to the TLS layer instead of being kept or dropped:
        uvloop starts reading right after `connection_made`, before a handshake can be
        set up, so a client's first flight usually lands in our buffer first.
        """
        transport = self._transport
        if transport is None or self._lost:
            raise ConnectionResetError("connection closed")
        if self._read_waiter is not None:
            raise RuntimeError("TLS handshake while a read() is pending")
        if self._eof:
            # Nothing more can arrive: do not sit out the handshake timeout.
            transport.abort()
            self._connection_gone(None)
            raise ConnectionError("TLS handshake failed: the peer closed its side first")
        self._handshaking = True
        upgrade = self._loop.start_tls(
            transport,
            self,
            context,
            server_side=True,
            ssl_handshake_timeout=self.handshake_timeout,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
        )
        try:
            if replay:
                # The task's first step swaps the transport's protocol for the SSL one
                # (and pauses reading); the callback queued behind it then feeds that
                # protocol what we hold, before its connection_made starts the handshake.
                task = self._loop.create_task(upgrade)
                self._loop.call_soon(self._replay_into, transport)
                new = await task
            else:
                new = await upgrade
            if new is None:
                raise ConnectionResetError("connection closed during the TLS handshake")
        except BaseException as exc:
            # Failed, timed out or cancelled: the SSL layer does not report connection_lost
            # to us while handshaking, so drop the connection and say so ourselves.
            transport.abort()
            self._connection_gone(exc)
            if isinstance(exc, Exception):
                raise ConnectionError(f"TLS handshake failed: {_describe(exc)}") from exc
            raise
        finally:
            self._handshaking = False
        self._transport = new
        sslobj = new.get_extra_info("ssl_object")
        self.tls = (
            TLSInfo.from_ssl_object(sslobj)
            if isinstance(sslobj, ssl.SSLObject | ssl.SSLSocket)
            else TLSInfo("", "", 0, None)
        )
        if self._buffered > READ_HIGH_WATER:
            self._pause_reading()

    def _replay_into(self, transport: asyncio.Transport) -> None:
        protocol: Any = transport.get_protocol()
        if protocol is self or not self._chunks:
            return  # start_tls failed before installing its protocol, or nothing to give
        data = b"".join(self._chunks)
        self._discard()
        self.bytes_in -= len(data)  # counted again, decrypted, if it carries application data
        if not hasattr(protocol, "get_buffer"):
            protocol.data_received(data)
            return
        view = memoryview(data)
        while view:
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]

    def refuse(self, message: bytes) -> None:
        """Send `message` (may be empty) and close, without a handler (over a limit)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if message:
            transport.write(message)
            self.bytes_out += len(message)
        transport.close()

    @property
    def error(self) -> BaseException | None:
        """Why the connection was lost, when it was not a clean close."""
        return self._error

    # -- internals -------------------------------------------------------------------

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft()
        if len(data) > READ_MAX:
            chunks.appendleft(data[READ_MAX:])
            data = data[:READ_MAX]
        elif chunks and len(data) < READ_MAX:
            parts = [data]
            size = len(data)
            while chunks and size < READ_MAX:
                part = chunks.popleft()
                room = READ_MAX - size
                if len(part) > room:
                    chunks.appendleft(part[room:])
                    part = part[:room]
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        self._buffered -= len(data)
        if self._reading_paused and self._buffered <= READ_LOW_WATER:
            self._resume_reading()
        return data

    def _discard(self) -> int:
        discarded = self._buffered
        self._chunks.clear()
        self._buffered = 0
        # loop.start_tls resumes the raw transport itself; forget our own pause.
        self._reading_paused = False
        return discarded

    async def _wait_readable(self, timeout: float | None) -> None:
        if self._read_waiter is not None:
            raise RuntimeError("read() called while another read() is pending")
        waiter = self._loop.create_future()
        self._read_waiter = waiter
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self._read_waiter = None
            if timer is not None:
                timer.cancel()

    async def _drain(self) -> None:
        waiter = self._loop.create_future()
        self._drain_waiters.append(waiter)
        timer = None
        if self.write_timeout is not None:
            timer = self._loop.call_later(self.write_timeout, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            self.abort()
            raise ConnectionAbortedError(
                f"peer read nothing for {self.write_timeout}s; connection aborted"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)
        if self._lost:
            raise ConnectionResetError("connection lost while writing")

    async def _wait_lost(self, timeout: float) -> bool:
        if self._lost:
            return True
        if self._lost_waiter is None:
            self._lost_waiter = self._loop.create_future()
        done, _ = await asyncio.wait([self._lost_waiter], timeout=timeout)
        return bool(done)

    def _pause_reading(self) -> None:
        transport = self._transport
        if not self._reading_paused and transport is not None and not transport.is_closing():
            self._reading_paused = True
            transport.pause_reading()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _connection_gone(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._error = exc
        self._wake_reader()
        self._wake_writers()
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writers(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_loopback(host: str) -> bool:
    """Whether `host` (a peer address as `Stream.peer` gives it) is 127.0.0.0/8 or ::1."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
