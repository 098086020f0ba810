"""Runs the sans-I/O SMTP server core over a net Stream: reads, timers, TLS, policy, delivery.

This module only pumps bytes and awaits; every protocol decision is in proto.smtp.server and
every routing decision in the policy / router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from homing.mail import trace
from homing.mail.reply import Reply
from homing.net.sessions import SessionIO
from homing.net.sessions import SessionRegistry as _Registry
from homing.net.stream import Stream
from homing.net.tls import TLSContexts
from homing.proto.smtp import codes
from homing.proto.smtp import server as core
from homing.router import Envelope, Resolution, Router
from homing.store import StoreError

log = logging.getLogger("homing.smtp")


@dataclass(frozen=True, slots=True)
class Timeouts:
    command: float
    data: float
    greet_pause: float = 0.0


class SessionRegistry(_Registry["SMTPSession"]):
    """The live SMTP sessions of this process (see homing.net.sessions)."""


class SMTPSession:
    """One SMTP connection on port 25 (receive for local domains)."""

    def __init__(
        self,
        stream: Stream,
        *,
        settings: core.Settings,
        router: Router,
        tls: TLSContexts | None,
        timeouts: Timeouts,
        registry: SessionRegistry,
        nonce: Callable[[], str] | None = None,
        scram_secret: bytes | None = None,
    ) -> None:
        self.stream = stream
        self.conn = core.ServerConnection(settings, nonce=nonce, scram_secret=scram_secret)
        self.router = router
        self.tls = tls
        self.timeouts = timeouts
        self.registry = registry
        self.resolved: dict[str, Resolution] = {}
        self._io = SessionIO(stream, self.conn)
        self._log_prefix = f"{stream.conn_id} {stream.service}"

    # ------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        self.registry.sessions.add(self)
        try:
            await self._greet()
            await self._loop()
        finally:
            self.registry.sessions.discard(self)
            if not self.stream.closing:
                await self.stream.close()

    def interrupt_if_idle(self) -> None:
        """Called on shutdown: wake a session that is waiting for a command (not one in the
        middle of a message: it is told after the message, see `MessageReceived`)."""
        if not self.conn.in_message:
            self._io.interrupt()

    async def _greet(self) -> None:
        conn = self.conn
        if self.registry.draining:
            conn.start(codes.SHUTTING_DOWN)
            return
        pause = self.timeouts.greet_pause
        if pause > 0:
            try:
                data = await self.stream.read(timeout=pause)
                conn.receive_data(data or b"")
            except TimeoutError:
                pass
        elif self.stream.buffered():
            conn.receive_data(await self.stream.read())
        conn.start()

    async def _loop(self) -> None:
        conn = self.conn
        deadline_progress = -1
        deadline = 0.0
        while True:
            event = conn.next_event()
            if event is core.NEED_DATA:
                await self._flush()
                if conn.progress != deadline_progress or conn.reading_data:
                    deadline_progress = conn.progress
                    limit = self.timeouts.data if conn.reading_data else self.timeouts.command
                    deadline = time.monotonic() + limit
                # A session busy when the drain began (a password check, say) was not woken:
                # it sees the drain here, unless a message is under way (that one finishes
                # first and is told after it, as the idle ones are by `interrupt_if_idle`).
                draining = self.registry.draining and not conn.in_message
                data = await self._io.read(deadline, draining=draining)
                if data is None:
                    continue
                conn.receive_data(data)
            elif isinstance(event, core.MailFrom):
                conn.respond(self.on_mail(event))
            elif isinstance(event, core.RcptTo):
                conn.respond(self.on_rcpt(event))
            elif isinstance(event, core.MessageReceived):
                conn.respond(await self.on_message(event))
                if self.registry.draining:
                    conn.shutdown()
            elif isinstance(event, core.StartTLS):
                await self._flush()
                if not await self._start_tls():
                    return
            elif isinstance(event, core.AuthPassword | core.AuthScramKeys | core.AuthResult):
                await self.on_auth(event)
            elif isinstance(event, core.Helo):
                log.debug("%s helo=%s", self._log_prefix, event.name)
            elif isinstance(event, core.Closed):
                await self._flush()
                log.log(
                    logging.DEBUG if event.reason == "quit" else logging.INFO,
                    "%s close reason=%r messages=%d",
                    self._log_prefix,
                    event.reason,
                    conn.messages,
                )
                return

    async def _flush(self) -> None:
        await self._io.send([self.conn.data_to_send()])

    async def _start_tls(self) -> bool:
        assert self.tls is not None
        return await self._io.start_tls(self.tls.server_context(), log, "starttls")

    # ------------------------------------------------------------------------- policy

    def on_mail(self, event: core.MailFrom) -> Reply:
        self.resolved.clear()
        log.debug("%s mail from=%s", self._log_prefix, event.args.path)
        return codes.SENDER_OK

    def on_rcpt(self, event: core.RcptTo) -> Reply:
        mailbox = event.args.path.mailbox
        if mailbox is None:
            return codes.ADDRESS_SYNTAX
        try:
            res = self.router.resolve(mailbox)
        except StoreError as err:
            log.error("%s store error in RCPT: %s", self._log_prefix, err)
            return codes.STORE_UNAVAILABLE
        if res.accepted:
            self.resolved[str(event.args.path)] = res
        log.log(
            logging.DEBUG if res.accepted else logging.INFO,
            "%s rcpt to=%s result=%d",
            self._log_prefix,
            mailbox,
            res.reply.code,
        )
        return res.reply

    async def on_auth(
        self, event: core.AuthPassword | core.AuthScramKeys | core.AuthResult
    ) -> None:
        """Port 25 offers no AUTH, so the core never asks (see smtpd.submission)."""
        raise RuntimeError(f"unexpected {event!r} on {self.stream.service}")

    def envelope(self, event: core.MessageReceived) -> Envelope:
        """The accepted recipients of this message, each with where it goes."""
        mailbox = event.mail.path.mailbox
        envelope = Envelope(mail_from="" if mailbox is None else str(mailbox), mail=event.mail)
        for rcpt in event.rcpts:
            res = self.resolved.get(str(rcpt.path))
            if res is None and rcpt.path.mailbox is not None:
                res = self.router.resolve(rcpt.path.mailbox)
            if res is not None and res.accepted:
                envelope.rcpts.append((str(rcpt.path.mailbox), res))
                envelope.rcpt_args.append(rcpt)
        self.resolved.clear()
        return envelope

    def trace_info(
        self, event: core.MessageReceived, queue_id: str, *, hide: bool = False
    ) -> trace.TraceInfo:
        return trace.TraceInfo(
            helo="unknown" if hide else self.conn.helo or "unknown",
            client_ip="127.0.0.1" if hide else self.stream.peer[0],
            hostname=self.conn.settings.hostname,
            queue_id=queue_id,
            protocol=trace.with_protocol(
                extended=self.conn.extended,
                tls=self.conn.tls,
                auth=self.conn.user is not None,
                utf8=event.mail.smtputf8,
            ),
            tls=self._tls_text(),
            hidden=hide,
        )

    async def on_message(self, event: core.MessageReceived) -> Reply:
        queue_id = trace.new_queue_id()
        envelope = self.envelope(event)
        loop_reply = self.router.loop_check(event.data, envelope)
        if loop_reply is not None:
            log.info("%s id=%s rejected loop", self._log_prefix, queue_id)
            return loop_reply
        return await self.store_message(event.data, envelope, self.trace_info(event, queue_id))

    async def store_message(
        self, message: bytes, envelope: Envelope, info: trace.TraceInfo
    ) -> Reply:
        """Hand the message to the router; the 250 only once it is on disk."""
        queue_id = info.queue_id
        try:
            stored = await asyncio.wrap_future(self.router.deliver(message, envelope, info))
        except StoreError as err:
            log.error("%s id=%s store error: %s", self._log_prefix, queue_id, err)
            return codes.STORE_UNAVAILABLE
        except Exception:
            log.exception("%s id=%s delivery failed", self._log_prefix, queue_id)
            return codes.LOCAL_ERROR
        log.info(
            "%s id=%s from=<%s> size=%d rcpts=%d copies=%d result=250",
            self._log_prefix,
            queue_id,
            envelope.mail_from,
            len(message),
            len(envelope.rcpts),
            len(stored),
        )
        return codes.MESSAGE_ACCEPTED.with_text(f"OK: queued as {queue_id}")

    def _tls_text(self) -> str | None:
        info = self.stream.tls
        if info is None:
            return None
        return f"version={info.version} cipher={info.cipher}"
