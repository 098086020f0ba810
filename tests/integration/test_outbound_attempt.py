"""The attempt driver (outbound.attempt) against small scripted SMTP servers on 127.0.0.1:
per-recipient outcomes and the next MX, 452 continuation, opportunistic TLS falling back to
clear text, require_tls, the session budget, and timeouts. Each server answers from a script,
so replies smtp-sink cannot give (a different one per recipient) are easy to set up."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from homing.mail.address import parse_path
from homing.outbound.attempt import AttemptSettings, Job, JobResult, deliver
from homing.outbound.route import Attempt, RoutePlan
from homing.proto.smtp.client import ClientSettings
from homing.proto.smtp.grammar import MailArgs, RcptArgs
from homing.queue.runner import client_tls_context


def ok_rcpt(address: str) -> bytes:
    return b"250 2.1.5 Ok\r\n"


@dataclass
class Script:
    """How one scripted server behaves, and what it saw."""

    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "DSN")
    greeting: bytes | None = b"220 scripted ESMTP\r\n"
    rcpt: Callable[[str], bytes] = ok_rcpt
    mail: bytes = b"250 2.1.0 Ok\r\n"
    starttls_garbage: bool = False
    """Answer STARTTLS with 220, then send junk instead of a TLS handshake."""
    max_rcpts: int = 1000
    connections: int = 0
    messages: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.greeting is None:
            await asyncio.sleep(30)  # never greets
            return
        writer.write(self.greeting)
        rcpts: list[str] = []
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                exts = ["scripted", *self.extensions]
                text = "".join(f"250-{e}\r\n" for e in exts[:-1]) + f"250 {exts[-1]}\r\n"
                writer.write(text.encode())
            elif verb == b"STAR":
                writer.write(b"220 2.0.0 Go ahead\r\n")
                if self.starttls_garbage:
                    writer.write(b"this is not TLS\r\n" * 10)
                    await writer.drain()
                    return
            elif verb == b"MAIL":
                rcpts = []
                writer.write(self.mail)
            elif verb == b"RCPT":
                address = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                if len(rcpts) >= self.max_rcpts:
                    writer.write(b"452 4.5.3 Too many recipients\r\n")
                    continue
                reply = self.rcpt(address)
                if reply.startswith(b"2"):
                    rcpts.append(address)
                writer.write(reply)
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                data = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    data += chunk
                self.messages.append((rcpts, data))
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb in (b"RSET", b"NOOP"):
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.1 Unknown\r\n")
            await writer.drain()


Start = Callable[[Script], Awaitable[tuple[str, int]]]


@pytest.fixture
async def servers() -> AsyncIterator[Start]:
    """Start scripted servers on 127.0.0.1 (ephemeral ports); closed after the test."""
    started: list[asyncio.Server] = []

    async def start(script: Script) -> tuple[str, int]:
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        started.append(server)
        host, port = server.sockets[0].getsockname()[:2]
        return host, port

    yield start
    for server in started:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def job(key: str, *rcpts: str, message: bytes = b"Subject: t\r\n\r\nhello\r\n") -> Job:
    return Job(
        key,
        MailArgs(parse_path("<alice@local.test>")),
        tuple(RcptArgs(parse_path(f"<{r}>")) for r in rcpts),
        message,
    )


def plan(*hosts: tuple[str, tuple[str, int]]) -> RoutePlan:
    return RoutePlan("remote.test", tuple(Attempt(name, addr[0], addr[1]) for name, addr in hosts))


def settings(
    *, require_tls: bool = False, max_sessions: int = 2, timeout_cap: float = 2.0
) -> AttemptSettings:
    return AttemptSettings(
        ClientSettings("mx.local.test", require_tls=require_tls),
        tls_context=client_tls_context(verify=False),
        connect_timeout=2.0,
        max_sessions=max_sessions,
        timeout_cap=timeout_cap,
    )


async def test_per_recipient_outcomes_and_the_next_mx_for_4xx_only(servers: Start) -> None:
    replies = {
        "ok@remote.test": b"250 2.1.5 Ok\r\n",
        "later@remote.test": b"450 4.2.1 Try later\r\n",
        "bad@remote.test": b"550 5.1.1 No such user\r\n",
    }
    first = Script(rcpt=lambda a: replies[a])
    backup = Script()
    a, b = await servers(first), await servers(backup)
    (result,) = await deliver(
        plan(("mx1", a), ("mx2", b)),
        [job("J", "ok@remote.test", "later@remote.test", "bad@remote.test")],
        settings(),
    )
    states = [(o.state, o.reply.code, o.remote_mta) for o in result.outcomes]
    assert states == [("delivered", 250, "mx1"), ("delivered", 250, "mx2"), ("failed", 550, "mx1")]
    assert [r for r, _ in first.messages] == [["ok@remote.test"]]
    assert [r for r, _ in backup.messages] == [["later@remote.test"]]  # not bad@ again


async def test_452_sends_the_rest_in_another_transaction_on_the_same_connection(
    servers: Start,
) -> None:
    script = Script(max_rcpts=2)
    addr = await servers(script)
    rcpts = [f"r{n}@remote.test" for n in range(5)]
    (result,) = await deliver(plan(("mx", addr)), [job("J", *rcpts)], settings())
    assert [o.state for o in result.outcomes] == ["delivered"] * 5
    assert [r for r, _ in script.messages] == [rcpts[:2], rcpts[2:4], rcpts[4:]]
    assert script.connections == 1


async def test_connection_reuse_for_several_jobs(servers: Start) -> None:
    script = Script()
    addr = await servers(script)
    seen: list[str] = []

    async def on_result(result: JobResult) -> None:
        seen.append(result.key)

    jobs = [job(f"J{n}", f"r{n}@remote.test") for n in range(4)]
    results = await deliver(plan(("mx", addr)), jobs, settings(), on_result=on_result)
    assert all(o.state == "delivered" for r in results for o in r.outcomes)
    assert script.connections == 1 and len(script.messages) == 4
    assert seen == ["J0", "J1", "J2", "J3"]


async def test_failed_tls_handshake_falls_back_to_clear_text(servers: Start) -> None:
    script = Script(extensions=("PIPELINING", "STARTTLS"), starttls_garbage=True)
    addr = await servers(script)
    (result,) = await deliver(plan(("mx", addr)), [job("J", "x@remote.test")], settings())
    assert result.outcomes[0].state == "delivered"
    assert script.connections == 2  # the handshake, then again without TLS
    assert any("tls" in e.lower() for e in result.errors)


async def test_require_tls_defers_rather_than_sending_in_clear(servers: Start) -> None:
    no_tls = Script()
    broken = Script(extensions=("STARTTLS",), starttls_garbage=True)
    a, b = await servers(no_tls), await servers(broken)
    (result,) = await deliver(
        plan(("mx1", a), ("mx2", b)), [job("J", "x@remote.test")], settings(require_tls=True)
    )
    (outcome,) = result.outcomes
    assert outcome.state == "deferred" and outcome.reply.code == 451
    assert no_tls.messages == [] and broken.messages == []
    assert broken.connections == 1  # no clear-text retry when TLS is required


async def test_session_budget_counts_only_sessions_past_the_greeting(servers: Start) -> None:
    refusing = Script(greeting=b"554 5.3.2 Go away\r\n")
    busy1 = Script(mail=b"451 4.3.0 Busy\r\n")
    busy2 = Script(mail=b"451 4.3.0 Busy\r\n")
    spare = Script()
    hosts = [await servers(s) for s in (refusing, busy1, busy2, spare)]
    (result,) = await deliver(
        plan(*((f"mx{n}", h) for n, h in enumerate(hosts))),
        [job("J", "x@remote.test")],
        settings(max_sessions=2),
    )
    assert result.outcomes[0].state == "deferred"
    assert (refusing.connections, busy1.connections, busy2.connections) == (1, 1, 1)
    assert spare.connections == 0  # two real sessions used the budget


async def test_a_silent_server_times_out_and_the_next_is_tried(servers: Start) -> None:
    silent = Script(greeting=None)
    good = Script()
    a, b = await servers(silent), await servers(good)
    (result,) = await deliver(
        plan(("mx1", a), ("mx2", b)), [job("J", "x@remote.test")], settings(timeout_cap=0.3)
    )
    assert result.outcomes[0].state == "delivered" and result.outcomes[0].remote_mta == "mx2"
    assert any("Timed out" in e for e in result.errors)


async def test_a_refused_connection_everywhere_defers_with_no_answer() -> None:
    (result,) = await deliver(
        plan(("mx1", ("127.0.0.1", 9)), ("mx2", ("127.0.0.1", 9))),
        [job("J", "x@remote.test")],
        settings(),
    )
    (outcome,) = result.outcomes
    assert outcome.state == "deferred" and outcome.reply.enhanced == "4.4.1"
    assert outcome.remote_mta is None and len(result.errors) == 2


def test_client_contexts() -> None:
    assert client_tls_context(verify=False).verify_mode == ssl.CERT_NONE
    strict = client_tls_context(verify=True)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
