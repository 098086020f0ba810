"""Group commit: one thread owns the write connection and commits many jobs at once.

Theory of operation. Callers `submit` a job (a function of a `Tx`) and get a
`concurrent.futures.Future`. The writer thread waits for work, then takes every job waiting
(up to `max_jobs` jobs or `max_bytes` of declared payload) and runs them in ONE
`BEGIN IMMEDIATE` transaction, each inside its own SAVEPOINT: a job that raises rolls back
only its savepoint and gets the exception on its future; the others go on. Then one COMMIT
(with synchronous=FULL, one WAL fsync) makes the whole batch durable, and only then are the
futures resolved and the change callbacks called. While one batch is being fsync'd the next
one piles up in the queue, so throughput grows with concurrency instead of being capped at
one fsync per message, and no artificial delay is ever added.

Some SQLite errors (disk full, I/O error) roll back the whole transaction rather than the
statement. Then the job that hit it fails and the rest of the batch is run again in a new
transaction; the batch shrinks by one each time, so this ends. If COMMIT itself fails, every
job of the batch fails: nothing of it was made durable.

Several processes may write to one store (SMTP worker processes, the command line). Each
writer holds an exclusive `flock` on the store's lock file (`<db>.lock`) from BEGIN to
COMMIT: the kernel hands the lock to the next waiter the moment it is released, where
SQLite's own busy handler would poll, sleeping 1, 2, 5, 10... ms between tries. The lock is
advisory and only orders Homing's writers; SQLite's locks still guard the file (its busy
timeout covers any other writer, such as the sqlite3 shell).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from homing.store.errors import StoreClosed, StoreError
from homing.store.model import Change, StoreStats

log = logging.getLogger("homing.store")

T = TypeVar("T")


@dataclass(slots=True)
class Tx:
    """What a job sees: the write connection (inside a transaction) and what it changed."""

    conn: sqlite3.Connection
    changes: list[Change] = field(default_factory=list)
    freed: int = 0
    """Bytes of bodies this job released (the writer vacuums now and then)."""


class _Job(Generic[T]):
    __slots__ = ("cost", "fn", "future")

    def __init__(self, fn: Callable[[Tx], T], cost: int) -> None:
        self.fn = fn
        self.cost = cost
        self.future: Future[T] = Future()


def _open_lock(path: os.PathLike[str] | str) -> int | None:
    """The lock file's descriptor (created if need be), or None if it cannot be opened
    (a read-only directory): then SQLite's busy handler alone orders the writers. Opened
    read-only: flock needs no write access, so a lock file created by root's `homing`
    command still serves the mail user's server."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        log.warning(
            "store writer: no lock file %s (%s); relying on SQLite's busy timeout", path, exc
        )
        return None


def translate(exc: BaseException) -> BaseException:
    """sqlite3 errors become StoreError (the original kept as the cause)."""
    if isinstance(exc, sqlite3.Error):
        err = StoreError(f"database error: {exc}")
        err.__cause__ = exc
        return err
    return exc


class Writer:
    """The one writer thread. `publish` is called with each commit's changes, on this thread."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        publish: Callable[[list[Change]], None],
        lock_path: os.PathLike[str] | str | None = None,
        max_jobs: int = 256,
        max_bytes: int = 8 * 1024 * 1024,
        vacuum_after: int = 4 * 1024 * 1024,
        vacuum_pages: int = 2048,
    ) -> None:
        self._conn = conn
        self._publish = publish
        self._max_jobs = max_jobs
        self._max_bytes = max_bytes
        self._vacuum_after = vacuum_after
        self._vacuum_pages = vacuum_pages
        self._freed = 0
        self._lock_fd = _open_lock(lock_path) if lock_path is not None else None
        self._queue: collections.deque[_Job[Any]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self.stats = StoreStats()
        self._thread = threading.Thread(target=self._run, name="homing-store-writer", daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def submit(self, fn: Callable[[Tx], T], cost: int = 0) -> Future[T]:
        """Queue `fn`; never blocks on the database. `cost` is its payload in bytes."""
        job = _Job(fn, cost)
        with self._cond:
            if self._closing:
                raise StoreClosed("the store is closed")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Run every job already submitted, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- the thread -------------------------------------------------------------------------

    def _take(self) -> list[_Job[Any]] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            batch = [first]
            size = first.cost
            while (
                self._queue
                and len(batch) < self._max_jobs
                and size + self._queue[0].cost <= self._max_bytes
            ):
                job = self._queue.popleft()
                batch.append(job)
                size += job.cost
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._run_batch(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                log.exception("store writer: batch failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(translate(exc))
            if self._freed >= self._vacuum_after:
                with self._locked():
                    self._vacuum()

    def _run_batch(self, batch: list[_Job[Any]]) -> None:
        pending = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not pending:
            return
        with self._locked():
            self._run_pending(pending)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The cross-process write lock, held for one transaction (flock releases the GIL
        while it waits)."""
        fd = self._lock_fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _run_pending(self, pending: list[_Job[Any]]) -> None:
        self.stats.largest_batch = max(self.stats.largest_batch, len(pending))
        conn = self._conn
        while pending:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._fail(pending, exc)
                return
            done: list[tuple[_Job[Any], Tx, BaseException | None, Any]] = []
            aborted: _Job[Any] | None = None
            for job in pending:
                tx = Tx(conn)
                conn.execute("SAVEPOINT job")
                self.stats.jobs += 1
                try:
                    value = job.fn(tx)
                except Exception as exc:
                    self.stats.failed_jobs += 1
                    if not self._rollback_savepoint():
                        job.future.set_exception(translate(exc))
                        aborted = job
                        break
                    done.append((job, tx, exc, None))
                else:
                    conn.execute("RELEASE job")
                    done.append((job, tx, None, value))
            if aborted is not None:
                # SQLite rolled the whole transaction back: run the others again.
                self.stats.retried_batches += 1
                pending = [job for job in pending if job is not aborted]
                continue
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._fail(pending, exc)
                return
            self.stats.commits += 1
            self._resolve(done)
            return

    def _rollback_savepoint(self) -> bool:
        """Undo the failed job; False if SQLite had already rolled back the transaction."""
        conn = self._conn
        if not conn.in_transaction:
            return False
        try:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return False
        return True

    def _fail(self, jobs: list[_Job[Any]], exc: BaseException) -> None:
        log.error("store writer: transaction failed: %s", exc)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(translate(exc))

    def _resolve(self, done: list[tuple[_Job[Any], Tx, BaseException | None, Any]]) -> None:
        changes: list[Change] = []
        for job, tx, exc, value in done:
            if exc is None:
                job.future.set_result(value)
                changes.extend(tx.changes)
                self._freed += tx.freed
            else:
                job.future.set_exception(translate(exc))
        if changes:
            self._publish(changes)

    def _vacuum(self) -> None:
        """Give free pages back to the file system, a bounded number at a time."""
        self._freed = 0
        try:
            if not self._conn.execute("PRAGMA freelist_count").fetchone()[0]:
                return
            # The pragma frees one page per step of its statement; Cursor.execute steps only
            # once for a statement without result columns, executescript steps to the end.
            self._conn.executescript(f"PRAGMA incremental_vacuum({self._vacuum_pages})")
            self.stats.vacuums += 1
            if self._conn.execute("PRAGMA freelist_count").fetchone()[0]:
                self._freed = self._vacuum_after  # more to do: again after the next batch
        except sqlite3.Error as exc:
            log.warning("store writer: incremental vacuum failed: %s", exc)
