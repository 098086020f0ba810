"""Runs the sans-I/O IMAP core (proto.imap.server) over a net Stream: reads, timers, STARTTLS,
logins, and every store call a command needs.

Every protocol decision is the core's; this module pumps bytes and answers the core's events
(the adapter contract in the core's docstring) with the store.

The selected mailbox
--------------------
A session keeps the metadata of every message of its selected mailbox (UID, MODSEQ, flags,
internal date, size; compactly, `_Selected`), read once at SELECT and kept current by syncs,
so FETCH of flags, sizes or dates and SEARCH on them cost no SQL. A sync asks the store for
what changed since the HIGHESTMODSEQ last seen (`list_messages(changed_since=...)`,
`expunged_since`) and hands it to the core, which decides when the client may hear of it.
Syncs happen when the store published a change to the mailbox (`MailboxWatcher`, fed by
`Store.subscribe`; deliveries and other sessions of this process) before a command
completes, on every NOOP / CHECK / IDLE, and every `POLL_INTERVAL` seconds during IDLE
(changes made by other processes, which publish nothing here).

Big reads run in worker threads, so one session's FETCH of 10,000 messages never stalls the
others: SELECT of a large mailbox, FETCH in chunks of `CHUNK` messages or `CHUNK_BYTES` of
message data (metadata is already here; ENVELOPE/BODYSTRUCTURE and bodies of a whole chunk
come from one `Store.read_fetch_data` query, and the chunk is rendered in the same thread
call), and SEARCH on message text (bodies read ahead in batches, `_TextLoader`). Output is
flushed on the loop between chunks whenever `server.FLUSH_AT` octets are queued.

\\Recent (IMAP4rev1 only, RFC 3501 §2.3.2) is kept in memory per process (`RecentTracker`): the
first IMAP4rev1 session to see a message after it arrived gets it as \\Recent. After a restart
no message is recent until new ones arrive.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import functools
import itertools
import logging
import secrets
import threading
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from operator import attrgetter
from typing import NamedTuple, TypeVar

from homing.auth import Authenticator, ScramWatch
from homing.mail.mime import parse_message
from homing.net.sessions import SessionIO
from homing.net.sessions import SessionRegistry as _Registry
from homing.net.stream import Stream, is_loopback
from homing.net.tls import TLSContexts
from homing.proto.imap import responses as r
from homing.proto.imap import server as core
from homing.proto.imap.fetch import Chunk, MessageView
from homing.proto.imap.grammar import Limits
from homing.proto.imap.search import SearchError, SearchView, evaluate
from homing.store import (
    Account,
    AlreadyExists,
    Change,
    FetchRow,
    InvalidName,
    MailboxInfo,
    MessageInfo,
    MetaRow,
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
#: Octets handed to the stream at once. The stream waits for the peer to read between
#: writes, so a big message never sits whole in the transport's buffers (a copy of it in
#: the join, another as TLS records): small responses are joined up to this size, message
#: data is written in pieces of it.
WRITE_SIZE = 256 * 1024

_STORE_MODES = {"replace": "set", "add": "add", "remove": "remove"}


class SessionRegistry(_Registry["IMAPSession"]):
    """The live IMAP sessions of this process (see homing.net.sessions)."""


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
        if 0 in mailbox_ids:  # an "unknown" change: every watched mailbox looks again
            mailbox_ids = set(self._watchers)
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


class _Meta(NamedTuple):
    """One message's metadata as the selected mailbox holds it (see `_Selected`)."""

    uid: int
    modseq: int
    flags: frozenset[str]
    internaldate: float
    size: int


# UIDs are 32-bit (RFC 9051 §2.3.1.1); MODSEQs 63-bit (RFC 7162 §7); sizes fit 64 bits.
_U32 = "I" if array("I").itemsize >= 4 else "L"


def _nothing() -> None:
    pass


def meta_views(chunk: Sequence[tuple[int, int]], rows: Sequence[MetaRow]) -> list[MessageView]:
    """The views of the (seq, uid) pairs of `chunk` (in UID order, no UID twice) whose rows
    `Store.read_fetch_meta` found (`rows`, in UID order)."""
    if len(rows) == len(chunk):
        # Every UID was found, so the rows pair up with the chunk one to one: transpose and
        # zip in C, no Python-level work per message (see `_Selected.views`).
        uids, modseqs, flags, dates, sizes, envs, structures, nxs, partmaps = zip(
            *rows, strict=True
        )
        none = itertools.repeat(None)
        columns = zip(
            [seq for seq, _ in chunk],
            uids,
            flags,
            dates,
            sizes,
            modseqs,
            envs,
            structures,
            nxs,
            partmaps,
            none,
            none,
            strict=False,  # the repeats are endless
        )
        return list(map(tuple.__new__, itertools.repeat(MessageView), columns))
    views = []
    j, end = 0, len(chunk)
    for uid, modseq, flag_set, date, size, envelope, structure, body_nx, partmap in rows:
        while j < end and chunk[j][1] < uid:  # both in UID order: walk them together
            j += 1
        if j < end and chunk[j][1] == uid:
            seq = chunk[j][0]
            view = (seq, uid, flag_set, date, size, modseq)
            views.append(MessageView(*view, envelope, structure, body_nx, partmap))
    return views


class _Selected:
    """The selected mailbox on the adapter side: its id and the metadata of its messages.

    Every session keeps one, so it is held compactly: parallel arrays in UID order (found
    by bisection) and one reference per message to a flag set the store shares. That is
    about 36 bytes a message, where a dict of `MessageInfo` objects took some 300.
    """

    __slots__ = (
        "_dates",
        "_flags",
        "_modseqs",
        "_sizes",
        "_uids",
        "highestmodseq",
        "id",
        "uidvalidity",
        "unwatch",
    )

    def __init__(self, mailbox: MailboxInfo, messages: Sequence[MessageInfo]) -> None:
        self.id = mailbox.id
        self.uidvalidity = mailbox.uidvalidity
        self.highestmodseq = mailbox.highestmodseq
        ordered = sorted(messages, key=attrgetter("uid"))
        self._uids = array(_U32, [m.uid for m in ordered])
        self._modseqs = array("Q", [m.modseq for m in ordered])
        self._sizes = array("Q", [m.size for m in ordered])
        self._dates = array("d", [m.internaldate for m in ordered])
        self._flags = [m.flags for m in ordered]
        self.unwatch: Callable[[], None] = _nothing

    def __len__(self) -> int:
        return len(self._uids)

    def copy(self) -> _Selected:
        """An independent copy (each column copied at C speed; flag sets are shared)."""
        other = _Selected.__new__(_Selected)
        other.id = self.id
        other.uidvalidity = self.uidvalidity
        other.highestmodseq = self.highestmodseq
        other._uids = self._uids[:]
        other._modseqs = self._modseqs[:]
        other._sizes = self._sizes[:]
        other._dates = self._dates[:]
        other._flags = self._flags[:]
        other.unwatch = _nothing
        return other

    def uid_list(self) -> list[int]:
        return self._uids.tolist()

    def flag_pairs(self) -> list[tuple[int, frozenset[str]]]:
        """(uid, flags) of every message, in UID order."""
        return list(zip(self._uids, self._flags, strict=True))

    def changed_after(
        self, modseq: int, named: Callable[[int], bool]
    ) -> list[tuple[int, frozenset[str], int]]:
        """(uid, flags, modseq) of the messages whose MODSEQ is above `modseq` and whose UID
        `named` accepts, in UID order."""
        uids, flags = self._uids, self._flags
        return [
            (uid, flags[i], value)
            for i, value in enumerate(self._modseqs)
            if value > modseq and named(uid := uids[i])
        ]

    def __contains__(self, uid: int) -> bool:
        return self._index(uid) is not None

    def _index(self, uid: int) -> int | None:
        i = bisect.bisect_left(self._uids, uid)
        return i if i < len(self._uids) and self._uids[i] == uid else None

    def get(self, uid: int) -> _Meta | None:
        i = self._index(uid)
        if i is None:
            return None
        return _Meta(uid, self._modseqs[i], self._flags[i], self._dates[i], self._sizes[i])

    def lookup(self, messages: Sequence[tuple[int, int]]) -> list[tuple[int, _Meta]]:
        """(seq, metadata) of the (seq, uid) pairs whose message is here, in their order.

        The pairs must be in UID order (as the core's events give them): many (a FETCH 1:*)
        are matched by walking both lists together, a few by bisection."""
        uids, modseqs, flags = self._uids, self._modseqs, self._flags
        dates, sizes = self._dates, self._sizes
        return [
            (seq, _Meta(uids[i], modseqs[i], flags[i], dates[i], sizes[i]))
            for seq, i in self._positions(messages)
        ]

    def views(self, messages: Sequence[tuple[int, int]]) -> list[MessageView]:
        """`lookup` straight into the views a FETCH of metadata renders (no parse results,
        no bytes): one object per message instead of two."""
        uids, modseqs, flags = self._uids, self._modseqs, self._flags
        dates, sizes = self._dates, self._sizes
        if len(messages) == len(uids) and array(_U32, [u for _, u in messages]) == uids:
            # All of them (a FETCH 1:*): the columns as they are, no walk.
            # zip builds each row and tuple.__new__ types it, both in C: no Python-level
            # MessageView.__new__ call per message (so every field is given, the defaults
            # of prefix and body too).
            empty, none = itertools.repeat(b""), itertools.repeat(None)
            rows = zip(
                [seq for seq, _ in messages],
                uids,
                flags,
                dates,
                sizes,
                modseqs,
                empty,
                empty,
                empty,
                empty,
                none,
                none,
                strict=False,  # the repeats are endless; the columns are of one length
            )
            return list(map(tuple.__new__, itertools.repeat(MessageView), rows))
        return [
            MessageView(seq, uids[i], flags[i], dates[i], sizes[i], modseqs[i], b"", b"", b"", b"")
            for seq, i in self._positions(messages)
        ]

    def _positions(self, messages: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """(seq, column index) of the (seq, uid) pairs whose message is here. The pairs must
        be in UID order (as the core's events give them): many (a FETCH 1:*) are matched by
        walking both lists together, a few by bisection."""
        if len(messages) < 64:
            index = self._index
            return [(seq, i) for seq, uid in messages if (i := index(uid)) is not None]
        uids = self._uids
        end = len(uids)
        i = bisect.bisect_left(uids, messages[0][1])
        out = []
        for seq, uid in messages:
            while i < end and uids[i] < uid:
                i += 1
            if i == end:
                break
            if uids[i] == uid:
                out.append((seq, i))
        return out

    def changed_since(
        self, modseq: int, messages: Sequence[tuple[int, int]]
    ) -> list[tuple[int, _Meta]]:
        """(seq, metadata) of those of `messages` ((seq, uid) pairs in UID order) whose MODSEQ
        is above `modseq`: a scan of the MODSEQ column, then a bisection per changed one."""
        wanted = [u for _, u in messages]
        out = []
        for i, value in enumerate(self._modseqs):
            if value > modseq:
                uid = self._uids[i]
                j = bisect.bisect_left(wanted, uid)
                if j < len(wanted) and wanted[j] == uid:
                    meta = _Meta(uid, value, self._flags[i], self._dates[i], self._sizes[i])
                    out.append((messages[j][0], meta))
        return out

    def set_flags(self, uid: int, modseq: int, flags: frozenset[str]) -> None:
        i = self._index(uid)
        if i is not None:
            self._modseqs[i] = modseq
            self._flags[i] = flags

    def put(self, info: MessageInfo) -> bool:
        """Record a message's current metadata; True if it is new here."""
        uids = self._uids
        i = bisect.bisect_left(uids, info.uid)
        if i < len(uids) and uids[i] == info.uid:
            self._modseqs[i] = info.modseq
            self._flags[i] = info.flags
            return False
        # New messages have the highest UIDs, so this is nearly always an append.
        uids.insert(i, info.uid)
        self._modseqs.insert(i, info.modseq)
        self._sizes.insert(i, info.size)
        self._dates.insert(i, info.internaldate)
        self._flags.insert(i, info.flags)
        return True

    def remove(self, uids: Iterable[int]) -> None:
        """Forget the messages with these UIDs (expunged or moved away)."""
        gone = sorted({i for uid in uids if (i := self._index(uid)) is not None})
        if not gone:
            return
        if len(gone) > 32:  # many: rebuild each column once
            drop = set(gone)
            keep = [i for i in range(len(self._uids)) if i not in drop]
            self._uids = array(_U32, [self._uids[i] for i in keep])
            self._modseqs = array("Q", [self._modseqs[i] for i in keep])
            self._sizes = array("Q", [self._sizes[i] for i in keep])
            self._dates = array("d", [self._dates[i] for i in keep])
            self._flags = [self._flags[i] for i in keep]
            return
        for i in reversed(gone):  # a few: one memmove each
            del self._uids[i], self._modseqs[i], self._sizes[i], self._dates[i], self._flags[i]


class SelectCache:
    """The metadata of recently selected mailboxes, shared by the sessions of a process.

    A SELECT of a mailbox seen before copies the cached columns (a memcpy each) and applies
    what changed since their HIGHESTMODSEQ (`list_messages(changed_since=...)` and
    `expunged_since`, the same delta a session's sync reads), instead of reading every row
    again: a client reconnecting to a 10,000-message mailbox costs one small query, not
    10,000 rows. An entry is trusted only while the mailbox's UIDVALIDITY is the same. At most
    `max_messages` messages are kept, least recently selected mailboxes dropped first (some
    36 bytes a message). Safe to use from the worker threads that read big mailboxes.
    """

    def __init__(self, max_messages: int = 250_000) -> None:
        self.max_messages = max_messages
        self._entries: collections.OrderedDict[int, _Selected] = collections.OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def load(self, store: Store, mailbox: MailboxInfo) -> _Selected:
        """The metadata of `mailbox` as of (at least) the HIGHESTMODSEQ `mailbox` carries."""
        with self._lock:
            cached = self._entries.get(mailbox.id)
            if cached is not None:
                self._entries.move_to_end(mailbox.id)
                cached = cached.copy()
        if cached is None or cached.uidvalidity != mailbox.uidvalidity:
            selected = _Selected(mailbox, store.list_messages(mailbox.id))
        else:
            selected = cached
            since = selected.highestmodseq
            if mailbox.highestmodseq != since:
                # As in a sync: everything up to the HIGHESTMODSEQ read first is in; what
                # committed after it may be applied again next time, which is harmless.
                selected.remove(store.expunged_since(mailbox.id, since))
                for info in store.list_messages(mailbox.id, changed_since=since):
                    selected.put(info)
                selected.highestmodseq = mailbox.highestmodseq
        self._remember(selected.copy())
        return selected

    def _remember(self, selected: _Selected) -> None:
        if len(selected) > self.max_messages:
            return
        with self._lock:
            old = self._entries.pop(selected.id, None)
            if old is not None:
                self._total -= len(old)
            self._entries[selected.id] = selected
            self._total += len(selected)
            while self._total > self.max_messages:
                _, dropped = self._entries.popitem(last=False)
                self._total -= len(dropped)


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
        select_cache: SelectCache | None = None,
    ) -> None:
        """`executor` runs the big store reads (None: the loop's default executor);
        `select_cache` is the process's (None: one of this session's own)."""
        self.stream = stream
        self.select_cache = select_cache or SelectCache()
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
            nonce=nonce or _nonce,
            scram_secret=authenticator.scram_secret(),
        )
        self.account: Account | None = None
        self.selected: _Selected | None = None
        self._dirty = False
        """The store published a change to the selected mailbox since the last sync."""
        self._wake: asyncio.Future[None] | None = None
        """While idling: resolved when `_dirty` becomes true."""
        self._scram: ScramWatch | None = None
        self._read_task: asyncio.Task[bytes] | None = None
        self._io = SessionIO(stream, self.conn)
        self._log_prefix = f"{stream.conn_id} {stream.service}"
        self.commands = 0

    # ------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
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
                if conn.idling:
                    data = await self._idle()
                else:
                    if conn.progress != progress:
                        progress = conn.progress
                        timeout = self.idle_timeout if conn.user else self.login_timeout
                        deadline = time.monotonic() + timeout
                    data = await self._io.read(deadline, draining=self.registry.draining)
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
        """Answer a store event; store trouble becomes NO [UNAVAILABLE], a bug of ours NO
        [SERVERBUG] (RFC 5530), each with a log line; the session goes on either way."""
        try:
            await self._dispatch(event)
        except StoreError as err:
            log.error("%s store error on %s: %s", self._log_prefix, type(event).__name__, err)
            self.conn.failed(r.TEMPORARY_FAILURE)
        except Exception:
            log.exception("%s internal error on %s", self._log_prefix, type(event).__name__)
            self.conn.failed(r.SERVER_BUG)

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
        loop = asyncio.get_running_loop()
        with self._io.waiting():
            while True:
                # One future stands for "something happened": input, a change published by
                # the store (`_changed`), or the poll interval passed. Lighter than
                # asyncio.wait, and every idle session keeps one.
                wake = self._wake = loop.create_future()
                if self._dirty:
                    wake.set_result(None)
                read.add_done_callback(self._wake_up)
                timer = loop.call_later(POLL_INTERVAL, self._wake_up)
                try:
                    await wake
                finally:
                    self._wake = None
                    timer.cancel()
                    read.remove_done_callback(self._wake_up)
                if read.done():
                    self._read_task = None
                    try:
                        return read.result()
                    except (ConnectionError, OSError):
                        return b""
                try:
                    await self._sync(force=not self._dirty)  # not told of a change: poll
                except StoreError as err:  # try again at the next change or poll
                    log.error("%s store error while idling: %s", self._log_prefix, err)
                if time.monotonic() - last_keepalive >= KEEPALIVE_INTERVAL:
                    last_keepalive = time.monotonic()
                    self.conn.keepalive()
                await self._flush()
                if self.conn.closed:
                    return None
        return None  # interrupted: the core has been told of the shutdown

    async def _flush(self) -> None:
        await self._io.send(_pieces(self.conn.chunks_to_send()))

    async def _start_tls(self) -> bool:
        assert self.tls is not None  # the core offers STARTTLS only when settings.starttls
        return await self._io.start_tls(self.tls.server_context(), log, "starttls")

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
        count = self.conn.login_failures
        keys, self._scram = self.auth.begin_scram(event.user, ip=self.stream.peer[0], count=count)
        self.conn.scram_keys(keys)

    async def _settle_scram(self) -> None:
        """If a SCRAM exchange just failed, count it and impose its delay."""
        if self._scram is None:
            return
        delay = self.auth.scram_outcome(
            self._scram,
            self.conn.login_failures,
            ip=self.stream.peer[0],
            service=self.stream.service,
        )
        if delay is not None:
            self._scram = None
            if delay > 0:
                await asyncio.sleep(delay)

    def _authenticated(self, event: core.Authenticated) -> None:
        self._scram = None
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
            selected = await self._in_thread(self.select_cache.load, self.store, mailbox)
        else:
            selected = self.select_cache.load(self.store, mailbox)
        uids = selected.uid_list()
        # Never below a UID the client will see (the rows may be newer than `mailbox`).
        uidnext = max(mailbox.uidnext, uids[-1] + 1 if uids else 1)
        if event.readonly or self.conn.rev2:
            recent = self.recent.count(mailbox.id, uids)
            recent_uids = frozenset(uids[len(uids) - recent :]) if recent else frozenset()
        else:
            recent_uids = frozenset(self.recent.claim(mailbox.id, uids, uidnext=uidnext))
        self.selected = selected
        selected.unwatch = self.watcher.watch(mailbox.id, self._changed)
        self._dirty = False
        vanished: list[int] = []
        changed: list[tuple[int, frozenset[str], int]] = []
        qresync = event.qresync
        if qresync is not None and qresync.uidvalidity == mailbox.uidvalidity:
            # RFC 7162 §3.2.5.1. Expunged UIDs are kept as long as the mailbox exists, so
            # VANISHED (EARLIER) is exact and the seq-match data is not needed to narrow it.
            known = qresync.known_uids
            named = _in_ranges(known.resolve(mailbox.uidnext - 1)) if known else _anything
            vanished = [
                uid for uid in self.store.expunged_since(mailbox.id, qresync.modseq) if named(uid)
            ]
            changed = selected.changed_after(qresync.modseq, named)
        self.conn.mailbox_selected(
            core.MailboxSnapshot(
                name=mailbox.name,
                uidvalidity=mailbox.uidvalidity,
                uidnext=uidnext,
                messages=selected.flag_pairs(),
                special_use=mailbox.special_use,
                recent=recent_uids,
                highestmodseq=mailbox.highestmodseq,
                vanished=vanished,
                changed=changed,
            )
        )

    def _changed(self) -> None:
        """The store committed a change to the selected mailbox (called on the loop)."""
        self._dirty = True
        self._wake_up()

    def _wake_up(self, _: object = None) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

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
        since = event.changed_since
        mailbox_id = selected.id
        if since is None and not event.needs_data:
            if event.needs_parse:  # one query per chunk brings every column the answer needs
                pairs = event.messages
                work = functools.partial(self._fetch_meta_chunk, mailbox_id)
                await self._feed(_slices(pairs), work, inline=len(pairs) <= SMALL_FETCH)
            else:  # all the answer needs is in the session's columns
                views = selected.views(event.messages)
                await self._feed(
                    _slices(views), self.conn.fetch_messages, inline=len(views) <= SMALL_FETCH
                )
            return
        if since is None:
            messages = selected.lookup(event.messages)
        else:  # RFC 7162 §3.1.4.1: only what changed, found without a lookup per message
            messages = selected.changed_since(since, event.messages)
        if event.vanished is not None:
            assert since is not None  # the parser allows VANISHED only with CHANGEDSINCE
            wanted = _in_ranges(event.vanished)
            self.conn.vanished(
                uid for uid in self.store.expunged_since(mailbox_id, since) if wanted(uid)
            )
        await self._feed(
            list(_chunks(messages, data=event.needs_data)),
            functools.partial(self._fetch_chunk, mailbox_id, event=event),
            inline=len(messages) <= SMALL_FETCH and not event.needs_data,  # bytes: off the loop
        )

    async def _feed(
        self,
        pieces: Sequence[Sequence[_T]],
        work: Callable[[Sequence[_T]], None],
        *,
        inline: bool,
    ) -> None:
        """Answer a FETCH piece by piece: `work` renders one piece into the core, on the loop
        when `inline` (small and no bytes to read), else in a worker thread. The session waits
        for the thread, so the core is never touched by two threads at once; the loop serves
        other sessions meanwhile."""
        for piece in pieces:
            if inline:
                work(piece)
            else:
                await self._in_thread(work, piece)
            if self.conn.pending_output >= core.FLUSH_AT:
                await self._flush()
            if self.conn.closed:
                return
        self.conn.fetch_done()

    def _fetch_meta_chunk(self, mailbox_id: int, chunk: Sequence[tuple[int, int]]) -> None:
        rows = self.store.read_fetch_meta(mailbox_id, [uid for _, uid in chunk])
        self.conn.fetch_messages(meta_views(chunk, rows))

    def _fetch_chunk(
        self,
        mailbox_id: int,
        messages: Sequence[tuple[int, _Meta]],
        *,
        event: core.FetchMessages,
    ) -> None:
        """Load and render some messages of a FETCH (in a worker thread unless small)."""
        if not (event.needs_parse or event.needs_data):
            self.conn.fetch_messages(
                MessageView(seq, uid, flags, date, size, modseq, b"", b"", b"", b"")
                for seq, (uid, modseq, flags, date, size) in messages
            )
            return
        self.conn.fetch_messages(self._load(mailbox_id, messages, event))

    def _load(
        self,
        mailbox_id: int,
        messages: Sequence[tuple[int, _Meta]],
        event: core.FetchMessages,
    ) -> list[MessageView]:
        """Parse results and/or bytes of `messages`, in one store query (in a worker thread
        for big fetches); messages expunged meanwhile are left out."""
        rows = self.store.read_fetch_data(
            mailbox_id,
            [info.uid for _, info in messages],
            parsed=event.needs_parse,
            data=event.needs_data,
        )
        found = {row[0]: row for row in rows}
        views = []
        for seq, (uid, modseq, flags, date, size) in messages:
            row = found.get(uid)
            if row is not None:
                _, envelope, structure, body_nx, partmap, prefix, body = row
                view = (seq, uid, flags, date, size, modseq)
                views.append(
                    MessageView(*view, envelope, structure, body_nx, partmap, prefix, body)
                )
        return views

    async def _search(self, event: core.SearchMessages) -> None:
        selected = self._require_selected()
        await self._sync()
        # Messages expunged but not announced yet are left out: they match nothing.
        infos = selected.lookup(event.messages)
        load = _TextLoader(self.store, selected.id, [info for _, info in infos]).load
        recent = event.recent
        views = [
            SearchView(
                seq,
                info.uid,
                info.flags | {"\\Recent"} if info.uid in recent else info.flags,
                info.internaldate,
                info.size,
                info.modseq,
                functools.partial(load, i),
            )
            for i, (seq, info) in enumerate(infos)
        ]

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
        modseqs = None
        if event.with_modseq and numbers:  # RFC 7162 §3.1.5: the core reports the highest
            matched = set(numbers)
            modseqs = {view.seq: view.modseq for view in views if view.seq in matched}
        self.conn.searched(numbers, modseqs=modseqs)

    async def _store_flags(self, event: core.StoreFlags) -> None:
        selected = self._require_selected()
        try:
            changes = await asyncio.wrap_future(
                self.store.store_flags(
                    selected.id,
                    event.uids,
                    event.flags,
                    _STORE_MODES[event.mode],  # type: ignore[arg-type]
                    unchanged_since=event.unchanged_since,
                )
            )
        except InvalidName:
            self.conn.failed(r.INVALID_FLAGS)
            return
        self._apply_flag_changes(selected, changes)
        await self._sync()
        # The latest flags and MODSEQs, not the STORE's own result: the sync may have brought
        # a newer change by another session, and flags and MODSEQ must come from one state.
        latest = {uid: meta for uid in event.uids if (meta := selected.get(uid))}
        self.conn.flags_stored(
            [(uid, latest[uid].flags) for uid, _, _ in changes if uid in latest],
            modseqs={uid: meta.modseq for uid, meta in latest.items()},
            modified=changes.modified,
        )

    def _apply_flag_changes(
        self, selected: _Selected, changes: Iterable[tuple[int, int, frozenset[str]]]
    ) -> None:
        for uid, modseq, flags in changes:
            selected.set_flags(uid, modseq, flags)

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
            selected.remove(uid for uid, _ in pairs)
        await self._sync(force=dest.id == selected.id)
        self.conn.copied(dest.uidvalidity, pairs)

    async def _expunge(self, event: core.ExpungeMessages) -> None:
        selected = self._require_selected()
        removed = await asyncio.wrap_future(self.store.expunge(selected.id, event.uids))
        selected.remove(removed)
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
        if selected is None or not (force or self._dirty):
            return
        self._dirty = False
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
        selected.remove(expunged)
        new = [info.uid for info in rows if selected.put(info)]
        recent: list[int] = []
        if new and not self.conn.rev2 and not self.conn.readonly:
            recent = self.recent.claim(selected.id, new)
        self.conn.mailbox_changes(
            [(m.uid, m.flags) for m in rows],
            expunged,
            recent=recent,
            modseqs={m.uid: m.modseq for m in rows},
            since=since,
        )


def _in_ranges(ranges: Sequence[tuple[int, int]]) -> Callable[[int], bool]:
    """Membership in sorted, disjoint inclusive ranges (`SequenceSet.resolve`), by bisection."""
    starts = [lo for lo, _ in ranges]

    def inside(number: int) -> bool:
        i = bisect.bisect_right(starts, number) - 1
        return i >= 0 and number <= ranges[i][1]

    return inside


def _anything(number: int) -> bool:
    return True


def _pieces(chunks: Iterable[Chunk]) -> Iterator[bytes]:
    """`chunks` regrouped for writing: runs of small ones joined, big ones cut, each piece
    at most about WRITE_SIZE octets; only the piece being written is a copy."""
    batch: list[Chunk] = []
    size = 0
    for chunk in chunks:
        n = len(chunk)
        if not n:
            continue
        if n >= WRITE_SIZE:
            if batch:
                yield b"".join(batch)
                batch, size = [], 0
            view = memoryview(chunk)
            for start in range(0, n, WRITE_SIZE):
                yield bytes(view[start : start + WRITE_SIZE])
            continue
        batch.append(chunk)
        size += n
        if size >= WRITE_SIZE:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def _nonce() -> str:
    """A SCRAM server nonce (RFC 5802 §5.1)."""
    return secrets.token_urlsafe(18)


def _slices(items: Sequence[_T]) -> list[Sequence[_T]]:
    """`items` in pieces of at most CHUNK."""
    return [items[start : start + CHUNK] for start in range(0, len(items), CHUNK)]


def _chunks(
    messages: Sequence[tuple[int, _Meta]], *, data: bool
) -> Iterable[Sequence[tuple[int, _Meta]]]:
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


class _TextLoader:
    """Message bytes for a SEARCH that needs text, read ahead in batches.

    `search.evaluate` asks for the messages it needs in sequence order, and only for those
    the cheap keys did not settle (`SEARCH UNSEEN TEXT x` loads only unseen ones). So the
    read-ahead adapts: it doubles (up to CHUNK messages / CHUNK_BYTES) while every message
    read ahead was then asked for, and halves when some were skipped. A search through
    every message costs a few dozen queries instead of one per message; a sparse one reads
    little it does not need. At most one batch is held at a time.
    """

    __slots__ = ("_ahead", "_batch", "_infos", "_mailbox_id", "_store")

    def __init__(self, store: Store, mailbox_id: int, infos: Sequence[_Meta]) -> None:
        self._store = store
        self._mailbox_id = mailbox_id
        self._infos = infos
        self._ahead: dict[int, FetchRow] = {}
        self._batch = 1

    def load(self, index: int) -> FetchRow:
        """The stored message `infos[index]`: its bytes and part map, which SEARCH walks
        without copying or parsing them again (empty if it was expunged meanwhile)."""
        uid = self._infos[index].uid
        row = self._ahead.pop(uid, None)
        if row is None:
            row = self._read(index).pop(uid, None)
            if row is None:
                return FetchRow(uid)
        return row

    def _read(self, index: int) -> dict[int, FetchRow]:
        if self._ahead:  # read ahead for nothing: be more careful
            self._batch = max(1, self._batch // 2)
        else:
            self._batch = min(CHUNK, self._batch * 2)
        infos = self._infos
        end = index + 1
        size = infos[index].size
        limit = min(len(infos), index + self._batch)
        while end < limit and size + infos[end].size <= CHUNK_BYTES:
            size += infos[end].size
            end += 1
        rows = self._store.read_fetch_data(
            self._mailbox_id, [i.uid for i in infos[index:end]], parsed=True, data=True
        )
        self._ahead = {row.uid: row for row in rows}
        return self._ahead


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
        allow_plaintext_loopback: bool = False,
    ) -> None:
        """`allow_plaintext_loopback`: take passwords without TLS from 127.0.0.0/8 and ::1."""
        self.store = store
        self.auth = authenticator
        self.tls = tls
        self.idle_timeout = idle_timeout
        self.allow_plaintext_loopback = allow_plaintext_loopback
        self.limits = Limits(
            max_literal=max_message_size, max_command=max_message_size + Limits().max_line
        )
        self.registry = SessionRegistry()
        self.watcher = MailboxWatcher(store)
        self.recent = RecentTracker()
        self.select_cache = SelectCache()
        self.executor = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="homing-imap")

    def settings(self, *, implicit_tls: bool, peer: str = "") -> core.Settings:
        """The core's settings for a connection from `peer` (an IP address)."""
        return core.Settings(
            tls_active=implicit_tls,
            starttls=self.tls is not None and not implicit_tls,
            allow_plaintext_auth=self.allow_plaintext_loopback and is_loopback(peer),
            limits=self.limits,
        )

    def handler(self, *, implicit_tls: bool) -> Callable[[Stream], Awaitable[None]]:
        """The listener handler for port 143 (STARTTLS) or 993 (`implicit_tls`)."""

        async def handle(stream: Stream) -> None:
            session = IMAPSession(
                stream,
                settings=self.settings(implicit_tls=implicit_tls, peer=stream.peer[0]),
                store=self.store,
                authenticator=self.auth,
                tls=self.tls,
                registry=self.registry,
                watcher=self.watcher,
                recent=self.recent,
                select_cache=self.select_cache,
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
