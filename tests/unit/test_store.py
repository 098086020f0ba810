"""The store's API on real SQLite files: every method, its error cases, and the invariants
(UID/MODSEQ monotonic, counters, reference-counted bodies) checked with integrity_check."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from homing.clock import FakeClock
from homing.mail.mime import encode_partmap, parse_message
from homing.store import (
    DEFAULT_MAILBOXES,
    SCHEMA_VERSION,
    AlreadyExists,
    Change,
    Credentials,
    InUse,
    InvalidName,
    NewMessage,
    NotFound,
    SchemaTooNew,
    Store,
    StoreClosed,
    StoreError,
    make_credentials,
    verify_password,
)
from homing.store import schema as schema_module

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def creds(password: str = "secret") -> Credentials:
    return make_credentials(password, hasher=FAST_HASHER, scram_iterations=4096)


def body(n: int = 0, size: int = 0) -> bytes:
    pad = b"x" * size
    return (
        f"From: a@example.org\r\nTo: b@example.com\r\nSubject: test {n}\r\n"
        f"Message-ID: <{n}@example.org>\r\n\r\nbody {n}\r\n"
    ).encode() + pad


def new(
    account_id: int,
    data: bytes,
    mailbox: str = "INBOX",
    *,
    prefix: bytes = b"Delivered-To: b@example.com\r\n",
    flags: frozenset[str] = frozenset(),
    internaldate: float | None = None,
) -> NewMessage:
    return NewMessage(
        account_id=account_id,
        mailbox=mailbox,
        prefix=prefix,
        body=data,
        parsed=parse_message(data),
        flags=flags,
        internaldate=internaldate,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = Store.open(tmp_path / "homing.db", create=True, clock=clock)
    yield s
    problems = s.integrity_check()
    s.close()
    assert problems == []


@pytest.fixture
def acct(store: Store) -> int:
    store.add_domain("example.com")
    return store.add_account("bob@example.com", creds()).id


def inbox(store: Store, account_id: int) -> int:
    mb = store.get_mailbox(account_id, "INBOX")
    assert mb is not None
    return mb.id


def deliver(store: Store, *msgs: NewMessage) -> list[int]:
    return [m.uid for m in store.deliver(list(msgs)).result(timeout=10)]


def raw(store: Store, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def scalar(store: Store, sql: str) -> int:
    value = raw(store, sql)[0][0]
    assert isinstance(value, int)
    return value


# -- opening, schema, migrations ----------------------------------------------------------


def test_open_missing_without_create(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        Store.open(tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()


def test_fresh_store_settings(store: Store) -> None:
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert conn.execute("PRAGMA application_id").fetchone()[0] == schema_module.APPLICATION_ID
    finally:
        conn.close()


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path, create=True) as s:
        s.add_domain("example.com")
    with Store.open(path) as s:
        assert s.list_domains() == ["example.com"]
    with Store.open(path, create=True) as s:  # create on an existing store just opens it
        assert s.has_domain("example.com")


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store.open(path, create=True).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="upgrade Homing"):
        Store.open(path)


def test_older_schema_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.db"
    with Store.open(path, create=True) as s:
        s.add_domain("example.com")
    extra = ("CREATE TABLE future_thing (id INTEGER PRIMARY KEY)",)
    monkeypatch.setattr(schema_module, "MIGRATIONS", (*schema_module.MIGRATIONS, extra))
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Store.open(path) as s:
        assert s.list_domains() == ["example.com"]
    assert raw_version(path) == SCHEMA_VERSION + 1
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM future_thing").fetchone() == (0,)
    finally:
        conn.close()


def raw_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        conn.close()


def test_foreign_sqlite_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreError, match="not a Homing store"):
        Store.open(path)


def test_garbage_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError):
        Store.open(path)


def test_empty_file_without_create(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(NotFound):
        Store.open(path)


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s.db", create=True)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreClosed):
        s.add_domain("example.com")
    with pytest.raises(StoreClosed):
        s.list_domains()


def test_close_drains_submitted_jobs(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "s.db", create=True)
    s.add_domain("example.com")
    a = s.add_account("a@example.com", creds()).id
    futures = [s.deliver([new(a, body(i))]) for i in range(20)]
    s.close()
    assert [f.result(timeout=0)[0].uid for f in futures] == list(range(1, 21))


# -- domains ------------------------------------------------------------------------------


def test_domains(store: Store) -> None:
    store.add_domain("Example.COM")
    store.add_domain("b.example")
    assert store.list_domains() == ["b.example", "example.com"]
    assert store.has_domain("EXAMPLE.com")
    assert store.has_domain("example.com.")
    assert not store.has_domain("nope.example")
    assert not store.has_domain("bad domain")
    with pytest.raises(AlreadyExists):
        store.add_domain("example.com")
    store.remove_domain("B.example")
    assert store.list_domains() == ["example.com"]
    with pytest.raises(NotFound):
        store.remove_domain("b.example")


@pytest.mark.parametrize("bad", ["", "a b.com", "a@b.com", "x\x00.com", ".com", "a..com"])
def test_invalid_domain(store: Store, bad: str) -> None:
    with pytest.raises(InvalidName):
        store.add_domain(bad)


def test_remove_domain_in_use(store: Store, acct: int) -> None:
    with pytest.raises(InUse):
        store.remove_domain("example.com")
    store.remove_account("bob@example.com")
    store.add_alias("@example.com", ["x@elsewhere.example"])
    with pytest.raises(InUse):
        store.remove_domain("example.com")
    store.remove_alias("@example.com")
    store.remove_domain("example.com")
    assert store.list_domains() == []


# -- accounts -----------------------------------------------------------------------------


def test_add_account_creates_mailboxes(store: Store, clock: FakeClock) -> None:
    store.add_domain("example.com")
    account = store.add_account("Bob.Smith@EXAMPLE.com", creds())
    assert account.address == "Bob.Smith@example.com"
    assert account.domain == "example.com"
    assert not account.disabled
    assert account.created == clock.now()
    boxes = store.list_mailboxes(account.id)
    assert [(b.name, b.special_use) for b in boxes] == [
        ("INBOX", None),
        ("Archive", "\\Archive"),
        ("Drafts", "\\Drafts"),
        ("Junk", "\\Junk"),
        ("Sent", "\\Sent"),
        ("Trash", "\\Trash"),
    ]
    assert {b.name for b in boxes} == {n for n, _ in DEFAULT_MAILBOXES}
    assert all(b.subscribed and b.uidnext == 1 and b.messages == 0 for b in boxes)
    assert len({b.uidvalidity for b in boxes}) == len(boxes)
    assert all(b.uidvalidity >= int(clock.now()) for b in boxes)


def test_account_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        store.add_account("a@example.com", creds())
    store.add_domain("example.com")
    store.add_account("a@example.com", creds())
    with pytest.raises(AlreadyExists):
        store.add_account("A@Example.Com", creds())
    with pytest.raises(InvalidName):
        store.add_account("no-at-sign", creds())
    with pytest.raises(InvalidName):
        store.add_account("@example.com", creds())
    with pytest.raises(NotFound):
        store.set_credentials("nobody@example.com", creds())
    with pytest.raises(NotFound):
        store.remove_account("nobody@example.com")
    with pytest.raises(NotFound):
        store.set_disabled("nobody@example.com", True)
    with pytest.raises(NotFound):
        store.list_mailboxes(9999)


def test_account_lookups(store: Store) -> None:
    store.add_domain("example.com")
    store.add_domain("example.org")
    a = store.add_account("alice@example.com", creds())
    b = store.add_account("bob@example.org", creds())
    assert store.get_account("ALICE@example.COM") == a
    assert store.get_account_by_id(b.id) == b
    assert store.get_account("carol@example.com") is None
    assert store.get_account("not an address") is None
    assert store.get_account_by_id(12345) is None
    assert store.list_accounts() == [a, b]
    assert store.list_accounts("EXAMPLE.org") == [b]
    assert store.list_accounts("none.example") == []
    store.set_disabled("alice@example.com", True)
    got = store.get_account("alice@example.com")
    assert got is not None and got.disabled


def test_credentials_roundtrip(store: Store, acct: int) -> None:
    got = store.get_credentials("BOB@example.com")
    assert got is not None
    assert verify_password(got, "secret")
    assert not verify_password(got, "Secret")
    store.set_credentials("bob@example.com", creds("new password"))
    got = store.get_credentials("bob@example.com")
    assert got is not None
    assert verify_password(got, "new password")
    assert not verify_password(got, "secret")
    assert store.get_credentials("nobody@example.com") is None
    assert store.get_credentials("garbage") is None


def test_remove_account_releases_everything(store: Store, acct: int) -> None:
    other = store.add_account("carol@example.com", creds()).id
    shared = body(1)
    deliver(store, new(acct, shared), new(other, shared), new(acct, body(2)))
    store.create_mailbox(acct, "Work/Projects")
    assert raw(store, "SELECT COUNT(*) FROM bodies") == [(2,)]
    store.remove_account("bob@example.com")
    assert store.get_account("bob@example.com") is None
    assert raw(store, f"SELECT COUNT(*) FROM mailboxes WHERE account_id = {acct}") == [(0,)]
    # The body carol still has survives; bob's own one is gone.
    assert raw(store, "SELECT refcount FROM bodies") == [(1,)]
    assert store.read_message(inbox(store, other), 1) is not None
    assert store.integrity_check() == []


# -- aliases ------------------------------------------------------------------------------


def test_aliases(store: Store) -> None:
    store.add_domain("example.com")
    store.add_alias("Postmaster@Example.com", ["root@example.com", "Admin@Elsewhere.org"])
    store.add_alias("postmaster@example.com", ["admin@elsewhere.org", "third@example.com"])
    assert store.alias_targets("POSTMASTER@example.com") == [
        "root@example.com",
        "Admin@Elsewhere.org",
        "third@example.com",
    ]
    store.add_alias("@example.com", ["catchall@example.com"])
    assert store.alias_targets("@EXAMPLE.com") == ["catchall@example.com"]
    assert store.alias_targets("nobody@example.com") == []
    assert store.alias_targets("garbage") == []
    assert store.list_aliases() == [
        ("@example.com", ["catchall@example.com"]),
        (
            "postmaster@example.com",
            ["root@example.com", "Admin@Elsewhere.org", "third@example.com"],
        ),
    ]
    store.remove_alias("postmaster@example.com", ["ROOT@example.com"])
    assert store.alias_targets("postmaster@example.com") == [
        "Admin@Elsewhere.org",
        "third@example.com",
    ]
    with pytest.raises(NotFound):
        store.remove_alias("postmaster@example.com", ["third@example.com", "missing@example.com"])
    # The failed removal changed nothing (one job, all or nothing).
    assert len(store.alias_targets("postmaster@example.com")) == 2
    store.remove_alias("postmaster@example.com")
    assert store.alias_targets("postmaster@example.com") == []
    with pytest.raises(NotFound):
        store.remove_alias("postmaster@example.com")


def test_alias_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        store.add_alias("x@unhosted.example", ["a@b.example"])
    store.add_domain("example.com")
    with pytest.raises(InvalidName):
        store.add_alias("x@example.com", [])
    with pytest.raises(InvalidName):
        store.add_alias("x@example.com", ["not-an-address"])
    with pytest.raises(TypeError):
        store.add_alias("x@example.com", "a@b.example")
    with pytest.raises(InvalidName):
        store.add_alias("@", ["a@b.example"])


# -- mailboxes ----------------------------------------------------------------------------


def test_create_mailbox(store: Store, acct: int) -> None:
    mb = store.create_mailbox(acct, "Work/Projects/2026/", "\\flagged")
    assert mb.name == "Work/Projects/2026"
    assert mb.special_use == "\\Flagged"
    assert not mb.subscribed
    assert store.get_mailbox(acct, "Work/Projects/2026") == mb
    assert store.get_mailbox(acct, "Work") is not None  # superiors created (RFC 9051 §6.3.4)
    assert store.get_mailbox(acct, "Work/Projects") is not None
    sub = store.create_mailbox(acct, "Lists", subscribed=True)
    assert sub.subscribed
    assert store.get_mailbox(acct, "inbox") is not None
    assert store.get_mailbox(acct, "nope") is None
    uidvalidities = [b.uidvalidity for b in store.list_mailboxes(acct)]
    assert len(set(uidvalidities)) == len(uidvalidities)


def test_create_mailbox_errors(store: Store, acct: int) -> None:
    for name in ("INBOX", "inbox", "Sent"):
        with pytest.raises(AlreadyExists):
            store.create_mailbox(acct, name)
    for bad in ("", "/", "a//b", "/a", "a\x01b", "a\x7fb", "a*", "b%", "x" * 1001):
        with pytest.raises(InvalidName):
            store.create_mailbox(acct, bad)
    with pytest.raises(InvalidName):
        store.create_mailbox(acct, "Things", "\\Nonsense")
    with pytest.raises(NotFound):
        store.create_mailbox(999, "Things")


def test_inbox_children_case(store: Store, acct: int) -> None:
    mb = store.create_mailbox(acct, "inbox/Sub")
    assert mb.name == "INBOX/Sub"
    assert store.get_mailbox(acct, "Inbox/Sub") == mb


def test_delete_mailbox(store: Store, acct: int) -> None:
    first = store.create_mailbox(acct, "Old/Child")
    parent = store.get_mailbox(acct, "Old")
    assert parent is not None
    deliver(store, new(acct, body(1), "Old"), new(acct, body(2), "Old"))
    store.delete_mailbox(acct, "Old")
    assert store.get_mailbox(acct, "Old") is None
    assert store.get_mailbox(acct, "Old/Child") == first  # inferiors stay (§6.3.5)
    assert raw(store, "SELECT COUNT(*) FROM bodies") == [(0,)]
    assert raw(store, "SELECT COUNT(*) FROM body_data") == [(0,)]
    again = store.create_mailbox(acct, "Old")
    assert again.uidvalidity > parent.uidvalidity
    with pytest.raises(InvalidName):
        store.delete_mailbox(acct, "inbox")
    with pytest.raises(NotFound):
        store.delete_mailbox(acct, "Missing")


def test_old_case_sensitive_delete_raises(store: Store, acct: int) -> None:
    store.create_mailbox(acct, "Old")
    with pytest.raises(NotFound):
        store.delete_mailbox(acct, "old")


def test_rename_mailbox_with_children(store: Store, acct: int) -> None:
    store.create_mailbox(acct, "A/B/C")
    before = {b.name: b for b in store.list_mailboxes(acct)}
    deliver(store, new(acct, body(1), "A/B"))
    store.rename_mailbox(acct, "A", "X/Y")
    after = {b.name: b for b in store.list_mailboxes(acct)}
    assert "A" not in after and "A/B" not in after and "A/B/C" not in after
    assert after["X/Y"].uidvalidity == before["A"].uidvalidity
    assert after["X/Y/B"].uidvalidity == before["A/B"].uidvalidity
    assert after["X/Y/B/C"].uidvalidity == before["A/B/C"].uidvalidity
    assert "X" in after  # superior of the new name created
    assert store.read_message(after["X/Y/B"].id, 1) is not None


def test_rename_errors(store: Store, acct: int) -> None:
    store.create_mailbox(acct, "A")
    store.create_mailbox(acct, "B")
    with pytest.raises(AlreadyExists):
        store.rename_mailbox(acct, "A", "B")
    with pytest.raises(AlreadyExists):
        store.rename_mailbox(acct, "A", "A")
    with pytest.raises(AlreadyExists):
        store.rename_mailbox(acct, "A", "inbox")
    with pytest.raises(InvalidName):
        store.rename_mailbox(acct, "A", "A/inside")
    with pytest.raises(NotFound):
        store.rename_mailbox(acct, "Missing", "C")
    store.create_mailbox(acct, "P/Q")
    store.create_mailbox(acct, "R/Q")
    with pytest.raises(AlreadyExists):  # a child's new name is taken
        store.rename_mailbox(acct, "P", "R")
    assert store.get_mailbox(acct, "P/Q") is not None


def test_rename_to_own_superior(store: Store, acct: int) -> None:
    # "a/b" -> "a": child "a/b/b/x" becomes "a/b/x", the old name of another child.
    store.create_mailbox(acct, "a/b/x")
    store.create_mailbox(acct, "a/b/b/x")
    store.delete_mailbox(acct, "a")
    store.rename_mailbox(acct, "a/b", "a")
    assert {b.name for b in store.list_mailboxes(acct)} >= {"a", "a/x", "a/b", "a/b/x"}
    assert store.get_mailbox(acct, "a/b/b/x") is None


def test_rename_inbox(store: Store, acct: int) -> None:
    box = store.get_mailbox(acct, "INBOX")
    assert box is not None
    deliver(store, new(acct, body(1)), new(acct, body(2), flags=frozenset({"\\Seen"})))
    store.create_mailbox(acct, "INBOX/Child")
    store.rename_mailbox(acct, "INBOX", "Old Inbox")
    moved = store.get_mailbox(acct, "Old Inbox")
    empty = store.get_mailbox(acct, "INBOX")
    assert moved is not None and empty is not None
    assert empty.id == box.id and empty.uidvalidity == box.uidvalidity
    assert empty.messages == 0 and empty.uidnext == 3
    assert moved.messages == 2 and moved.unseen == 1
    assert [m.uid for m in store.list_messages(moved.id)] == [1, 2]
    assert store.expunged_since(box.id, 0) == [1, 2]
    assert store.get_mailbox(acct, "INBOX/Child") is not None  # inferiors stay
    assert store.read_message(moved.id, 2) == b"Delivered-To: b@example.com\r\n" + body(2)


def test_subscriptions(store: Store, acct: int) -> None:
    store.set_subscribed(acct, "Sent", False)
    sent = store.get_mailbox(acct, "Sent")
    assert sent is not None and not sent.subscribed
    store.set_subscribed(acct, "Sent", True)
    sent = store.get_mailbox(acct, "Sent")
    assert sent is not None and sent.subscribed
    with pytest.raises(NotFound):
        store.set_subscribed(acct, "Missing", True)


def test_get_mailbox_by_id(store: Store, acct: int) -> None:
    box = store.get_mailbox(acct, "INBOX")
    assert box is not None
    assert store.get_mailbox_by_id(box.id) == box
    assert store.get_mailbox_by_id(99999) is None


# -- delivery -----------------------------------------------------------------------------


def test_deliver_and_read(store: Store, acct: int, clock: FakeClock) -> None:
    data = body(7)
    stored = store.deliver([new(acct, data), new(acct, body(8), "Sent")]).result(timeout=5)
    box = store.get_mailbox(acct, "INBOX")
    assert box is not None
    first = stored[0]
    assert (first.account_id, first.mailbox_id, first.mailbox, first.uid) == (
        acct,
        box.id,
        "INBOX",
        1,
    )
    assert first.uidvalidity == box.uidvalidity
    assert first.modseq == box.highestmodseq == 2
    prefix = b"Delivered-To: b@example.com\r\n"
    assert first.size == len(prefix) + len(data)
    assert (box.uidnext, box.messages, box.unseen, box.size) == (2, 1, 1, first.size)
    assert stored[1].mailbox == "Sent" and stored[1].uid == 1
    assert store.read_message(box.id, 1) == prefix + data
    assert store.read_split(box.id, 1) == (prefix, data)
    parsed = parse_message(data)
    assert store.read_parsed(box.id, 1) == (
        parsed.envelope,
        parsed.bodystructure,
        parsed.body,
        encode_partmap(parsed.parts),
    )
    assert store.read_message(box.id, 2) is None
    assert store.read_split(box.id, 2) is None
    assert store.read_parsed(box.id, 2) is None
    (info,) = store.list_messages(box.id)
    assert (info.uid, info.modseq, info.flags, info.size) == (1, 2, frozenset(), first.size)
    assert info.internaldate == clock.now()


def test_uids_increase(store: Store, acct: int) -> None:
    uids = deliver(store, *(new(acct, body(i)) for i in range(5)))
    assert uids == [1, 2, 3, 4, 5]
    assert deliver(store, new(acct, body(9))) == [6]
    modseqs = [m.modseq for m in store.list_messages(inbox(store, acct))]
    assert modseqs == sorted(modseqs) and len(set(modseqs)) == 6


def test_deliver_shares_bodies(store: Store, acct: int) -> None:
    other = store.add_account("carol@example.com", creds()).id
    data = body(1, 1000)
    equal_copy = bytes(bytearray(data))
    assert equal_copy is not data
    deliver(
        store,
        new(acct, data, prefix=b"Delivered-To: bob\r\n"),
        new(other, data, prefix=b"Delivered-To: carol\r\n"),
        new(acct, equal_copy, "Archive", prefix=b""),
        new(acct, body(2)),
    )
    assert raw(store, "SELECT refcount FROM bodies ORDER BY id") == [(3,), (1,)]
    assert store.read_message(inbox(store, other), 1) == b"Delivered-To: carol\r\n" + data
    assert store.read_message(inbox(store, acct), 1) == b"Delivered-To: bob\r\n" + data


def test_deliver_flags_and_date(store: Store, acct: int) -> None:
    flags = frozenset({"\\seen", "\\FLAGGED", "$Label1", "$label1", "Work"})
    deliver(store, new(acct, body(1), flags=flags, internaldate=1_000_000.5))
    (info,) = store.list_messages(inbox(store, acct))
    assert info.internaldate == 1_000_000.5
    assert info.flags in (
        frozenset({"\\Seen", "\\Flagged", "$Label1", "Work"}),
        frozenset({"\\Seen", "\\Flagged", "$label1", "Work"}),
    )
    box = store.get_mailbox(acct, "INBOX")
    assert box is not None and box.unseen == 0


def test_deliver_is_all_or_nothing(store: Store, acct: int) -> None:
    future = store.deliver([new(acct, body(1)), new(acct, body(2), "Missing")])
    with pytest.raises(NotFound):
        future.result(timeout=5)
    box = store.get_mailbox(acct, "INBOX")
    assert box is not None and box.messages == 0 and box.uidnext == 1
    assert raw(store, "SELECT COUNT(*) FROM bodies") == [(0,)]
    with pytest.raises(NotFound):
        store.deliver([new(999, body(1))]).result(timeout=5)


def test_deliver_bad_input_on_future(store: Store, acct: int) -> None:
    future = store.deliver([new(acct, body(1), flags=frozenset({"\\Recent"}))])
    with pytest.raises(InvalidName):
        future.result(timeout=0)
    with pytest.raises(InvalidName):
        store.deliver([new(acct, body(1), mailbox="")]).result(timeout=0)
    assert store.deliver([]).result(timeout=0) == []


async def test_deliver_from_asyncio(store: Store, acct: int) -> None:
    results = await asyncio.gather(
        *(asyncio.wrap_future(store.deliver([new(acct, body(i))])) for i in range(10))
    )
    assert sorted(r[0].uid for r in results) == list(range(1, 11))


# -- flags --------------------------------------------------------------------------------


def test_store_flags(store: Store, acct: int) -> None:
    deliver(store, *(new(acct, body(i)) for i in range(3)))
    mb = inbox(store, acct)
    start = store.get_mailbox_by_id(mb)
    assert start is not None
    changed = store.store_flags(mb, [1, 2, 99], frozenset({"\\Seen", "Work"}), "add").result(5)
    modseq = start.highestmodseq + 1
    assert list(changed) == [
        (1, modseq, frozenset({"\\Seen", "Work"})),
        (2, modseq, frozenset({"\\Seen", "Work"})),
    ]
    box = store.get_mailbox_by_id(mb)
    assert box is not None and box.unseen == 1 and box.highestmodseq == modseq
    # Adding what is there changes nothing: no new MODSEQ, nothing reported.
    assert store.store_flags(mb, [1], frozenset({"\\seen", "WORK"}), "add").result(5) == []
    box = store.get_mailbox_by_id(mb)
    assert box is not None and box.highestmodseq == modseq
    changed = store.store_flags(mb, [1, 2, 3], frozenset({"work"}), "remove").result(5)
    assert [(u, f) for u, _, f in changed] == [
        (1, frozenset({"\\Seen"})),
        (2, frozenset({"\\Seen"})),
    ]
    changed = store.store_flags(mb, [1, 3], frozenset({"\\Draft"}), "set").result(5)
    assert [(u, f) for u, _, f in changed] == [
        (1, frozenset({"\\Draft"})),
        (3, frozenset({"\\Draft"})),
    ]
    box = store.get_mailbox_by_id(mb)
    assert box is not None and box.unseen == 2
    flags = {m.uid: m.flags for m in store.list_messages(mb)}
    assert flags == {1: {"\\Draft"}, 2: {"\\Seen"}, 3: {"\\Draft"}}


def test_store_flags_keeps_keyword_spelling(store: Store, acct: int) -> None:
    deliver(store, new(acct, body(1), flags=frozenset({"$Important"})))
    mb = inbox(store, acct)
    store.store_flags(mb, [1], frozenset({"$IMPORTANT", "\\Seen"}), "set").result(5)
    (info,) = store.list_messages(mb)
    assert info.flags == frozenset({"$Important", "\\Seen"})


def test_unchanged_since(store: Store, acct: int) -> None:
    deliver(store, new(acct, body(1)), new(acct, body(2)))
    mb = inbox(store, acct)
    m1, _ = store.list_messages(mb)
    store.store_flags(mb, [2], frozenset({"\\Flagged"}), "add").result(5)
    # RFC 7162 §3.1.3: message 2 changed after m1.modseq, so it is left alone and reported.
    result = store.store_flags(mb, [1, 2], frozenset({"\\Seen"}), "add", m1.modseq).result(5)
    assert [u for u, _, _ in result] == [1]
    assert result.modified == (2,)
    flags = {m.uid: m.flags for m in store.list_messages(mb)}
    assert flags == {1: {"\\Seen"}, 2: {"\\Flagged"}}
    assert store.store_flags(mb, [1], frozenset(), "set", 0).result(5).modified == (1,)


def test_store_flags_errors(store: Store, acct: int) -> None:
    deliver(store, new(acct, body(1)))
    mb = inbox(store, acct)
    for bad in ("\\Recent", "\\Whatever", "has space", "par(en", "", "ünïcode", 'quo"te'):
        with pytest.raises(InvalidName):
            store.store_flags(mb, [1], frozenset({bad}), "add").result(5)
    with pytest.raises(NotFound):
        store.store_flags(9999, [1], frozenset({"\\Seen"}), "add").result(5)
    with pytest.raises(ValueError, match="mode"):
        store.store_flags(mb, [1], frozenset(), "toggle").result(5)  # type: ignore[arg-type]


def test_changed_since(store: Store, acct: int) -> None:
    deliver(store, *(new(acct, body(i)) for i in range(3)))
    mb = inbox(store, acct)
    box = store.get_mailbox_by_id(mb)
    assert box is not None
    store.store_flags(mb, [2], frozenset({"\\Seen"}), "add").result(5)
    assert [m.uid for m in store.list_messages(mb, changed_since=box.highestmodseq)] == [2]
    with pytest.raises(NotFound):
        store.list_messages(9999)


# -- copy, move, expunge ------------------------------------------------------------------


def test_copy(store: Store, acct: int) -> None:
    deliver(
        store,
        new(acct, body(1), flags=frozenset({"\\Seen", "Tag"}), internaldate=5.0),
        new(acct, body(2)),
        new(acct, body(3)),
    )
    src = inbox(store, acct)
    archive = store.get_mailbox(acct, "Archive")
    assert archive is not None
    deliver(store, new(acct, body(4), "Archive"))
    pairs = store.copy_messages(src, [3, 1, 42], archive.id).result(5)
    assert pairs == [(1, 2), (3, 3)]
    copies = store.list_messages(archive.id)
    assert [(m.uid, m.flags) for m in copies] == [
        (1, frozenset()),
        (2, frozenset({"\\Seen", "Tag"})),
        (3, frozenset()),
    ]
    assert copies[1].internaldate == 5.0
    assert copies[1].modseq == copies[2].modseq > copies[0].modseq
    assert store.read_message(archive.id, 2) == store.read_message(src, 1)
    assert raw(store, "SELECT refcount FROM bodies ORDER BY id") == [(2,), (1,), (2,), (1,)]
    assert store.copy_messages(src, [77], archive.id).result(5) == []
    with pytest.raises(NotFound):
        store.copy_messages(src, [1], 9999).result(5)
    with pytest.raises(NotFound):
        store.copy_messages(9999, [1], archive.id).result(5)
    # Copies are independent: expunging the original leaves the copy readable.
    store.expunge(src, [1], force=True).result(5)
    assert store.read_message(archive.id, 2) is not None


def test_move(store: Store, acct: int) -> None:
    deliver(store, *(new(acct, body(i)) for i in range(4)))
    src = inbox(store, acct)
    trash = store.get_mailbox(acct, "Trash")
    assert trash is not None
    before = store.get_mailbox_by_id(src)
    assert before is not None
    pairs = store.move_messages(src, [2, 4], trash.id).result(5)
    assert pairs == [(2, 1), (4, 2)]
    assert [m.uid for m in store.list_messages(src)] == [1, 3]
    assert [m.uid for m in store.list_messages(trash.id)] == [1, 2]
    after = store.get_mailbox_by_id(src)
    assert after is not None
    assert after.messages == 2 and after.highestmodseq == before.highestmodseq + 1
    assert store.expunged_since(src, before.highestmodseq) == [2, 4]
    assert store.read_message(trash.id, 2) == b"Delivered-To: b@example.com\r\n" + body(3)
    assert raw(store, "SELECT DISTINCT refcount FROM bodies") == [(1,)]
    assert store.move_messages(src, [2], trash.id).result(5) == []
    with pytest.raises(NotFound):
        store.move_messages(src, [1], 9999).result(5)


def test_move_within_mailbox_renumbers(store: Store, acct: int) -> None:
    deliver(store, new(acct, body(1)))
    mb = inbox(store, acct)
    assert store.move_messages(mb, [1], mb).result(5) == [(1, 2)]
    assert [m.uid for m in store.list_messages(mb)] == [2]
    assert store.expunged_since(mb, 0) == [1]


def test_expunge(store: Store, acct: int) -> None:
    shared = body(0)
    deliver(store, *(new(acct, body(i)) for i in range(1, 5)), new(acct, shared, "Sent"))
    deliver(store, new(acct, shared))  # separate delivery: its own body row
    mb = inbox(store, acct)
    store.store_flags(mb, [1, 2, 3], frozenset({"\\Deleted"}), "add").result(5)
    before = store.get_mailbox_by_id(mb)
    assert before is not None
    assert store.expunge(mb, [2, 4]).result(5) == [2]  # UID EXPUNGE: only \Deleted ones
    assert store.expunge(mb).result(5) == [1, 3]
    assert store.expunge(mb).result(5) == []
    after = store.get_mailbox_by_id(mb)
    assert after is not None
    assert after.highestmodseq == before.highestmodseq + 2
    assert [m.uid for m in store.list_messages(mb)] == [4, 5]
    assert store.expunged_since(mb, 0) == [1, 2, 3]
    assert store.expunged_since(mb, before.highestmodseq + 1) == [1, 3]
    assert store.expunge(mb, [4, 5], force=True).result(5) == [4, 5]
    # Only the Sent copy's body is left.
    assert raw(store, "SELECT COUNT(*) FROM bodies") == [(1,)]
    with pytest.raises(NotFound):
        store.expunge(9999).result(5)
    with pytest.raises(ValueError):
        store.expunge(mb, None, force=True).result(5)


def test_uid_space_exhausted(store: Store, acct: int) -> None:
    mb = inbox(store, acct)
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE mailboxes SET uidnext = 4294967295 WHERE id = ?", (mb,))
    conn.commit()
    conn.close()
    assert deliver(store, new(acct, body(1))) == [4294967295]
    with pytest.raises(StoreError):
        store.deliver([new(acct, body(2))]).result(5)


# -- notifications ------------------------------------------------------------------------


def test_subscribe(store: Store, acct: int) -> None:
    seen: list[Change] = []
    threads: set[str] = set()

    def callback(changes: list[Change]) -> None:
        threads.add(threading.current_thread().name)
        seen.extend(changes)

    def broken(changes: list[Change]) -> None:
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    unsubscribe = store.subscribe(callback)
    mb = inbox(store, acct)
    deliver(store, new(acct, body(1)), new(acct, body(2)), new(acct, body(3), "Sent"))
    sent = store.get_mailbox(acct, "Sent")
    assert sent is not None
    store.store_flags(mb, [1], frozenset({"\\Deleted"}), "add").result(5)
    store.expunge(mb).result(5)
    created = store.create_mailbox(acct, "New")
    store.move_messages(mb, [2], created.id).result(5)
    unsubscribe()
    unsubscribe()
    deliver(store, new(acct, body(4)))
    assert seen == [
        Change("new", acct, mb, (1, 2)),
        Change("new", acct, sent.id, (1,)),
        Change("flags", acct, mb, (1,)),
        Change("expunge", acct, mb, (1,)),
        Change("mailbox", acct, created.id, ()),
        Change("new", acct, created.id, (1,)),
        Change("expunge", acct, mb, (2,)),
    ]
    assert threads == {"homing-store-writer"}


def test_sync_call_from_writer_thread_refused(store: Store, acct: int) -> None:
    errors: list[BaseException] = []

    def callback(changes: list[Change]) -> None:
        try:
            store.add_domain("x.example")
        except RuntimeError as exc:
            errors.append(exc)
        try:
            store.close()
        except RuntimeError as exc:
            errors.append(exc)

    store.subscribe(callback)
    deliver(store, new(acct, body(1)))
    assert len(errors) == 2
    assert not store.has_domain("x.example")


# -- readers, vacuum, integrity -----------------------------------------------------------


def test_readers_per_thread(store: Store, acct: int) -> None:
    deliver(store, new(acct, body(1)))
    mb = inbox(store, acct)
    results: list[bytes | None] = []

    def read() -> None:
        results.append(store.read_message(mb, 1))

    for _ in range(3):
        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 24 and len(set(results)) == 1 and results[0] is not None
    # Connections of finished threads are closed when new readers are made.
    assert len(store._readers) <= 9


def test_reader_is_query_only(store: Store) -> None:
    with store._read() as conn, pytest.raises(sqlite3.OperationalError):
        conn.execute("INSERT INTO domains (name, created) VALUES ('x', 0)")


def test_incremental_vacuum(store: Store, acct: int) -> None:
    big = 600 * 1024
    deliver(store, *(new(acct, body(i, big)) for i in range(10)))
    pages_before = scalar(store, "PRAGMA page_count")
    mb = inbox(store, acct)
    store.expunge(mb, list(range(1, 11)), force=True).result(5)
    deliver(store, new(acct, body(99)))  # the vacuum runs after the batch that freed space
    assert store.stats.vacuums >= 1
    pages_after = scalar(store, "PRAGMA page_count")
    assert pages_after < pages_before - 1000


def test_integrity_check_finds_problems(store: Store, acct: int) -> None:
    deliver(store, new(acct, body(1)), new(acct, body(2)))
    assert store.integrity_check() == []
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE bodies SET refcount = 5 WHERE id = 1")
    conn.execute("UPDATE mailboxes SET unseen = 7 WHERE name = 'INBOX'")
    conn.execute("DELETE FROM body_data WHERE id = 2")
    conn.commit()
    problems = store.integrity_check()
    assert any("refcount 5" in p for p in problems)
    assert any("counters" in p for p in problems)
    assert any("no data" in p for p in problems)
    # Undo, so the fixture's final check passes.
    conn.execute("UPDATE bodies SET refcount = 1 WHERE id = 1")
    conn.execute("UPDATE mailboxes SET unseen = 2 WHERE name = 'INBOX'")
    conn.execute("DELETE FROM messages WHERE body_id = 2")
    conn.execute("DELETE FROM bodies WHERE id = 2")
    conn.commit()
    conn.close()
