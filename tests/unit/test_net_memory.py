"""MemoryStream: the in-memory Stream that session unit tests drive."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from homing.net import MemoryStream, Stream, TLSInfo
from homing.net.stream import READ_MAX


def test_is_a_stream() -> None:
    stream = MemoryStream("smtp")
    assert isinstance(stream, Stream)
    assert stream.service == "smtp"
    assert len(stream.conn_id) == 8
    assert stream.tls is None
    assert not stream.closing


async def test_read_returns_everything_fed_then_eof() -> None:
    stream = MemoryStream()
    stream.feed(b"EHLO a\r\n")
    stream.feed(b"MAIL FROM:<>\r\n")
    assert stream.buffered() == 22
    assert await stream.read() == b"EHLO a\r\nMAIL FROM:<>\r\n"
    assert stream.buffered() == 0
    stream.feed_eof()
    assert await stream.read() == b""
    assert await stream.read() == b""
    assert stream.bytes_in == 22
    with pytest.raises(RuntimeError):
        stream.feed(b"late")


async def test_read_waits_for_data() -> None:
    stream = MemoryStream()
    reader = asyncio.create_task(stream.read())
    await asyncio.sleep(0)
    assert not reader.done()
    stream.feed(b"x")
    assert await reader == b"x"


async def test_read_timeout_raises_and_keeps_the_stream_usable() -> None:
    stream = MemoryStream()
    with pytest.raises(TimeoutError):
        await stream.read(timeout=0.01)
    stream.feed(b"after")
    assert await stream.read(timeout=0.01) == b"after"


async def test_read_is_capped_like_the_real_stream() -> None:
    stream = MemoryStream()
    stream.feed(bytes(READ_MAX + 10))
    assert len(await stream.read()) == READ_MAX
    assert stream.buffered() == 10
    assert len(await stream.read()) == 10


async def test_write_collects_output() -> None:
    stream = MemoryStream()
    await stream.write(b"220 hi\r\n")
    await stream.write(b"250-a\r\n250 b\r\n")
    assert await stream.read_output(b"250-a\r\n") == b"220 hi\r\n250-a\r\n"
    assert stream.take_output() == b"250 b\r\n"
    assert stream.take_output() == b""
    assert stream.output == b"220 hi\r\n250-a\r\n250 b\r\n"
    assert stream.bytes_out == len(stream.output)


async def test_read_output_waits_and_times_out() -> None:
    stream = MemoryStream()

    async def later() -> None:
        await asyncio.sleep(0.01)
        await stream.write(b"+OK\r\n")

    task = asyncio.create_task(later())
    assert await stream.read_output(b"\r\n") == b"+OK\r\n"
    await task
    with pytest.raises(TimeoutError):
        await stream.read_output(b"\r\n", timeout=0.01)


async def test_start_tls_discards_pending_input_and_records_the_call() -> None:
    stream = MemoryStream()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    stream.feed(b"STARTTLS\r\n")
    assert await stream.read() == b"STARTTLS\r\n"
    stream.feed(b"MAIL FROM:<injected@example>\r\n")
    await stream.start_tls(context)
    assert stream.tls_contexts == [context]
    assert stream.discarded == [b"MAIL FROM:<injected@example>\r\n"]
    assert stream.buffered() == 0
    assert stream.tls == TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, None)
    with pytest.raises(RuntimeError):
        await stream.start_tls(context)
    stream.feed(b"EHLO again\r\n")
    assert await stream.read() == b"EHLO again\r\n"


async def test_start_tls_failure() -> None:
    stream = MemoryStream()
    stream.fail_tls = True
    with pytest.raises(ConnectionError):
        await stream.start_tls(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert stream.tls is None
    assert stream.closing and stream.aborted
    assert await stream.read() == b""
    with pytest.raises(ConnectionResetError):
        await stream.write(b"x")


async def test_close_and_abort() -> None:
    stream = MemoryStream()
    reader = asyncio.create_task(stream.read())
    await asyncio.sleep(0)
    await stream.close()
    assert await reader == b""
    assert stream.closing and stream.closed and not stream.aborted
    with pytest.raises(ConnectionResetError):
        await stream.write(b"x")
    with pytest.raises(ConnectionResetError):
        await stream.read_output(b"never")
    other = MemoryStream()
    other.abort()
    assert other.closing and other.aborted


async def test_pair_is_wired_back_to_back() -> None:
    server, client = MemoryStream.pair("smtp")
    assert server.peer == client.local and server.local == client.peer
    await server.write(b"220 ready\r\n")
    assert await client.read() == b"220 ready\r\n"
    await client.write(b"QUIT\r\n")
    assert await server.read() == b"QUIT\r\n"
    await client.close()
    assert await server.read() == b""
    assert not server.closing
    await server.write(b"221 bye\r\n")  # the half-closed peer no longer receives it
    assert client.output == b"QUIT\r\n"
