"""Group commit: concurrent writes share transactions, a failing job loses only itself, and
the writer's throughput (printed with `pytest -s`)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from homing.mail.mime import parse_message
from homing.store import NewMessage, NotFound, Store, StoreError, make_credentials
from homing.store.writer import Tx

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def message(account_id: int, n: int, size: int = 0) -> NewMessage:
    data = f"Subject: {n}\r\nMessage-ID: <{n}@x>\r\n\r\n".encode() + b"y" * size + b"\r\n"
    return NewMessage(account_id, "INBOX", b"", data, parse_message(data))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "s.db", create=True)
    yield s
    problems = s.integrity_check()
    s.close()
    assert problems == []


@pytest.fixture
def acct(store: Store) -> int:
    store.add_domain("example.com")
    return store.add_account("a@example.com", make_credentials("pw", hasher=FAST)).id


def block_writer(store: Store) -> threading.Event:
    """Occupy the writer until the returned event is set, so the next jobs pile up."""
    release = threading.Event()
    started = threading.Event()

    def job(tx: Tx) -> None:
        started.set()
        release.wait(10)

    store._submit(job)
    assert started.wait(5)
    return release


def test_concurrent_deliveries_are_batched(store: Store, acct: int) -> None:
    barrier = threading.Barrier(20)
    futures: list[Future[list[object]]] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        barrier.wait()
        mine = [store.deliver([message(acct, t * 100 + i)]) for i in range(10)]
        with lock:
            futures.extend(mine)  # type: ignore[arg-type]
        for f in mine:
            f.result(10)

    commits = store.stats.commits
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = store.stats.commits - commits
    mb = store.get_mailbox(acct, "INBOX")
    assert mb is not None
    uids = [m.uid for m in store.list_messages(mb.id)]
    assert len(futures) == 200 and mb.messages == 200
    assert sorted(uids) == list(range(1, 201))
    assert used <= 60, f"{used} commits for 200 deliveries"


def test_waiting_jobs_share_one_commit(store: Store, acct: int) -> None:
    release = block_writer(store)
    futures = [store.deliver([message(acct, i)]) for i in range(200)]
    commits = store.stats.commits
    release.set()
    assert sorted(f.result(10)[0].uid for f in futures) == list(range(1, 201))
    assert store.stats.commits - commits == 2  # the blocking job's batch, then all 200
    assert store.stats.largest_batch == 200


def test_batch_caps(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db", create=True, max_batch_jobs=10) as s:
        s.add_domain("example.com")
        a = s.add_account("a@example.com", make_credentials("pw", hasher=FAST)).id
        release = block_writer(s)
        futures = [s.deliver([message(a, i)]) for i in range(30)]
        commits = s.stats.commits
        release.set()
        for f in futures:
            f.result(10)
        assert s.stats.commits - commits == 4  # blocker, then 10 + 10 + 10
    with Store.open(tmp_path / "t.db", create=True, max_batch_bytes=100_000) as s:
        s.add_domain("example.com")
        a = s.add_account("a@example.com", make_credentials("pw", hasher=FAST)).id
        release = block_writer(s)
        futures = [s.deliver([message(a, i, 40_000)]) for i in range(6)]
        commits = s.stats.commits
        release.set()
        for f in futures:
            f.result(10)
        assert s.stats.commits - commits == 4  # blocker, then 2 + 2 + 2 messages of 40 kB


def test_failing_job_does_not_lose_the_others(store: Store, acct: int) -> None:
    def half_done(tx: Tx) -> None:
        tx.conn.execute("INSERT INTO domains (name, created) VALUES ('half.example', 0)")
        raise RuntimeError("job bug after writing")

    release = block_writer(store)
    good = [store.deliver([message(acct, i)]) for i in range(5)]
    bad_mailbox = store.deliver(
        [message(acct, 99), NewMessage(acct, "Nope", b"", b"x", parse_message(b"x"))]
    )
    bug = store._submit(half_done)
    more = [store.deliver([message(acct, i)]) for i in range(5, 10)]
    commits = store.stats.commits
    release.set()
    assert [f.result(10)[0].uid for f in good + more] == list(range(1, 11))
    with pytest.raises(NotFound):
        bad_mailbox.result(10)
    with pytest.raises(RuntimeError, match="job bug"):
        bug.result(10)
    assert store.stats.commits - commits == 2
    assert not store.has_domain("half.example")
    mb = store.get_mailbox(acct, "INBOX")
    assert mb is not None and mb.messages == 10 and mb.uidnext == 11


def test_transaction_lost_mid_batch_is_retried(store: Store, acct: int) -> None:
    """An error that makes SQLite roll back the whole transaction (disk full, I/O error) fails
    only the job that hit it; the rest of the batch runs again."""

    def lose_transaction(tx: Tx) -> None:
        tx.conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    release = block_writer(store)
    before = store.deliver([message(acct, 1)])
    lost = store._submit(lose_transaction)
    after = store.deliver([message(acct, 2)])
    release.set()
    assert before.result(10)[0].uid == 1
    assert after.result(10)[0].uid == 2
    with pytest.raises(StoreError, match="disk is full"):
        lost.result(10)
    assert store.stats.retried_batches == 1


def test_failed_commit_fails_the_batch(store: Store, acct: int) -> None:
    def violate_at_commit(tx: Tx) -> None:
        tx.conn.execute("PRAGMA defer_foreign_keys = ON")
        tx.conn.execute(
            "INSERT INTO mailboxes (account_id, name, uidvalidity) VALUES (12345, 'x', 7)"
        )

    release = block_writer(store)
    victim = store.deliver([message(acct, 1)])
    culprit = store._submit(violate_at_commit)
    release.set()
    with pytest.raises(StoreError, match="FOREIGN KEY"):
        culprit.result(10)
    with pytest.raises(StoreError):
        victim.result(10)  # nothing of a batch whose COMMIT failed is durable
    mb = store.get_mailbox(acct, "INBOX")
    assert mb is not None and mb.messages == 0
    # The writer goes on.
    assert store.deliver([message(acct, 2)]).result(10)[0].uid == 1


def test_cancelled_job_is_skipped(store: Store, acct: int) -> None:
    release = block_writer(store)
    cancelled = store.deliver([message(acct, 1)])
    kept = store.deliver([message(acct, 2)])
    assert cancelled.cancel()
    release.set()
    assert kept.result(10)[0].uid == 1
    mb = store.get_mailbox(acct, "INBOX")
    assert mb is not None and mb.messages == 1


def test_other_process_can_write_while_open(store: Store, acct: int) -> None:
    """The CLI (another connection) writes while `serve` holds the store open."""
    release = block_writer(store)  # the writer sits idle inside its own transaction
    release.set()
    with Store.open(store.path) as cli:
        cli.add_domain("cli.example")
    assert store.has_domain("cli.example")
    assert store.deliver([message(acct, 1)]).result(10)[0].uid == 1


def test_throughput(store: Store, acct: int) -> None:
    """50 threads deliver 10 KiB messages; reports deliveries and commits per second."""
    per_thread = 20
    n_threads = 50
    barrier = threading.Barrier(n_threads + 1)
    data = [message(acct, i, 10 * 1024) for i in range(per_thread * n_threads)]

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            store.deliver([data[t * per_thread + i]]).result(30)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    commits = store.stats.commits
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    used = store.stats.commits - commits
    total = per_thread * n_threads
    print(
        f"\nstore throughput: {total} deliveries of 10 KiB from {n_threads} threads in "
        f"{elapsed:.2f} s = {total / elapsed:.0f}/s; {used} commits = {used / elapsed:.0f}/s, "
        f"{total / used:.1f} deliveries per commit"
    )
    mb = store.get_mailbox(acct, "INBOX")
    assert mb is not None and mb.messages == total
    assert total / used >= 2  # batching happened


def test_writers_of_several_stores_take_turns_on_the_lock_file(
    store: Store, acct: int, tmp_path: Path
) -> None:
    """Every writer holds `<db>.lock` for its transaction: while someone else holds it, a
    commit waits (it neither fails nor slips past), and goes through once it is released."""
    lock = os.open(str(store.path) + ".lock", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pending = store.deliver([message(acct, 1)])
        time.sleep(0.3)
        assert not pending.done(), "a commit went ahead while another writer held the lock"
        fcntl.flock(lock, fcntl.LOCK_UN)
        assert pending.result(10)[0].uid == 1
    finally:
        os.close(lock)


def test_two_stores_writing_at_once_lose_nothing(store: Store, acct: int) -> None:
    """Two stores on one file (as two processes would be) deliver concurrently: every
    delivery commits, with distinct UIDs, and no "database is locked" error."""
    with Store.open(store.path) as other:
        futures = []
        for n in range(200):
            target = store if n % 2 else other
            futures.append(target.deliver([message(acct, n)]))
        uids = [future.result(30)[0].uid for future in futures]
    assert sorted(uids) == list(range(1, 201))
    mb = store.get_mailbox(acct, "INBOX")
    assert mb is not None and mb.messages == 200
