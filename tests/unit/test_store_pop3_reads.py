"""`Store.read_messages`: the bulk read behind pipelined POP3 RETRs, checked against the
per-message read (`read_message`) it replaces, on real SQLite files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homing.store import Store, StoreError
from tests.unit.test_store_fetch import PREFIX, CountingBodyStore, fill, message, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "homing.db")
    yield s
    problems = s.integrity_check()
    s.close()
    assert problems == []


def test_messages_as_stored(store: Store) -> None:
    _, inbox = fill(store, 8)
    found = store.read_messages(inbox, range(1, 9))
    assert sorted(found) == list(range(1, 9))
    assert found == {uid: store.read_message(inbox, uid) for uid in range(1, 9)}
    assert found[4] == PREFIX + message(3)


def test_sparse_duplicate_and_unknown_uids(store: Store) -> None:
    _, inbox = fill(store, 10)
    found = store.read_messages(inbox, [9, 2, 2, 5, 77, 0])
    assert found == {uid: PREFIX + message(uid - 1) for uid in (2, 5, 9)}
    assert store.read_messages(inbox, []) == {}
    assert store.read_messages(inbox, [11, 12]) == {}


def test_expunged_messages_are_left_out(store: Store) -> None:
    _, inbox = fill(store, 6)
    assert store.expunge(inbox, [2, 3], force=True).result(timeout=5) == [2, 3]
    assert sorted(store.read_messages(inbox, range(1, 7))) == [1, 4, 5, 6]  # one range
    assert sorted(store.read_messages(inbox, [1, 3, 5])) == [1, 5]  # a set


def test_only_the_mailbox_asked_for(store: Store) -> None:
    account, inbox = fill(store, 3)
    archive = store.get_mailbox(account, "Archive")
    assert archive is not None
    assert store.copy_messages(inbox, [2], archive.id).result(timeout=5) == [(2, 1)]
    assert store.read_messages(archive.id, [1, 2, 3]) == {1: PREFIX + message(1)}
    assert store.read_messages(9999, [1]) == {}


def test_other_body_stores_are_asked_per_body(tmp_path: Path) -> None:
    bodies = CountingBodyStore()
    store = Store.open(tmp_path / "homing.db", create=True, body_store=bodies)
    try:
        store.add_domain("example.com")
        _, inbox = fill(store, 5)
        found = store.read_messages(inbox, [1, 3, 5])
        assert bodies.gets == 3
        assert found == {uid: PREFIX + message(uid - 1) for uid in (1, 3, 5)}
    finally:
        store.close()


def test_missing_body_bytes_are_an_error(store: Store) -> None:
    _, inbox = fill(store, 2)
    conn = sqlite3.connect(store.path)
    try:
        body_id, data = conn.execute(
            "SELECT id, data FROM body_data WHERE id = (SELECT MIN(id) FROM body_data)"
        ).fetchone()
        conn.execute("DELETE FROM body_data WHERE id = ?", (body_id,))
        conn.commit()
        with pytest.raises(StoreError, match="is missing"):
            store.read_messages(inbox, [1, 2])
        conn.execute("INSERT INTO body_data (id, data) VALUES (?, ?)", (body_id, data))
        conn.commit()
    finally:
        conn.close()


# -- property ------------------------------------------------------------------------------

MESSAGES = 30
EXPUNGED = frozenset({4, 5, 17, 30})


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, int]]:
    s = open_store(tmp_path_factory.mktemp("pop3reads") / "homing.db")
    _, inbox = fill(s, MESSAGES)
    s.expunge(inbox, sorted(EXPUNGED), force=True).result(timeout=5)
    yield s, inbox
    s.close()


@settings(max_examples=100, deadline=None)
@given(uids=st.lists(st.integers(min_value=0, max_value=MESSAGES + 3), max_size=40))
def test_property_same_as_one_by_one(shared: tuple[Store, int], uids: list[int]) -> None:
    """Invariant: whatever UIDs are asked for, in any order and with repeats, the result maps
    exactly the existing ones among them to what `read_message` gives for each."""
    store, inbox = shared
    found = store.read_messages(inbox, uids)
    existing = {u for u in uids if 1 <= u <= MESSAGES and u not in EXPUNGED}
    assert set(found) == existing
    for uid, data in found.items():
        assert data == store.read_message(inbox, uid)
