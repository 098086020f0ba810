"""homing.net over real sockets on 127.0.0.1 (and ::1), with both the asyncio and uvloop loops.

Every test is a plain function that runs its coroutine through the `run` fixture, which
is parametrized over the two event loops the server may run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from homing.config.model import ListenAddress
from homing.net import (
    Listeners,
    MemoryStream,
    ServiceSpec,
    Stream,
    TLSConfigError,
    TLSContexts,
    client_context,
    generate_self_signed,
)
from homing.net.stream import READ_HIGH_WATER, READ_MAX, WRITE_HIGH_WATER, TCPStream

Run = Callable[[Coroutine[Any, Any, Any]], Any]

LOG = logging.getLogger("homing.test.net")
LOCAL = (ListenAddress("127.0.0.1", 0),)
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "uvloop": uvloop.new_event_loop,
}


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6()


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    factory = LOOPS[request.param]

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(coro, 20))

    return runner


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed("localhost", cert, key)
    return cert, key


@contextlib.asynccontextmanager
async def serving(
    *specs: ServiceSpec, tls: TLSContexts | None = None, max_connections: int = 100
) -> AsyncIterator[Listeners]:
    listeners = Listeners(tls, max_connections=max_connections, logger=LOG)
    await listeners.start(specs)
    try:
        yield listeners
    finally:
        await listeners.stop(1.0)


def port(listeners: Listeners, service: str = "test") -> int:
    return listeners.bound()[service][0][1]


async def connect(
    port: int, host: str = "127.0.0.1", **kwargs: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port, **kwargs)


async def shut(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until EOF; a reset counts as EOF (an aborted connection may give one)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while data := await reader.read(65536):
            chunks.append(data)
    return b"".join(chunks)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def echo(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)


async def shout(stream: Stream) -> None:
    """A tiny line protocol, run over both TCPStream and MemoryStream."""
    await stream.write(b"+ready\r\n")
    buffer = b""
    while True:
        while b"\n" not in buffer:
            data = await stream.read()
            if not data:
                return
            buffer += data
        line, _, buffer = buffer.partition(b"\n")
        line = line.rstrip(b"\r")
        if line == b"QUIT":
            await stream.write(b"+bye\r\n")
            return
        await stream.write(b"+" + line.upper() + b"\r\n")


def spec(handler: Callable[[Stream], Awaitable[None]], **kwargs: Any) -> ServiceSpec:
    kwargs.setdefault("name", "test")
    kwargs.setdefault("addresses", LOCAL)
    return ServiceSpec(handler=handler, **kwargs)


def verifying_client(cert: Path) -> ssl.SSLContext:
    return client_context(True, cafile=cert)


# -- plain TCP -------------------------------------------------------------------------


def test_echo_round_trip_and_stream_attributes(run: Run) -> None:
    seen: list[Stream] = []

    async def handler(stream: Stream) -> None:
        seen.append(stream)
        await echo(stream)

    async def main() -> None:
        async with serving(spec(handler)) as listeners:
            p = port(listeners)
            clients = [await connect(p) for _ in range(3)]
            for i, (reader, writer) in enumerate(clients):
                for j in range(3):
                    message = f"client {i} message {j}\r\n".encode()
                    writer.write(message)
                    assert await reader.readexactly(len(message)) == message
            assert listeners.connection_count() == 3
            assert listeners.connection_count("test") == 3
            assert listeners.connection_count("other") == 0
            for reader, writer in clients:
                writer.write_eof()
                assert await reader.read() == b""
                await shut(writer)
            await until(lambda: listeners.connection_count() == 0)
        assert len({s.conn_id for s in seen}) == 3
        for stream, (_, writer) in zip(seen, clients, strict=True):
            assert len(stream.conn_id) == 8
            assert stream.service == "test"
            assert stream.tls is None
            assert stream.peer == writer.get_extra_info("sockname")
            assert stream.local == ("127.0.0.1", p)
            assert stream.bytes_in == stream.bytes_out == 3 * len(b"client 0 message 0\r\n")

    run(main())


def test_port_zero_resolution_and_ipv6(run: Run) -> None:
    addresses = [ListenAddress("127.0.0.1", 0)]
    if HAS_IPV6:
        addresses.append(ListenAddress("::1", 0))
    peers: list[tuple[str, int]] = []

    async def handler(stream: Stream) -> None:
        peers.append(stream.peer)
        await echo(stream)

    async def main() -> None:
        async with serving(spec(handler, addresses=addresses)) as listeners:
            bound = listeners.bound()["test"]
            assert [host for host, _ in bound] == [a.host for a in addresses]
            assert all(p > 0 for _, p in bound)
            for host, p in bound:
                reader, writer = await connect(p, host)
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                await shut(writer)
            if HAS_IPV6:
                sock = next(
                    s
                    for _, srv in listeners._servers
                    for s in srv.sockets
                    if s.family == socket.AF_INET6
                )
                assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert [host for host, _ in peers] == [a.host for a in addresses]

    run(main())


def test_bind_failure_names_the_address_and_binds_nothing(run: Run) -> None:
    async def main() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            listeners = Listeners(None, max_connections=10, logger=LOG)
            bad = (ListenAddress("127.0.0.1", 0), ListenAddress("127.0.0.1", taken))
            with pytest.raises(OSError, match=rf"127\.0\.0\.1:{taken} for smtp"):
                await listeners.start(
                    [spec(echo, name="ok"), spec(echo, name="smtp", addresses=bad)]
                )
            assert listeners.bound() == {}
            await listeners.stop(0)

    run(main())


def test_implicit_tls_without_certificate_is_refused(run: Run) -> None:
    async def main() -> None:
        listeners = Listeners(None, max_connections=10, logger=LOG)
        with pytest.raises(ValueError, match="imaps"):
            await listeners.start([spec(echo, name="imaps", implicit_tls=True)])

    run(main())


def test_half_closed_client_still_gets_its_answer(run: Run) -> None:
    async def handler(stream: Stream) -> None:
        received = b""
        while data := await stream.read():
            received += data
        await stream.write(b"221 got " + received)

    async def main() -> None:
        async with serving(spec(handler)) as listeners:
            reader, writer = await connect(port(listeners))
            writer.write(b"QUIT\r\n")
            writer.write_eof()
            assert await read_all(reader) == b"221 got QUIT\r\n"
            await shut(writer)

    run(main())


def test_read_timeout_raises_and_stream_stays_usable(run: Run) -> None:
    async def handler(stream: Stream) -> None:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await stream.read(timeout=0.1)
        assert 0.09 <= time.monotonic() - started < 3.0
        await stream.write(b"timeout\r\n")
        assert await stream.read(timeout=5) == b"late\r\n"
        await stream.write(b"ok\r\n")

    async def main() -> None:
        async with serving(spec(handler)) as listeners:
            reader, writer = await connect(port(listeners))
            assert await reader.readline() == b"timeout\r\n"
            writer.write(b"late\r\n")
            assert await read_all(reader) == b"ok\r\n"
            await shut(writer)

    run(main())


def test_read_returns_at_most_read_max(run: Run) -> None:
    sizes: list[int] = []
    total = 3 * READ_MAX + 12345

    async def handler(stream: Stream) -> None:
        await until(lambda: stream.buffered() == total)
        while data := await stream.read():
            sizes.append(len(data))

    async def main() -> None:
        async with serving(spec(handler)) as listeners:
            reader, writer = await connect(port(listeners))
            writer.write(bytes(total))
            writer.write_eof()
            await read_all(reader)
            await shut(writer)
        assert sizes == [READ_MAX, READ_MAX, READ_MAX, 12345]

    run(main())


# -- limits ----------------------------------------------------------------------------


def test_per_ip_limit_sends_over_limit_then_eof(run: Run) -> None:
    async def handler(stream: Stream) -> None:
        await stream.write(b"hello\r\n")
        while await stream.read():
            pass

    async def main() -> None:
        service = spec(handler, per_ip_limit=2, over_limit=b"421 4.7.0 Too many\r\n")
        async with serving(service) as listeners:
            p = port(listeners)
            first = await connect(p)
            second = await connect(p)
            for reader, _ in (first, second):
                assert await reader.readline() == b"hello\r\n"
            third_reader, third_writer = await connect(p)
            assert await read_all(third_reader) == b"421 4.7.0 Too many\r\n"
            await shut(third_writer)
            assert listeners.connection_count("test") == 2
            await shut(first[1])
            await until(lambda: listeners.connection_count("test") == 1)
            fourth_reader, fourth_writer = await connect(p)
            assert await fourth_reader.readline() == b"hello\r\n"
            for writer in (second[1], fourth_writer):
                await shut(writer)

    run(main())


def test_global_limit_counts_every_service(run: Run) -> None:
    async def handler(stream: Stream) -> None:
        await stream.write(b"hello\r\n")
        while await stream.read():
            pass

    async def main() -> None:
        one = spec(handler, name="one", over_limit=b"421 one busy\r\n")
        two = spec(handler, name="two", over_limit=b"* BYE busy\r\n")
        async with serving(one, two, max_connections=2) as listeners:
            a = await connect(port(listeners, "one"))
            b = await connect(port(listeners, "two"))
            for reader, _ in (a, b):
                assert await reader.readline() == b"hello\r\n"
            c_reader, c_writer = await connect(port(listeners, "two"))
            assert await read_all(c_reader) == b"* BYE busy\r\n"
            assert listeners.connection_count() == 2
            assert listeners.connection_count("one") == listeners.connection_count("two") == 1
            for writer in (a[1], b[1], c_writer):
                await shut(writer)

    run(main())


def test_flood_without_reading_keeps_the_buffer_bounded(run: Run) -> None:
    size = 50 * 1024 * 1024
    result: dict[str, int] = {}

    async def handler(stream: Stream) -> None:
        # Do not read until the buffer has stopped growing: reading must be paused.
        last, stable = -1, 0
        while stable < 5:
            await asyncio.sleep(0.02)
            stable = stable + 1 if stream.buffered() == last else 0
            last = stream.buffered()
        result["idle"] = last
        total = peak = 0
        while data := await stream.read():
            total += len(data)
            peak = max(peak, stream.buffered())
        result["total"], result["peak"] = total, peak
        await stream.write(b"%d\n" % total)

    def flood(p: int) -> bytes:
        with socket.create_connection(("127.0.0.1", p), timeout=15) as sock:
            sock.sendall(bytes(size))
            sock.shutdown(socket.SHUT_WR)
            return sock.recv(100)

    async def main() -> None:
        async with serving(spec(handler)) as listeners:
            assert await asyncio.to_thread(flood, port(listeners)) == b"%d\n" % size
        assert result["total"] == size
        # Paused just past the high-water mark (one transport read of at most READ_MAX).
        assert READ_HIGH_WATER < result["idle"] <= READ_HIGH_WATER + READ_MAX
        assert result["peak"] <= READ_HIGH_WATER + READ_MAX

    run(main())


def test_peer_that_stops_reading_cannot_grow_the_write_buffer(run: Run) -> None:
    result: dict[str, Any] = {}

    async def handler(stream: Stream) -> None:
        assert isinstance(stream, TCPStream)
        chunk = bytes(64 * 1024)
        written = peak = 0
        try:
            while written < 200 * 1024 * 1024:
                await stream.write(chunk)
                written += len(chunk)
                assert stream._transport is not None
                peak = max(peak, stream._transport.get_write_buffer_size())
        except ConnectionError as exc:
            result["error"] = exc
        result["written"], result["peak"] = written, peak
        result["closing"] = stream.closing

    async def main() -> None:
        async with serving(spec(handler, write_timeout=0.3)) as listeners:
            _, writer = await connect(port(listeners))
            await until(lambda: "error" in result)
            await shut(writer)
        assert isinstance(result["error"], ConnectionAbortedError)
        assert result["closing"]
        assert result["peak"] <= WRITE_HIGH_WATER + 64 * 1024
        assert result["written"] < 100 * 1024 * 1024  # what the kernel buffers held, no more

    run(main())


# -- handlers, shutdown ----------------------------------------------------------------


def test_handler_exception_is_logged_not_sent_and_listener_survives(
    run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def handler(stream: Stream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await stream.read()
            raise RuntimeError("secret internal detail")
        await echo(stream)

    async def main() -> None:
        async with serving(spec(handler)) as listeners:
            reader, writer = await connect(port(listeners))
            writer.write(b"boom\r\n")
            assert await read_all(reader) == b""
            await shut(writer)
            reader, writer = await connect(port(listeners))
            writer.write(b"still there?")
            assert await reader.readexactly(12) == b"still there?"
            await shut(writer)

    caplog.set_level(logging.DEBUG, logger=LOG.name)
    run(main())
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(failures) == 1
    assert "handler failed" in failures[0].getMessage()
    assert failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is not None
    assert "secret internal detail" in str(failures[0].exc_info[1])
    opens = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" open")]
    closes = [r.getMessage() for r in caplog.records if " duration=" in r.getMessage()]
    assert len(opens) == len(closes) == 2
    assert all("service=test peer=127.0.0.1:" in line for line in opens + closes)
    assert "in=6 out=0" in closes[0]
    assert "in=12 out=12" in closes[1]


def test_stop_lets_polite_handlers_finish_and_cancels_stuck_ones(run: Run) -> None:
    events: list[str] = []
    listeners = Listeners(None, max_connections=10, logger=LOG)

    async def polite(stream: Stream) -> None:
        await stream.write(b"hello\r\n")
        await listeners.draining.wait()
        await asyncio.sleep(0.05)
        await stream.write(b"421 shutting down\r\n")
        events.append("polite done")

    async def stuck(stream: Stream) -> None:
        await stream.write(b"hello\r\n")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("stuck cancelled")
            raise

    async def main() -> None:
        await listeners.start([spec(polite, name="polite"), spec(stuck, name="stuck")])
        ports = port(listeners, "polite"), port(listeners, "stuck")
        (p_reader, p_writer), (s_reader, s_writer) = [await connect(p) for p in ports]
        for reader in (p_reader, s_reader):
            assert await reader.readline() == b"hello\r\n"
        started = time.monotonic()
        await listeners.stop(0.3)
        assert 0.28 <= time.monotonic() - started < 3  # uvloop's clock has 1 ms resolution
        assert listeners.connection_count() == 0
        assert listeners.bound() == {}
        assert await read_all(p_reader) == b"421 shutting down\r\n"
        assert await read_all(s_reader) == b""
        for writer in (p_writer, s_writer):
            await shut(writer)
        with pytest.raises(ConnectionRefusedError):
            await connect(ports[0])
        assert events == ["polite done", "stuck cancelled"]

    run(main())


# -- TLS -------------------------------------------------------------------------------


def _tls_exchange(p: int, context: ssl.SSLContext, payload: bytes) -> tuple[bytes, bytes]:
    """Python's blocking ssl client: send, read to EOF, return (reply, peer cert DER)."""
    with (
        socket.create_connection(("127.0.0.1", p), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(payload)
        chunks = []
        while data := tls.recv(65536):
            chunks.append(data)
        return b"".join(chunks), der


def test_implicit_tls_with_python_ssl_client(run: Run, certs: tuple[Path, Path]) -> None:
    infos: list[Any] = []

    async def handler(stream: Stream) -> None:
        infos.append(stream.tls)
        await stream.write(b"* OK over TLS\r\n")
        await stream.write(await stream.read())

    async def main() -> None:
        tls = TLSContexts(*certs)
        async with serving(spec(handler, name="imaps", implicit_tls=True), tls=tls) as listeners:
            reply, der = await asyncio.to_thread(
                _tls_exchange, port(listeners, "imaps"), verifying_client(certs[0]), b"a1 NOOP\r\n"
            )
        assert reply == b"* OK over TLS\r\na1 NOOP\r\n"
        assert hashlib.sha256(der).hexdigest() == tls.fingerprint
        (info,) = infos
        assert info.version in {"TLSv1.2", "TLSv1.3"}
        assert info.bits >= 128
        assert info.cipher
        assert info.sni == "localhost"

    run(main())


def test_implicit_tls_handshake_failure_is_logged_and_closed(
    run: Run, certs: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[Stream] = []

    async def handler(stream: Stream) -> None:
        ran.append(stream)
        await echo(stream)

    async def main() -> None:
        tls = TLSContexts(*certs)
        async with serving(spec(handler, implicit_tls=True), tls=tls) as listeners:
            reader, writer = await connect(port(listeners))
            writer.write(b"EHLO plaintext.example\r\n")
            assert await read_all(reader) == b""
            await shut(writer)
            await until(lambda: listeners.connection_count() == 0)
            # The listener still serves TLS clients afterwards.
            context = verifying_client(certs[0])
            reader, writer = await connect(
                port(listeners), ssl=context, server_hostname="localhost"
            )
            writer.write(b"fine")
            assert await reader.readexactly(4) == b"fine"
            await shut(writer)
        assert len(ran) == 1

    caplog.set_level(logging.INFO, logger=LOG.name)
    run(main())
    failed = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].levelno == logging.INFO
    assert failed[0].exc_info is None


def test_implicit_tls_handshake_timeout(run: Run, certs: tuple[Path, Path]) -> None:
    ran: list[Stream] = []

    async def handler(stream: Stream) -> None:
        ran.append(stream)

    async def main() -> None:
        tls = TLSContexts(*certs)
        service = spec(handler, implicit_tls=True, handshake_timeout=0.2)
        async with serving(service, tls=tls) as listeners:
            reader, writer = await connect(port(listeners))
            started = time.monotonic()
            assert await read_all(reader) == b""
            assert 0.15 <= time.monotonic() - started < 3
            await shut(writer)
        assert ran == []

    run(main())


def test_starttls_discards_pipelined_plaintext(run: Run, certs: tuple[Path, Path]) -> None:
    """RFC 3207 §4.2 / CVE-2011-0411: bytes sent after STARTTLS, before the handshake,
    are in the server's buffer when it upgrades and must never reach the handler."""
    seen: dict[str, Any] = {}
    tls = TLSContexts(*certs)

    async def handler(stream: Stream) -> None:
        assert await stream.read() == b"STARTTLS\r\n"
        # The injected command is now sitting, unread, in our buffer.
        await until(lambda: stream.buffered() == len(b"RSET\r\nMAIL FROM:<evil@example>\r\n"))
        seen["before"] = stream.buffered()
        await stream.write(b"220 2.0.0 Ready to start TLS\r\n")
        await stream.start_tls(tls.server_context())
        seen["tls"] = stream.tls
        received = b""
        while data := await stream.read(timeout=5):
            received += data
        seen["received"] = received

    async def main() -> None:
        async with serving(spec(handler), tls=tls) as listeners:
            reader, writer = await connect(port(listeners))
            writer.write(b"STARTTLS\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)  # a separate segment, pipelined before the reply
            writer.write(b"RSET\r\nMAIL FROM:<evil@example>\r\n")
            assert await reader.readline() == b"220 2.0.0 Ready to start TLS\r\n"
            await writer.start_tls(verifying_client(certs[0]), server_hostname="localhost")
            writer.write(b"EHLO after.example\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            await shut(writer)
            await until(lambda: "received" in seen)
        assert seen["before"] > 0
        assert seen["tls"] is not None
        assert seen["received"] == b"EHLO after.example\r\n"

    run(main())


def test_starttls_handshake_failure_raises_connection_error(
    run: Run, certs: tuple[Path, Path]
) -> None:
    seen: dict[str, Any] = {}
    tls = TLSContexts(*certs)

    async def handler(stream: Stream) -> None:
        assert await stream.read() == b"STARTTLS\r\n"
        await stream.write(b"220 go ahead\r\n")
        try:
            await stream.start_tls(tls.server_context())
        except ConnectionError as exc:
            seen["error"] = exc
            seen["closing"] = stream.closing
            seen["read"] = await stream.read()
            raise

    async def main() -> None:
        async with serving(spec(handler), tls=tls) as listeners:
            reader, writer = await connect(port(listeners))
            writer.write(b"STARTTLS\r\n")
            assert await reader.readline() == b"220 go ahead\r\n"
            writer.write(b"this is not a ClientHello\r\n" * 10)
            assert await read_all(reader) == b""
            await shut(writer)
            await until(lambda: listeners.connection_count() == 0)
        assert isinstance(seen["error"], ConnectionError)
        assert seen["closing"] is True
        assert seen["read"] == b""

    run(main())


def test_reload_serves_the_new_certificate_to_new_connections(run: Run, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed("localhost", cert, key)
    tls = TLSContexts(cert, key)
    first = tls.fingerprint
    insecure = client_context(False)

    async def handler(stream: Stream) -> None:
        await stream.write(b"hi")

    async def fingerprint(p: int) -> str:
        reply, der = await asyncio.to_thread(_tls_exchange, p, insecure, b"")
        assert reply == b"hi"
        return hashlib.sha256(der).hexdigest()

    async def main() -> None:
        async with serving(spec(handler, implicit_tls=True), tls=tls) as listeners:
            p = port(listeners)
            assert await fingerprint(p) == first
            generate_self_signed("localhost", cert, key)
            tls.reload()
            second = tls.fingerprint
            assert second != first
            assert await fingerprint(p) == second
            # A broken reload keeps the current certificate.
            key.write_text("not a key\n")
            with pytest.raises(TLSConfigError, match=str(key)):
                tls.reload()
            assert tls.fingerprint == second
            assert await fingerprint(p) == second

    run(main())


# -- MemoryStream is a Stream ----------------------------------------------------------


def test_memory_stream_behaves_like_tcp_stream(run: Run) -> None:
    script = b"hello\r\nmixed Case\r\nQUIT\r\nignored\r\n"

    async def over_tcp() -> bytes:
        async with serving(spec(shout)) as listeners:
            reader, writer = await connect(port(listeners))
            writer.write(script)
            data = await read_all(reader)
            await shut(writer)
            return data

    async def over_memory() -> bytes:
        stream = MemoryStream("test")
        stream.feed(script)
        stream.feed_eof()
        await shout(stream)
        await stream.close()
        return stream.output

    tcp = run(over_tcp())
    memory = run(over_memory())
    assert tcp == memory == b"+ready\r\n+HELLO\r\n+MIXED CASE\r\n+bye\r\n"


# -- more edges ------------------------------------------------------------------------


def test_stop_during_a_pending_tls_handshake_is_prompt(run: Run, certs: tuple[Path, Path]) -> None:
    async def main() -> None:
        listeners = Listeners(TLSContexts(*certs), max_connections=10, logger=LOG)
        await listeners.start([spec(echo, implicit_tls=True)])
        reader, writer = await connect(port(listeners))  # says nothing: handshake pending
        await until(lambda: listeners.connection_count() == 1)
        started = time.monotonic()
        await listeners.stop(0.05)
        assert time.monotonic() - started < 2
        assert listeners.connection_count() == 0
        assert await read_all(reader) == b""
        await shut(writer)

    run(main())


def test_tls_flood_keeps_the_buffer_bounded(run: Run, certs: tuple[Path, Path]) -> None:
    size = 20 * 1024 * 1024
    result: dict[str, int] = {}

    async def handler(stream: Stream) -> None:
        last, stable = -1, 0
        while stable < 5:
            await asyncio.sleep(0.02)
            stable = stable + 1 if stream.buffered() == last else 0
            last = stream.buffered()
        result["idle"] = last
        total = 0
        while data := await stream.read():
            total += len(data)
        result["total"] = total
        await stream.write(b"%d\n" % total)

    def flood(p: int, context: ssl.SSLContext) -> bytes:
        with (
            socket.create_connection(("127.0.0.1", p), timeout=15) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(bytes(size))
            unwrapped = tls.unwrap()  # close_notify: EOF for the handler, socket stays open
            return unwrapped.recv(100)

    async def main() -> None:
        tls = TLSContexts(*certs)
        async with serving(spec(handler, implicit_tls=True), tls=tls) as listeners:
            reply = await asyncio.to_thread(flood, port(listeners), verifying_client(certs[0]))
        assert result["total"] == size
        assert result["idle"] <= READ_HIGH_WATER + READ_MAX
        assert reply in {b"", b"%d\n" % size}  # the reply may come after our close_notify

    run(main())


def test_peer_reset_gives_eof_then_write_raises(run: Run) -> None:
    result: dict[str, Any] = {}

    async def handler(stream: Stream) -> None:
        await stream.write(b"hello\r\n")
        result["read"] = await stream.read(timeout=5)
        await until(lambda: stream.closing)
        try:
            await stream.write(b"anyone?\r\n")
        except ConnectionError as exc:
            result["error"] = exc

    async def main() -> None:
        async with serving(spec(handler)) as listeners:
            reader, writer = await connect(port(listeners))
            assert await reader.readline() == b"hello\r\n"
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # with SO_LINGER 0: RST
            await until(lambda: "error" in result)
        assert result["read"] == b""
        assert isinstance(result["error"], ConnectionResetError)

    run(main())


def test_implicit_tls_over_limit_closes_without_plaintext(
    run: Run, certs: tuple[Path, Path]
) -> None:
    async def handler(stream: Stream) -> None:
        await stream.write(b"* OK\r\n")
        while await stream.read():
            pass

    async def main() -> None:
        tls = TLSContexts(*certs)
        service = spec(handler, implicit_tls=True, per_ip_limit=1, over_limit=b"* BYE busy\r\n")
        async with serving(service, tls=tls) as listeners:
            context = verifying_client(certs[0])
            reader, writer = await connect(
                port(listeners), ssl=context, server_hostname="localhost"
            )
            assert await reader.readline() == b"* OK\r\n"
            raw_reader, raw_writer = await connect(port(listeners))
            assert await read_all(raw_reader) == b""
            await shut(raw_writer)
            await shut(writer)

    run(main())
