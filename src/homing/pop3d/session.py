"""Runs the sans-I/O POP3 core (proto.pop3.server) over a net Stream: reads, the autologout
timer, STLS, logins, the maildrop lock and snapshot, RETR from the store, UPDATE.

Every protocol decision is the core's; this module pumps bytes and answers the core's events
(the adapter contract in the core's docstring). The maildrop (RFC 1939 §8) is the account's
INBOX:

* Lock: one POP3 session per account at a time in this process (`Maildrops`); a second login
  gets "-ERR [IN-USE]" (RFC 2449 §8.1.1). IMAP sessions are not locked out: the store is
  shared, and POP3 only ever removes the messages its client deleted.
* Snapshot: at login, the UID and exact size of every message then in the INBOX. Messages
  that arrive during the session are not part of it (and so are never deleted by it); the
  next session sees them. Sizes are octet counts of the message as sent, CRLF line ends
  included: the store keeps messages with CRLF line ends, so its size is the wire size.
* UIDL: ``UIDVALIDITY.UID`` of the INBOX. Both come from the store and a UID is never reused
  under one UIDVALIDITY, so a UIDL is stable across sessions and never names another message
  (RFC 1939 §7).
* RETR: when a client pipelines RETR (or TOP) commands (RFC 2449 §6.6), the messages they
  name are read from the store in one statement (`Store.read_messages`) when the first of
  them is answered, and kept until theirs is; a batch is bounded by `READ_AHEAD` messages and
  `READ_AHEAD_BYTES`. Messages are never changed once stored, so a message read a moment
  early is the message; one expunged meanwhile (over IMAP) is simply not in the batch and
  gets "-ERR [SYS/TEMP]", as it would have without reading ahead.
* UPDATE: only after QUIT; the messages marked with DELE are expunged in one store
  transaction (`Store.expunge(..., force=True)`), so they also disappear from IMAP at once. A
  dropped connection, a timeout or a shutdown deletes nothing (RFC 1939 §6).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from homing.auth import Authenticator, ScramWatch
from homing.net.sessions import SessionIO
from homing.net.sessions import SessionRegistry as _Registry
from homing.net.stream import Stream, is_loopback
from homing.net.tls import TLSContexts
from homing.proto.pop3 import codes
from homing.proto.pop3 import server as core
from homing.store import Account, Store, StoreError
from homing.store.names import INBOX

log = logging.getLogger("homing.pop3")

#: Output gathered while answering pipelined commands is written once it reaches this size.
FLUSH_AT = 256 * 1024
#: Messages larger than this are read from the store in a worker thread, not on the loop.
BIG_MESSAGE = 1024 * 1024
#: Pipelined RETR/TOP commands whose messages are read with the one being answered.
READ_AHEAD = 16
#: The most octets (by snapshot size) one read-ahead batch holds. A batch is read on the
#: event loop, as any message up to `BIG_MESSAGE` is, so it is kept to a quarter of that.
READ_AHEAD_BYTES = 256 * 1024


def uidl(uidvalidity: int, uid: int) -> str:
    """The UIDL of a message (RFC 1939 §7): stable, never reused, 3-21 characters."""
    return f"{uidvalidity}.{uid}"


def settings_for(
    stream: Stream, *, implicit_tls: bool, starttls: bool, allow_plaintext_loopback: bool
) -> core.Settings:
    """The core's settings for one connection: passwords without TLS only from loopback, and
    only when the configuration allows it."""
    plaintext = allow_plaintext_loopback and is_loopback(stream.peer[0])
    return core.Settings(
        allow_plaintext_auth=plaintext,
        tls_active=implicit_tls,
        starttls=starttls and not implicit_tls,
    )


class Maildrops:
    """The maildrop locks of one process: the ids of accounts with a POP3 session open."""

    def __init__(self) -> None:
        self._held: set[int] = set()

    def acquire(self, account_id: int) -> bool:
        """Lock the account's maildrop; False when another session holds it."""
        if account_id in self._held:
            return False
        self._held.add(account_id)
        return True

    def release(self, account_id: int) -> None:
        self._held.discard(account_id)

    def __contains__(self, account_id: int) -> bool:
        return account_id in self._held


class SessionRegistry(_Registry["POP3Session"]):
    """The live POP3 sessions of this process (see homing.net.sessions)."""


@dataclass(frozen=True, slots=True)
class _Maildrop:
    account: Account
    mailbox_id: int
    sizes: dict[int, int]
    """UID -> size, for the messages of the snapshot."""


class POP3Session:
    """One POP3 connection (port 110 with STLS, or 995 with implicit TLS)."""

    def __init__(
        self,
        stream: Stream,
        *,
        settings: core.Settings,
        store: Store,
        authenticator: Authenticator,
        tls: TLSContexts | None,
        registry: SessionRegistry,
        maildrops: Maildrops,
        idle_timeout: float,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        self.stream = stream
        self.store = store
        self.auth = authenticator
        self.tls = tls
        self.registry = registry
        self.maildrops = maildrops
        self.idle_timeout = idle_timeout
        self.conn = core.ServerConnection(
            settings,
            nonce=nonce or (lambda: secrets.token_urlsafe(18)),
            scram_secret=authenticator.scram_secret(),
        )
        self.maildrop: _Maildrop | None = None
        self._locked: int | None = None  # the account id whose maildrop lock we hold
        self.retrieved = 0
        self.deleted = 0
        self._scram: ScramWatch | None = None
        self._ahead: dict[int, bytes] = {}  # read-ahead messages by UID, until RETR'd
        self._unflushed = 0  # message octets queued in the core since the last flush
        self._io = SessionIO(stream, self.conn)
        self._log_prefix = f"{stream.conn_id} {stream.service}"

    # ------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        self.registry.sessions.add(self)
        try:
            self.conn.start(codes.SHUTTING_DOWN if self.registry.draining else codes.GREETING)
            await self._loop()
        finally:
            self.registry.sessions.discard(self)
            self._unlock()
            if not self.stream.closing:
                await self.stream.close()

    def interrupt_if_idle(self) -> None:
        """Called on shutdown: wake a session that is waiting for a command."""
        self._io.interrupt()

    async def _loop(self) -> None:
        conn = self.conn
        progress = -1
        deadline = 0.0
        while True:
            event = conn.next_event()
            if event is core.NEED_DATA:
                await self._settle_scram()
                await self._flush()
                if conn.progress != progress:
                    progress = conn.progress
                    deadline = time.monotonic() + self.idle_timeout
                # A timeout is the RFC 1939 §3 autologout: no UPDATE. A session that was
                # busy when the drain began ends at its next read.
                data = await self._io.read(deadline, draining=self.registry.draining)
                if data is not None:
                    conn.receive_data(data)
            elif isinstance(event, core.Retrieve):
                await self._retrieve(event)
            elif isinstance(event, core.CheckPassword):
                await self._check_password(event)
            elif isinstance(event, core.NeedScramKeys):
                self._scram_keys(event)
            elif isinstance(event, core.Authenticated):
                await self._authenticated(event)
            elif isinstance(event, core.Update):
                await self._update(event)
            elif isinstance(event, core.StartTLS):
                await self._flush()
                if not await self._start_tls():
                    return
            elif isinstance(event, core.Closed):
                await self._settle_scram()
                await self._flush()
                log.info(
                    "%s close reason=%r user=%s retrieved=%d deleted=%d",
                    self._log_prefix,
                    event.reason,
                    self.maildrop.account.address if self.maildrop else "-",
                    self.retrieved,
                    self.deleted,
                )
                return

    # ------------------------------------------------------------------------- I/O

    async def _flush(self) -> None:
        self._unflushed = 0
        await self._io.send([self.conn.data_to_send()])

    async def _start_tls(self) -> bool:
        assert self.tls is not None  # the core offers STLS only when settings.starttls
        return await self._io.start_tls(self.tls.server_context(), log, "stls")

    # ------------------------------------------------------------------------- logins

    async def _check_password(self, event: core.CheckPassword) -> None:
        result = await self.auth.check_password(
            event.user, event.password, ip=self.stream.peer[0], service=self.stream.service
        )
        if result.account is None:
            if result.delay > 0:
                await self._flush()
                await asyncio.sleep(result.delay)
            # A locked-out IP or our own trouble: -ERR [SYS/TEMP], "try again later".
            temporary = result.locked_out or result.temporary
            self.conn.login_failed(temporary=temporary)
            return
        await self._open(result.account, event.mechanism)

    def _scram_keys(self, event: core.NeedScramKeys) -> None:
        # The core reports a failed proof only as an error (-ERR [AUTH] and its error count).
        count = self.conn.errors
        keys, self._scram = self.auth.begin_scram(event.user, ip=self.stream.peer[0], count=count)
        self.conn.scram_keys(keys)

    async def _settle_scram(self) -> None:
        """If a SCRAM exchange just failed, count it and impose its delay."""
        if self._scram is None:
            return
        delay = self.auth.scram_outcome(
            self._scram, self.conn.errors, ip=self.stream.peer[0], service=self.stream.service
        )
        if delay is not None:
            self._scram = None
            if delay > 0:
                await asyncio.sleep(delay)

    async def _authenticated(self, event: core.Authenticated) -> None:
        self._scram = None
        result = self.auth.scram_succeeded(
            event.user, ip=self.stream.peer[0], service=self.stream.service
        )
        if result.account is None:
            self.conn.login_failed(temporary=result.temporary)
            return
        await self._open(result.account, event.mechanism)

    async def _open(self, account: Account, mechanism: str) -> None:
        """Lock the account's maildrop and take its snapshot (RFC 1939 §4 -> §5)."""
        if not self.maildrops.acquire(account.id):
            log.info("%s login user=%s refused: maildrop in use", self._log_prefix, account.address)
            self.conn.login_failed(in_use=True)
            return
        self._locked = account.id
        loop = asyncio.get_running_loop()
        try:
            mailbox_id, uidvalidity, messages = await loop.run_in_executor(
                None, self._snapshot, account.id
            )
        except StoreError as err:
            self._unlock()
            log.error("%s cannot open the maildrop of %s: %s", self._log_prefix, account, err)
            self.conn.login_failed(temporary=True)
            return
        if self.conn.closed:
            self._unlock()
            return
        self.maildrop = _Maildrop(account, mailbox_id, dict(messages))
        self.conn.logged_in(messages, uidls=[uidl(uidvalidity, uid) for uid, _ in messages])
        log.info(
            "%s login user=%s mechanism=%s messages=%d",
            self._log_prefix,
            account.address,
            mechanism,
            len(messages),
        )

    def _snapshot(self, account_id: int) -> tuple[int, int, list[tuple[int, int]]]:
        """(INBOX id, UIDVALIDITY, [(uid, size), ...] in UID order); in a worker thread."""
        mailbox = self.store.get_mailbox(account_id, INBOX)
        if mailbox is None:
            raise StoreError(f"account {account_id} has no INBOX")
        messages = [(m.uid, m.size) for m in self.store.list_messages(mailbox.id)]
        return mailbox.id, mailbox.uidvalidity, messages

    def _unlock(self) -> None:
        """Release our maildrop lock (once: by then another session may hold the next one)."""
        if self._locked is not None:
            self.maildrops.release(self._locked)
            self._locked = None

    # ------------------------------------------------------------------------- TRANSACTION

    async def _retrieve(self, event: core.Retrieve) -> None:
        data = self._ahead.pop(event.uid, None)
        if data is None:
            try:
                data = await self._load(event.uid)
            except StoreError as err:
                log.error("%s cannot read uid=%d: %s", self._log_prefix, event.uid, err)
        if data is None:
            # Expunged meanwhile (over IMAP), or the store failed: -ERR [SYS/TEMP].
            self.conn.retrieve_failed()
            return
        self.conn.send_message(data)
        self.retrieved += 1
        # The core gathers the answers to pipelined commands; they go out in one write once
        # they are this big (or when the client's commands run out: NEED_DATA).
        self._unflushed += len(data)
        if self._unflushed >= FLUSH_AT:
            await self._flush()

    async def _load(self, uid: int) -> bytes | None:
        """Message `uid` from the store, and with it those of the RETR/TOP commands pipelined
        behind its own (kept in `_ahead`); None if it is no longer there."""
        maildrop = self.maildrop
        assert maildrop is not None  # the core sends Retrieve only in TRANSACTION
        sizes = maildrop.sizes
        size = sizes.get(uid, 0)
        if size > BIG_MESSAGE:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                None, self.store.read_message, maildrop.mailbox_id, uid
            )
        batch = [uid]
        for next_uid in self.conn.queued_retrievals(READ_AHEAD):
            size += sizes.get(next_uid, 0)
            if size > READ_AHEAD_BYTES:
                break
            batch.append(next_uid)
        found = self.store.read_messages(maildrop.mailbox_id, batch)
        data = found.pop(uid, None)
        self._ahead = found
        return data

    async def _update(self, event: core.Update) -> None:
        """RFC 1939 §6: remove the messages marked as deleted, release the maildrop."""
        maildrop = self.maildrop
        assert maildrop is not None
        ok = True
        if event.deleted_uids:
            try:
                removed = await asyncio.wrap_future(
                    self.store.expunge(maildrop.mailbox_id, event.deleted_uids, force=True)
                )
                self.deleted = len(removed)
            except StoreError as err:
                log.error("%s update failed: %s", self._log_prefix, err)
                ok = False
        self._unlock()
        self.conn.update_done(ok)
