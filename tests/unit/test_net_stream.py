"""TCPStream driven by a fake transport (exact flow-control thresholds), conn ids, addresses."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homing.net.stream import (
    READ_HIGH_WATER,
    READ_LOW_WATER,
    READ_MAX,
    TCPStream,
    new_conn_id,
    unmap_address,
)


class FakeTransport(asyncio.Transport):
    """Just enough transport for TCPStream: records writes and reading state."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.pauses = 0
        self.closed = False
        self.aborted = False
        self.protocol: TCPStream | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("::ffff:192.0.2.7", 4321), "sockname": ("192.0.2.25", 25)}.get(
            name, default
        )

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True
        assert self.protocol is not None
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.aborted = True
        assert self.protocol is not None
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


def make_stream(**kwargs: Any) -> tuple[TCPStream, FakeTransport]:
    stream = TCPStream("smtp", asyncio.get_running_loop(), logging.getLogger("test"), **kwargs)
    transport = FakeTransport()
    transport.protocol = stream
    stream.connection_made(transport)
    return stream, transport


async def test_addresses_from_the_transport() -> None:
    stream, _ = make_stream()
    assert stream.peer == ("192.0.2.7", 4321)
    assert stream.local == ("192.0.2.25", 25)


async def test_reading_pauses_above_high_water_and_resumes_at_low_water() -> None:
    stream, transport = make_stream()
    chunk = bytes(64 * 1024)
    while stream.buffered() <= READ_HIGH_WATER:
        assert transport.reading
        stream.data_received(chunk)
    assert not transport.reading
    assert stream.buffered() == READ_HIGH_WATER + len(chunk)
    while stream.buffered() > READ_LOW_WATER:
        assert not transport.reading
        data = await stream.read()
        assert len(data) == READ_MAX
    assert transport.reading
    assert transport.pauses == 1


async def test_read_joins_chunks_without_copying_a_lone_one() -> None:
    stream, _ = make_stream()
    chunk = b"x" * 100
    stream.data_received(chunk)
    assert await stream.read() is chunk
    stream.data_received(b"a")
    stream.data_received(b"b")
    assert await stream.read() == b"ab"


async def test_eof_then_empty_reads() -> None:
    stream, _ = make_stream()
    stream.data_received(b"QUIT\r\n")
    assert stream.eof_received() is True  # plaintext: keep the write side open
    assert await stream.read() == b"QUIT\r\n"
    assert await stream.read() == b""
    await stream.write(b"221 bye\r\n")


async def test_only_one_reader_at_a_time() -> None:
    stream, _ = make_stream()
    first = asyncio.create_task(stream.read())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await stream.read()
    stream.data_received(b"x")
    assert await first == b"x"


async def test_write_waits_while_paused_and_times_out() -> None:
    stream, transport = make_stream(write_timeout=0.05)
    stream.pause_writing()
    writer = asyncio.create_task(stream.write(b"a"))
    await asyncio.sleep(0.01)
    assert not writer.done()
    stream.resume_writing()
    await writer
    stream.pause_writing()
    with pytest.raises(ConnectionAbortedError):
        await stream.write(b"b")
    assert transport.aborted
    assert transport.written == b"ab"


async def test_connection_lost_wakes_reader_and_writers() -> None:
    stream, _ = make_stream()
    reader = asyncio.create_task(stream.read())
    stream.pause_writing()
    writer = asyncio.create_task(stream.write(b"x"))
    await asyncio.sleep(0)
    stream.connection_lost(ConnectionResetError())
    assert await reader == b""
    with pytest.raises(ConnectionResetError):
        await writer
    assert stream.closing
    with pytest.raises(ConnectionResetError):
        await stream.write(b"y")
    await stream.close()  # already gone: returns at once


async def test_close_waits_for_connection_lost() -> None:
    stream, transport = make_stream()
    await stream.close()
    assert transport.closed
    assert stream.closing


async def test_start_tls_discards_unread_bytes_first() -> None:
    stream, _ = make_stream()
    stream.data_received(b"STARTTLS\r\nRSET\r\n")
    stream.data_received(b"MAIL FROM:<x>\r\n")
    with pytest.raises(ConnectionError):
        # The fake transport cannot do TLS: the point is what happened before.
        await stream.start_tls(ssl.create_default_context())
    assert stream.buffered() == 0
    assert await stream.read() == b""


def test_conn_ids_are_short_and_unique() -> None:
    ids = [new_conn_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z2-7]{8}", conn_id) for conn_id in ids)


@given(st.ip_addresses(v=6))
def test_unmap_address_only_changes_ipv4_mapped(address: ipaddress.IPv6Address) -> None:
    """Invariant: a mapped address in any spelling becomes its IPv4 address; every other
    address string is returned unchanged."""
    for text in {str(address), address.exploded}:
        expected = str(address.ipv4_mapped) if address.ipv4_mapped else text
        assert unmap_address(text) == expected


@given(st.ip_addresses(v=4))
def test_unmap_address_of_mapped_ipv4(address: ipaddress.IPv4Address) -> None:
    assert unmap_address(f"::ffff:{address}") == str(address)
    assert unmap_address(f"::FFFF:{address}") == str(address)
    assert unmap_address(str(address)) == str(address)


async def test_start_tls_after_eof_fails_at_once() -> None:
    stream, transport = make_stream()
    stream.data_received(b"STARTTLS\r\n")
    stream.eof_received()
    assert await stream.read() == b"STARTTLS\r\n"
    with pytest.raises(ConnectionError, match="closed its side"):
        await stream.start_tls(ssl.create_default_context())
    assert transport.aborted
    assert stream.closing
