"""The outbound spool: queue entries for remote domains, with per-recipient state.

Theory of operation. An accepted message for remote recipients becomes one *entry* per
destination domain (`NewQueued`), written by `Store.deliver` in the same group-committed
transaction as the message's local copies, so a 250 is only ever sent for mail that is
durable in full. The entry references its message bytes through the `bodies` table (the
same reference-counted rows mailbox copies use: a message delivered to local and remote
recipients at once is stored once), plus its own `prefix` (trace headers sent before the
body).

Each recipient of an entry is in one of four states:

    pending   --attempt--> delivered | failed | deferred
    deferred  --attempt--> delivered | failed | deferred

`delivered` and `failed` are final. The queue runner reads due entries (`Spool.due`), makes
a delivery attempt, and writes the outcome with `Spool.record`: the recipients' new states,
the next attempt time, and, in the same transaction, the DSNs the outcome calls for (local
copies and new queue entries). An entry whose recipients are all final is deleted in that
transaction and its body released. So after a crash every entry is either untouched (the
attempt is made again: at-least-once, as RFC 5321 §6.1 allows) or fully recorded with its
DSNs; a DSN is never lost and never sent twice.

Entry ids are "<queue id>.<n>", n counting the entries made for one accepted message. Every
administrative call takes an entry id or a queue id (then it applies to all of that
message's entries).

Bodies referenced only by queue entries are never shown over IMAP, so their parse results
(envelope, body structure) are left empty; a body shared with mailbox copies has them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from homing.mail.reply import Reply
from homing.store.errors import InvalidName, StoreError
from homing.store.writer import Tx

if TYPE_CHECKING:
    from homing.store.model import NewMessage
    from homing.store.sqlitestore import Store

log = logging.getLogger("homing.store")

RecipientStateName = Literal["pending", "deferred", "delivered", "failed"]
FINAL_STATES: frozenset[str] = frozenset({"delivered", "failed"})
_STATES: frozenset[str] = frozenset({"pending", "deferred", "delivered", "failed"})
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})

# --------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class QueueRecipient:
    """One envelope recipient of a message to queue."""

    address: str
    """The envelope recipient (mailbox string)."""
    notify: frozenset[str] | None = None
    """RFC 3461 NOTIFY: {"NEVER"} or a subset of SUCCESS, FAILURE, DELAY; None is the
    default (FAILURE and DELAY, RFC 3461 §4.1)."""
    orcpt: str | None = None
    """The ORCPT address (decoded), passed on and reported in DSNs (RFC 3461 §4.2)."""


@dataclass(frozen=True, slots=True)
class NewQueued:
    """A message to queue for the recipients of one destination domain."""

    queue_id: str
    """`trace.new_queue_id()` of the accepted message (shared by its entries)."""
    mail_from: str
    """The envelope sender; "" for the null reverse-path."""
    recipients: tuple[QueueRecipient, ...]
    """All in ONE destination domain (`domain`)."""
    domain: str
    body: bytes
    """The message as it will be sent after `prefix` (trace headers already added)."""
    envid: str | None = None
    """RFC 3461 ENVID (decoded)."""
    ret: str | None = None
    """RFC 3461 RET: "FULL" or "HDRS"."""
    smtputf8: bool = False
    """The message was received with SMTPUTF8 (RFC 6531)."""
    body_8bit: bool = False
    """The message was received with BODY=8BITMIME (RFC 6152) or has 8-bit octets."""
    prefix: bytes = b""
    """Sent before `body` (this hop's Received field), so `body` can be the very bytes of
    the message's local copies and share their stored body."""


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    """One recipient of a queue entry and where it stands."""

    index: int
    address: str
    notify: frozenset[str] | None
    orcpt: str | None
    state: RecipientStateName
    reply: Reply | None
    """The last reply for it (the remote server's, or one made up here for a failure that
    had none: DNS, connection)."""
    remote_mta: str | None
    """The host that gave `reply`, if a server did."""
    updated: float | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A queued message for one destination domain."""

    id: str
    queue_id: str
    domain: str
    mail_from: str
    envid: str | None
    ret: str | None
    smtputf8: bool
    body_8bit: bool
    size: int
    """Octets sent: prefix and body."""
    created: float
    next_attempt: float
    attempts: int
    last_attempt: float | None
    warned: bool
    """The delay DSN has been sent (it is sent at most once)."""
    held: bool
    """Held by the operator: no attempts until released."""
    bounce: bool
    """The operator asked for it to be returned to the sender at the next run."""
    last_error: str | None
    """Why the last attempt failed as a whole (DNS, no connection), for `queue show`."""
    recipients: tuple[QueuedRecipient, ...]

    @property
    def open_recipients(self) -> tuple[QueuedRecipient, ...]:
        """Recipients still to be delivered (pending or deferred)."""
        return tuple(r for r in self.recipients if not r.final)


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """A recipient's new state after an attempt."""

    index: int
    state: RecipientStateName
    reply: Reply | None = None
    remote_mta: str | None = None


@dataclass(frozen=True, slots=True)
class QueueUpdate:
    """What one run did to an entry, written by `Spool.record`."""

    entry_id: str
    recipients: tuple[RecipientUpdate, ...] = ()
    attempted: float | None = None
    """When a delivery attempt was made (counts it); None when none was (an operator's
    bounce)."""
    next_attempt: float | None = None
    """When to try again; None when the entry is finished and is to be deleted."""
    warned: bool = False
    last_error: str | None = None


# --------------------------------------------------------------------------------- checks


def check_new(q: NewQueued) -> None:
    """Refuse a malformed NewQueued before it reaches the writer (InvalidName)."""
    if not q.recipients:
        raise InvalidName(f"queue entry {q.queue_id} for {q.domain} has no recipients")
    if not q.queue_id or not q.domain:
        raise InvalidName("a queue entry needs a queue id and a domain")
    if q.ret is not None and q.ret not in ("FULL", "HDRS"):
        raise InvalidName(f"RET must be FULL or HDRS, not {q.ret!r}")
    for r in q.recipients:
        if r.notify is not None and (not r.notify or not r.notify <= _NOTIFY):
            raise InvalidName(f"bad NOTIFY {sorted(r.notify)!r} for {r.address}")
        if r.notify is not None and "NEVER" in r.notify and len(r.notify) > 1:
            raise InvalidName(f"NOTIFY=NEVER cannot be combined (RFC 3461 §4.1): {r.address}")


def _notify_text(notify: frozenset[str] | None) -> str | None:
    return None if notify is None else ",".join(sorted(notify))


def _notify_set(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(text.split(","))


def _reply(code: int | None, status: str | None, text: str | None) -> Reply | None:
    return None if code is None else Reply(code, status or "", text or "")


# --------------------------------------------------------------------------------- in a job


def tx_enqueue(tx: Tx, queued: Sequence[NewQueued], body_ids: Sequence[int], now: float) -> None:
    """Insert entries (inside the delivery's transaction); `body_ids[i]` is the body row of
    `queued[i]`, whose reference count the caller has already counted this entry in."""
    conn = tx.conn
    for q, body_id in zip(queued, body_ids, strict=True):
        ((count,),) = conn.execute(
            "SELECT COUNT(*) FROM queue WHERE queue_id = ?", (q.queue_id,)
        ).fetchall()
        n = count + 1
        while conn.execute(
            "SELECT 1 FROM queue WHERE entry = ?", (f"{q.queue_id}.{n}",)
        ).fetchall():
            n += 1
        row = conn.execute(
            "INSERT INTO queue (entry, queue_id, domain, mail_from, envid, ret, smtputf8,"
            " body_8bit, body_id, prefix, size, created, next_attempt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                f"{q.queue_id}.{n}",
                q.queue_id,
                q.domain.lower(),
                q.mail_from,
                q.envid,
                q.ret,
                int(q.smtputf8),
                int(q.body_8bit),
                body_id,
                q.prefix,
                len(q.prefix) + len(q.body),
                now,
                now,
            ),
        ).fetchone()
        conn.executemany(
            "INSERT INTO queue_rcpts (entry_id, idx, address, notify, orcpt)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (row[0], i, r.address, _notify_text(r.notify), r.orcpt)
                for i, r in enumerate(q.recipients)
            ],
        )


_ENTRY_COLUMNS = (
    "id, entry, queue_id, domain, mail_from, envid, ret, smtputf8, body_8bit, size, created,"
    " next_attempt, attempts, last_attempt, warned, held, bounce, last_error"
)
_RCPT_COLUMNS = (
    "entry_id, idx, address, notify, orcpt, state, reply_code, reply_status, reply_text,"
    " remote_mta, updated"
)


def _load(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[QueueEntry]:
    """Entries for `rows` (in `_ENTRY_COLUMNS` order) with their recipients."""
    if not rows:
        return []
    rcpts: dict[int, list[QueuedRecipient]] = {}
    for r in conn.execute(
        f"SELECT {_RCPT_COLUMNS} FROM queue_rcpts"
        " WHERE entry_id IN (SELECT value FROM json_each(?)) ORDER BY entry_id, idx",
        (json.dumps([row[0] for row in rows]),),
    ).fetchall():
        rcpts.setdefault(r[0], []).append(
            QueuedRecipient(
                index=r[1],
                address=r[2],
                notify=_notify_set(r[3]),
                orcpt=r[4],
                state=r[5],
                reply=_reply(r[6], r[7], r[8]),
                remote_mta=r[9],
                updated=r[10],
            )
        )
    return [
        QueueEntry(
            id=row[1],
            queue_id=row[2],
            domain=row[3],
            mail_from=row[4],
            envid=row[5],
            ret=row[6],
            smtputf8=bool(row[7]),
            body_8bit=bool(row[8]),
            size=row[9],
            created=row[10],
            next_attempt=row[11],
            attempts=row[12],
            last_attempt=row[13],
            warned=bool(row[14]),
            held=bool(row[15]),
            bounce=bool(row[16]),
            last_error=row[17],
            recipients=tuple(rcpts.get(row[0], ())),
        )
        for row in rows
    ]


class Spool:
    """The queue's half of the store: `Store.spool`. Reads use the store's reader
    connections; writes are jobs for its one writer (group commit)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    # -- notifications ------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (on the writer thread, after the commit) whenever entries were
        added or made due by this process. Returns the unsubscribe function."""
        with self._lock:
            self._listeners.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return unsubscribe

    def notify_after(self, future: Future[Any]) -> None:
        """Tell the subscribers once `future` (a committed job) succeeds."""
        future.add_done_callback(self._fire)

    def _fire(self, future: Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        self.notify_external()

    def notify_external(self) -> None:
        """Tell the subscribers now: another process (an SMTP worker) committed entries."""
        with self._lock:
            listeners = list(self._listeners)
        for callback in listeners:
            try:
                callback()
            except Exception:  # a listener's bug must not break the writer
                log.exception("queue listener failed")

    # -- reading ------------------------------------------------------------------------

    def due(
        self,
        now: float,
        *,
        limit: int = 1000,
        skip_domains: Iterable[str] = (),
        skip_ids: Iterable[str] = (),
    ) -> list[QueueEntry]:
        """Entries not held whose next attempt is at or before `now`, oldest due first,
        leaving out the domains `skip_domains` and the entries `skip_ids` (those being
        delivered right now)."""
        skip = json.dumps(sorted(skip_domains))
        busy = json.dumps(sorted(skip_ids))
        with self._store._read() as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM queue WHERE held = 0 AND next_attempt <= ?"
                " AND domain NOT IN (SELECT value FROM json_each(?))"
                " AND entry NOT IN (SELECT value FROM json_each(?))"
                " ORDER BY next_attempt, id LIMIT ?",
                (now, skip, busy, limit),
            ).fetchall()
            return _load(conn, rows)

    def next_due(
        self, *, skip_domains: Iterable[str] = (), skip_ids: Iterable[str] = ()
    ) -> float | None:
        """The earliest next attempt of an entry not held (nor among the skipped, as for
        `due`), or None if there is none."""
        skip = json.dumps(sorted(skip_domains))
        busy = json.dumps(sorted(skip_ids))
        with self._store._read() as conn:
            ((when,),) = conn.execute(
                "SELECT MIN(next_attempt) FROM queue WHERE held = 0"
                " AND domain NOT IN (SELECT value FROM json_each(?))"
                " AND entry NOT IN (SELECT value FROM json_each(?))",
                (skip, busy),
            ).fetchall()
        return None if when is None else float(when)

    def entries(self, *, domain: str | None = None, held: bool | None = None) -> list[QueueEntry]:
        """Every entry (or those of `domain`, or only held/unheld ones), in queue order."""
        sql = f"SELECT {_ENTRY_COLUMNS} FROM queue WHERE 1"
        params: list[Any] = []
        if domain is not None:
            sql += " AND domain = ?"
            params.append(domain.lower().rstrip("."))
        if held is not None:
            sql += " AND held = ?"
            params.append(int(held))
        with self._store._read() as conn:
            return _load(conn, conn.execute(sql + " ORDER BY id", params).fetchall())

    def get(self, ident: str) -> list[QueueEntry]:
        """The entry with this id, or every entry of the message with this queue id."""
        with self._store._read() as conn:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM queue WHERE entry = ? OR queue_id = ? ORDER BY id",
                (ident, ident),
            ).fetchall()
            return _load(conn, rows)

    def message(self, entry_id: str) -> bytes | None:
        """The bytes to send for an entry (prefix and body), None if it is gone."""
        with self._store._read() as conn:
            row = conn.execute(
                "SELECT prefix, body_id FROM queue WHERE entry = ?", (entry_id,)
            ).fetchone()
            if row is None:
                return None
            body = self._store._bodies.get(conn, row[1])
        if body is None:
            raise StoreError(f"queue entry {entry_id}: body {row[1]} is missing")
        return bytes(row[0]) + body

    def count(self) -> int:
        with self._store._read() as conn:
            ((n,),) = conn.execute("SELECT COUNT(*) FROM queue").fetchall()
        return int(n)

    # -- the runner's write -------------------------------------------------------------

    def record(
        self,
        update: QueueUpdate,
        messages: Sequence[NewMessage] = (),
        queued: Sequence[NewQueued] = (),
    ) -> Future[bool]:
        """Write an attempt's outcome and, in the same transaction, deliver `messages` and
        queue `queued` (the DSNs it calls for). Resolves to False, having written nothing,
        if the entry no longer exists (dropped meanwhile). Never blocks."""
        for r in update.recipients:
            if r.state not in _STATES:
                raise InvalidName(f"unknown recipient state {r.state!r}")
        store = self._store
        try:
            prepared = store._prepare_delivery_all(messages, queued)
        except Exception as exc:
            failed: Future[bool] = Future()
            failed.set_exception(exc)
            return failed

        def job(tx: Tx) -> bool:
            if not self._tx_apply(tx, update):
                return False
            store._tx_deliver_all(tx, prepared)
            return True

        future = store._submit(job, prepared.cost)
        if queued:
            self.notify_after(future)
        return future

    def _tx_apply(self, tx: Tx, update: QueueUpdate) -> bool:
        conn = tx.conn
        row = conn.execute(
            "SELECT id, body_id FROM queue WHERE entry = ?", (update.entry_id,)
        ).fetchone()
        if row is None:
            return False
        entry_id, body_id = row
        if update.next_attempt is None:
            conn.execute("DELETE FROM queue WHERE id = ?", (entry_id,))
            self._store._tx_release(tx, [(body_id, 1)])
            return True
        now = update.attempted
        conn.executemany(
            "UPDATE queue_rcpts SET state = ?, reply_code = ?, reply_status = ?,"
            " reply_text = ?, remote_mta = ?, updated = ? WHERE entry_id = ? AND idx = ?",
            [
                (
                    r.state,
                    None if r.reply is None else r.reply.code,
                    None if r.reply is None else r.reply.enhanced,
                    None if r.reply is None else r.reply.text,
                    r.remote_mta,
                    now,
                    entry_id,
                    r.index,
                )
                for r in update.recipients
            ],
        )
        conn.execute(
            "UPDATE queue SET attempts = attempts + ?, last_attempt = coalesce(?, last_attempt),"
            " next_attempt = ?, warned = ?, last_error = ?, bounce = 0 WHERE id = ?",
            (
                int(update.attempted is not None),
                update.attempted,
                update.next_attempt,
                int(update.warned),
                update.last_error,
                entry_id,
            ),
        )
        return True

    # -- administration (synchronous: the CLI) ------------------------------------------

    def _admin(self, sql: str, params: tuple[Any, ...], *, wake: bool) -> int:
        def job(tx: Tx) -> int:
            return tx.conn.execute(sql, params).rowcount

        future = self._store._submit(job)
        if wake:
            self.notify_after(future)
        return future.result()

    def retry(self, ident: str | None, now: float) -> int:
        """Make the entry (or message, or with None every entry) due now; held ones stay
        held. Returns how many entries changed."""
        if ident is None:
            return self._admin("UPDATE queue SET next_attempt = ?", (now,), wake=True)
        return self._admin(
            "UPDATE queue SET next_attempt = ? WHERE entry = ? OR queue_id = ?",
            (now, ident, ident),
            wake=True,
        )

    def hold(self, ident: str) -> int:
        """No more attempts until `release`."""
        return self._admin(
            "UPDATE queue SET held = 1 WHERE entry = ? OR queue_id = ?", (ident, ident), wake=False
        )

    def release(self, ident: str, now: float) -> int:
        """Undo `hold`; the entry is tried at once."""
        return self._admin(
            "UPDATE queue SET held = 0, next_attempt = min(next_attempt, ?)"
            " WHERE entry = ? OR queue_id = ?",
            (now, ident, ident),
            wake=True,
        )

    def bounce(self, ident: str, now: float) -> int:
        """Ask the runner to return the entry to its sender (failure DSN for every open
        recipient) at once; it is released if held."""
        return self._admin(
            "UPDATE queue SET bounce = 1, held = 0, next_attempt = ?"
            " WHERE entry = ? OR queue_id = ?",
            (now, ident, ident),
            wake=True,
        )

    def drop(self, ident: str) -> int:
        """Delete the entry (or the message's entries) without telling anyone."""

        def job(tx: Tx) -> int:
            rows = tx.conn.execute(
                "DELETE FROM queue WHERE entry = ? OR queue_id = ? RETURNING body_id",
                (ident, ident),
            ).fetchall()
            counts: dict[int, int] = {}
            for (body_id,) in rows:
                counts[body_id] = counts.get(body_id, 0) + 1
            self._store._tx_release(tx, counts.items())
            return len(rows)

        return self._store._submit(job).result()

    # -- checks -------------------------------------------------------------------------

    @staticmethod
    def check(conn: sqlite3.Connection) -> list[str]:
        """Spool invariants, for `Store.integrity_check`."""
        problems = [
            f"queue entry {entry}: no recipients"
            for (entry,) in conn.execute(
                "SELECT q.entry FROM queue q WHERE NOT EXISTS"
                " (SELECT 1 FROM queue_rcpts r WHERE r.entry_id = q.id)"
            ).fetchall()
        ]
        problems += [
            f"queue entry {entry}: every recipient is final but the entry remains"
            for (entry,) in conn.execute(
                "SELECT q.entry FROM queue q WHERE NOT EXISTS (SELECT 1 FROM queue_rcpts r"
                " WHERE r.entry_id = q.id AND r.state IN ('pending', 'deferred'))"
                " AND EXISTS (SELECT 1 FROM queue_rcpts r WHERE r.entry_id = q.id)"
            ).fetchall()
        ]
        return problems
