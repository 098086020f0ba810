"""`Store.read_fetch_data`: the bulk read behind IMAP FETCH and SEARCH, checked against the
per-message reads (`read_parsed`, `read_split`) it replaces, on real SQLite files."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st

from homing.mail.mime import encode_partmap, parse_message
from homing.store import (
    FetchRow,
    NewMessage,
    SqliteBodyStore,
    Store,
    StoreError,
    make_credentials,
)

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PREFIX = b"Delivered-To: bob@example.com\r\n"


def message(n: int) -> bytes:
    if n % 3 == 0:  # some multipart ones, so the part maps differ
        return (
            f"Subject: multi {n}\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            f"--b\r\n\r\npart one of {n}\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>{n}</p>\r\n"
            "--b--\r\n"
        ).encode()
    return f"From: a@example.org\r\nSubject: test {n}\r\n\r\nbody {n}\r\n".encode()


def open_store(path: Path, body_store: SqliteBodyStore | None = None) -> Store:
    store = Store.open(path, create=True, body_store=body_store)
    store.add_domain("example.com")
    return store


def fill(store: Store, count: int) -> tuple[int, int]:
    """`count` messages into bob's INBOX; returns (account id, INBOX id)."""
    account = store.add_account("bob@example.com", make_credentials("pw", hasher=FAST_HASHER))
    new = [
        NewMessage(account.id, "INBOX", PREFIX, message(n), parse_message(message(n)))
        for n in range(count)
    ]
    store.deliver(new).result(timeout=10)
    inbox = store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    return account.id, inbox.id


def expected(store: Store, mailbox_id: int, uid: int) -> FetchRow:
    """What `read_fetch_data(parsed=True, data=True)` must say, from the per-message reads."""
    parsed = store.read_parsed(mailbox_id, uid)
    split = store.read_split(mailbox_id, uid)
    assert parsed is not None and split is not None
    return FetchRow(uid, *parsed, *split)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "homing.db")
    yield s
    problems = s.integrity_check()
    s.close()
    assert problems == []


def test_all_columns_match_the_per_message_reads(store: Store) -> None:
    _, inbox = fill(store, 12)
    rows = store.read_fetch_data(inbox, range(1, 13), parsed=True, data=True)
    assert [r.uid for r in rows] == list(range(1, 13))
    assert rows == [expected(store, inbox, uid) for uid in range(1, 13)]
    data = message(3)
    parsed = parse_message(data)
    third = rows[3]
    assert (third.prefix, third.body) == (PREFIX, data)
    assert (third.envelope, third.bodystructure, third.body_nx, third.partmap) == (
        parsed.envelope,
        parsed.bodystructure,
        parsed.body,
        encode_partmap(parsed.parts),
    )


def test_only_what_was_asked_for(store: Store) -> None:
    _, inbox = fill(store, 4)
    full = store.read_fetch_data(inbox, [1, 2, 3, 4], parsed=True, data=True)
    parsed = store.read_fetch_data(inbox, [1, 2, 3, 4], parsed=True, data=False)
    data = store.read_fetch_data(inbox, [1, 2, 3, 4], parsed=False, data=True)
    bare = store.read_fetch_data(inbox, [1, 2, 3, 4], parsed=False, data=False)
    for f, p, d, b in zip(full, parsed, data, bare, strict=True):
        assert p == FetchRow(f.uid, f.envelope, f.bodystructure, f.body_nx, f.partmap)
        assert p.envelope and p.prefix is None and p.body is None
        assert d == FetchRow(f.uid, prefix=f.prefix, body=f.body)
        assert d.envelope == d.bodystructure == d.body_nx == d.partmap == b""
        assert b == FetchRow(f.uid)


def test_sparse_unordered_duplicate_and_unknown_uids(store: Store) -> None:
    _, inbox = fill(store, 10)
    rows = store.read_fetch_data(inbox, [9, 2, 2, 5, 77, 0], parsed=True, data=True)
    assert [r.uid for r in rows] == [2, 5, 9]
    assert rows == [expected(store, inbox, uid) for uid in (2, 5, 9)]
    assert store.read_fetch_data(inbox, [], parsed=True, data=True) == []
    assert store.read_fetch_data(inbox, [11, 12], parsed=True, data=True) == []


def test_expunged_messages_are_left_out(store: Store) -> None:
    _, inbox = fill(store, 6)
    assert store.expunge(inbox, [2, 3], force=True).result(timeout=5) == [2, 3]
    # 1:6 is one range; the gap is simply absent.
    rows = store.read_fetch_data(inbox, range(1, 7), parsed=False, data=True)
    assert [r.uid for r in rows] == [1, 4, 5, 6]


def test_fetch_meta_is_the_metadata_with_the_parse_results(store: Store) -> None:
    _, inbox = fill(store, 8)
    store.store_flags(inbox, [3, 5], frozenset({"\\Seen", "$Work"}), "add").result(timeout=5)
    assert store.expunge(inbox, [4], force=True).result(timeout=5) == [4]
    infos = {m.uid: m for m in store.list_messages(inbox)}
    parsed = {r.uid: r for r in store.read_fetch_data(inbox, range(1, 9), parsed=True, data=False)}
    for uids in (range(1, 9), [8, 3, 3, 99, 1]):
        rows = store.read_fetch_meta(inbox, uids)
        wanted = sorted(set(uids) & infos.keys())
        assert rows == [
            (
                uid,
                infos[uid].modseq,
                infos[uid].flags,
                infos[uid].internaldate,
                infos[uid].size,
                *parsed[uid][1:5],
            )
            for uid in wanted
        ]
    assert store.read_fetch_meta(inbox, []) == []


def test_only_the_mailbox_asked_for(store: Store) -> None:
    account, inbox = fill(store, 3)
    archive = store.get_mailbox(account, "Archive")
    assert archive is not None
    assert store.copy_messages(inbox, [2], archive.id).result(timeout=5) == [(2, 1)]
    (copy,) = store.read_fetch_data(archive.id, [1, 2, 3], parsed=True, data=True)
    assert copy == expected(store, inbox, 2)._replace(uid=1)
    assert store.read_fetch_data(9999, [1], parsed=True, data=True) == []


class CountingBodyStore:
    """A body store that is not the SQLite one (so bytes are asked for body by body)."""

    def __init__(self) -> None:
        self.inner = SqliteBodyStore()
        self.gets = 0

    def put(self, conn: sqlite3.Connection, body_id: int, data: bytes) -> None:
        self.inner.put(conn, body_id, data)

    def get(self, conn: sqlite3.Connection, body_id: int) -> bytes | None:
        self.gets += 1
        return self.inner.get(conn, body_id)

    def release(self, conn: sqlite3.Connection, body_id: int) -> None:
        self.inner.release(conn, body_id)

    def check(self, conn: sqlite3.Connection) -> list[str]:
        return self.inner.check(conn)


def test_other_body_stores_are_asked_per_body(tmp_path: Path) -> None:
    bodies = CountingBodyStore()
    store = Store.open(tmp_path / "homing.db", create=True, body_store=bodies)
    try:
        store.add_domain("example.com")
        _, inbox = fill(store, 5)
        rows = store.read_fetch_data(inbox, [1, 3, 5], parsed=True, data=True)
        assert bodies.gets == 3
        assert [(r.prefix, r.body) for r in rows] == [(PREFIX, message(n)) for n in (0, 2, 4)]
        store.read_fetch_data(inbox, [1, 3, 5], parsed=True, data=False)
        assert bodies.gets == 3  # no bytes asked for, none read
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
            store.read_fetch_data(inbox, [1, 2], parsed=False, data=True)
        # Parse results alone do not need the bytes.
        assert len(store.read_fetch_data(inbox, [1, 2], parsed=True, data=False)) == 2
        conn.execute("INSERT INTO body_data (id, data) VALUES (?, ?)", (body_id, data))
        conn.commit()
    finally:
        conn.close()


# -- property ------------------------------------------------------------------------------

MESSAGES = 40
EXPUNGED = frozenset({5, 6, 7, 20, 33})


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, int]]:
    s = open_store(tmp_path_factory.mktemp("fetch") / "homing.db")
    _, inbox = fill(s, MESSAGES)
    s.expunge(inbox, sorted(EXPUNGED), force=True).result(timeout=5)
    yield s, inbox
    s.close()


@settings(max_examples=150, deadline=None)
@given(
    uids=st.lists(st.integers(min_value=0, max_value=MESSAGES + 5), max_size=60),
    parsed=st.booleans(),
    data=st.booleans(),
)
def test_property_same_as_one_by_one(
    shared: tuple[Store, int], uids: list[int], parsed: bool, data: bool
) -> None:
    """Invariant: whatever UIDs are asked for, in any order and with repeats, the result is
    exactly the existing ones among them, ascending, each equal to what the per-message
    reads give (restricted to the columns asked for)."""
    store, inbox = shared
    rows = store.read_fetch_data(inbox, uids, parsed=parsed, data=data)
    existing = sorted({u for u in uids if 1 <= u <= MESSAGES and u not in EXPUNGED})
    assert [r.uid for r in rows] == existing
    for row in rows:
        full = expected(store, inbox, row.uid)
        assert row == FetchRow(
            row.uid,
            full.envelope if parsed else b"",
            full.bodystructure if parsed else b"",
            full.body_nx if parsed else b"",
            full.partmap if parsed else b"",
            full.prefix if data else None,
            full.body if data else None,
        )
