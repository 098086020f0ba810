"""The mailbox store on SQLite: accounts, domains, aliases, mailboxes, messages.

Reads run on a per-thread connection (`query_only`, WAL snapshots, never blocked by the
writer). Every write is a job for the one writer thread (`writer.Writer`), which commits
concurrent jobs together (group commit). Methods that return a Future (deliver, store_flags,
copy/move, expunge) never block; the administrative ones (domains, accounts, aliases,
mailboxes) wait for their commit and return or raise directly.

IMAP model (RFC 9051, RFC 7162). A mailbox has a UIDVALIDITY unique in the whole store
(derived from the time, and always above every earlier one), UIDNEXT and HIGHESTMODSEQ.
Both are bumped in the same statement that assigns a UID or MODSEQ, inside the writer's
transaction, so they never go backwards or repeat. A message row holds its UID, MODSEQ,
flags (system flags as a bitmask, keywords as text), internal date, RFC822.SIZE and its own
prefix (per-recipient trace headers); its body row (bytes via the body store, parse results,
reference count) is shared by every recipient of one delivery and by COPY. Expunged UIDs
are kept with the MODSEQ of their expunge, for QRESYNC (RFC 7162 §3.2.10).
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from homing.clock import Clock, SystemClock
from homing.mail.mime import ParsedMessage, encode_partmap
from homing.store import names, schema
from homing.store.bodies import BodyStore, SqliteBodyStore
from homing.store.errors import (
    AlreadyExists,
    InUse,
    InvalidName,
    NotFound,
    StoreClosed,
    StoreError,
)
from homing.store.model import (
    Account,
    Change,
    FetchRow,
    FlagChanges,
    MailboxInfo,
    MessageInfo,
    MetaRow,
    NewMessage,
    StoredMessage,
    StoreStats,
)
from homing.store.names import INBOX, SEPARATOR
from homing.store.passwords import Credentials
from homing.store.spool import NewQueued, Spool, check_new, tx_enqueue
from homing.store.writer import Tx, Writer, translate

log = logging.getLogger("homing.store")

T = TypeVar("T")
Row = tuple[Any, ...]

#: The mailboxes every account is created with (RFC 6154 special-use attributes).
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    (INBOX, None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
MAX_UIDVALIDITY = 0xFFFFFFFF
#: App passwords one account may have. Logins check every one of them (and pad to this many
#: checks when they fail, see homing.auth), so the number is bounded.
MAX_APP_PASSWORDS = 16
#: Longest app password name, in characters.
MAX_APP_PASSWORD_NAME = 64

_MAILBOX_COLUMNS = (
    "id, account_id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed,"
    " messages, unseen, size"
)
_ACCOUNT_COLUMNS = "a.id, a.address, d.name, a.disabled, a.created"
_CRED_COLUMNS = "password_hash, scram_salt, scram_iterations, scram_stored_key, scram_server_key"
_IN_UIDS = "uid IN (SELECT value FROM json_each(?))"


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Row]:
    """Run a statement to completion (so no statement is left open inside a transaction)."""
    return conn.execute(sql, params).fetchall()


def _row(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Row | None:
    rows = _rows(conn, sql, params)
    return rows[0] if rows else None


def _mailbox(row: Row) -> MailboxInfo:
    return MailboxInfo(
        id=row[0],
        account_id=row[1],
        name=row[2],
        special_use=row[3],
        uidvalidity=row[4],
        uidnext=row[5],
        highestmodseq=row[6],
        subscribed=bool(row[7]),
        messages=row[8],
        unseen=row[9],
        size=row[10],
    )


def _account(row: Row) -> Account:
    return Account(id=row[0], address=row[1], domain=row[2], disabled=bool(row[3]), created=row[4])


def _credentials(row: Row) -> Credentials:
    return Credentials(
        password_hash=row[0],
        scram_salt=bytes(row[1]),
        scram_iterations=row[2],
        scram_stored_key=bytes(row[3]),
        scram_server_key=bytes(row[4]),
    )


def _app_password_name(name: str) -> str:
    """An app password's name as given, checked: 1-64 printable characters, no surrounding
    blanks (it is shown in lists and typed on the command line to remove it)."""
    if not isinstance(name, str) or not name or len(name) > MAX_APP_PASSWORD_NAME:
        raise InvalidName(f"an app password name is 1 to {MAX_APP_PASSWORD_NAME} characters")
    if name != name.strip() or not name.isprintable():
        raise InvalidName(
            f"app password name {name!r} has surrounding blanks or unprintable characters"
        )
    return name


@dataclass(frozen=True, slots=True)
class AppPassword:
    """One app password of an account (`Store.list_app_passwords`); never the secret."""

    id: int
    account_id: int
    name: str
    created: float
    last_used: float | None
    """When a login last used it (seconds since the epoch), None if never."""


@functools.lru_cache(maxsize=4096)
@functools.lru_cache(maxsize=4096)
def _flag_set(mask: int, keywords: str) -> frozenset[str]:
    """`names.flag_set`, shared: a mailbox has few distinct flag sets, and each message row
    (and each IMAP session's copy of a mailbox's metadata) that holds the one shared object
    instead of its own saves some 200 bytes."""
    return names.flag_set(mask, keywords)


def _mailbox_uids(mailbox_id: int, wanted: list[int]) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (and its parameters) for the messages `m` of a mailbox with the UIDs
    `wanted` (sorted, distinct, not empty): a contiguous run (the common `1:*`) is a range
    scan of the (mailbox_id, uid) index, any other set goes through `json_each`."""
    if wanted[-1] - wanted[0] + 1 == len(wanted):
        return " WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?", (
            mailbox_id,
            wanted[0],
            wanted[-1],
        )
    return " WHERE m.mailbox_id = ? AND m.uid IN (SELECT value FROM json_each(?))", (
        mailbox_id,
        json.dumps(wanted),
    )


def _uid_list(uids: Iterable[int]) -> list[int]:
    return sorted({int(u) for u in uids})


def _completed(value: T) -> Future[T]:
    future: Future[T] = Future()
    future.set_result(value)
    return future


def _failed(exc: BaseException) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(exc)
    return future


@dataclass(slots=True)
class _Body:
    """One distinct body of a delivery, with everything the writer stores for it.

    `parsed` is None for a body only queue entries use (never shown over IMAP)."""

    data: bytes
    parsed: ParsedMessage | None
    partmap: bytes
    refs: int = 0


@dataclass(slots=True)
class _Delivery:
    """Everything one `deliver` (or queue record) job writes, prepared off the writer."""

    bodies: list[_Body]
    copies: list[_Copy]
    queued: list[NewQueued]
    queued_bodies: list[int]
    """Index into `bodies` of each of `queued`."""
    now: float

    @property
    def empty(self) -> bool:
        return not self.copies and not self.queued

    @property
    def cost(self) -> int:
        return sum(len(b.data) for b in self.bodies) + sum(len(c.prefix) for c in self.copies)


@dataclass(frozen=True, slots=True)
class _Copy:
    account_id: int
    mailbox: str
    prefix: bytes
    body: int
    """Index into the delivery's bodies."""
    flags: int
    keywords: str
    internaldate: float
    size: int


class Store:
    """The one mailbox store. Open with `Store.open`; close with `close()` (or `with`)."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        clock: Clock,
        body_store: BodyStore,
        max_batch_jobs: int = 256,
        max_batch_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        """Use `Store.open`; this takes over a connection `schema.prepare` has checked."""
        self._path = path
        self._clock = clock
        self._bodies = body_store
        self._write_conn = conn
        self._local = threading.local()
        self._readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[list[Change]], None]] = []
        self._closed = False
        self._writer = Writer(
            conn,
            publish=self._publish,
            lock_path=path.with_name(path.name + ".lock"),
            max_jobs=max_batch_jobs,
            max_bytes=max_batch_bytes,
        )
        self.spool = Spool(self)
        """The outbound queue (homing.store.spool)."""

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        create: bool = False,
        clock: Clock | None = None,
        body_store: BodyStore | None = None,
        max_batch_jobs: int = 256,
        max_batch_bytes: int = 8 * 1024 * 1024,
    ) -> Store:
        """Open the store at `path`, creating it if `create`; migrate it to this version.

        Raises NotFound if there is no store (and not `create`), SchemaTooNew if a newer
        Homing wrote it, StoreError if the file is not a Homing store.
        """
        path = Path(path)
        if not create and not path.exists():
            raise NotFound(f"no store at {path}")
        conn = schema.connect(path, create=create)
        try:
            schema.prepare(conn, path, create=create)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return cls(
            path,
            conn,
            clock=clock or SystemClock(),
            body_store=body_store or SqliteBodyStore(),
            max_batch_jobs=max_batch_jobs,
            max_batch_bytes=max_batch_bytes,
        )

    @property
    def path(self) -> Path:
        return self._path

    @property
    def stats(self) -> StoreStats:
        """The writer's counters (commits, jobs, ...)."""
        return self._writer.stats

    def close(self) -> None:
        """Run every job already submitted, stop the writer, close all connections."""
        if threading.current_thread() is self._writer.thread:
            raise RuntimeError("Store.close() called from the writer thread")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._writer.close()
        self._write_conn.close()
        with self._lock:
            readers, self._readers = self._readers, []
        for _, conn in readers:
            conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            # Connections of threads that have ended are closed here, not leaked.
            dead = [c for t, c in self._readers if not t.is_alive()]
            self._readers = [(t, c) for t, c in self._readers if t.is_alive()]
        for c in dead:
            c.close()
        conn = schema.connect(self._path)
        conn.execute("PRAGMA query_only = ON")
        with self._lock:
            self._readers.append((threading.current_thread(), conn))
        self._local.conn = conn
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees one snapshot."""
        conn = self._reader()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise translate(exc) from exc

    def _submit(self, fn: Callable[[Tx], T], cost: int = 0) -> Future[T]:
        return self._writer.submit(fn, cost)

    def _call(self, fn: Callable[[Tx], T]) -> T:
        """Run a job and wait for its commit (not from the writer thread: that would hang)."""
        if threading.current_thread() is self._writer.thread:
            raise RuntimeError("synchronous store call from the writer thread")
        return self._submit(fn).result()

    def _publish(self, changes: list[Change]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(changes)
            except Exception:
                log.exception("store change subscriber failed")

    def publish_external(self, changes: list[Change]) -> None:
        """Hand `changes` another process committed to this store (an SMTP worker's
        deliveries, told over its link) to this process's subscribers, on the caller's
        thread."""
        self._publish(changes)

    def subscribe(self, callback: Callable[[list[Change]], None]) -> Callable[[], None]:
        """Call `callback` with the changes of each commit, on the writer thread, after the
        commit. It must be quick and must not call the store's synchronous write methods
        (hand the changes to another thread or event loop). Returns the unsubscribe function.
        """
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    # -- domains ----------------------------------------------------------------------------

    def add_domain(self, name: str) -> None:
        key = names.domain_key(name)
        now = self._clock.now()

        def job(tx: Tx) -> None:
            try:
                tx.conn.execute("INSERT INTO domains (name, created) VALUES (?, ?)", (key, now))
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"domain {key} exists") from exc

        self._call(job)

    def remove_domain(self, name: str) -> None:
        """Remove a domain; InUse while accounts or aliases of it remain."""
        key = names.domain_key(name)

        def job(tx: Tx) -> None:
            domain_id = self._tx_domain_id(tx, key)
            ((accounts,),) = _rows(
                tx.conn, "SELECT COUNT(*) FROM accounts WHERE domain_id = ?", (domain_id,)
            )
            ((aliases,),) = _rows(
                tx.conn, "SELECT COUNT(*) FROM aliases WHERE domain_id = ?", (domain_id,)
            )
            if accounts or aliases:
                raise InUse(f"domain {key} still has {accounts} accounts and {aliases} aliases")
            tx.conn.execute("DELETE FROM domains WHERE id = ?", (domain_id,))

        self._call(job)

    def list_domains(self) -> list[str]:
        with self._read() as conn:
            return [r[0] for r in _rows(conn, "SELECT name FROM domains ORDER BY name")]

    def has_domain(self, name: str) -> bool:
        try:
            key = names.domain_key(name)
        except InvalidName:
            return False
        with self._read() as conn:
            return _row(conn, "SELECT 1 FROM domains WHERE name = ?", (key,)) is not None

    def _tx_domain_id(self, tx: Tx, key: str) -> int:
        row = _row(tx.conn, "SELECT id FROM domains WHERE name = ?", (key,))
        if row is None:
            raise NotFound(f"domain {key} is not hosted here")
        domain_id: int = row[0]
        return domain_id

    # -- accounts ---------------------------------------------------------------------------

    def add_account(self, address: str, credentials: Credentials) -> Account:
        """Create an account (its domain must exist) with INBOX and the special-use mailboxes."""
        key = names.address_key(address)
        local, _ = names.split_address(address)
        domain = key.rpartition("@")[2]
        shown = f"{local}@{domain}"
        now = self._clock.now()

        def job(tx: Tx) -> Account:
            domain_id = self._tx_domain_id(tx, domain)
            try:
                row = _row(
                    tx.conn,
                    f"INSERT INTO accounts (domain_id, key, address, created, {_CRED_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        domain_id,
                        key,
                        shown,
                        now,
                        credentials.password_hash,
                        credentials.scram_salt,
                        credentials.scram_iterations,
                        credentials.scram_stored_key,
                        credentials.scram_server_key,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"account {key} exists") from exc
            assert row is not None
            account_id: int = row[0]
            for name, use in DEFAULT_MAILBOXES:
                self._tx_create_mailbox(tx, account_id, name, use, subscribed=True)
            return Account(account_id, shown, domain, False, now)

        return self._call(job)

    def set_credentials(self, address: str, credentials: Credentials) -> None:
        key = names.address_key(address)

        def job(tx: Tx) -> None:
            cur = tx.conn.execute(
                "UPDATE accounts SET password_hash = ?, scram_salt = ?, scram_iterations = ?,"
                " scram_stored_key = ?, scram_server_key = ? WHERE key = ?",
                (
                    credentials.password_hash,
                    credentials.scram_salt,
                    credentials.scram_iterations,
                    credentials.scram_stored_key,
                    credentials.scram_server_key,
                    key,
                ),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no account {key}")

        self._call(job)

    def set_disabled(self, address: str, disabled: bool) -> None:
        """Disable (or enable again) an account; what "disabled" refuses is the caller's policy."""
        key = names.address_key(address)

        def job(tx: Tx) -> None:
            cur = tx.conn.execute(
                "UPDATE accounts SET disabled = ? WHERE key = ?", (int(disabled), key)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no account {key}")

        self._call(job)

    def remove_account(self, address: str) -> None:
        """Delete an account with its mailboxes and messages; bodies are released."""
        key = names.address_key(address)

        def job(tx: Tx) -> None:
            row = _row(tx.conn, "SELECT id FROM accounts WHERE key = ?", (key,))
            if row is None:
                raise NotFound(f"no account {key}")
            account_id: int = row[0]
            mailbox_ids = [
                r[0]
                for r in _rows(
                    tx.conn, "SELECT id FROM mailboxes WHERE account_id = ?", (account_id,)
                )
            ]
            for mailbox_id in mailbox_ids:
                self._tx_delete_mailbox(tx, account_id, mailbox_id)
            tx.conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))

        self._call(job)

    def get_account(self, address: str) -> Account | None:
        try:
            key = names.address_key(address)
        except InvalidName:
            return None
        with self._read() as conn:
            row = _row(
                conn,
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a JOIN domains d ON d.id = a.domain_id"
                " WHERE a.key = ?",
                (key,),
            )
        return None if row is None else _account(row)

    def get_account_by_id(self, account_id: int) -> Account | None:
        with self._read() as conn:
            row = _row(
                conn,
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a JOIN domains d ON d.id = a.domain_id"
                " WHERE a.id = ?",
                (account_id,),
            )
        return None if row is None else _account(row)

    def get_credentials(self, address: str) -> Credentials | None:
        try:
            key = names.address_key(address)
        except InvalidName:
            return None
        with self._read() as conn:
            row = _row(conn, f"SELECT {_CRED_COLUMNS} FROM accounts WHERE key = ?", (key,))
        return None if row is None else _credentials(row)

    def list_accounts(self, domain: str | None = None) -> list[Account]:
        sql = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a JOIN domains d ON d.id = a.domain_id"
        params: tuple[str, ...] = ()
        if domain is not None:
            sql += " WHERE d.name = ?"
            params = (names.domain_key(domain),)
        with self._read() as conn:
            return [_account(r) for r in _rows(conn, sql + " ORDER BY a.key", params)]

    # -- app passwords ----------------------------------------------------------------------

    def add_app_password(self, address: str, name: str, credentials: Credentials) -> AppPassword:
        """Give the account an extra password called `name`, usable wherever the account
        password is (homing.auth decides which mechanisms). AlreadyExists if the account has
        one of that name, StoreError past `MAX_APP_PASSWORDS`, NotFound without the account."""
        key = names.address_key(address)
        name = _app_password_name(name)
        now = self._clock.now()

        def job(tx: Tx) -> AppPassword:
            account = _row(tx.conn, "SELECT id FROM accounts WHERE key = ?", (key,))
            if account is None:
                raise NotFound(f"no account {key}")
            account_id: int = account[0]
            ((count,),) = _rows(
                tx.conn, "SELECT COUNT(*) FROM app_passwords WHERE account_id = ?", (account_id,)
            )
            if count >= MAX_APP_PASSWORDS:
                raise StoreError(
                    f"{key} has {count} app passwords, the most allowed; remove one first"
                )
            try:
                row = _row(
                    tx.conn,
                    f"INSERT INTO app_passwords (account_id, name, created, {_CRED_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        account_id,
                        name,
                        now,
                        credentials.password_hash,
                        credentials.scram_salt,
                        credentials.scram_iterations,
                        credentials.scram_stored_key,
                        credentials.scram_server_key,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"{key} already has an app password {name!r}") from exc
            assert row is not None
            return AppPassword(row[0], account_id, name, now, None)

        return self._call(job)

    def list_app_passwords(self, address: str) -> list[AppPassword]:
        """The account's app passwords in the order they were made; NotFound without it."""
        key = names.address_key(address)
        with self._read() as conn:
            account = _row(conn, "SELECT id FROM accounts WHERE key = ?", (key,))
            if account is None:
                raise NotFound(f"no account {key}")
            rows = _rows(
                conn,
                "SELECT id, account_id, name, created, last_used FROM app_passwords"
                " WHERE account_id = ? ORDER BY id",
                (account[0],),
            )
        return [AppPassword(*row) for row in rows]

    def remove_app_password(self, address: str, name: str) -> None:
        """Revoke one app password (the others and the account password stay valid)."""
        key = names.address_key(address)

        def job(tx: Tx) -> None:
            cur = tx.conn.execute(
                "DELETE FROM app_passwords WHERE name = ?"
                " AND account_id = (SELECT id FROM accounts WHERE key = ?)",
                (name, key),
            )
            if cur.rowcount == 0:
                raise NotFound(f"{key} has no app password {name!r}")

        self._call(job)

    def get_all_credentials(self, address: str) -> list[tuple[str | None, Credentials]]:
        """Every password of an account: (None, the account password) first, then
        (name, credentials) of each app password, oldest first. Empty for an unknown (or
        invalid) address. Read in one snapshot."""
        try:
            key = names.address_key(address)
        except InvalidName:
            return []
        with self._read() as conn:
            row = _row(conn, f"SELECT id, {_CRED_COLUMNS} FROM accounts WHERE key = ?", (key,))
            if row is None:
                return []
            apps = _rows(
                conn,
                f"SELECT name, {_CRED_COLUMNS} FROM app_passwords WHERE account_id = ? ORDER BY id",
                (row[0],),
            )
        found: list[tuple[str | None, Credentials]] = [(None, _credentials(row[1:]))]
        found += [(app[0], _credentials(app[1:])) for app in apps]
        return found

    def app_password_used(self, address: str, name: str) -> Future[None]:
        """Record that a login just used this app password (`last_used`). Never blocks; a
        password removed meanwhile is ignored."""
        try:
            key = names.address_key(address)
        except InvalidName as exc:
            return _failed(exc)
        now = self._clock.now()

        def job(tx: Tx) -> None:
            tx.conn.execute(
                "UPDATE app_passwords SET last_used = ? WHERE name = ?"
                " AND account_id = (SELECT id FROM accounts WHERE key = ?)",
                (now, name, key),
            )

        return self._submit(job)

    def get_secret(self, name: str) -> bytes:
        """A random per-installation secret made when the store was created (or migrated):
        "scram" keys the fake SCRAM verifiers of unknown users. NotFound for other names."""
        with self._read() as conn:
            row = _row(conn, "SELECT value FROM secrets WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no secret {name!r}")
        return bytes(row[0])

    # -- aliases ----------------------------------------------------------------------------

    def add_alias(self, alias: str, targets: Sequence[str]) -> None:
        """Add targets to an alias (`local@domain`, or `@domain` for a catch-all) of a hosted
        domain. Targets already there are left as they are."""
        key, domain = names.alias_key(alias)
        if isinstance(targets, str):
            raise TypeError("targets must be a sequence of addresses, not one string")
        pairs = [(names.address_key(t), t.strip()) for t in targets]
        if not pairs:
            raise InvalidName("an alias needs at least one target")

        def job(tx: Tx) -> None:
            domain_id = self._tx_domain_id(tx, domain)
            tx.conn.executemany(
                "INSERT OR IGNORE INTO aliases (domain_id, alias, target_key, target)"
                " VALUES (?, ?, ?, ?)",
                [(domain_id, key, tkey, target) for tkey, target in pairs],
            )

        self._call(job)

    def remove_alias(self, alias: str, targets: Sequence[str] | None = None) -> None:
        """Remove some targets of an alias, or all (None); NotFound if one is not there."""
        key, _ = names.alias_key(alias)
        if isinstance(targets, str):
            raise TypeError("targets must be a sequence of addresses, not one string")
        target_keys = None if targets is None else [names.address_key(t) for t in targets]

        def job(tx: Tx) -> None:
            if target_keys is None:
                if tx.conn.execute("DELETE FROM aliases WHERE alias = ?", (key,)).rowcount == 0:
                    raise NotFound(f"no alias {key}")
                return
            for tkey in target_keys:
                cur = tx.conn.execute(
                    "DELETE FROM aliases WHERE alias = ? AND target_key = ?", (key, tkey)
                )
                if cur.rowcount == 0:
                    raise NotFound(f"alias {key} has no target {tkey}")

        self._call(job)

    def alias_targets(self, alias: str) -> list[str]:
        """The targets of an alias (`local@domain` or `@domain`), in the order added."""
        try:
            key, _ = names.alias_key(alias)
        except InvalidName:
            return []
        with self._read() as conn:
            return [
                r[0]
                for r in _rows(
                    conn, "SELECT target FROM aliases WHERE alias = ? ORDER BY id", (key,)
                )
            ]

    def list_aliases(self) -> list[tuple[str, list[str]]]:
        out: dict[str, list[str]] = {}
        with self._read() as conn:
            for alias, target in _rows(
                conn, "SELECT alias, target FROM aliases ORDER BY alias, id"
            ):
                out.setdefault(alias, []).append(target)
        return list(out.items())

    # -- mailboxes --------------------------------------------------------------------------

    def list_mailboxes(self, account_id: int) -> list[MailboxInfo]:
        """The account's mailboxes, INBOX first, then by name."""
        with self._read() as conn:
            rows = _rows(
                conn,
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ?"
                " ORDER BY name != 'INBOX', name",
                (account_id,),
            )
            if (
                not rows
                and _row(conn, "SELECT 1 FROM accounts WHERE id = ?", (account_id,)) is None
            ):
                raise NotFound(f"no account {account_id}")
        return [_mailbox(r) for r in rows]

    def get_mailbox(self, account_id: int, name: str) -> MailboxInfo | None:
        name = names.mailbox_name(name)
        with self._read() as conn:
            row = _row(
                conn,
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ? AND name = ?",
                (account_id, name),
            )
        return None if row is None else _mailbox(row)

    def get_mailbox_by_id(self, mailbox_id: int) -> MailboxInfo | None:
        with self._read() as conn:
            row = _row(
                conn, f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?", (mailbox_id,)
            )
        return None if row is None else _mailbox(row)

    def create_mailbox(
        self,
        account_id: int,
        name: str,
        special_use: str | None = None,
        *,
        subscribed: bool = False,
    ) -> MailboxInfo:
        """RFC 9051 §6.3.4 CREATE: a trailing separator is ignored, and missing superior
        names ("a" and "a/b" for "a/b/c") are created too (unsubscribed)."""
        if name.endswith(SEPARATOR):
            name = name[: -len(SEPARATOR)]
        name = names.mailbox_name(name)
        use = names.special_use(special_use)

        def job(tx: Tx) -> MailboxInfo:
            if _row(tx.conn, "SELECT 1 FROM accounts WHERE id = ?", (account_id,)) is None:
                raise NotFound(f"no account {account_id}")
            if self._tx_mailbox_by_name(tx, account_id, name) is not None:
                raise AlreadyExists(f"mailbox {name!r} exists")
            self._tx_create_superiors(tx, account_id, name)
            return self._tx_create_mailbox(tx, account_id, name, use, subscribed=subscribed)

        return self._call(job)

    def delete_mailbox(self, account_id: int, name: str) -> None:
        """RFC 9051 §6.3.5 DELETE: messages go, bodies are released. Inferior names are left
        alone (the server MUST NOT remove them); INBOX cannot be deleted."""
        name = names.mailbox_name(name)
        if name == INBOX:
            raise InvalidName("INBOX cannot be deleted")

        def job(tx: Tx) -> None:
            row = self._tx_mailbox_by_name(tx, account_id, name)
            if row is None:
                raise NotFound(f"no mailbox {name!r}")
            self._tx_delete_mailbox(tx, account_id, row[0])

        self._call(job)

    def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """RFC 9051 §6.3.6 RENAME: inferior names move along; missing superiors of the new
        name are created. Renaming INBOX moves its messages to a new mailbox and leaves INBOX
        there, empty (its own inferiors stay). UIDVALIDITY is unique store-wide, so a later
        mailbox reusing the old name can never be confused with this one."""
        old = names.mailbox_name(old)
        new = names.mailbox_name(new)
        if old == new:
            raise AlreadyExists(f"mailbox {new!r} exists")
        if old != INBOX and new.startswith(old + SEPARATOR):
            raise InvalidName(f"cannot rename {old!r} to its own inferior {new!r}")

        def job(tx: Tx) -> None:
            src = self._tx_mailbox_by_name(tx, account_id, old)
            if src is None:
                raise NotFound(f"no mailbox {old!r}")
            if self._tx_mailbox_by_name(tx, account_id, new) is not None:
                raise AlreadyExists(f"mailbox {new!r} exists")
            if old == INBOX:
                self._tx_create_superiors(tx, account_id, new)
                dst = self._tx_create_mailbox(tx, account_id, new, None, subscribed=bool(src[7]))
                self._tx_move(tx, src[0], None, dst.id)
                return
            self._tx_rename_tree(tx, account_id, old, new, src[0])

        self._call(job)

    def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        """RFC 9051 §6.3.7/§6.3.8 SUBSCRIBE/UNSUBSCRIBE (subscriptions belong to mailboxes
        here, so the mailbox must exist; RFC 9051 allows that check)."""
        name = names.mailbox_name(name)

        def job(tx: Tx) -> None:
            row = _row(
                tx.conn,
                "UPDATE mailboxes SET subscribed = ? WHERE account_id = ? AND name = ?"
                " RETURNING id",
                (int(subscribed), account_id, name),
            )
            if row is None:
                raise NotFound(f"no mailbox {name!r}")
            tx.changes.append(Change("mailbox", account_id, row[0], ()))

        self._call(job)

    def _tx_mailbox_by_name(self, tx: Tx, account_id: int, name: str) -> Row | None:
        return _row(
            tx.conn,
            f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE account_id = ? AND name = ?",
            (account_id, name),
        )

    def _tx_mailbox(self, tx: Tx, mailbox_id: int) -> Row:
        """(id, account_id) of a mailbox, or NotFound."""
        row = _row(tx.conn, "SELECT id, account_id FROM mailboxes WHERE id = ?", (mailbox_id,))
        if row is None:
            raise NotFound(f"no mailbox {mailbox_id}")
        return row

    def _tx_next_uidvalidity(self, tx: Tx) -> int:
        """A fresh UIDVALIDITY: the current time in seconds, or one more than the last one
        handed out if that is larger; so it is unique and never reused (RFC 9051 §2.3.1.1)."""
        row = _row(
            tx.conn,
            "UPDATE meta SET value = max(value + 1, ?) WHERE key = 'last_uidvalidity'"
            " RETURNING value",
            (int(self._clock.now()),),
        )
        assert row is not None
        value: int = row[0]
        if value > MAX_UIDVALIDITY:
            raise StoreError("UIDVALIDITY space exhausted")
        return value

    def _tx_create_mailbox(
        self, tx: Tx, account_id: int, name: str, use: str | None, *, subscribed: bool
    ) -> MailboxInfo:
        uidvalidity = self._tx_next_uidvalidity(tx)
        row = _row(
            tx.conn,
            "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity, subscribed)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (account_id, name, use, uidvalidity, int(subscribed)),
        )
        assert row is not None
        tx.changes.append(Change("mailbox", account_id, row[0], ()))
        return MailboxInfo(
            id=row[0],
            account_id=account_id,
            name=name,
            special_use=use,
            uidvalidity=uidvalidity,
            uidnext=1,
            highestmodseq=1,
            subscribed=subscribed,
            messages=0,
            unseen=0,
            size=0,
        )

    def _tx_create_superiors(self, tx: Tx, account_id: int, name: str) -> None:
        for superior in names.superiors(name):
            if self._tx_mailbox_by_name(tx, account_id, superior) is None:
                self._tx_create_mailbox(tx, account_id, superior, None, subscribed=False)

    def _tx_delete_mailbox(self, tx: Tx, account_id: int, mailbox_id: int) -> None:
        counts = _rows(
            tx.conn,
            "SELECT body_id, COUNT(*) FROM messages WHERE mailbox_id = ? GROUP BY body_id",
            (mailbox_id,),
        )
        tx.conn.execute("DELETE FROM messages WHERE mailbox_id = ?", (mailbox_id,))
        self._tx_release(tx, counts)
        tx.conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
        tx.changes.append(Change("mailbox", account_id, mailbox_id, ()))

    def _tx_rename_tree(self, tx: Tx, account_id: int, old: str, new: str, old_id: int) -> None:
        prefix = old + SEPARATOR
        moves = [(old_id, old)] + [
            (r[0], r[1])
            for r in _rows(
                tx.conn,
                "SELECT id, name FROM mailboxes WHERE account_id = ? AND substr(name, 1, ?) = ?",
                (account_id, len(prefix), prefix),
            )
        ]
        moving = {mailbox_id for mailbox_id, _ in moves}
        renamed = [(mailbox_id, new + name[len(old) :]) for mailbox_id, name in moves]
        for _, target in renamed:
            existing = self._tx_mailbox_by_name(tx, account_id, target)
            if existing is not None and existing[0] not in moving:
                raise AlreadyExists(f"mailbox {target!r} exists")
        # Two steps, so a target name that is also a source name never collides; "\x00" can
        # never start a valid name.
        tx.conn.executemany(
            "UPDATE mailboxes SET name = char(0) || id WHERE id = ?", [(i,) for i, _ in moves]
        )
        self._tx_create_superiors(tx, account_id, new)
        tx.conn.executemany(
            "UPDATE mailboxes SET name = ? WHERE id = ?", [(n, i) for i, n in renamed]
        )
        tx.changes.extend(Change("mailbox", account_id, i, ()) for i, _ in renamed)

    # -- messages: reading ------------------------------------------------------------------

    def list_messages(
        self, mailbox_id: int, *, changed_since: int | None = None
    ) -> list[MessageInfo]:
        """The mailbox's messages in UID order; with `changed_since`, only those whose MODSEQ
        is above it (CONDSTORE FETCH CHANGEDSINCE, RFC 7162 §3.1.4)."""
        sql = (
            "SELECT id, mailbox_id, uid, modseq, flags, keywords, internaldate, size"
            " FROM messages WHERE mailbox_id = ?"
        )
        params: tuple[int, ...] = (mailbox_id,)
        if changed_since is not None:
            sql += " AND modseq > ?"
            params += (changed_since,)
        with self._read() as conn:
            if _row(conn, "SELECT 1 FROM mailboxes WHERE id = ?", (mailbox_id,)) is None:
                raise NotFound(f"no mailbox {mailbox_id}")
            rows = _rows(conn, sql + " ORDER BY uid", params)
        # Positional and unpacked: this runs once per message of a mailbox at SELECT.
        flag_set = _flag_set
        return [
            MessageInfo(row_id, box, uid, modseq, flag_set(mask, keywords), date, size)
            for row_id, box, uid, modseq, mask, keywords, date, size in rows
        ]

    def expunged_since(self, mailbox_id: int, modseq: int) -> list[int]:
        """UIDs expunged with a MODSEQ above `modseq`, ascending (QRESYNC VANISHED,
        RFC 7162 §3.2.5.1)."""
        with self._read() as conn:
            return [
                r[0]
                for r in _rows(
                    conn,
                    "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
                    (mailbox_id, modseq),
                )
            ]

    def read_split(self, mailbox_id: int, uid: int) -> tuple[bytes, bytes] | None:
        """(prefix, body) of a message: the partmap's offsets are relative to `body`."""
        with self._read() as conn:
            row = _row(
                conn,
                "SELECT prefix, body_id FROM messages WHERE mailbox_id = ? AND uid = ?",
                (mailbox_id, uid),
            )
            if row is None:
                return None
            body = self._bodies.get(conn, row[1])
        if body is None:
            raise StoreError(f"message {mailbox_id}/{uid}: body {row[1]} is missing")
        return bytes(row[0]), body

    def read_message(self, mailbox_id: int, uid: int) -> bytes | None:
        """The message as stored: prefix + body."""
        split = self.read_split(mailbox_id, uid)
        return None if split is None else split[0] + split[1]

    def read_parsed(self, mailbox_id: int, uid: int) -> tuple[bytes, bytes, bytes, bytes] | None:
        """(envelope, bodystructure, body, partmap) as computed at delivery."""
        with self._read() as conn:
            row = _row(
                conn,
                "SELECT b.envelope, b.bodystructure, b.body_nx, b.partmap"
                " FROM messages m JOIN bodies b ON b.id = m.body_id"
                " WHERE m.mailbox_id = ? AND m.uid = ?",
                (mailbox_id, uid),
            )
        if row is None:
            return None
        return bytes(row[0]), bytes(row[1]), bytes(row[2]), bytes(row[3])

    def read_fetch_data(
        self, mailbox_id: int, uids: Sequence[int], *, parsed: bool, data: bool
    ) -> list[FetchRow]:
        """Parse results (`parsed`: envelope, body structure, BODY, part map) and/or bytes
        (`data`: prefix and body) of many messages of a mailbox in one query, in UID order.
        UIDs that do not exist (expunged meanwhile) are left out.

        For FETCH and SEARCH: one statement per call instead of one per message. The caller
        bounds `uids` (the IMAP session reads at most 1,000 messages or a few MiB per call).
        A contiguous run of UIDs (the common `1:*`) is a range scan of the (mailbox_id, uid)
        index; any other set goes through `json_each`.
        """
        wanted = _uid_list(uids)
        if not wanted:
            return []
        columns = ["m.uid"]
        joins = ""
        if parsed:
            columns.append("b.envelope, b.bodystructure, b.body_nx, b.partmap")
            joins += " JOIN bodies b ON b.id = m.body_id"
        # The SQLite body store's bytes come in the same statement; another backend is asked
        # body by body, inside the same read transaction.
        inline = data and isinstance(self._bodies, SqliteBodyStore)
        if data:
            columns.append("m.prefix, m.body_id")
            if inline:
                columns.append("d.data")
                joins += " LEFT JOIN body_data d ON d.id = m.body_id"
        where, params = _mailbox_uids(mailbox_id, wanted)
        sql = f"SELECT {', '.join(columns)} FROM messages m{joins}{where}"
        with self._read() as conn:
            rows = _rows(conn, sql + " ORDER BY m.uid", params)
            if data and not inline:
                rows = [(*r, self._bodies.get(conn, r[-1])) for r in rows]
        if parsed and not data:  # FETCH ENVELOPE / BODYSTRUCTURE of many: the common bulk case
            return [FetchRow(uid, env, bs, nx, pm) for uid, env, bs, nx, pm in rows]
        return [self._fetch_row(mailbox_id, r, parsed=parsed, data=data) for r in rows]

    def read_fetch_meta(self, mailbox_id: int, uids: Sequence[int]) -> list[MetaRow]:
        """Metadata and parse results of many messages of a mailbox in one query, in UID
        order: (uid, modseq, flags, internaldate, size, envelope, bodystructure, body_nx,
        partmap). UIDs that do not exist are left out. For `FETCH 1:* (FLAGS ENVELOPE ...)`:
        everything such a response needs comes from one row, with no other lookup."""
        wanted = _uid_list(uids)
        if not wanted:
            return []
        sql = (
            "SELECT m.uid, m.modseq, m.flags, m.keywords, m.internaldate, m.size,"
            " b.envelope, b.bodystructure, b.body_nx, b.partmap"
            " FROM messages m JOIN bodies b ON b.id = m.body_id"
        )
        where, params = _mailbox_uids(mailbox_id, wanted)
        sql += where
        with self._read() as conn:
            rows = _rows(conn, sql + " ORDER BY m.uid", params)
        flag_set = _flag_set
        return [
            (uid, modseq, flag_set(mask, keywords), date, size, env, bs, nx, pm)
            for uid, modseq, mask, keywords, date, size, env, bs, nx, pm in rows
        ]

    def read_messages(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        """The messages as stored (prefix + body) of many UIDs of a mailbox, read in one
        statement and one snapshot: {uid: bytes}. UIDs that do not exist (expunged meanwhile)
        are left out.

        For POP3 RETR of pipelined commands: a lean sibling of `read_fetch_data` (no parse
        results, no per-row objects). The caller bounds `uids` and their total size.
        """
        wanted = _uid_list(uids)
        if not wanted:
            return {}
        inline = isinstance(self._bodies, SqliteBodyStore)
        sql = "SELECT m.uid, m.prefix, m.body_id"
        if inline:
            sql += ", d.data FROM messages m LEFT JOIN body_data d ON d.id = m.body_id"
        else:
            sql += " FROM messages m"
        where, params = _mailbox_uids(mailbox_id, wanted)
        sql += where
        with self._read() as conn:
            rows = _rows(conn, sql, params)
            if not inline:
                rows = [(*r, self._bodies.get(conn, r[2])) for r in rows]
        found: dict[int, bytes] = {}
        for uid, prefix, body_id, body in rows:
            if body is None:
                raise StoreError(f"message {mailbox_id}/{uid}: body {body_id} is missing")
            found[uid] = bytes(prefix) + body
        return found

    @staticmethod
    def _fetch_row(mailbox_id: int, r: Row, *, parsed: bool, data: bool) -> FetchRow:
        """A `read_fetch_data` row: uid, [4 parse columns], [prefix, body_id, bytes]."""
        if not data:
            if not parsed:
                return FetchRow(r[0])
            return FetchRow(r[0], r[1], r[2], r[3], r[4])
        body = r[-1]
        if body is None:
            raise StoreError(f"message {mailbox_id}/{r[0]}: body {r[-2]} is missing")
        if not parsed:
            return FetchRow(r[0], prefix=r[1], body=body)
        return FetchRow(r[0], r[1], r[2], r[3], r[4], r[5], body)

    # -- messages: delivery and append ------------------------------------------------------

    def deliver(
        self, messages: Sequence[NewMessage], queued: Sequence[NewQueued] = ()
    ) -> Future[list[StoredMessage]]:
        """Store copies of messages and queue entries for remote domains, all or none; the
        future resolves after the COMMIT (and its fsync).

        Never blocks (safe on an event loop: `await asyncio.wrap_future(...)`). Copies and
        entries in one call whose `body` bytes are equal share one body row. Errors (an
        unknown mailbox, an invalid flag) arrive on the future. Queue subscribers
        (`spool.subscribe`) are told after the commit.
        """
        try:
            prepared = self._prepare_delivery_all(messages, queued)
        except Exception as exc:
            return _failed(exc)
        if prepared.empty:
            return _completed([])
        future = self._submit(lambda tx: self._tx_deliver_all(tx, prepared), prepared.cost)
        if prepared.queued:
            self.spool.notify_after(future)
        return future

    def _prepare_delivery_all(
        self, messages: Sequence[NewMessage], queued: Sequence[NewQueued]
    ) -> _Delivery:
        bodies, copies = self._prepare_delivery(messages)
        index = {b.data: i for i, b in enumerate(bodies)}
        positions: list[int] = []
        for q in queued:
            check_new(q)
            i = index.get(q.body)
            if i is None:
                i = index[q.body] = len(bodies)
                bodies.append(_Body(q.body, None, b""))
            bodies[i].refs += 1
            positions.append(i)
        return _Delivery(bodies, copies, list(queued), positions, self._clock.now())

    def _tx_deliver_all(self, tx: Tx, d: _Delivery) -> list[StoredMessage]:
        body_ids = self._tx_put_bodies(tx, d.bodies)
        stored = self._tx_copies(tx, body_ids, d.copies)
        if d.queued:
            tx_enqueue(tx, d.queued, [body_ids[i] for i in d.queued_bodies], d.now)
        return stored

    def _prepare_delivery(self, messages: Sequence[NewMessage]) -> tuple[list[_Body], list[_Copy]]:
        """Everything but SQL, done on the caller's thread to keep the writer fast."""
        bodies: list[_Body] = []
        index: dict[bytes, int] = {}
        copies: list[_Copy] = []
        now = self._clock.now()
        for m in messages:
            i = index.get(m.body)
            if i is None:
                i = index[m.body] = len(bodies)
                bodies.append(_Body(m.body, m.parsed, encode_partmap(m.parsed.parts)))
            bodies[i].refs += 1
            mask, keywords = names.parse_flags(m.flags)
            copies.append(
                _Copy(
                    account_id=m.account_id,
                    mailbox=names.mailbox_name(m.mailbox),
                    prefix=m.prefix,
                    body=i,
                    flags=mask,
                    keywords=names.encode_keywords(keywords),
                    internaldate=now if m.internaldate is None else m.internaldate,
                    size=len(m.prefix) + len(m.body),
                )
            )
        return bodies, copies

    def _tx_put_bodies(self, tx: Tx, bodies: list[_Body]) -> list[int]:
        conn = tx.conn
        body_ids: list[int] = []
        for b in bodies:
            p = b.parsed
            row = _row(
                conn,
                "INSERT INTO bodies (refcount, size, envelope, bodystructure, body_nx, partmap,"
                " message_id, subject, has_8bit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    b.refs,
                    len(b.data),
                    b"" if p is None else p.envelope,
                    b"" if p is None else p.bodystructure,
                    b"" if p is None else p.body,
                    b.partmap,
                    None if p is None else p.message_id,
                    None if p is None else p.subject,
                    int(not b.data.isascii()) if p is None else int(bool(p.has_8bit)),
                ),
            )
            assert row is not None
            self._bodies.put(conn, row[0], b.data)
            body_ids.append(row[0])
        return body_ids

    def _tx_copies(self, tx: Tx, body_ids: list[int], copies: list[_Copy]) -> list[StoredMessage]:
        conn = tx.conn
        stored: list[StoredMessage] = []
        new: dict[tuple[int, int], list[int]] = {}
        for c in copies:
            row = _row(
                conn,
                "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
                " WHERE account_id = ? AND name = ?"
                " RETURNING id, uidnext - 1, highestmodseq, uidvalidity",
                (c.account_id, c.mailbox),
            )
            if row is None:
                raise NotFound(f"account {c.account_id} has no mailbox {c.mailbox!r}")
            mailbox_id, uid, modseq, uidvalidity = row
            conn.execute(
                "INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internaldate,"
                " size, body_id, prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    mailbox_id,
                    uid,
                    modseq,
                    c.flags,
                    c.keywords,
                    c.internaldate,
                    c.size,
                    body_ids[c.body],
                    c.prefix,
                ),
            )
            new.setdefault((c.account_id, mailbox_id), []).append(uid)
            stored.append(
                StoredMessage(c.account_id, mailbox_id, c.mailbox, uid, uidvalidity, modseq, c.size)
            )
        tx.changes.extend(Change("new", a, m, tuple(uids)) for (a, m), uids in new.items())
        return stored

    # -- messages: flags, copy, move, expunge -----------------------------------------------

    def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        flags: frozenset[str],
        mode: Literal["set", "add", "remove"],
        unchanged_since: int | None = None,
    ) -> Future[FlagChanges]:
        """STORE FLAGS / +FLAGS / -FLAGS (RFC 9051 §6.4.6) with CONDSTORE UNCHANGEDSINCE
        (RFC 7162 §3.1.3). Messages whose flags change get one new MODSEQ (one per call);
        messages left unchanged keep theirs; UIDs that do not exist are ignored."""
        if mode not in ("set", "add", "remove"):
            return _failed(ValueError(f"invalid mode {mode!r}"))
        try:
            mask, keywords = names.parse_flags(flags)
        except InvalidName as exc:
            return _failed(exc)
        wanted = _uid_list(uids)
        return self._submit(
            lambda tx: self._tx_store_flags(
                tx,
                mailbox_id=mailbox_id,
                uids=wanted,
                mask=mask,
                keywords=keywords,
                mode=mode,
                unchanged_since=unchanged_since,
            )
        )

    def _tx_store_flags(
        self,
        tx: Tx,
        *,
        mailbox_id: int,
        uids: list[int],
        mask: int,
        keywords: dict[str, str],
        mode: str,
        unchanged_since: int | None,
    ) -> FlagChanges:
        _, account_id = self._tx_mailbox(tx, mailbox_id)
        rows = _rows(
            tx.conn,
            "SELECT id, uid, modseq, flags, keywords FROM messages"
            f" WHERE mailbox_id = ? AND {_IN_UIDS} ORDER BY uid",
            (mailbox_id, json.dumps(uids)),
        )
        modified: list[int] = []
        updates: list[tuple[int, int, int, str]] = []
        for row_id, uid, modseq, old_mask, old_text in rows:
            if unchanged_since is not None and modseq > unchanged_since:
                modified.append(uid)
                continue
            old = names.decode_keywords(old_text)
            if mode == "set":
                new_mask = mask
                new = {k: old.get(k, v) for k, v in keywords.items()}
            elif mode == "add":
                new_mask = old_mask | mask
                new = {**keywords, **old}
            else:
                new_mask = old_mask & ~mask
                new = {k: v for k, v in old.items() if k not in keywords}
            new_text = names.encode_keywords(new)
            if new_mask != old_mask or new_text != old_text:
                updates.append((row_id, uid, new_mask, new_text))
        result = FlagChanges()
        result.modified = tuple(modified)
        if not updates:
            return result
        _, modseq = self._tx_bump(tx, mailbox_id)
        tx.conn.executemany(
            "UPDATE messages SET flags = ?, keywords = ?, modseq = ? WHERE id = ?",
            [(m, k, modseq, i) for i, _, m, k in updates],
        )
        result.extend((uid, modseq, _flag_set(m, k)) for _, uid, m, k in updates)
        tx.changes.append(Change("flags", account_id, mailbox_id, tuple(u[1] for u in updates)))
        return result

    def copy_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> Future[list[tuple[int, int]]]:
        """COPY (RFC 9051 §6.4.7): flags and internal date go along; bodies are shared.
        Returns (source UID, new UID) pairs in UID order (for COPYUID, RFC 4315 §3)."""
        wanted = _uid_list(uids)
        return self._submit(lambda tx: self._tx_copy(tx, src_mailbox_id, wanted, dst_mailbox_id))

    def _tx_copy(self, tx: Tx, src_id: int, uids: list[int], dst_id: int) -> list[tuple[int, int]]:
        self._tx_mailbox(tx, src_id)
        _, dst_account = self._tx_mailbox(tx, dst_id)
        rows = _rows(
            tx.conn,
            "SELECT uid, flags, keywords, internaldate, size, body_id, prefix FROM messages"
            f" WHERE mailbox_id = ? AND {_IN_UIDS} ORDER BY uid",
            (src_id, json.dumps(uids)),
        )
        if not rows:
            return []
        first, modseq = self._tx_bump(tx, dst_id, len(rows))
        pairs = [(r[0], first + i) for i, r in enumerate(rows)]
        tx.conn.executemany(
            "INSERT INTO messages (mailbox_id, uid, modseq, flags, keywords, internaldate,"
            " size, body_id, prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(dst_id, new, modseq, *r[1:]) for (_, new), r in zip(pairs, rows, strict=True)],
        )
        refs = collections.Counter(r[5] for r in rows)
        tx.conn.executemany(
            "UPDATE bodies SET refcount = refcount + ? WHERE id = ?",
            [(n, body_id) for body_id, n in refs.items()],
        )
        tx.changes.append(Change("new", dst_account, dst_id, tuple(new for _, new in pairs)))
        return pairs

    def move_messages(
        self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
    ) -> Future[list[tuple[int, int]]]:
        """MOVE (RFC 6851): like COPY then EXPUNGE of the originals, done atomically; the
        row itself moves, so the body's reference count does not change."""
        wanted = _uid_list(uids)
        return self._submit(lambda tx: self._tx_move(tx, src_mailbox_id, wanted, dst_mailbox_id))

    def _tx_move(
        self, tx: Tx, src_id: int, uids: list[int] | None, dst_id: int
    ) -> list[tuple[int, int]]:
        _, src_account = self._tx_mailbox(tx, src_id)
        _, dst_account = self._tx_mailbox(tx, dst_id)
        sql = "SELECT id, uid FROM messages WHERE mailbox_id = ?"
        params: tuple[Any, ...] = (src_id,)
        if uids is not None:
            sql += f" AND {_IN_UIDS}"
            params += (json.dumps(uids),)
        rows = _rows(tx.conn, sql + " ORDER BY uid", params)
        if not rows:
            return []
        _, expunge_modseq = self._tx_bump(tx, src_id)
        first, modseq = self._tx_bump(tx, dst_id, len(rows))
        pairs = [(uid, first + i) for i, (_, uid) in enumerate(rows)]
        tx.conn.executemany(
            "UPDATE messages SET mailbox_id = ?, uid = ?, modseq = ? WHERE id = ?",
            [(dst_id, first + i, modseq, row_id) for i, (row_id, _) in enumerate(rows)],
        )
        tx.conn.executemany(
            "INSERT INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
            [(src_id, uid, expunge_modseq) for _, uid in rows],
        )
        tx.changes.append(Change("new", dst_account, dst_id, tuple(new for _, new in pairs)))
        tx.changes.append(Change("expunge", src_account, src_id, tuple(uid for _, uid in rows)))
        return pairs

    def expunge(
        self, mailbox_id: int, uids: Sequence[int] | None = None, *, force: bool = False
    ) -> Future[list[int]]:
        """Remove messages flagged \\Deleted: all of them (EXPUNGE, RFC 9051 §6.4.3), or
        those among `uids` (UID EXPUNGE, §6.4.9). `force` removes the given messages whatever
        their flags (POP3 DELE, administration). Returns the UIDs removed, ascending; they
        are recorded with the expunge's MODSEQ, and their bodies released."""
        wanted = None if uids is None else _uid_list(uids)
        if force and wanted is None:
            return _failed(ValueError("force=True needs an explicit list of UIDs"))
        return self._submit(lambda tx: self._tx_expunge(tx, mailbox_id, wanted, force))

    def _tx_expunge(
        self, tx: Tx, mailbox_id: int, uids: list[int] | None, force: bool
    ) -> list[int]:
        _, account_id = self._tx_mailbox(tx, mailbox_id)
        sql = "SELECT id, uid, body_id FROM messages WHERE mailbox_id = ?"
        params: tuple[Any, ...] = (mailbox_id,)
        if not force:
            sql += f" AND flags & {names.DELETED}"
        if uids is not None:
            sql += f" AND {_IN_UIDS}"
            params += (json.dumps(uids),)
        rows = _rows(tx.conn, sql + " ORDER BY uid", params)
        if not rows:
            return []
        _, modseq = self._tx_bump(tx, mailbox_id)
        tx.conn.execute(
            "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps([r[0] for r in rows]),),
        )
        tx.conn.executemany(
            "INSERT INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
            [(mailbox_id, r[1], modseq) for r in rows],
        )
        self._tx_release(tx, collections.Counter(r[2] for r in rows).items())
        expunged = [r[1] for r in rows]
        tx.changes.append(Change("expunge", account_id, mailbox_id, tuple(expunged)))
        return expunged

    def _tx_bump(self, tx: Tx, mailbox_id: int, new_uids: int = 0) -> tuple[int, int]:
        """Reserve `new_uids` UIDs and one new MODSEQ: (first UID, MODSEQ)."""
        row = _row(
            tx.conn,
            "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1"
            " WHERE id = ? RETURNING uidnext - ?, highestmodseq",
            (new_uids, mailbox_id, new_uids),
        )
        if row is None:
            raise NotFound(f"no mailbox {mailbox_id}")
        return row[0], row[1]

    def _tx_release(self, tx: Tx, counts: Iterable[tuple[int, int]]) -> None:
        """Drop references to bodies; a body nobody references any more is deleted."""
        for body_id, n in counts:
            row = _row(
                tx.conn,
                "UPDATE bodies SET refcount = refcount - ? WHERE id = ? RETURNING refcount, size",
                (n, body_id),
            )
            if row is not None and row[0] == 0:
                self._bodies.release(tx.conn, body_id)
                tx.conn.execute("DELETE FROM bodies WHERE id = ?", (body_id,))
                tx.freed += row[1]

    # -- checks -----------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """Every inconsistency found (empty when all is well): SQLite's own checks, then the
        invariants the store keeps (reference counts, counters, UIDs below UIDNEXT)."""
        with self._read() as conn:
            problems = [r[0] for r in _rows(conn, "PRAGMA integrity_check") if r[0] != "ok"]
            problems += [f"foreign key: {r}" for r in _rows(conn, "PRAGMA foreign_key_check")]
            problems += [
                f"body {bid}: refcount {rc}, {n} references"
                for bid, rc, n in _rows(
                    conn,
                    "SELECT b.id, b.refcount, (SELECT COUNT(*) FROM messages m"
                    " WHERE m.body_id = b.id) + (SELECT COUNT(*) FROM queue q"
                    " WHERE q.body_id = b.id) AS n FROM bodies b WHERE b.refcount != n",
                )
            ]
            problems += [
                f"mailbox {mid}: counters {stored} but rows say {actual}"
                for mid, *rest in _rows(
                    conn,
                    "SELECT mb.id, mb.messages, mb.unseen, mb.size,"
                    " COUNT(m.id), COALESCE(SUM(m.flags & 1 = 0), 0), COALESCE(SUM(m.size), 0)"
                    " FROM mailboxes mb LEFT JOIN messages m ON m.mailbox_id = mb.id"
                    " GROUP BY mb.id",
                )
                if (stored := tuple(rest[:3])) != (actual := tuple(rest[3:]))
            ]
            problems += [
                f"mailbox {mid}: uid {uid} / modseq {ms} beyond uidnext {un} / highest {hm}"
                for mid, uid, ms, un, hm in _rows(
                    conn,
                    "SELECT mb.id, m.uid, m.modseq, mb.uidnext, mb.highestmodseq"
                    " FROM messages m JOIN mailboxes mb ON mb.id = m.mailbox_id"
                    " WHERE m.uid >= mb.uidnext OR m.modseq > mb.highestmodseq",
                )
            ]
            problems += [
                f"mailbox {mid}: uid {uid} is both present and expunged"
                for mid, uid in _rows(
                    conn,
                    "SELECT e.mailbox_id, e.uid FROM expunged e JOIN messages m"
                    " ON m.mailbox_id = e.mailbox_id AND m.uid = e.uid",
                )
            ]
            problems += [
                f"body {bid}: size {bsize}, message {mid} size {msize} with prefix {plen}"
                for mid, msize, plen, bid, bsize in _rows(
                    conn,
                    "SELECT m.id, m.size, length(m.prefix), b.id, b.size FROM messages m"
                    " JOIN bodies b ON b.id = m.body_id WHERE m.size != length(m.prefix) + b.size",
                )
            ]
            problems += self._bodies.check(conn)
            problems += Spool.check(conn)
        return problems
