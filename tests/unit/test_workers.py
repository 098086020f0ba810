"""homing.workers: the link between the main process and its SMTP workers (messages, the
command-line argument, sending over a real socket pair)."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homing.notify import MAX_MESSAGE, decode, encode_changes
from homing.store.model import Change
from homing.workers import WorkerArgs, WorkerLink

changes = st.builds(
    Change,
    st.sampled_from(["new", "flags", "expunge", "mailbox"]),
    st.integers(1, 2**31),
    st.integers(1, 2**31),
    st.lists(st.integers(1, 2**32 - 1), max_size=50).map(tuple),
)


@given(st.lists(changes, max_size=300))
def test_changes_survive_the_link_in_order(items: list[Change]) -> None:
    messages = encode_changes(items)
    assert all(len(m) <= MAX_MESSAGE for m in messages)
    decoded = [c for m in messages for c in decode(m).changes]
    assert decoded == items


def test_a_huge_change_goes_without_its_uids() -> None:
    big = Change("new", 1, 7, tuple(range(1, 40_000)))
    [message] = encode_changes([big])
    assert len(message) <= MAX_MESSAGE
    assert decode(message).changes == (Change("new", 1, 7, ()),)


def test_many_changes_are_split_into_messages_under_the_limit() -> None:
    items = [Change("new", 1, n, tuple(range(100))) for n in range(1, 500)]
    messages = encode_changes(items)
    assert len(messages) > 1 and all(len(m) <= MAX_MESSAGE for m in messages)
    assert [c for m in messages for c in decode(m).changes] == items


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'{"c": [["bogus", 1, 2, []]]}',
        b'{"c": [["new", "1", 2, []]]}',
        b'{"c": [["new", 1, 2, ["x"]]]}',
        b'{"c": [["new", 1, 2]]}',
        b"not json",
    ],
)
def test_bad_messages_are_refused(data: bytes) -> None:
    with pytest.raises((ValueError, TypeError)):
        decode(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from("cqx"), inner),
    max_leaves=20,
)


@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decode_raises_only_value_or_type_errors(data: bytes) -> None:
    try:
        decode(data)
    except (ValueError, TypeError):
        pass


@given(st.integers(1, 64), st.integers(3, 1000), st.lists(st.integers(3, 1000), max_size=4))
def test_worker_args_round_trip(index: int, link: int, fds: list[int]) -> None:
    args = WorkerArgs(index, link, tuple(fds))
    assert WorkerArgs.parse(args.render()) == args


def test_link_sends_ready_changes_and_queued_and_says_when_it_lost_some() -> None:
    main, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    main.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    worker.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    link = WorkerLink(WorkerArgs(1, worker.detach(), ()))
    try:
        link.ready()
        link.committed([Change("new", 1, 2, (5,))])
        link.queued()
        assert decode(main.recv(65536)).ready
        assert decode(main.recv(65536)).changes == (Change("new", 1, 2, (5,)),)
        assert decode(main.recv(65536)).queued
        # The main process stops reading: sends fail at once instead of blocking the writer.
        for n in range(1000):
            link.committed([Change("new", 1, 2, tuple(range(n, n + 200)))])
        while True:
            try:
                main.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        link.committed([Change("flags", 1, 3, (9,))])
        first = decode(main.recv(65536))
        assert first.lost and first.queued  # anything may have changed, queue included
        assert decode(main.recv(65536)).changes == (Change("flags", 1, 3, (9,)),)
        link.committed([Change("flags", 1, 3, (10,))])
        assert not decode(main.recv(65536)).lost
    finally:
        link.close()
        main.close()


def test_encoded_changes_are_compact_json() -> None:
    [message] = encode_changes([Change("expunge", 3, 4, (1, 2))])
    assert json.loads(message) == {"c": [["expunge", 3, 4, [1, 2]]]}


def test_serve_tunes_the_garbage_collector_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc

    from homing import app

    before = gc.get_threshold()
    try:
        monkeypatch.setenv("HOMING_GC", "default")
        app.tune_gc()
        assert gc.get_threshold() == before
        monkeypatch.delenv("HOMING_GC")
        app.tune_gc()
        assert gc.get_threshold() == app.GC_THRESHOLDS and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_serve_keeps_big_allocations_in_their_own_mappings_on_glibc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import platform

    from homing import app

    monkeypatch.setenv("HOMING_MALLOC", "default")
    assert app.tune_malloc() is False
    monkeypatch.delenv("HOMING_MALLOC")
    assert app.tune_malloc() is (platform.libc_ver()[0] == "glibc")
