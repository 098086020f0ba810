"""Message submission (RFC 6409) on ports 587 (STARTTLS) and 465 (implicit TLS, RFC 8314).

The same SMTP core and session loop as port 25, with a different policy: AUTH is required
before MAIL; the envelope sender and the From header must be the account's own addresses; any
recipient may be given (this is the one way Homing relays); and the message gets the RFC 6409
§8 fix-ups (Message-ID, Date) and a Received field recording the authenticated submission.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from homing.auth import Authenticator
from homing.config.model import SubmissionConfig
from homing.mail import trace
from homing.mail.address import AddressError, parse_mailbox
from homing.mail.headers import HeaderError, add_header_fields, from_addresses, missing_fixups
from homing.mail.reply import Reply
from homing.net.stream import Stream
from homing.net.tls import TLSContexts
from homing.proto.smtp import codes
from homing.proto.smtp import server as core
from homing.router import Resolution, Router
from homing.smtpd.session import SessionRegistry, SMTPSession, Timeouts
from homing.store import Account, StoreError

log = logging.getLogger("homing.submission")


class SubmissionSession(SMTPSession):
    """One connection on 587 or 465 from a user's mail program."""

    def __init__(
        self,
        stream: Stream,
        *,
        settings: core.Settings,
        router: Router,
        tls: TLSContexts | None,
        timeouts: Timeouts,
        registry: SessionRegistry,
        auth: Authenticator,
        submission: SubmissionConfig,
    ) -> None:
        super().__init__(
            stream,
            settings=settings,
            router=router,
            tls=tls,
            timeouts=timeouts,
            registry=registry,
            nonce=lambda: secrets.token_urlsafe(18),
            scram_secret=auth.scram_secret(),
        )
        self.auth = auth
        self.policy = submission
        self.account: Account | None = None

    # ------------------------------------------------------------------------- AUTH

    async def on_auth(
        self, event: core.AuthPassword | core.AuthScramKeys | core.AuthResult
    ) -> None:
        ip = self.stream.peer[0]
        service = self.stream.service
        if isinstance(event, core.AuthPassword):
            result = await self.auth.check_password(
                event.user, event.password, ip=ip, service=service
            )
            if result.delay:
                await asyncio.sleep(result.delay)  # brute-force slowdown after the third failure
            self.account = result.account
            self.conn.auth_verdict(
                result.ok, locked_out=result.locked_out, temporary=result.temporary
            )
        elif isinstance(event, core.AuthScramKeys):
            locked = self.auth.locked_out(ip)
            keys = None if locked else self.auth.scram_keys(event.user)
            self.conn.scram_keys(keys, locked_out=locked)
        elif event.ok and event.user is not None:
            self.account = self.auth.scram_succeeded(event.user, ip=ip, service=service).account
        else:
            delay = self.auth.scram_failed(event.user or "", ip=ip, service=service)
            if delay:
                await asyncio.sleep(delay)

    # ------------------------------------------------------------------------- policy

    def on_mail(self, event: core.MailFrom) -> Reply:
        self.resolved.clear()
        mailbox = event.args.path.mailbox
        account = self.account
        if account is None:
            return codes.AUTH_REQUIRED
        if mailbox is not None and not self.router.owns(account, mailbox):
            log.info(
                "%s sender refused user=%s from=%s", self._log_prefix, account.address, mailbox
            )
            return codes.SENDER_NOT_OWNED
        return codes.SENDER_OK

    def on_rcpt(self, event: core.RcptTo) -> Reply:
        mailbox = event.args.path.mailbox
        if mailbox is None:
            return codes.ADDRESS_SYNTAX
        try:
            local = not mailbox.domain or self.router.is_local_domain(mailbox.domain)
        except StoreError:
            return codes.STORE_UNAVAILABLE
        if local:
            return super().on_rcpt(event)
        if not self.router.forwarding:
            return codes.LOCAL_ERROR.with_text("Relaying is not available yet, try again later")
        res = Resolution(codes.RECIPIENT_OK, remote=(str(mailbox),))
        self.resolved[str(event.args.path)] = res
        log.info("%s rcpt to=%s result=250 relay", self._log_prefix, mailbox)
        return res.reply

    async def on_message(self, event: core.MessageReceived) -> Reply:
        account = self.account
        assert account is not None  # MAIL needed AUTH
        message = event.data
        refusal = self._check_from(account, message)
        if refusal is not None:
            self.resolved.clear()
            return refusal
        queue_id = trace.new_queue_id()
        message = self._fix_up(message, queue_id)
        envelope = self.envelope(event)
        info = self.trace_info(event, queue_id, hide=self.policy.hide_client)
        return await self.store_message(message, envelope, info)

    def _check_from(self, account: Account, message: bytes) -> Reply | None:
        """The From header names only the account's addresses (unless from_check = "off")."""
        if self.policy.from_check == "off":
            return None
        try:
            authors = from_addresses(message)
        except HeaderError as err:
            return codes.FROM_NOT_OWNED.with_text(str(err))
        for author in authors:
            try:
                mailbox = parse_mailbox(author)
            except AddressError:
                return codes.FROM_NOT_OWNED.with_text("From address is not valid")
            if not self.router.owns(account, mailbox):
                return codes.FROM_NOT_OWNED
        return None

    def _fix_up(self, message: bytes, queue_id: str) -> bytes:
        """RFC 6409 §8.2 and §8.3: add Date and Message-ID when the client left them out."""
        need_id, need_date = missing_fixups(message)
        fields = b""
        if need_date:
            fields += f"Date: {trace.rfc5322_date(self.router.clock.now())}\r\n".encode()
        if need_id:
            token = f"{queue_id}.{secrets.token_hex(6)}"
            fields += f"Message-ID: <{token}@{self.conn.settings.hostname}>\r\n".encode()
        return add_header_fields(message, fields)
