"""Runs the sans-I/O IMAP core (proto.imap.server) over a net Stream: reads, timers, STARTTLS,
logins, and every store call a command needs.

Every protocol decision is the core's; this module pumps bytes and answers the core's events
(the adapter contract in the core's docstring) with the store.

The selected mailbox
--------------------
A session keeps the metadata of every message of its selected mailbox (`MessageInfo`: UID,
MODSEQ, flags, internal date, size), read once at SELECT and kept current by syncs, so FETCH
of flags, sizes or dates and SEARCH on them cost no SQL. A sync asks the store for what changed
since the HIGHESTMODSEQ last seen (`list_messages(changed_since=...)`, `expunged_since`) and
hands it to the core, which decides when the client may hear of it. Syncs happen when the
store published a change to the mailbox (`MailboxWatcher`, fed by `Store.subscribe`; deliveries
and other sessions of this process) before a command completes, on every NOOP / CHECK / IDLE,
and every `POLL_INTERVAL` seconds during IDLE (changes made by other processes, which publish
nothing here).

Big reads run in worker threads, so one session's FETCH of 10,000 messages never stalls the
others: SELECT of a large mailbox, FETCH in chunks of `CHUNK` messages (metadata is already
here; ENVELOPE/BODYSTRUCTURE and bodies come from `Store.read_parsed` / `read_split`), and
SEARCH on message text. Rendering happens on the loop, chunk by chunk, and output is flushed
whenever `server.FLUSH_AT` octets are queued.

\\Recent (IMAP4rev1 only, RFC 3501 §2.3.2) is kept in memory per process (`RecentTracker`): the
first IMAP4rev1 session to see a message after it arrived gets it as \\Recent. After a restart
no message is recent until new ones arrive.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

from homing.auth import Authenticator
from homing.mail.mime import parse_message
from homing.net.stream import Stream
from homing.net.tls import TLSContexts
from homing.proto.imap import responses as r
from homing.proto.imap import server as core
from homing.proto.imap.fetch import MessageView
from homing.proto.imap.grammar import Limits
from homing.proto.imap.search import SearchError, SearchView, evaluate
from homing.store import (
    Account,
    AlreadyExists,
    Change,
    InvalidName,
    MailboxInfo,
    MessageInfo,
    NewMessage,
    NotFound,
    Store,
    StoreError,
)

log = logging.getLogger("homing.imap")

_T = TypeVar("_T")

#: Messages loaded and rendered per worker-thread call during a FETCH.
CHUNK = 1000
#: Octets of message data per worker-thread call during a FETCH of bodies.
CHUNK_BYTES = 4 * 1024 * 1024
#: FETCHes of at most this many messages without message data run on the loop.
SMALL_FETCH = 64
#: Threads for the big store reads of all IMAP sessions (each keeps its SQLite connection).
READ_THREADS = 4
#: Mailboxes with more messages than this are read in a worker thread at SELECT.
BIG_MAILBOX = 1000
#: Seconds between checks for changes made by other processes while a client idles.
POLL_INTERVAL = 30.0
#: Seconds between "* OK Still here" lines during IDLE (NAT and firewall keep-alive).
KEEPALIVE_INTERVAL = 120.0
#: Seconds a client may take to log in (RFC 9051 §5.4 sets no limit before login).
LOGIN_TIMEOUT = 180.0
#: APPENDs larger than this are parsed in a worker thread.
BIG_MESSAGE = 1024 * 1024

_STORE_MODES = {"replace": "set", "add": "add", "remove": "remove"}


class SessionRegistry:
    """The live IMAP sessions of a process, so shutdown can reach the idle ones at once."""

    def __init__(self) -> None:
        self.sessions: set[IMAPSession] = set()
        self.draining = False

    def drain(self) -> None:
        """Sessions waiting for a command (or idling) get BYE and close now."""
        self.draining = True
        for session in list(self.sessions):
            session.interrupt_if_idle()


class MailboxWatcher:
    """Tells sessions when the store committed a change to a mailbox they have selected.

    `Store.subscribe` calls back on the writer thread after each commit; the watcher hops to
    the event loop and calls every callback registered for the mailboxes involved.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._watchers: dict[int, set[Callable[[], None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def watch(self, mailbox_id: int, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (on the loop) after each commit touching `mailbox_id`; returns the
        function that stops it."""
        if self._unsubscribe is None:
            self._loop = asyncio.get_running_loop()
            self._unsubscribe = self._store.subscribe(self._committed)
        self._watchers.setdefault(mailbox_id, set()).add(callback)

        def unwatch() -> None:
            callbacks = self._watchers.get(mailbox_id)
            if callbacks is not None:
                callbacks.discard(callback)
                if not callbacks:
                    del self._watchers[mailbox_id]

        return unwatch

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _committed(self, changes: list[Change]) -> None:  # on the store's writer thread
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        ids = {c.mailbox_id for c in changes}
        try:
            loop.call_soon_threadsafe(self._dispatch, ids)
        except RuntimeError:  # the loop closed meanwhile (shutdown)
            pass

    def _dispatch(self, mailbox_ids: set[int]) -> None:
        for mailbox_id in mailbox_ids:
            for callback in list(self._watchers.get(mailbox_id, ())):
                callback()


class RecentTracker:
    """Which messages are \\Recent (RFC 3501 §2.3.2): for each mailbox, the highest UID some
    session has been told about. Messages above it are recent for the next session to see them.
    In memory: after a restart, a mailbox's existing messages are not recent."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def claim(
        self, mailbox_id: int, uids: Iterable[int], *, uidnext: int | None = None
    ) -> list[int]:
        """The UIDs among `uids` that are recent for the caller, who is now their first
        viewer. `uidnext` initialises a mailbox seen for the first time (nothing recent)."""
        seen = self._seen.get(mailbox_id)
        if seen is None:
            seen = self._seen[mailbox_id] = (uidnext or 1) - 1
        recent = [uid for uid in uids if uid > seen]
        if recent:
            self._seen[mailbox_id] = max(recent)
        return recent

    def count(self, mailbox_id: int, uids: Iterable[int]) -> int:
        """How many of `uids` are recent, without claiming them (EXAMINE, STATUS)."""
        seen = self._seen.get(mailbox_id)
        return 0 if seen is None else sum(1 for uid in uids if uid > seen)


class _Selected:
    """The selected mailbox on the adapter side: its id and message metadata."""

    __slots__ = ("highestmodseq", "id", "messages", "unwatch")

    def __init__(self, mailbox: MailboxInfo, messages: Iterable[MessageInfo]) -> None:
        self.id = mailbox.id
        self.highestmodseq = mailbox.highestmodseq
        self.messages: dict[int, MessageInfo] = {m.uid: m for m in messages}
        self.unwatch: Callable[[], None] = lambda: None


class IMAPSession:
    """One IMAP connection (port 143 with STARTTLS, or 993 with implicit TLS)."""

    def __init__(
        self,
        stream: Stream,
        *,
        settings: core.Settings,
        store: Store,
        authenticator: Authenticator,
        tls: TLSContexts | None,
        registry: SessionRegistry,
        watcher: MailboxWatcher,
        recent: RecentTracker,
        idle_timeout: float,
        login_timeout: float = LOGIN_TIMEOUT,
        executor: Executor | None = None,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        """`executor` runs the big store reads (None: the loop's default executor)."""
        self.stream = stream
        self.executor = executor
        self.store = store
        self.auth = authenticator
        self.tls = tls
        self.registry = registry
        self.watcher = watcher
        self.recent = recent
        self.idle_timeout = idle_timeout
        self.login_timeout = login_timeout
        self.conn = core.ServerConnection(
            settings,
            nonce=nonce or (lambda: secrets.token_urlsafe(18)),
            scram_secret=authenticator.scram_secret(),
        )
        self.account: Account | None = None
        self.selected: _Selected | None = None
        self._dirty = asyncio.Event()
        self._scram_user: str | None = None
        self._scram_failures = 0
        self._scram_locked = False
        self._task: asyncio.Task[None] | None = None
        self._read_task: asyncio.Task[bytes] | None = None
        self._reading = False
        self._interrupted = False
        self._log_prefix = f"{stream.conn_id} {stream.service}"
        self.commands = 0

    # ------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        self._task = asyncio.current_task()
        self.registry.sessions.add(self)
        try:
            self.conn.start(shutting_down=self.registry.draining)
            await self._loop()
        finally:
            self.registry.sessions.discard(self)
            self._deselect()
            if self._read_task is not None:
                self._read_task.cancel()
            if not self.stream.closing:
                await self.stream.close()

    def interrupt_if_idle(self) -> None:
        """Called on shutdown: wake a session that is waiting for a command."""
        if self._reading and self._task is not None:
            self._interrupted = True
            self._task.cancel()

    async def _loop(self) -> None:
        conn = self.conn
        progress = -1
        deadline = 0.0
        while True:
            event = conn.next_event()
            if event is core.NEED_DATA:
                await self._settle_scram()
                await self._flush()
                if conn.idling:
                    data = await self._idle()
                else:
                    if conn.progress != progress:
                        progress = conn.progress
                        timeout = self.idle_timeout if conn.user else self.login_timeout
                        deadline = time.monotonic() + timeout
                    data = await self._read(deadline)
                if data is not None:
                    conn.receive_data(data)
                continue
            if isinstance(event, core.Closed):
                await self._settle_scram()
                await self._flush()
                log.info(
                    "%s close reason=%r user=%s commands=%d",
                    self._log_prefix,
                    event.reason,
                    self.account.address if self.account else "-",
                    self.commands,
                )
                return
            if isinstance(event, core.StartTLS):
                await self._flush()
                if not await self._start_tls():
                    return
                continue
            if isinstance(event, core.CheckPassword):
                await self._check_password(event)
            elif isinstance(event, core.NeedScramKeys):
                self._scram_keys(event)
            elif isinstance(event, core.Authenticated):
                self._authenticated(event)
            elif isinstance(event, core.Idle):
                pass  # the next NEED_DATA waits in _idle()
            else:
                self.commands += 1
                await self._store_event(event)

    async def _store_event(self, event: core.Event) -> None:
        """Answer a store event; store trouble becomes NO [UNAVAILABLE] (and a log line)."""
        try:
            await self._dispatch(event)
        except StoreError as err:
            log.error("%s store error on %s: %s", self._log_prefix, type(event).__name__, err)
            self.conn.failed(r.TEMPORARY_FAILURE)

    async def _dispatch(self, event: core.Event) -> None:
        if isinstance(event, core.SelectMailbox):
            await self._select(event)
        elif isinstance(event, core.CreateMailbox):
            await self._create(event)
        elif isinstance(event, core.DeleteMailbox):
            await self._delete(event)
        elif isinstance(event, core.RenameMailbox):
            await self._rename(event)
        elif isinstance(event, core.SetSubscribed):
            await self._subscribe(event)
        elif isinstance(event, core.ListMailboxes):
            await self._list(event)
        elif isinstance(event, core.GetStatus):
            await self._status(event)
        elif isinstance(event, core.AppendMessages):
            await self._append(event)
        elif isinstance(event, core.FetchMessages):
            await self._fetch(event)
        elif isinstance(event, core.SearchMessages):
            await self._search(event)
        elif isinstance(event, core.StoreFlags):
            await self._store_flags(event)
        elif isinstance(event, core.CopyMessages):
            await self._copy(event)
        elif isinstance(event, core.ExpungeMessages):
            await self._expunge(event)
        elif isinstance(event, core.Poll):
            await self._sync(force=True)
            self.conn.polled()
        else:
            raise RuntimeError(f"unexpected event {event!r}")

    # ------------------------------------------------------------------------- I/O

    async def _read(self, deadline: float) -> bytes | None:
        """Bytes from the peer; None when the core has been told of a timeout or shutdown."""
        if self.registry.draining:
            self.conn.shutdown()
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.conn.timed_out()
            return None
        self._reading = True
        try:
            return await self.stream.read(timeout=remaining)
        except TimeoutError:
            self.conn.timed_out()
            return None
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            self._interrupted = False
            self.conn.shutdown()
            return None
        except (ConnectionError, OSError):
            return b""
        finally:
            self._reading = False

    async def _idle(self) -> bytes | None:
        """During IDLE: wait for the client's DONE while passing on store changes as they
        come, polling now and then for other processes' changes, and saying we are alive."""
        if self.registry.draining:
            self.conn.shutdown()
            return None
        if self._read_task is None:
            self._read_task = asyncio.ensure_future(self.stream.read())
        read = self._read_task
        last_keepalive = time.monotonic()
        self._reading = True
        try:
            while True:
                dirty = asyncio.ensure_future(self._dirty.wait())
                try:
                    done, _ = await asyncio.wait(
                        {read, dirty}, timeout=POLL_INTERVAL, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    dirty.cancel()
                if read in done:
                    self._read_task = None
                    try:
                        return read.result()
                    except (ConnectionError, OSError):
                        return b""
                try:
                    await self._sync(force=not done)
                except StoreError as err:  # try again at the next change or poll
                    log.error("%s store error while idling: %s", self._log_prefix, err)
                if time.monotonic() - last_keepalive >= KEEPALIVE_INTERVAL:
                    last_keepalive = time.monotonic()
                    self.conn.keepalive()
                await self._flush()
                if self.conn.closed:
                    return None
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            self._interrupted = False
            self.conn.shutdown()
            return None
        finally:
            self._reading = False

    async def _flush(self) -> None:
        out = self.conn.data_to_send()
        if not out:
            return
        try:
            await self.stream.write(out)
        except (ConnectionError, OSError):
            self.conn.receive_data(b"")

    async def _start_tls(self) -> bool:
        assert self.tls is not None  # the core offers STARTTLS only when settings.starttls
        try:
            await self.stream.start_tls(self.tls.server_context())
        except (ConnectionError, OSError, TimeoutError) as err:
            log.info("%s starttls failed: %s", self._log_prefix, err)
            return False
        self.conn.tls_established()
        log.debug("%s tls %s", self._log_prefix, self.stream.tls)
        return True

    async def _in_thread(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ------------------------------------------------------------------------- logins

    async def _check_password(self, event: core.CheckPassword) -> None:
        result = await self.auth.check_password(
            event.user, event.password, ip=self.stream.peer[0], service=self.stream.service
        )
        if result.account is None:
            if result.delay > 0:
                await self._flush()
                await asyncio.sleep(result.delay)
            self.conn.login_failed(temporary=result.locked_out or result.temporary)
            return
        self._logged_in(result.account, event.mechanism)

    def _scram_keys(self, event: core.NeedScramKeys) -> None:
        locked = self.auth.locked_out(self.stream.peer[0])
        self._scram_user = event.user
        self._scram_failures = self.conn.login_failures
        self._scram_locked = locked
        try:
            keys = None if locked else self.auth.scram_keys(event.user)
        except StoreError as err:
            log.error("%s store error looking up SCRAM keys: %s", self._log_prefix, err)
            keys = None
        self.conn.scram_keys(keys)

    async def _settle_scram(self) -> None:
        """If a SCRAM exchange just failed, count it and impose its delay."""
        user = self._scram_user
        if user is None or self.conn.login_failures <= self._scram_failures:
            return
        self._scram_user = None
        if self._scram_locked:
            return
        delay = self.auth.scram_failed(user, ip=self.stream.peer[0], service=self.stream.service)
        if delay > 0:
            await asyncio.sleep(delay)

    def _authenticated(self, event: core.Authenticated) -> None:
        self._scram_user = None
        result = self.auth.scram_succeeded(
            event.user, ip=self.stream.peer[0], service=self.stream.service
        )
        if result.account is None:
            self.conn.login_failed(temporary=result.temporary)
            return
        self._logged_in(result.account, event.mechanism)

    def _logged_in(self, account: Account, mechanism: str) -> None:
        self.account = account
        self.conn.logged_in()
        log.info("%s login user=%s mechanism=%s", self._log_prefix, account.address, mechanism)

    # ------------------------------------------------------------------------- mailboxes

    @property
    def _account_id(self) -> int:
        assert self.account is not None  # store events come only after login
        return self.account.id

    async def _select(self, event: core.SelectMailbox) -> None:
        self._deselect()
        mailbox = self.store.get_mailbox(self._account_id, event.mailbox)
        if mailbox is None:
            self.conn.failed(r.NONEXISTENT)
            return
        if mailbox.messages > BIG_MAILBOX:
            messages = await self._in_thread(self.store.list_messages, mailbox.id)
        else:
            messages = self.store.list_messages(mailbox.id)
        selected = _Selected(mailbox, messages)
        uids = [m.uid for m in messages]
        if event.readonly or self.conn.rev2:
            recent = self.recent.count(mailbox.id, uids)
            recent_uids = frozenset(uids[len(uids) - recent :]) if recent else frozenset()
        else:
            recent_uids = frozenset(self.recent.claim(mailbox.id, uids, uidnext=mailbox.uidnext))
        self.selected = selected
        selected.unwatch = self.watcher.watch(mailbox.id, self._dirty.set)
        self._dirty.clear()
        self.conn.mailbox_selected(
            core.MailboxSnapshot(
                name=mailbox.name,
                uidvalidity=mailbox.uidvalidity,
                uidnext=mailbox.uidnext,
                messages=[(m.uid, m.flags) for m in messages],
                special_use=mailbox.special_use,
                recent=recent_uids,
            )
        )

    def _deselect(self) -> None:
        if self.selected is not None:
            self.selected.unwatch()
            self.selected = None

    async def _create(self, event: core.CreateMailbox) -> None:
        try:
            await self._in_thread(self._create_mailbox, event.mailbox, event.special_use)
        except AlreadyExists:
            self.conn.failed(r.ALREADY_EXISTS)
        except InvalidName:
            self.conn.failed(r.BAD_NAME)
        else:
            self.conn.done()

    def _create_mailbox(self, name: str, special_use: str | None) -> None:
        # New mailboxes are subscribed: clients that only show subscribed folders see them.
        self.store.create_mailbox(self._account_id, name, special_use, subscribed=True)

    async def _delete(self, event: core.DeleteMailbox) -> None:
        mailbox = self.store.get_mailbox(self._account_id, event.mailbox)
        if mailbox is None:
            self.conn.failed(r.NONEXISTENT)
            return
        try:
            await self._in_thread(self.store.delete_mailbox, self._account_id, event.mailbox)
        except NotFound:
            self.conn.failed(r.NONEXISTENT)
            return
        except InvalidName:
            self.conn.failed(r.BAD_NAME)
            return
        gone = self.selected is not None and self.selected.id == mailbox.id
        if gone:
            self._deselect()
        self.conn.done(selected_gone=gone)

    async def _rename(self, event: core.RenameMailbox) -> None:
        try:
            await self._in_thread(
                self.store.rename_mailbox, self._account_id, event.mailbox, event.new_name
            )
        except NotFound:
            self.conn.failed(r.NONEXISTENT)
        except AlreadyExists:
            self.conn.failed(r.ALREADY_EXISTS)
        except InvalidName:
            self.conn.failed(r.BAD_NAME)
        else:
            await self._sync(force=True)  # renaming INBOX moves its messages out
            self.conn.done()

    async def _subscribe(self, event: core.SetSubscribed) -> None:
        try:
            await self._in_thread(
                self.store.set_subscribed, self._account_id, event.mailbox, event.subscribed
            )
        except NotFound:
            self.conn.failed(r.NONEXISTENT)
        except InvalidName:
            self.conn.failed(r.BAD_NAME)
        else:
            self.conn.done()

    async def _list(self, event: core.ListMailboxes) -> None:
        mailboxes = self.store.list_mailboxes(self._account_id)
        deleted: dict[int, int] = {}
        if event.count_deleted:
            deleted = await self._in_thread(self._count_deleted, [m.id for m in mailboxes])
        await self._sync()
        self.conn.mailboxes_listed([self._entry(m, deleted.get(m.id)) for m in mailboxes])

    async def _status(self, event: core.GetStatus) -> None:
        mailbox = self.store.get_mailbox(self._account_id, event.mailbox)
        if mailbox is None:
            self.conn.failed(r.NONEXISTENT)
            return
        deleted = None
        if event.count_deleted:
            deleted = (await self._in_thread(self._count_deleted, [mailbox.id]))[mailbox.id]
        await self._sync()
        self.conn.status(self._entry(mailbox, deleted))

    def _count_deleted(self, mailbox_ids: Sequence[int]) -> dict[int, int]:
        return {
            mid: sum("\\Deleted" in m.flags for m in self.store.list_messages(mid))
            for mid in mailbox_ids
        }

    def _entry(self, mailbox: MailboxInfo, deleted: int | None) -> core.MailboxEntry:
        recent = 0
        if not self.conn.rev2:  # approximate: UIDs above the last one seen, expunged or not
            recent = self.recent.count(
                mailbox.id, range(mailbox.uidnext - mailbox.messages, mailbox.uidnext)
            )
        return core.MailboxEntry(
            name=mailbox.name,
            uidvalidity=mailbox.uidvalidity,
            uidnext=mailbox.uidnext,
            messages=mailbox.messages,
            unseen=mailbox.unseen,
            size=mailbox.size,
            highestmodseq=mailbox.highestmodseq,
            special_use=mailbox.special_use,
            subscribed=mailbox.subscribed,
            deleted=deleted,
            recent=min(recent, mailbox.messages),
        )

    async def _append(self, event: core.AppendMessages) -> None:
        mailbox = self.store.get_mailbox(self._account_id, event.mailbox)
        if mailbox is None:
            self.conn.failed(r.TRYCREATE)  # RFC 9051 §6.3.12
            return
        new: list[NewMessage] = []
        for message in event.messages:
            if len(message.data) > BIG_MESSAGE:
                parsed = await self._in_thread(parse_message, message.data)
            else:
                parsed = parse_message(message.data)
            when = message.internal_date
            new.append(
                NewMessage(
                    account_id=self._account_id,
                    mailbox=mailbox.name,
                    prefix=b"",
                    body=message.data,
                    parsed=parsed,
                    flags=frozenset(message.flags),
                    internaldate=None if when is None else when.timestamp(),
                )
            )
        try:
            stored = await asyncio.wrap_future(self.store.deliver(new))
        except NotFound:
            self.conn.failed(r.TRYCREATE)  # deleted meanwhile
            return
        except InvalidName:
            self.conn.failed(r.INVALID_FLAGS)
            return
        log.info(
            "%s append user=%s mailbox=%r messages=%d size=%d",
            self._log_prefix,
            self._address,
            mailbox.name,
            len(stored),
            sum(s.size for s in stored),
        )
        # Into the selected mailbox: the client hears EXISTS now (RFC 9051 §6.3.12). The store
        # resolves the future before it publishes the change, so do not wait for the news.
        await self._sync(force=self._is_selected(mailbox.id))
        uidvalidity = stored[0].uidvalidity if stored else mailbox.uidvalidity
        self.conn.appended(uidvalidity, [s.uid for s in stored])

    def _is_selected(self, mailbox_id: int) -> bool:
        return self.selected is not None and self.selected.id == mailbox_id

    @property
    def _address(self) -> str:
        return self.account.address if self.account else "-"

    # ------------------------------------------------------------------------- messages

    def _require_selected(self) -> _Selected:
        assert self.selected is not None  # SELECTED-state events come only with a mailbox
        return self.selected

    async def _fetch(self, event: core.FetchMessages) -> None:
        selected = self._require_selected()
        if event.set_seen:  # RFC 9051 §6.4.5: BODY[...] sets \\Seen
            changes = await asyncio.wrap_future(
                self.store.store_flags(selected.id, event.set_seen, frozenset({"\\Seen"}), "add")
            )
            self._apply_flag_changes(selected, changes)
        await self._sync()
        known = selected.messages
        messages = [(seq, m) for seq, uid in event.messages if (m := known.get(uid))]
        inline = len(messages) <= SMALL_FETCH and not event.needs_data
        for chunk in _chunks(messages, data=event.needs_data):
            if inline:
                self._fetch_chunk(selected.id, chunk, event)
            else:
                # The session waits for the thread, so the core is never touched by two
                # threads at once; the loop serves other sessions meanwhile.
                await self._in_thread(self._fetch_chunk, selected.id, chunk, event)
            if self.conn.pending_output >= core.FLUSH_AT:
                await self._flush()
            if self.conn.closed:
                return
        self.conn.fetch_done()

    def _fetch_chunk(
        self,
        mailbox_id: int,
        messages: Sequence[tuple[int, MessageInfo]],
        event: core.FetchMessages,
    ) -> None:
        """Load and render some messages of a FETCH (in a worker thread unless small)."""
        fetch_message = self.conn.fetch_message
        if not (event.needs_parse or event.needs_data):
            for seq, info in messages:
                fetch_message(_view(seq, info))
            return
        for view in self._load(mailbox_id, messages, event):
            fetch_message(view)

    def _load(
        self,
        mailbox_id: int,
        messages: Sequence[tuple[int, MessageInfo]],
        event: core.FetchMessages,
    ) -> list[MessageView]:
        """Parse results and/or bytes of `messages` (in a worker thread for big fetches);
        messages expunged meanwhile are left out."""
        views = []
        for seq, info in messages:
            envelope = bodystructure = body_nx = partmap = b""
            prefix = body = None
            # With the bytes comes the part map too: fetch.py finds even BODY[] through it
            # (and parses the message again when it is missing).
            if event.needs_parse or event.needs_data:
                parsed = self.store.read_parsed(mailbox_id, info.uid)
                if parsed is None:
                    continue
                envelope, bodystructure, body_nx, partmap = parsed
            if event.needs_data:
                split = self.store.read_split(mailbox_id, info.uid)
                if split is None:
                    continue
                prefix, body = split
            views.append(
                MessageView(
                    seq=seq,
                    uid=info.uid,
                    flags=info.flags,
                    internaldate=info.internaldate,
                    size=info.size,
                    modseq=info.modseq,
                    envelope=envelope,
                    bodystructure=bodystructure,
                    body_nx=body_nx,
                    partmap=partmap,
                    prefix=prefix,
                    body=body,
                )
            )
        return views

    async def _search(self, event: core.SearchMessages) -> None:
        selected = self._require_selected()
        await self._sync()
        store = self.store
        mailbox_id = selected.id
        views = []
        for seq, uid in event.messages:
            info = selected.messages.get(uid)
            if info is None:
                continue  # expunged, not announced yet: matches nothing
            flags = info.flags | {"\\Recent"} if uid in event.recent else info.flags
            views.append(
                SearchView(
                    seq,
                    uid,
                    flags,
                    info.internaldate,
                    info.size,
                    info.modseq,
                    functools.partial(_read_message, store, mailbox_id, uid),
                )
            )

        def run() -> list[int]:
            return evaluate(
                event.key,
                views,
                max_seq=event.max_seq,
                max_uid=event.max_uid,
                saved=event.saved,
                charset=event.charset,
                now=time.time(),
            )

        try:
            numbers = await self._in_thread(run) if event.needs_text else run()
        except SearchError as err:
            self.conn.failed(r.Response("BAD" if err.bad else "NO", err.text, err.code))
            return
        self.conn.searched(numbers)

    async def _store_flags(self, event: core.StoreFlags) -> None:
        selected = self._require_selected()
        try:
            changes = await asyncio.wrap_future(
                self.store.store_flags(
                    selected.id,
                    event.uids,
                    event.flags,
                    _STORE_MODES[event.mode],  # type: ignore[arg-type]
                )
            )
        except InvalidName:
            self.conn.failed(r.INVALID_FLAGS)
            return
        self._apply_flag_changes(selected, changes)
        await self._sync()
        self.conn.flags_stored([(uid, flags) for uid, _, flags in changes])

    def _apply_flag_changes(
        self, selected: _Selected, changes: Iterable[tuple[int, int, frozenset[str]]]
    ) -> None:
        for uid, modseq, flags in changes:
            info = selected.messages.get(uid)
            if info is not None:
                selected.messages[uid] = _with_flags(info, modseq, flags)

    async def _copy(self, event: core.CopyMessages) -> None:
        selected = self._require_selected()
        dest = self.store.get_mailbox(self._account_id, event.mailbox)
        if dest is None:
            self.conn.failed(r.TRYCREATE)  # RFC 9051 §6.4.7
            return
        copy = self.store.move_messages if event.move else self.store.copy_messages
        try:
            pairs = await asyncio.wrap_future(copy(selected.id, event.uids, dest.id))
        except NotFound:
            self.conn.failed(r.TRYCREATE)
            return
        if event.move:
            for uid, _ in pairs:
                selected.messages.pop(uid, None)
        await self._sync(force=dest.id == selected.id)
        self.conn.copied(dest.uidvalidity, pairs)

    async def _expunge(self, event: core.ExpungeMessages) -> None:
        selected = self._require_selected()
        removed = await asyncio.wrap_future(self.store.expunge(selected.id, event.uids))
        for uid in removed:
            selected.messages.pop(uid, None)
        if event.close:
            self._deselect()
        else:
            await self._sync()
        self.conn.expunged(removed)

    # ------------------------------------------------------------------------- sync

    async def _sync(self, *, force: bool = False) -> None:
        """Tell the core what changed in the selected mailbox since the last sync: always
        when `force` (NOOP, IDLE polls), else only when the store published a change."""
        selected = self.selected
        if selected is None or not (force or self._dirty.is_set()):
            return
        self._dirty.clear()
        store = self.store
        mailbox = store.get_mailbox_by_id(selected.id)
        if mailbox is None:
            self._deselect()
            self.conn.mailbox_gone()
            return
        if mailbox.highestmodseq == selected.highestmodseq:
            return
        since = selected.highestmodseq
        rows = store.list_messages(selected.id, changed_since=since)
        expunged = store.expunged_since(selected.id, since)
        # Everything up to the HIGHESTMODSEQ read first has been seen; what committed after
        # it may be reported again next time, which the core takes in its stride.
        selected.highestmodseq = mailbox.highestmodseq
        for uid in expunged:
            selected.messages.pop(uid, None)
        new = []
        for info in rows:
            if info.uid not in selected.messages:
                new.append(info.uid)
            selected.messages[info.uid] = info
        recent: list[int] = []
        if new and not self.conn.rev2 and not self.conn.readonly:
            recent = self.recent.claim(selected.id, new)
        self.conn.mailbox_changes([(m.uid, m.flags) for m in rows], expunged, recent=recent)


def _chunks(
    messages: Sequence[tuple[int, MessageInfo]], *, data: bool
) -> Iterable[Sequence[tuple[int, MessageInfo]]]:
    """`messages` cut into pieces of at most CHUNK messages (and CHUNK_BYTES of data)."""
    start = 0
    while start < len(messages):
        end = min(start + CHUNK, len(messages))
        if data:
            size = 0
            for i in range(start, end):
                size += messages[i][1].size
                if size > CHUNK_BYTES and i > start:
                    end = i
                    break
        yield messages[start:end]
        start = end


def _read_message(store: Store, mailbox_id: int, uid: int) -> bytes:
    """A message's bytes for SEARCH (b"" if it was expunged meanwhile)."""
    return store.read_message(mailbox_id, uid) or b""


def _view(seq: int, info: MessageInfo) -> MessageView:
    return MessageView(
        seq=seq,
        uid=info.uid,
        flags=info.flags,
        internaldate=info.internaldate,
        size=info.size,
        modseq=info.modseq,
        envelope=b"",
        bodystructure=b"",
        body_nx=b"",
        partmap=b"",
    )


def _with_flags(info: MessageInfo, modseq: int, flags: frozenset[str]) -> MessageInfo:
    return MessageInfo(
        id=info.id,
        mailbox_id=info.mailbox_id,
        uid=info.uid,
        modseq=modseq,
        flags=flags,
        internaldate=info.internaldate,
        size=info.size,
    )


class IMAPService:
    """What the IMAP listeners of one process share: sessions, change watcher, \\Recent."""

    def __init__(
        self,
        store: Store,
        authenticator: Authenticator,
        tls: TLSContexts | None,
        *,
        idle_timeout: float,
        max_message_size: int,
    ) -> None:
        self.store = store
        self.auth = authenticator
        self.tls = tls
        self.idle_timeout = idle_timeout
        self.limits = Limits(
            max_literal=max_message_size, max_command=max_message_size + Limits().max_line
        )
        self.registry = SessionRegistry()
        self.watcher = MailboxWatcher(store)
        self.recent = RecentTracker()
        self.executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="homing-imap")

    def settings(self, *, implicit_tls: bool) -> core.Settings:
        return core.Settings(
            tls_active=implicit_tls,
            starttls=self.tls is not None and not implicit_tls,
            limits=self.limits,
        )

    def handler(self, *, implicit_tls: bool) -> Callable[[Stream], Awaitable[None]]:
        """The listener handler for port 143 (STARTTLS) or 993 (`implicit_tls`)."""

        async def handle(stream: Stream) -> None:
            session = IMAPSession(
                stream,
                settings=self.settings(implicit_tls=implicit_tls),
                store=self.store,
                authenticator=self.auth,
                tls=self.tls,
                registry=self.registry,
                watcher=self.watcher,
                recent=self.recent,
                idle_timeout=self.idle_timeout,
                executor=self.executor,
            )
            await session.run()

        return handle

    def drain(self) -> None:
        """Shutdown: idle sessions say BYE now."""
        self.registry.drain()

    def close(self) -> None:
        self.watcher.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
