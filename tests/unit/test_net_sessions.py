"""SessionIO (the reads, writes and TLS handshake the SMTP/POP3/IMAP sessions share) and
SessionRegistry, over MemoryStream with a core that records what it is told."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterator

import pytest

from homing.net.memory import MemoryStream
from homing.net.sessions import SessionIO, SessionRegistry


class Core:
    """Records the calls a server core gets from SessionIO."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.received: list[bytes] = []

    def receive_data(self, data: bytes) -> None:
        self.calls.append("receive_data")
        self.received.append(data)

    def timed_out(self) -> None:
        self.calls.append("timed_out")

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def tls_established(self) -> None:
        self.calls.append("tls_established")


class BrokenStream(MemoryStream):
    """A stream whose reads and writes fail as a reset connection does."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    async def read(self, timeout: float | None = None) -> bytes:
        raise self.error

    async def write(self, data: bytes) -> None:
        raise self.error


def later(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def until_waiting(io: SessionIO) -> None:
    """Let a task started on `io` reach its wait for the peer."""
    for _ in range(10):
        await asyncio.sleep(0)
    assert io._waiter is not None


def make() -> tuple[MemoryStream, Core, SessionIO]:
    stream = MemoryStream("imap")
    core = Core()
    return stream, core, SessionIO(stream, core)


# ---------------------------------------------------------------------------- read


async def test_read_returns_the_peers_bytes_and_tells_the_core_nothing() -> None:
    stream, core, io = make()
    stream.feed(b"a1 NOOP\r\n")
    assert await io.read(later()) == b"a1 NOOP\r\n"
    assert core.calls == []
    assert io._waiter is None


async def test_read_waits_for_input() -> None:
    stream, core, io = make()
    task = asyncio.create_task(io.read(later()))
    await until_waiting(io)
    stream.feed(b"QUIT\r\n")
    assert await task == b"QUIT\r\n"
    assert core.calls == []


async def test_end_of_input_reads_as_empty() -> None:
    stream, core, io = make()
    stream.feed_eof()
    assert await io.read(later()) == b""
    assert core.calls == []


async def test_deadline_already_passed_times_out_without_reading() -> None:
    stream, core, io = make()
    stream.feed(b"late\r\n")
    assert await io.read(time.monotonic() - 1) is None
    assert core.calls == ["timed_out"]
    assert stream.buffered() == 6  # not consumed


async def test_deadline_passing_while_waiting_times_out() -> None:
    _, core, io = make()
    started = time.monotonic()
    assert await io.read(started + 0.05) is None
    assert time.monotonic() - started >= 0.04
    assert core.calls == ["timed_out"]
    assert io._waiter is None


@pytest.mark.parametrize(
    "error", [ConnectionResetError("reset"), BrokenPipeError("pipe"), OSError("no route")]
)
async def test_a_broken_connection_reads_as_end_of_input(error: OSError) -> None:
    core = Core()
    io = SessionIO(BrokenStream(error), core)
    assert await io.read(later()) == b""
    assert core.calls == []  # the core sees EOF through receive_data(b"") from the caller


async def test_draining_shuts_down_without_reading() -> None:
    stream, core, io = make()
    stream.feed(b"a1 NOOP\r\n")
    assert await io.read(later(), draining=True) is None
    assert core.calls == ["shutdown"]
    assert stream.buffered() == 9


# ---------------------------------------------------------------------------- interrupt


async def test_interrupt_ends_a_read_with_shutdown_and_the_task_goes_on() -> None:
    _, core, io = make()
    task = asyncio.create_task(io.read(later()))
    await until_waiting(io)
    io.interrupt()
    io.interrupt()  # a second drain call changes nothing
    assert await task is None
    assert core.calls == ["shutdown"]
    assert not task.cancelled()
    assert task.cancelling() == 0  # the cancellation was withdrawn


async def test_after_an_interrupt_a_read_still_times_out() -> None:
    """The withdrawn cancellation leaves the task's own timeouts working."""
    _, core, io = make()

    async def session() -> bytes | None:
        assert await io.read(later()) is None  # interrupted
        return await io.read(time.monotonic() + 0.02)

    task = asyncio.create_task(session())
    await until_waiting(io)
    io.interrupt()
    assert await task is None
    assert core.calls == ["shutdown", "timed_out"]


async def test_interrupt_when_not_waiting_does_nothing() -> None:
    stream, core, io = make()
    io.interrupt()  # busy (not reading): the session sees `draining` at its next read
    stream.feed(b"x")
    assert await io.read(later()) == b"x"
    assert core.calls == []


async def test_other_cancellations_propagate() -> None:
    _, core, io = make()
    task = asyncio.create_task(io.read(later()))
    await until_waiting(io)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert core.calls == []
    assert io._waiter is None


async def test_waiting_block_is_left_after_shutdown_on_interrupt() -> None:
    _, core, io = make()
    steps: list[str] = []

    async def idle() -> str:
        with io.waiting():
            steps.append("waiting")
            await asyncio.sleep(60)
            steps.append("woke")  # not reached
        return "after the block"

    task = asyncio.create_task(idle())
    await until_waiting(io)
    io.interrupt()
    assert await task == "after the block"
    assert steps == ["waiting"]
    assert core.calls == ["shutdown"]


async def test_waiting_block_lets_other_exceptions_through() -> None:
    _, core, io = make()
    with pytest.raises(ValueError, match="boom"), io.waiting():
        raise ValueError("boom")
    assert core.calls == []
    assert io._waiter is None


async def test_registry_drain_wakes_an_idle_session() -> None:
    """The shape every session has: interrupt_if_idle() asks its SessionIO."""

    class Session:
        def __init__(self, io: SessionIO) -> None:
            self.io = io

        def interrupt_if_idle(self) -> None:
            self.io.interrupt()

    registry: SessionRegistry[Session] = SessionRegistry()
    idle_stream, idle_core, idle_io = make()
    _, busy_core, busy_io = make()
    registry.sessions.update({Session(idle_io), Session(busy_io)})
    task = asyncio.create_task(idle_io.read(later()))
    await until_waiting(idle_io)
    registry.drain()
    assert registry.draining
    assert await task is None
    assert idle_core.calls == ["shutdown"]
    assert busy_core.calls == []  # busy: told when it next reads
    assert await busy_io.read(later(), draining=registry.draining) is None
    assert busy_core.calls == ["shutdown"]
    assert idle_stream.buffered() == 0


# ---------------------------------------------------------------------------- send


async def test_send_writes_the_pieces_in_order_skipping_empty_ones() -> None:
    stream, core, io = make()
    await io.send([b"* OK ", b"", b"ready\r\n"])
    await io.send([b""])
    assert stream.output == b"* OK ready\r\n"
    assert stream.bytes_out == 12
    assert core.calls == []


async def test_send_to_a_closed_connection_gives_the_core_end_of_input() -> None:
    stream, core, io = make()
    await stream.close()
    await io.send([b"one\r\n", b"two\r\n"])
    assert core.received == [b""]
    assert stream.output == b""


async def test_send_stops_at_the_first_failed_write() -> None:
    core = Core()
    stream = BrokenStream(ConnectionAbortedError("write timeout"))
    io = SessionIO(stream, core)
    pulled: list[int] = []

    def pieces() -> Iterator[bytes]:
        for i in range(3):
            pulled.append(i)
            yield b"piece"

    await io.send(pieces())
    assert pulled == [0]
    assert core.received == [b""]


# ---------------------------------------------------------------------------- TLS


async def test_start_tls_tells_the_core() -> None:
    stream, core, io = make()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert await io.start_tls(context, logging.getLogger("homing.test"), "starttls")
    assert stream.tls_contexts == [context]
    assert stream.tls is not None
    assert core.calls == ["tls_established"]


async def test_failed_start_tls_is_logged_and_the_core_not_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream, core, io = make()
    stream.fail_tls = True
    with caplog.at_level(logging.INFO, logger="homing.test"):
        ok = await io.start_tls(
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), logging.getLogger("homing.test"), "stls"
        )
    assert not ok
    assert core.calls == []
    assert stream.aborted
    assert [r.getMessage() for r in caplog.records] == [
        f"{stream.conn_id} imap stls failed: TLS handshake failed (MemoryStream.fail_tls)"
    ]
