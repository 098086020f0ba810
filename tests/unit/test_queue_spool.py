"""The outbound spool in the store: entries written with local copies in one transaction,
shared bodies, due/next_due, recording attempts with their DSNs, the operator's commands,
and the invariants checked by integrity_check after every test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from homing.clock import FakeClock
from homing.mail.mime import parse_message
from homing.mail.reply import Reply
from homing.store import (
    SCHEMA_VERSION,
    InvalidName,
    NewMessage,
    NewQueued,
    QueueRecipient,
    QueueUpdate,
    RecipientUpdate,
    Store,
    make_credentials,
)
from homing.store import schema as schema_module

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
BODY = b"From: a@local.test\r\nTo: x@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = Store.open(tmp_path / "homing.db", create=True, clock=clock)
    s.add_domain("local.test")
    yield s
    assert s.integrity_check() == []
    s.close()


def queued(
    *rcpts: str, queue_id: str = "Q1", body: bytes = BODY, sender: str = "a@local.test"
) -> NewQueued:
    domain = rcpts[0].rpartition("@")[2]
    return NewQueued(
        queue_id=queue_id,
        mail_from=sender,
        recipients=tuple(QueueRecipient(r) for r in rcpts),
        domain=domain,
        body=body,
        prefix=b"Received: by mx.local.test; now\r\n",
    )


def local_copy(store: Store, address: str, body: bytes = BODY) -> NewMessage:
    account = store.get_account(address)
    if account is None:
        account = store.add_account(
            address, make_credentials("pw", hasher=FAST, scram_iterations=4096)
        )
    return NewMessage(account.id, "INBOX", b"Return-Path: <>\r\n", body, parse_message(body))


def body_rows(store: Store) -> list[tuple[int, int]]:
    with store._read() as conn:
        return conn.execute("SELECT id, refcount FROM bodies ORDER BY id").fetchall()


def test_schema_version_counts_the_spool_migration() -> None:
    assert SCHEMA_VERSION == len(schema_module.MIGRATIONS) >= 3


def test_entries_and_local_copies_share_one_body(store: Store, clock: FakeClock) -> None:
    copy = local_copy(store, "bob@local.test")
    stored = store.deliver(
        [copy], [queued("x@remote.test", "y@remote.test"), queued("z@other.test")]
    ).result()
    assert len(stored) == 1
    assert body_rows(store) == [(1, 3)]  # one mailbox copy + two queue entries
    entries = store.spool.entries()
    assert [e.id for e in entries] == ["Q1.1", "Q1.2"]
    first = entries[0]
    assert first.domain == "remote.test"
    assert [r.address for r in first.recipients] == ["x@remote.test", "y@remote.test"]
    assert all(r.state == "pending" for r in first.recipients)
    assert first.created == first.next_attempt == clock.now()
    assert first.size == len(b"Received: by mx.local.test; now\r\n") + len(BODY)
    assert store.spool.message("Q1.1") == b"Received: by mx.local.test; now\r\n" + BODY


def test_queue_only_bodies_have_no_parse_results(store: Store) -> None:
    store.deliver([], [queued("x@remote.test")]).result()
    with store._read() as conn:
        row = conn.execute("SELECT envelope, refcount, has_8bit FROM bodies").fetchone()
    assert row == (b"", 1, 0)


def test_subscribers_hear_of_new_entries_after_the_commit(store: Store) -> None:
    heard: list[int] = []
    event = threading.Event()

    def listener() -> None:
        heard.append(store.spool.count())  # runs on the writer thread, after the commit
        event.set()

    unsubscribe = store.spool.subscribe(listener)
    store.deliver([local_copy(store, "bob@local.test")]).result()
    store.deliver([], [queued("x@remote.test")]).result()
    assert event.wait(5)
    assert heard == [1]  # only the delivery with a queue entry woke it
    unsubscribe()
    store.deliver([], [queued("x@remote.test", queue_id="Q2")]).result()
    store.deliver([], [queued("x@remote.test", queue_id="Q3")]).result()
    assert heard == [1]


@pytest.mark.parametrize(
    "bad",
    [
        NewQueued("Q", "a@b", (), "remote.test", BODY),
        NewQueued("Q", "a@b", (QueueRecipient("x@r.test"),), "r.test", BODY, ret="ALL"),
        NewQueued(
            "Q",
            "a@b",
            (QueueRecipient("x@r.test", notify=frozenset({"NEVER", "DELAY"})),),
            "r.test",
            BODY,
        ),
    ],
)
def test_malformed_entries_are_refused_before_the_writer(store: Store, bad: NewQueued) -> None:
    with pytest.raises(InvalidName):
        store.deliver([], [bad]).result()
    assert store.spool.count() == 0


def test_due_and_next_due(store: Store, clock: FakeClock) -> None:
    store.deliver([], [queued("x@remote.test"), queued("z@other.test")]).result()
    now = clock.now()
    assert [e.id for e in store.spool.due(now)] == ["Q1.1", "Q1.2"]
    assert [e.id for e in store.spool.due(now, skip_domains={"remote.test"})] == ["Q1.2"]
    assert store.spool.due(now - 1) == []
    update = QueueUpdate(
        "Q1.1",
        (RecipientUpdate(0, "deferred", Reply(451, "4.4.1", "No answer"), None),),
        attempted=now,
        next_attempt=now + 900,
    )
    assert store.spool.record(update).result() is True
    assert store.spool.next_due(skip_domains={"other.test"}) == now + 900
    assert store.spool.next_due() == now
    (entry,) = store.spool.get("Q1.1")
    assert entry.attempts == 1 and entry.last_attempt == now
    assert entry.recipients[0].state == "deferred"
    assert entry.recipients[0].reply == Reply(451, "4.4.1", "No answer")


def test_recording_the_end_deletes_the_entry_and_delivers_its_dsn_atomically(
    store: Store, clock: FakeClock
) -> None:
    store.deliver([], [queued("x@remote.test")]).result()
    dsn = b"From: MAILER-DAEMON@local.test\r\nSubject: Undelivered\r\n\r\nsorry\r\n"
    update = QueueUpdate(
        "Q1.1",
        (RecipientUpdate(0, "failed", Reply(550, "5.1.1", "No such user"), "mx.remote.test"),),
        attempted=clock.now(),
        next_attempt=None,
    )
    copy = local_copy(store, "a@local.test", dsn)
    assert store.spool.record(update, [copy]).result() is True
    assert store.spool.count() == 0
    account = store.get_account("a@local.test")
    assert account is not None
    inbox = store.get_mailbox(account.id, "INBOX")
    assert inbox is not None and inbox.messages == 1
    assert [rc for _, rc in body_rows(store)] == [1]  # the queued body went, the DSN came


def test_a_dropped_entry_is_not_recorded_and_its_dsn_not_sent(store: Store) -> None:
    store.deliver([], [queued("x@remote.test")]).result()
    assert store.spool.drop("Q1") == 1
    copy = local_copy(store, "a@local.test", b"Subject: dsn\r\n\r\nx\r\n")
    assert store.spool.record(QueueUpdate("Q1.1"), [copy]).result() is False
    account = store.get_account("a@local.test")
    assert account is not None
    inbox = store.get_mailbox(account.id, "INBOX")
    assert inbox is not None and inbox.messages == 0
    assert body_rows(store) == []


def test_a_dsn_for_a_remote_sender_is_queued_with_the_record(store: Store) -> None:
    store.deliver([], [queued("x@remote.test", sender="someone@far.test")]).result()
    dsn = NewQueued("Q9", "", (QueueRecipient("someone@far.test"),), "far.test", b"dsn\r\n")
    woke: list[bool] = []
    store.spool.subscribe(lambda: woke.append(True))
    assert store.spool.record(QueueUpdate("Q1.1"), [], [dsn]).result()
    (entry,) = store.spool.entries()
    assert entry.id == "Q9.1" and entry.mail_from == "" and woke == [True]


def test_operator_commands(store: Store, clock: FakeClock) -> None:
    store.deliver([], [queued("x@remote.test"), queued("z@other.test")]).result()
    later = clock.now() + 3600
    store.spool.record(QueueUpdate("Q1.1", attempted=clock.now(), next_attempt=later)).result()
    assert store.spool.hold("Q1.2") == 1
    assert store.spool.entries(held=True)[0].id == "Q1.2"
    assert store.spool.due(clock.now()) == []
    assert store.spool.retry(None, clock.now()) == 2
    assert [e.id for e in store.spool.due(clock.now())] == ["Q1.1"]  # held stays held
    assert store.spool.release("Q1.2", clock.now()) == 1
    assert [e.id for e in store.spool.due(clock.now())] == ["Q1.1", "Q1.2"]
    assert store.spool.hold("Q1") == 2  # a queue id names all of the message's entries
    assert store.spool.bounce("Q1.1", clock.now()) == 1
    (bounced,) = store.spool.due(clock.now())
    assert bounced.bounce and not bounced.held
    assert store.spool.entries(domain="OTHER.test")[0].id == "Q1.2"
    assert store.spool.drop("nothing") == 0
    assert store.spool.drop("Q1") == 2
    assert store.spool.count() == 0 and body_rows(store) == []


def test_queue_ids_reused_get_fresh_entry_ids(store: Store) -> None:
    store.deliver([], [queued("x@remote.test")]).result()
    store.deliver([], [queued("y@remote.test")]).result()
    assert [e.id for e in store.spool.entries()] == ["Q1.1", "Q1.2"]


def test_entries_survive_reopening(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "homing.db"
    with Store.open(path, create=True, clock=clock) as s:
        s.deliver([], [queued("x@remote.test")]).result()
    with Store.open(path, clock=clock) as s:
        (entry,) = s.spool.due(clock.now())
        assert entry.recipients[0].address == "x@remote.test"
        assert s.spool.message(entry.id) is not None
        assert s.integrity_check() == []
