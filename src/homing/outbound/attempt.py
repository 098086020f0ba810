"""One delivery attempt for one domain: the asyncio driver of the SMTP client core.

Theory of operation. `deliver(plan, jobs, settings)` takes the connections `route` planned
(best first) and the messages waiting for the domain (`Job`s, one per queue entry), and
walks the plan: connect, run the sans-I/O `ClientConnection` over the socket, hand it the
jobs one after another on the same connection (connection reuse), and move on to the next
host while recipients remain open. It never raises for a network or protocol outcome; every
recipient ends with an `Outcome`:

- `delivered`: a 2xx to the message data;
- `failed`: a 5xx to MAIL, RCPT or the data (final: other hosts are not tried, RFC 5321 §5.1
  is about reachability, not about asking another MX until one says yes);
- `deferred`: anything else: a 4xx, a refused connection, a broken session, a timeout.

Moving on to the next host (RFC 5321 §5.1): when the connection fails, the greeting or EHLO
is refused, or the session breaks before the message is handed over; recipients that got a
4xx are offered to the next host too (a backup MX may well take them). When the connection is
lost after the end of the data was sent and before its reply came, the message may have been
delivered: it is deferred and no other host is tried in this attempt (RFC 5321 §6.1 accepts
the possible duplicate of a later retry, not a burst of them now).

Budget: at most `max_sessions` SMTP sessions that get past the greeting and EHLO per attempt
(Postfix's smtp_mx_session_limit); refused connections and refused greetings do not count.

TLS: STARTTLS is used whenever offered and a context is set (RFC 7435 opportunistic TLS).
If the handshake fails and TLS is not required, the same host is tried once more in clear.
Bytes received before the handshake are discarded (RFC 3207 §4.2, the client side of
CVE-2011-0411). `loop.start_tls` upgrades the connection in place, so no module of the net
layer is needed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, cast

from homing.mail.reply import Reply
from homing.outbound.route import Attempt, RoutePlan, ip_literal
from homing.proto.smtp import client as core
from homing.proto.smtp.grammar import MailArgs, RcptArgs

log = logging.getLogger("homing.outbound")

#: RFC 3463 X.4.1 "no answer from host": no connection could be made.
NO_CONNECTION = Reply(451, "4.4.1", "No answer from host")
#: X.4.7 the attempt was stopped before it got to this recipient (shutdown).
NOT_ATTEMPTED = Reply(451, "4.4.7", "Delivery not attempted")
#: Seconds allowed for QUIT at the end of a session: nothing depends on its reply.
QUIT_TIMEOUT = 10.0
#: The RCPT reply that asks for the rest of the recipients in a later transaction.
_TOO_MANY_RECIPIENTS = 452  # RFC 5321 §4.5.3.1.10

OutcomeState = Literal["delivered", "failed", "deferred"]


@dataclass(frozen=True, slots=True)
class AttemptSettings:
    """How attempts connect and talk; built once from the configuration."""

    client: core.ClientSettings
    """EHLO name, TLS policy, AUTH credentials for the SMTP client core."""
    tls_context: ssl.SSLContext | None = None
    """For STARTTLS (and implicit TLS); None: never TLS. The host name goes along as SNI;
    whether the certificate is checked is the context's business (opportunistic for MX
    hosts, RFC 7435; verified for a smarthost)."""
    implicit_tls: bool = False
    """TLS from the first byte (a smarthost on port 465, RFC 8314)."""
    connect_timeout: float = 30.0
    max_sessions: int = 2
    timeout_cap: float | None = None
    """Upper bound on every RFC 5321 §4.5.3.2 timeout (tests; None: the RFC's values)."""

    def timeout(self, which: core.Timeout | None) -> float:
        seconds = (which or core.Timeout.COMMAND).seconds
        return seconds if self.timeout_cap is None else min(seconds, self.timeout_cap)


@dataclass(frozen=True, slots=True)
class Job:
    """One message for some recipients of the domain (one queue entry)."""

    key: str
    """The caller's name for it (the queue entry id), also used in logs."""
    mail: MailArgs
    rcpts: tuple[RcptArgs, ...]
    message: bytes
    needs_8bit: bool | None = None
    needs_smtputf8: bool | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one recipient in this attempt."""

    state: OutcomeState
    reply: Reply
    remote_mta: str | None = None
    """The host that gave `reply` (None when no server was reached)."""
    dsn_offered: bool = False
    """The server that took the message offered DSN (RFC 3461): the sender's NOTIFY went
    along, so reporting success is its business now (RFC 3461 §5.2.2); without it a
    "relayed" DSN is due for NOTIFY=SUCCESS."""


@dataclass(slots=True)
class JobResult:
    """The outcome of every recipient of a job, in its order."""

    key: str
    outcomes: list[Outcome]
    errors: list[str] = field(default_factory=list)
    """Session-level problems met on the way (for the operator)."""

    @property
    def last_error(self) -> str | None:
        return self.errors[-1] if self.errors else None


# ------------------------------------------------------------------------------- the pipe


class _Pipe(asyncio.Protocol):
    """A connection as a byte pipe: what arrived waits in `buffer`; writes honour flow
    control. Just enough for the client core, and upgradable with `loop.start_tls`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without inheriting from it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._readable.set()

    def eof_received(self) -> bool:
        self.eof = True
        self._readable.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._readable.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def read(self, timeout: float) -> bytes:
        """What has arrived (waiting up to `timeout`), b"" at the end; TimeoutError."""
        if not self.buffer and not self.eof:
            self._readable.clear()
            async with asyncio.timeout(timeout):
                await self._readable.wait()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def write(self, data: bytes, timeout: float) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the reading side notices the end
        transport.write(data)
        if not self._writable.is_set():
            async with asyncio.timeout(timeout):  # RFC 5321 §4.5.3.2.5 data block
                await self._writable.wait()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# ------------------------------------------------------------------------------- a session

_HANDSHAKE_STAGES = frozenset(
    {core.Stage.GREETING, core.Stage.EHLO, core.Stage.HELO, core.Stage.STARTTLS, core.Stage.TLS}
)


class _Session:
    """One connection to one host running one `ClientConnection`."""

    def __init__(
        self, pipe: _Pipe, target: Attempt, settings: AttemptSettings, *, tls: bool
    ) -> None:
        self.pipe = pipe
        self.target = target
        self.settings = settings
        self.use_tls = tls and settings.tls_context is not None
        self.conn = core.ClientConnection(replace(settings.client, tls_available=self.use_tls))
        if settings.implicit_tls:
            # RFC 8314: the connection is TLS from the first byte; the core must count it as
            # protected (no STARTTLS, and AUTH and require_tls are satisfied).
            self.conn.tls = True
        self.handshake_done = False
        self.closed = False

    @property
    def name(self) -> str:
        t = self.target
        return f"{t.host}[{t.address}]:{t.port}"

    async def transaction(self, job: Job, rcpts: Sequence[RcptArgs]) -> core.Event:
        """Run one transaction: TransactionDone, or SessionFailed (the session is over)."""
        self.conn.start_transaction(
            job.mail,
            rcpts,
            job.message,
            needs_8bit=job.needs_8bit,
            needs_smtputf8=job.needs_smtputf8,
        )
        event = await self._pump()
        if isinstance(event, core.TransactionDone) or (
            isinstance(event, core.SessionFailed) and event.stage not in _HANDSHAKE_STAGES
        ):
            self.handshake_done = True
        if isinstance(event, core.SessionFailed):
            await self._drain_close()
        return event

    async def quit(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(Exception):
            self.conn.quit()
            async with asyncio.timeout(QUIT_TIMEOUT):
                while not isinstance(await self._pump(), core.Closed):
                    pass
        self._close()

    async def _drain_close(self) -> None:
        """After SessionFailed: let the core's Closed out (and its QUIT), then close."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(QUIT_TIMEOUT):
                while not isinstance(await self._pump(), core.Closed):
                    pass
        self._close()

    def _close(self) -> None:
        self.closed = True
        self.pipe.close()

    async def _pump(self) -> core.Event:
        """Drive the core until it has something to say other than NEED_DATA."""
        conn, pipe = self.conn, self.pipe
        while True:
            event = conn.next_event()
            await self._flush()
            if event is core.NEED_DATA:
                if conn.closed:
                    return core.Closed("closed")
                try:
                    data = await pipe.read(self.settings.timeout(conn.timeout))
                except TimeoutError:
                    conn.timed_out()
                    continue
                conn.receive_data(data)
            elif isinstance(event, core.NeedStartTLS):
                await self._start_tls()
            elif isinstance(event, core.Closed):
                await self._flush()
                self._close()
                return event
            else:
                return event

    async def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            try:
                await self.pipe.write(out, self.settings.timeout(core.Timeout.DATA_BLOCK))
            except TimeoutError:
                self.pipe.abort()

    async def _start_tls(self) -> None:
        """RFC 3207: upgrade the connection in place; whatever came in clear is dropped."""
        context = self.settings.tls_context
        transport = self.pipe.transport
        assert context is not None and transport is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(
                transport,
                self.pipe,
                context,
                server_hostname=self._server_hostname(),
                ssl_handshake_timeout=self.settings.timeout(core.Timeout.COMMAND),
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("TLS handshake with %s failed: %s", self.name, exc)
            self.pipe.abort()
            self.conn.tls_failed()
            return
        if new is None:
            self.conn.tls_failed()
            return
        self.pipe.transport = new
        self.pipe.buffer.clear()  # RFC 3207 §4.2: nothing from before the handshake counts
        self.conn.tls_established()

    def _server_hostname(self) -> str:
        return _server_name(self.target)


def _server_name(target: Attempt) -> str:
    """What TLS is told the server is: its name (SNI, and the certificate check when the
    context makes one), or its address for an address literal (no SNI is sent for an IP
    address; a verifying context then matches the certificate's IP addresses)."""
    return ip_literal(target.host) or target.host


async def _connect(target: Attempt, settings: AttemptSettings) -> _Pipe:
    loop = asyncio.get_running_loop()
    pipe = _Pipe()
    ssl_context = settings.tls_context if settings.implicit_tls else None
    hostname = _server_name(target) if ssl_context is not None else None
    async with asyncio.timeout(settings.connect_timeout):
        await loop.create_connection(
            lambda: pipe,
            host=target.address,
            port=target.port,
            ssl=ssl_context,
            server_hostname=hostname,
        )
    return pipe


# ------------------------------------------------------------------------------- the attempt


@dataclass(slots=True)
class _Open:
    """A job being delivered: its outcomes so far (None: still open)."""

    job: Job
    final: list[Outcome | None]
    provisional: list[Outcome | None]
    """The best deferral so far for each open recipient (a server's 4xx beats a refused
    connection)."""
    stopped: bool = False
    """No more hosts for this job in this attempt (the end of data went unanswered)."""
    errors: list[str] = field(default_factory=list)

    def open_indexes(self) -> list[int]:
        if self.stopped:
            return []
        return [i for i, o in enumerate(self.final) if o is None]

    def defer(self, index: int, outcome: Outcome) -> None:
        current = self.provisional[index]
        if current is None or current.remote_mta is None or outcome.remote_mta is not None:
            self.provisional[index] = outcome

    def result(self) -> JobResult:
        outcomes = [
            f if f is not None else (p or Outcome("deferred", NOT_ATTEMPTED))
            for f, p in zip(self.final, self.provisional, strict=True)
        ]
        return JobResult(self.job.key, outcomes, list(self.errors))


OnResult = Callable[[JobResult], Awaitable[None]]


async def deliver(
    plan: RoutePlan,
    jobs: Sequence[Job],
    settings: AttemptSettings,
    *,
    on_result: OnResult | None = None,
) -> list[JobResult]:
    """Deliver `jobs` along `plan`; one result per job, in order.

    `on_result` is awaited for each job as soon as its fate in this attempt is settled
    (so the caller can record it durably while the next job is being sent).
    """
    state = [_Open(j, [None] * len(j.rcpts), [None] * len(j.rcpts)) for j in jobs if j.rcpts]
    reported: set[int] = set()

    async def report_settled() -> None:
        for n, s in enumerate(state):
            if n not in reported and not s.open_indexes():
                reported.add(n)
                if on_result is not None:
                    await on_result(s.result())

    sessions = 0
    for target in plan.attempts:
        if sessions >= settings.max_sessions or not any(s.open_indexes() for s in state):
            break
        use_tls = True
        while True:
            counted, tls_failed = await _one_session(target, state, settings, use_tls)
            sessions += counted
            await report_settled()
            if not (tls_failed and use_tls and not settings.client.require_tls):
                break
            use_tls = False  # RFC 7435: opportunistic TLS falls back to clear text
    for n, s in enumerate(state):
        if n not in reported:
            reported.add(n)
            if on_result is not None:
                await on_result(s.result())
    return [s.result() for s in state]


async def _one_session(
    target: Attempt, state: list[_Open], settings: AttemptSettings, use_tls: bool
) -> tuple[int, bool]:
    """One connection to `target`, every open job over it. Returns (1 if the session got
    past the handshake else 0, whether the TLS handshake failed)."""
    name = f"{target.host}[{target.address}]:{target.port}"
    try:
        pipe = await _connect(target, settings)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        text = f"connect to {name}: {reason}"
        log.info("%s", text)
        for s in state:
            if s.open_indexes():
                s.errors.append(text)
            for i in s.open_indexes():
                s.defer(
                    i,
                    Outcome(
                        "deferred", NO_CONNECTION.with_text(f"No answer from {name}: {reason}")
                    ),
                )
        return 0, False
    session = _Session(pipe, target, settings, tls=use_tls)
    tls_failed = False
    try:
        for s in state:
            while True:
                indexes = s.open_indexes()
                if not indexes or session.closed:
                    break
                event = await session.transaction(s.job, [s.job.rcpts[i] for i in indexes])
                if isinstance(event, core.TransactionDone):
                    progress = _apply_done(s, indexes, event, target, session)
                    if not progress:
                        break
                    continue
                assert isinstance(event, core.SessionFailed), event
                _apply_failed(s, indexes, event, target, name)
                tls_failed = event.stage is core.Stage.TLS
                break
            if session.closed:
                break
    finally:
        if not session.closed:
            await session.quit()
    return int(session.handshake_done), tls_failed


def _apply_done(
    s: _Open,
    indexes: list[int],
    event: core.TransactionDone,
    target: Attempt,
    session: _Session,
) -> bool:
    """Record a finished transaction; True if another one should follow at once (some
    recipients got 452 "too many recipients" while others were taken, RFC 5321
    §4.5.3.1.10)."""
    dsn = "DSN" in session.conn.extensions
    delivered = 0
    too_many = 0
    for i, result in zip(indexes, event.results, strict=True):
        reply = result.reply
        if result.final and reply.is_positive:
            s.final[i] = Outcome("delivered", reply, target.host, dsn)
            delivered += 1
            log.info(
                "%s to=<%s> relay=%s status=sent (%s)",
                s.job.key,
                _addr(result.rcpt),
                session.name,
                reply,
            )
        elif result.final:
            s.final[i] = Outcome("failed", reply, target.host)
            log.info(
                "%s to=<%s> relay=%s status=bounced (%s)",
                s.job.key,
                _addr(result.rcpt),
                session.name,
                reply,
            )
        else:
            too_many += reply.code == _TOO_MANY_RECIPIENTS
            s.defer(i, Outcome("deferred", reply, target.host))
            log.info(
                "%s to=<%s> relay=%s status=deferred (%s)",
                s.job.key,
                _addr(result.rcpt),
                session.name,
                reply,
            )
    return bool(delivered and too_many)


def _apply_failed(
    s: _Open, indexes: list[int], event: core.SessionFailed, target: Attempt, name: str
) -> None:
    text = f"{name} at {event.stage.value}: {event.reply}"
    log.info("%s session failed: %s", s.job.key, text)
    s.errors.append(text)
    by_index = dict(zip(indexes, event.results, strict=False)) if event.results else {}
    for i in indexes:
        result = by_index.get(i)
        if result is not None and result.final:
            state: OutcomeState = "delivered" if result.reply.is_positive else "failed"
            s.final[i] = Outcome(state, result.reply, target.host)
        else:
            reply = result.reply if result is not None else event.reply
            s.defer(i, Outcome("deferred", _as_transient(reply), target.host))
    if not event.retry_other_mx:
        s.stopped = True  # the message may have been delivered: no other host now


def _as_transient(reply: Reply) -> Reply:
    """A server's 5xx that is not final for the recipient (a refused greeting) becomes a
    deferral; its text is kept."""
    if reply.is_permanent:
        return Reply(451, "4.4.0" if not reply.enhanced else "4" + reply.enhanced[1:], reply.text)
    return reply


def _addr(rcpt: RcptArgs) -> str:
    return str(rcpt.path.mailbox) if rcpt.path.mailbox is not None else ""
