"""How the IMAP session reads messages from the store: FETCH loads a chunk in one query
(never message by message), and SEARCH's text loader reads ahead in batches that grow while
they are used and shrink when they are not (`homing.imapd.session._TextLoader`), on a real
SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from hypothesis import given, settings
from hypothesis import strategies as st

from homing.auth import Authenticator
from homing.imapd import session as imapd
from homing.imapd.session import IMAPService
from homing.mail.mime import parse_message
from homing.net.memory import DEFAULT_TLS_INFO, MemoryStream
from homing.proto.imap.fetch import MessageView
from homing.store import FetchRow, MailboxInfo, MessageInfo, NewMessage, Store, make_credentials

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PREFIX = b"Delivered-To: bob@example.com\r\n"
COUNT = 300


def message(n: int) -> bytes:
    return f"Subject: message {n}\r\n\r\nbody {n}\r\n".encode()


class CountingStore(Store):
    """The real store, counting bulk reads and the messages they return."""

    calls = 0
    rows = 0

    def read_fetch_data(
        self, mailbox_id: int, uids: Sequence[int], *, parsed: bool, data: bool
    ) -> list[FetchRow]:
        rows = super().read_fetch_data(mailbox_id, uids, parsed=parsed, data=data)
        self.calls += 1
        self.rows += len(rows)
        return rows


def stored(row: FetchRow) -> bytes:
    """The message bytes a loaded row carries (b"" for one expunged meanwhile)."""
    return (row.prefix or b"") + (row.body or b"")


def metadata(infos: Sequence[MessageInfo]) -> list[imapd._Meta]:
    return [imapd._Meta(m.uid, m.modseq, m.flags, m.internaldate, m.size) for m in infos]


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[tuple[CountingStore, int, list[imapd._Meta]]]:
    store = CountingStore.open(tmp_path / "homing.db", create=True)
    assert isinstance(store, CountingStore)
    try:
        store.add_domain("example.com")
        account = store.add_account(
            "bob@example.com", make_credentials("pw", hasher=FAST_HASHER)
        ).id
        store.deliver(
            [
                NewMessage(account, "INBOX", PREFIX, message(n), parse_message(message(n)))
                for n in range(COUNT)
            ]
        ).result(timeout=10)
        inbox = store.get_mailbox(account, "INBOX")
        assert inbox is not None
        yield store, inbox.id, metadata(store.list_messages(inbox.id))
    finally:
        store.close()


def test_full_scan_reads_in_few_batches(
    mailbox: tuple[CountingStore, int, list[imapd._Meta]],
) -> None:
    store, inbox, infos = mailbox
    loader = imapd._TextLoader(store, inbox, infos)
    for i in range(COUNT):
        assert stored(loader.load(i)) == PREFIX + message(i)
    # Batches double: 2 + 4 + ... + 256 covers 300 messages in 8 reads, not 300.
    assert store.calls <= 9
    assert store.rows == COUNT


def test_sparse_scan_reads_little_it_does_not_use(
    mailbox: tuple[CountingStore, int, list[imapd._Meta]],
) -> None:
    store, inbox, infos = mailbox
    loader = imapd._TextLoader(store, inbox, infos)
    wanted = range(0, COUNT, 10)  # say SEARCH UNSEEN TEXT x, every tenth message unseen
    for i in wanted:
        assert stored(loader.load(i)) == PREFIX + message(i)
    # The read-ahead shrinks back to single messages: about one read per message asked for,
    # and few rows read that were not asked for.
    assert store.calls <= len(wanted) + 2
    assert store.rows <= 2 * len(wanted)


def test_batches_respect_the_byte_bound(
    mailbox: tuple[CountingStore, int, list[imapd._Meta]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, inbox, infos = mailbox
    monkeypatch.setattr(imapd, "CHUNK_BYTES", 3 * infos[0].size)
    loader = imapd._TextLoader(store, inbox, infos)
    for i in range(40):
        assert stored(loader.load(i)) == PREFIX + message(i)
    assert store.calls >= 40 // 3  # never more than 3 messages' worth per read


def test_expunged_meanwhile_reads_as_empty(
    mailbox: tuple[CountingStore, int, list[imapd._Meta]],
) -> None:
    store, inbox, infos = mailbox
    loader = imapd._TextLoader(store, inbox, infos)
    store.expunge(inbox, [infos[1].uid, infos[5].uid], force=True).result(timeout=5)
    assert [stored(loader.load(i)) for i in range(7)] == [
        b"" if i in (1, 5) else PREFIX + message(i) for i in range(7)
    ]


# -- through a session ---------------------------------------------------------------------


class NoSingleReads(CountingStore):
    """Fails the test if the session falls back to reading message by message."""

    def read_parsed(self, mailbox_id: int, uid: int) -> tuple[bytes, bytes, bytes, bytes] | None:
        raise AssertionError("read_parsed called")

    def read_split(self, mailbox_id: int, uid: int) -> tuple[bytes, bytes] | None:
        raise AssertionError("read_split called")


async def run_session(store: Store, commands: Sequence[bytes]) -> list[bytes]:
    """Log in as bob over a MemoryStream, run `commands` (tags c0, c1, ...), return each
    command's output up to and including its tagged line."""
    auth = Authenticator(store)
    service = IMAPService(store, auth, None, idle_timeout=60, max_message_size=1 << 20)
    stream = MemoryStream("imaps", tls=DEFAULT_TLS_INFO)
    session = service.handler(implicit_tls=True)(stream)
    task = asyncio.ensure_future(session)
    try:
        await stream.read_output(b"\r\n")
        stream.feed(b"a LOGIN bob@example.com pw\r\nb SELECT INBOX\r\n")
        await stream.read_output(b"b OK")
        await stream.read_output(b"\r\n")
        outputs = []
        for n, command in enumerate(commands):
            tag = b"c%d" % n
            stream.feed(tag + b" " + command + b"\r\n")
            outputs.append(await stream.read_output(b"\r\n" + tag + b" ", timeout=20))
            outputs[-1] += await stream.read_output(b"\r\n")
        stream.feed(b"z LOGOUT\r\n")
        await asyncio.wait_for(task, 10)
        return outputs
    finally:
        task.cancel()
        service.close()
        auth.close()


async def test_session_fetch_and_search_use_bulk_reads(tmp_path: Path) -> None:
    store = NoSingleReads.open(tmp_path / "homing.db", create=True)
    assert isinstance(store, NoSingleReads)
    try:
        store.add_domain("example.com")
        account = store.add_account(
            "bob@example.com", make_credentials("pw", hasher=FAST_HASHER)
        ).id
        store.deliver(
            [
                NewMessage(account, "INBOX", PREFIX, message(n), parse_message(message(n)))
                for n in range(COUNT)
            ]
        ).result(timeout=10)
        envelope, peek, search = await run_session(
            store,
            [b"FETCH 1:* (ENVELOPE)", b"FETCH 1:* BODY.PEEK[]", b'SEARCH TEXT "message 299"'],
        )
    finally:
        store.close()
    for n in range(COUNT):
        assert b'* %d FETCH (ENVELOPE (NIL "message %d" ' % (n + 1, n) in envelope
        data = PREFIX + message(n)
        assert b"* %d FETCH (BODY[] {%d}\r\n%s)\r\n" % (n + 1, len(data), data) in peek
    assert envelope.endswith(b"c0 OK FETCH completed\r\n")
    assert search == b"* SEARCH 300\r\nc2 OK SEARCH completed\r\n"
    # One query per chunk for each FETCH, a few read-ahead batches for SEARCH.
    assert store.calls <= 2 + 9


class BuggyStore(Store):
    """The real store, with a bug planted in one read (a programming error, not a StoreError)."""

    def list_mailboxes(self, account_id: int) -> list[MailboxInfo]:
        raise ValueError("planted bug")


async def test_a_bug_is_no_serverbug_and_the_session_goes_on(tmp_path: Path) -> None:
    store = BuggyStore.open(tmp_path / "homing.db", create=True)
    auth = Authenticator(store)
    service = IMAPService(store, auth, None, idle_timeout=60, max_message_size=1 << 20)
    stream = MemoryStream("imaps", tls=DEFAULT_TLS_INFO)
    task = asyncio.ensure_future(service.handler(implicit_tls=True)(stream))
    try:
        store.add_domain("example.com")
        store.add_account("bob@example.com", make_credentials("pw", hasher=FAST_HASHER))
        await stream.read_output(b"\r\n")
        stream.feed(b'a LOGIN bob@example.com pw\r\nb LIST "" *\r\nc SELECT INBOX\r\n')
        out = await stream.read_output(b"c OK [READ-WRITE] Select completed\r\n", timeout=20)
        assert b"\r\nb NO [SERVERBUG] Internal error, see the server log\r\n" in out
        stream.feed(b"z LOGOUT\r\n")
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
        service.close()
        auth.close()
        store.close()


# -- the selected mailbox's metadata -------------------------------------------------------

SEEN = frozenset({"\\Seen"})


def info(uid: int, modseq: int = 1, flags: frozenset[str] = frozenset()) -> MessageInfo:
    return MessageInfo(
        id=uid, mailbox_id=1, uid=uid, modseq=modseq, flags=flags, internaldate=uid * 1.5, size=uid
    )


def selected(uids: Sequence[int]) -> imapd._Selected:
    box = MailboxInfo(1, 1, "INBOX", None, 7, 100, 5, False, len(uids), 0, 0)
    return imapd._Selected(box, [info(u) for u in uids])


def test_selected_metadata_basics() -> None:
    sel = selected([9, 3, 5])  # any order in, UID order kept
    assert len(sel) == 3 and 5 in sel and 4 not in sel
    assert sel.get(5) == imapd._Meta(5, 1, frozenset(), 7.5, 5)
    assert sel.get(4) is None and sel.get(4_294_967_295) is None
    assert sel.lookup([(1, 3), (2, 4), (3, 9)]) == [(1, sel.get(3)), (3, sel.get(9))]
    sel.set_flags(9, 8, SEEN)
    sel.set_flags(10, 8, SEEN)  # unknown: ignored
    assert sel.get(9) == imapd._Meta(9, 8, SEEN, 13.5, 9)
    assert sel.put(info(5, 9, SEEN)) is False  # known: flags and MODSEQ updated
    assert sel.get(5) == imapd._Meta(5, 9, SEEN, 7.5, 5)
    assert sel.put(info(4_294_967_295)) is True and sel.put(info(1)) is True
    sel.remove([3, 77])
    assert [uid for uid in range(12) if uid in sel] == [1, 5, 9]
    assert 4_294_967_295 in sel


@pytest.mark.parametrize("count", [3, 70, 200])
def test_views_of_all_messages_are_the_views_of_each(count: int) -> None:
    """The whole-mailbox shortcut of `views` builds the same MessageViews, every field (the
    defaults prefix and body too), as the per-message path does for a subset."""
    sel = selected(range(10, 10 + count))
    everything = [(n, uid) for n, uid in enumerate(range(10, 10 + count), 1)]
    whole = sel.views(everything)
    assert all(type(view) is MessageView and len(view) == 12 for view in whole)
    each = [view for pair in everything for view in sel.views([pair])]
    assert whole == each
    assert whole[1]._replace(seq=99).seq == 99 and whole[0].body is None


def test_meta_views_pair_rows_with_numbers_whether_or_not_all_were_found() -> None:
    chunk = [(n, 10 * n) for n in range(1, 6)]
    flags = frozenset({"\\Seen"})
    rows = [(uid, uid + 1, flags, 1.5, uid * 3, b"e%d" % uid, b"b", b"n", b"p") for _, uid in chunk]
    expected = [
        MessageView(seq, uid, flags, 1.5, uid * 3, uid + 1, b"e%d" % uid, b"b", b"n", b"p")
        for seq, uid in chunk
    ]
    every = imapd.meta_views(chunk, rows)  # all found: the transposing path
    assert every == expected and all(len(v) == 12 and v.body is None for v in every)
    some = imapd.meta_views(chunk, rows[:1] + rows[2:4])  # 20 and 50 expunged meanwhile
    assert some == [expected[0], expected[2], expected[3]]
    assert imapd.meta_views(chunk, []) == []


def test_selected_metadata_many_removed() -> None:
    sel = selected(range(1, 1001))
    sel.remove(range(2, 1001, 2))
    assert len(sel) == 500
    assert [m.uid for _, m in sel.lookup([(u, u) for u in range(1, 1001)])] == list(
        range(1, 1001, 2)
    )
    assert sel.get(999) == imapd._Meta(999, 1, frozenset(), 1498.5, 999)


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "flags", "remove"]),
        st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=40),
        st.integers(min_value=1, max_value=1000),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(initial=st.sets(st.integers(min_value=1, max_value=80)), ops=_OPS)
def test_selected_metadata_behaves_like_a_dict(initial: set[int], ops: list[Any]) -> None:
    """Invariant: under any sequence of puts, flag changes and removals, `_Selected` answers
    exactly as a plain dict of uid -> metadata would."""
    sel = selected(sorted(initial))
    model = {u: imapd._Meta(u, 1, frozenset(), u * 1.5, u) for u in initial}
    for op, uids, modseq in ops:
        for uid in uids:
            if op == "put":
                new = uid not in model
                if new:
                    model[uid] = imapd._Meta(uid, modseq, SEEN, uid * 1.5, uid)
                else:
                    model[uid] = model[uid]._replace(modseq=modseq, flags=SEEN)
                assert sel.put(info(uid, modseq, SEEN)) is new
            elif op == "flags":
                sel.set_flags(uid, modseq, frozenset({f"k{modseq}"}))
                if uid in model:
                    model[uid] = model[uid]._replace(modseq=modseq, flags=frozenset({f"k{modseq}"}))
        if op == "remove":
            sel.remove(uids if len(uids) % 2 else uids * 2)  # both removal paths, repeats
            for uid in uids:
                model.pop(uid, None)
        assert len(sel) == len(model)
    assert sel.lookup([(u, u) for u in range(82)]) == [(u, model[u]) for u in sorted(model)]


# -- writing -------------------------------------------------------------------------------

_CHUNKS = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.integers(min_value=0, max_value=3 * 256 * 1024).map(lambda n: b"d" * n),
        st.integers(min_value=0, max_value=600_000).map(lambda n: memoryview(b"m" * n)[n // 3 :]),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(chunks=_CHUNKS)
def test_pieces_keep_every_octet_in_bounded_pieces(chunks: list[bytes | memoryview]) -> None:
    """Invariant: the pieces are the chunks' octets in order; none is empty; a piece cut
    from a big chunk is at most WRITE_SIZE, a joined run of small ones under twice that."""
    pieces = list(imapd._pieces(chunks))
    assert b"".join(pieces) == b"".join(chunks)
    assert all(isinstance(p, bytes) and 0 < len(p) < 2 * imapd.WRITE_SIZE for p in pieces)


def test_pieces_join_small_chunks_and_cut_big_ones() -> None:
    size = imapd.WRITE_SIZE
    small = [b"* %d FETCH (UID %d)\r\n" % (i, i) for i in range(3)]
    big = memoryview(b"x" * (2 * size + 5))
    assert list(imapd._pieces([*small, big, b")\r\n"])) == [
        b"".join(small),
        b"x" * size,
        b"x" * size,
        b"x" * 5,
        b")\r\n",
    ]
    assert list(imapd._pieces([])) == list(imapd._pieces([b"", memoryview(b"")])) == []


# -- the select cache ---------------------------------------------------------------------


class ListingStore(CountingStore):
    """The real store, recording how list_messages was asked (full read or a delta)."""

    listings: list[int | None]

    def list_messages(
        self, mailbox_id: int, *, changed_since: int | None = None
    ) -> list[MessageInfo]:
        self.listings.append(changed_since)
        return super().list_messages(mailbox_id, changed_since=changed_since)


def columns(sel: imapd._Selected) -> list[imapd._Meta]:
    return [m for _, m in sel.lookup([(u, u) for u in sel.uid_list()])]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["deliver", "flag", "expunge", "select"]),
            st.integers(min_value=0, max_value=40),
        ),
        max_size=25,
    )
)
def test_select_cache_equals_a_fresh_read(tmp_path_factory: Any, ops: list[Any]) -> None:
    """Invariant: whatever happened since, a SELECT through the cache sees exactly what a
    full read of the store sees, and after the first it reads only the delta."""
    path = tmp_path_factory.mktemp("cache") / "homing.db"
    store = ListingStore.open(path, create=True)
    assert isinstance(store, ListingStore)
    store.listings = []
    cache = imapd.SelectCache()
    try:
        store.add_domain("example.com")
        account = store.add_account("bob@example.com", make_credentials("pw", hasher=FAST_HASHER))
        new = [
            NewMessage(account.id, "INBOX", PREFIX, message(n), parse_message(message(n)))
            for n in range(5)
        ]
        store.deliver(new).result(timeout=10)
        for op, n in [("select", 0), *ops, ("select", 0)]:
            inbox = store.get_mailbox(account.id, "INBOX")
            assert inbox is not None
            uids = [m.uid for m in store.list_messages(inbox.id)]
            store.listings.pop()
            if op == "deliver":
                store.deliver(new[:1]).result(timeout=10)
            elif op == "flag" and uids:
                flags = frozenset({"\\Seen", f"$k{n % 3}"})
                store.store_flags(inbox.id, [uids[n % len(uids)]], flags, "set").result(10)
            elif op == "expunge" and uids:
                store.expunge(inbox.id, [uids[n % len(uids)]], force=True).result(timeout=10)
            elif op == "select":
                before = len(store.listings)
                got = cache.load(store, inbox)
                asked = store.listings[before:]
                fresh = imapd._Selected(inbox, store.list_messages(inbox.id))
                assert columns(got) == columns(fresh)
                assert got.highestmodseq == inbox.highestmodseq
                assert None not in asked or before == 0  # only the first reads everything
    finally:
        store.close()


def test_select_cache_drops_least_recent_and_checks_uidvalidity(tmp_path: Path) -> None:
    store = ListingStore.open(tmp_path / "homing.db", create=True)
    assert isinstance(store, ListingStore)
    store.listings = []
    cache = imapd.SelectCache(max_messages=5)
    try:
        store.add_domain("example.com")
        account = store.add_account("bob@example.com", make_credentials("pw", hasher=FAST_HASHER))
        for name in ("A", "B"):
            store.create_mailbox(account.id, name)
            store.deliver(
                [
                    NewMessage(account.id, name, b"", message(n), parse_message(message(n)))
                    for n in range(3)
                ]
            ).result(timeout=10)
        a = store.get_mailbox(account.id, "A")
        b = store.get_mailbox(account.id, "B")
        assert a is not None and b is not None
        cache.load(store, a)
        cache.load(store, a)
        assert store.listings == [None]  # the second SELECT of A: no read at all
        cache.load(store, b)  # 3 + 3 > 5: A is dropped
        cache.load(store, a)
        assert store.listings == [None, None, None]
        # Another UIDVALIDITY (the mailbox was recreated under the same id): a full read.
        cache.load(store, dataclasses.replace(a, uidvalidity=a.uidvalidity + 1))
        assert store.listings == [None, None, None, None]
    finally:
        store.close()
