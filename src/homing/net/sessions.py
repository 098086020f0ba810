"""What the SMTP, POP3 and IMAP adapters share around their sans-I/O cores.

- `SessionRegistry`: the live sessions of one service in a process, so shutdown can reach
  the idle ones at once. Each session registers itself while it runs and answers
  `interrupt_if_idle()` with its protocol's goodbye (421 4.3.2, -ERR [SYS/TEMP], BYE);
  sessions in the middle of a message or an update finish it first and then see `draining`.
- `SessionIO`: a session's reads, writes and TLS handshake, with every way they can end
  (deadline, shutdown, a connection gone) told to the core in the core's own terms.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from homing.net.stream import Stream


class Interruptible(Protocol):
    def interrupt_if_idle(self) -> None: ...


S = TypeVar("S", bound=Interruptible)


class SessionRegistry(Generic[S]):
    def __init__(self) -> None:
        self.sessions: set[S] = set()
        self.draining = False

    def drain(self) -> None:
        """Stop: wake every session waiting for a command; the others finish first."""
        self.draining = True
        for session in list(self.sessions):
            session.interrupt_if_idle()


class Core(Protocol):
    """What a server core (`ServerConnection` of proto.smtp, proto.pop3, proto.imap) is told
    by `SessionIO`. Each answers in its protocol: `timed_out()` with 421 4.4.2 / -ERR / BYE
    autologout, `shutdown()` with 421 4.3.2 / -ERR [SYS/TEMP] / BYE, and end of input
    (`receive_data(b"")`) by closing."""

    def receive_data(self, data: bytes) -> None: ...

    def timed_out(self) -> None: ...

    def shutdown(self) -> None: ...

    def tls_established(self) -> None: ...


class SessionIO:
    """One session's stream as its core needs it.

    The session's task waits for its peer only inside `read()` or a `waiting()` block. While
    it does, `interrupt()` (shutdown: `SessionRegistry.drain` calls the session's
    `interrupt_if_idle`, which decides whether it is idle) cancels the task, and the wait
    ends with `core.shutdown()` instead of CancelledError. Any other cancellation (the
    listener stopping the session) propagates as usual.
    """

    def __init__(self, stream: Stream, core: Core) -> None:
        self.stream = stream
        self.core = core
        self._waiter: asyncio.Task[object] | None = None  # the task waiting for the peer
        self._interrupted = False
        self._log_prefix = f"{stream.conn_id} {stream.service}"

    # ------------------------------------------------------------------------- waiting

    def interrupt(self) -> None:
        """Wake the session if it is waiting for its peer; else nothing (a busy session
        sees `draining` when it next reads). Once is enough: a second call does nothing."""
        if self._waiter is not None and not self._interrupted:
            self._interrupted = True
            self._waiter.cancel()

    def waiting(self) -> _Waiting:
        """A block in which the session waits for its peer and `interrupt()` may end the
        wait: the block is then left at once, after `core.shutdown()`, and the code after
        it runs."""
        return _Waiting(self)

    async def read(self, deadline: float, *, draining: bool = False) -> bytes | None:
        """Bytes from the peer (b"" at end of input, or when the connection broke), or None
        when the core has been told why there are none: the `deadline` (`time.monotonic()`)
        passed (`timed_out()`), or shutdown (`shutdown()`): an `interrupt()`, or
        `draining` when the session was busy as the drain began and so was not woken."""
        if draining:
            self.core.shutdown()
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.core.timed_out()
            return None
        with self.waiting():
            try:
                return await self.stream.read(timeout=remaining)
            except TimeoutError:  # first: TimeoutError is an OSError
                self.core.timed_out()
                return None
            except (ConnectionError, OSError):
                return b""
        return None  # interrupted: the core has been told of the shutdown

    # ------------------------------------------------------------------------- output, TLS

    async def send(self, pieces: Iterable[bytes]) -> None:
        """Write `pieces` in order (empty ones are skipped). When the connection is gone,
        the core gets end of input instead, and closes."""
        try:
            for piece in pieces:
                if piece:
                    await self.stream.write(piece)
        except (ConnectionError, OSError):
            self.core.receive_data(b"")

    async def start_tls(self, context: ssl.SSLContext, log: logging.Logger, name: str) -> bool:
        """The server side of STARTTLS (STLS in POP3) after its go-ahead: the handshake, then
        `core.tls_established()`. False when it failed (logged on `log` as "`name` failed");
        the connection is then gone."""
        try:
            await self.stream.start_tls(context)
        except (ConnectionError, OSError, TimeoutError) as err:
            log.info("%s %s failed: %s", self._log_prefix, name, err)
            return False
        self.core.tls_established()
        log.debug("%s tls %s", self._log_prefix, self.stream.tls)
        return True


class _Waiting:
    """`SessionIO.waiting()`: marks the current task as waiting for the peer, and turns an
    `interrupt()` into `core.shutdown()`."""

    __slots__ = ("_io",)

    def __init__(self, io: SessionIO) -> None:
        self._io = io

    def __enter__(self) -> None:
        self._io._waiter = asyncio.current_task()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        io = self._io
        task, io._waiter = io._waiter, None
        interrupted, io._interrupted = io._interrupted, False
        if not interrupted or kind is None or not issubclass(kind, asyncio.CancelledError):
            return False
        if task is not None:
            # The cancellation was ours and ends here: withdraw it, as asyncio asks of code
            # that absorbs a cancellation (`asyncio.timeout` and TaskGroup count them).
            task.uncancel()
        io.core.shutdown()
        return True
