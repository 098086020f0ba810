"""`MemoryStream`: the in-memory `Stream` for unit tests of sessions.

The test plays the client: `feed()` bytes in, `feed_eof()`, and look at what the session
wrote (`output`, `take_output()`, `await read_output(until=...)`). `MemoryStream.pair()`
gives two streams wired back to back, for a client core talking to a server core.

`start_tls()` does no cryptography: it records the context, discards unread input just as
the real stream does (RFC 3207 §4.2) and sets `tls` to `tls_info`; set `fail_tls` to make
it raise ConnectionError like a failed handshake.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from homing.net.stream import READ_MAX, Stream, TLSInfo, new_conn_id

#: What `start_tls()` pretends was negotiated, unless the test says otherwise.
DEFAULT_TLS_INFO = TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, None)


class MemoryStream(Stream):
    """A `Stream` whose peer is the test."""

    def __init__(
        self,
        service: str = "test",
        *,
        peer: tuple[str, int] = ("192.0.2.1", 50000),
        local: tuple[str, int] = ("192.0.2.25", 25),
        tls: TLSInfo | None = None,
        tls_info: TLSInfo = DEFAULT_TLS_INFO,
    ) -> None:
        self.conn_id = new_conn_id()
        self.service = service
        self.peer = peer
        self.local = local
        self.tls = tls
        self.bytes_in = 0
        self.bytes_out = 0
        self.tls_info = tls_info
        """What `start_tls()` sets `tls` to."""
        self.fail_tls = False
        """When true, `start_tls()` fails like a broken handshake (and the stream is gone)."""
        self.tls_contexts: list[ssl.SSLContext] = []
        """The contexts `start_tls()` was called with, in order."""
        self.discarded: list[bytes] = []
        """What each `start_tls()` call threw away (b"" when nothing was pending)."""
        self.closed = False
        """`close()` was called (or the pair's other end closed)."""
        self.aborted = False
        """`abort()` was called."""
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._output = bytearray()
        self._all_output = bytearray()
        self._other: MemoryStream | None = None
        self._changed = asyncio.Event()
        self._written = asyncio.Event()

    @classmethod
    def pair(
        cls, service: str = "test", *, client_service: str = "client"
    ) -> tuple[MemoryStream, MemoryStream]:
        """Two streams back to back: what one writes, the other reads. (server, client)"""
        server = cls(service, peer=("192.0.2.1", 50000), local=("192.0.2.25", 25))
        client = cls(client_service, peer=("192.0.2.25", 25), local=("192.0.2.1", 50000))
        server._other, client._other = client, server
        return server, client

    # -- the test's side -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the peer."""
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        if data:
            self._chunks.append(bytes(data))
            self._buffered += len(data)
            self.bytes_in += len(data)
            self._changed.set()

    def feed_eof(self) -> None:
        """The peer closed its side."""
        self._eof = True
        self._changed.set()

    @property
    def output(self) -> bytes:
        """Everything written so far (not affected by `take_output`)."""
        return bytes(self._all_output)

    def take_output(self) -> bytes:
        """What was written since the last `take_output`/`read_output`."""
        data = bytes(self._output)
        self._output.clear()
        return data

    async def read_output(self, until: bytes = b"\n", timeout: float = 5.0) -> bytes:
        """Wait until `until` has been written; return the output up to and including it.

        Output after the match stays for the next call. Raises TimeoutError.
        """
        async with asyncio.timeout(timeout):
            while (end := self._output.find(until)) < 0:
                if self.closed or self.aborted:
                    raise ConnectionResetError(
                        f"stream closed before {until!r}; output so far {bytes(self._output)!r}"
                    )
                self._written.clear()
                await self._written.wait()
        end += len(until)
        data = bytes(self._output[:end])
        del self._output[:end]
        return data

    # -- Stream ----------------------------------------------------------------------

    async def read(self, timeout: float | None = None) -> bytes:
        async with asyncio.timeout(timeout):
            while not self._chunks and not self._eof and not self.closing:
                self._changed.clear()
                await self._changed.wait()
        if not self._chunks:
            return b""
        data = b"".join(self._chunks)
        self._chunks.clear()
        if len(data) > READ_MAX:
            self._chunks.append(data[READ_MAX:])
            data = data[:READ_MAX]
        self._buffered -= len(data)
        return data

    def buffered(self) -> int:
        return self._buffered

    async def write(self, data: bytes) -> None:
        if self.closing:
            raise ConnectionResetError("connection closed")
        self.bytes_out += len(data)
        self._output += data
        self._all_output += data
        self._written.set()
        if self._other is not None and not self._other.closing:
            self._other.feed(data)
        await asyncio.sleep(0)  # a write is a suspension point, as in the real stream

    async def start_tls(self, context: ssl.SSLContext) -> None:
        if self.tls is not None:
            raise RuntimeError("TLS is already active")
        self.tls_contexts.append(context)
        self.discarded.append(b"".join(self._chunks))
        self._chunks.clear()
        self._buffered = 0
        if self.fail_tls:
            self.abort()
            raise ConnectionError("TLS handshake failed (MemoryStream.fail_tls)")
        self.tls = self.tls_info

    async def close(self) -> None:
        self._shut()

    def abort(self) -> None:
        self.aborted = True
        self._shut()

    @property
    def closing(self) -> bool:
        return self.closed or self.aborted

    def _shut(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._changed.set()
        self._written.set()
        other = self._other
        if other is not None and not other._eof:
            other.feed_eof()
