"""Property tests for homing.proto.imap.search.

Invariants:
* On random mailboxes (flags, keywords, sizes, dates, MODSEQs, UIDs) and random trees of
  metadata keys, `evaluate` agrees with a plain recursive reference evaluator, and
  OR a b == union, NOT a == complement, (a b) == intersection, in sequence order.
* Metadata-only keys never load a message; an AND of a metadata key and a text key loads
  exactly the messages the metadata key matches, once each.
* For any message bytes and any text key, `evaluate` never raises and returns a subset.
* ESEARCH ALL's sequence set expands back to the matches; COUNT, MIN and MAX agree.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homing.proto.imap.search import SearchView, evaluate, format_search
from homing.proto.imap.types import (
    STAR,
    SearchDate,
    SearchFlag,
    SearchGroup,
    SearchHeader,
    SearchKey,
    SearchKeyword,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSet,
    SearchSize,
    SearchString,
    SequenceSet,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FLAGS = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent", "$A", "b"]
DAY = 86400
BASE = 1_704_067_200  # 2024-01-01 00:00:00 UTC


@st.composite
def mailboxes(draw: st.DrawFn) -> list[SearchView]:
    count = draw(st.integers(0, 12))
    uids = sorted(draw(st.sets(st.integers(1, 60), min_size=count, max_size=count)))
    views = []
    for seq, uid in enumerate(uids, 1):
        flags = frozenset(draw(st.sets(st.sampled_from(FLAGS))))
        date = BASE + draw(st.integers(0, 5 * DAY))
        size = draw(st.integers(0, 50))
        modseq = draw(st.integers(1, 20))
        views.append(SearchView(seq, uid, flags, float(date), size, modseq, _no_load))
    return views


def _no_load() -> bytes:
    raise AssertionError("a metadata key loaded a message")


_SEQ = st.integers(1, 14) | st.just(STAR)
sequence_sets = st.lists(st.tuples(_SEQ, _SEQ), min_size=1, max_size=3).map(
    lambda r: SequenceSet(tuple(r))
)
_FLAG_KEYS = [
    "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED",
    "UNDRAFT", "UNFLAGGED", "UNSEEN", "NEW", "OLD", "RECENT",
]  # fmt: skip
leaf_keys: st.SearchStrategy[SearchKey] = st.one_of(
    st.sampled_from(_FLAG_KEYS).map(SearchFlag),
    st.builds(SearchKeyword, st.sampled_from(["$a", "$A", "B", "c"]), st.booleans()),
    st.builds(SearchSize, st.sampled_from(["LARGER", "SMALLER"]), st.integers(0, 50)),
    st.builds(
        SearchDate,
        st.sampled_from(["BEFORE", "ON", "SINCE"]),
        st.dates(dt.date(2023, 12, 31), dt.date(2024, 1, 7)),
    ),
    st.builds(SearchSet, sequence_sets, st.booleans()),
    st.builds(SearchModSeq, st.integers(0, 21)),
)
keys = st.recursive(
    leaf_keys,
    lambda inner: st.one_of(
        st.builds(SearchNot, inner),
        st.builds(SearchOr, inner, inner),
        st.lists(inner, min_size=1, max_size=3).map(lambda ks: SearchGroup(tuple(ks))),
    ),
    max_leaves=8,
)


def reference(key: SearchKey, v: SearchView, max_seq: int, max_uid: int) -> bool:
    """RFC 9051 §6.4.4, written as plainly as possible."""
    match key:
        case SearchFlag("ALL"):
            return True
        case SearchFlag("NEW"):
            return "\\Recent" in v.flags and "\\Seen" not in v.flags
        case SearchFlag("OLD"):
            return "\\Recent" not in v.flags
        case SearchFlag(name) if name.startswith("UN"):
            return "\\" + name[2:].capitalize() not in v.flags
        case SearchFlag(name):
            return "\\" + name.capitalize() in v.flags
        case SearchKeyword(word, negated):
            return any(f.lower() == word.lower() for f in v.flags) != negated
        case SearchSize("LARGER", n):
            return v.size > n
        case SearchSize(_, n):
            return v.size < n
        case SearchDate(name, date):
            day = dt.datetime.fromtimestamp(v.internaldate, dt.UTC).date()
            return {"BEFORE": day < date, "ON": day == date, "SINCE": day >= date}[name]
        case SearchSet(sequence, uid):
            number, largest = (v.uid, max_uid) if uid else (v.seq, max_seq)
            return sequence.contains(number, largest)
        case SearchModSeq(n):
            return v.modseq >= n
        case SearchNot(inner):
            return not reference(inner, v, max_seq, max_uid)
        case SearchOr(a, b):
            return reference(a, v, max_seq, max_uid) or reference(b, v, max_seq, max_uid)
        case SearchGroup(ks):
            return all(reference(k, v, max_seq, max_uid) for k in ks)
    raise AssertionError(key)


def run(key: SearchKey, views: list[SearchView]) -> list[int]:
    max_uid = views[-1].uid if views else 0
    return evaluate(key, views, max_seq=len(views), max_uid=max_uid)


@SETTINGS
@given(mailboxes(), keys)
def test_agrees_with_reference(views: list[SearchView], key: SearchKey) -> None:
    max_uid = views[-1].uid if views else 0
    expected = [v.seq for v in views if reference(key, v, len(views), max_uid)]
    assert run(key, views) == expected


@SETTINGS
@given(mailboxes(), keys, keys)
def test_boolean_algebra(views: list[SearchView], a: SearchKey, b: SearchKey) -> None:
    every = [v.seq for v in views]
    ra, rb = set(run(a, views)), set(run(b, views))
    assert run(SearchOr(a, b), views) == [s for s in every if s in ra | rb]
    assert run(SearchNot(a), views) == [s for s in every if s not in ra]
    assert run(SearchGroup((a, b)), views) == [s for s in every if s in ra & rb]


@SETTINGS
@given(mailboxes(), leaf_keys, st.binary(max_size=60))
def test_text_keys_load_only_the_survivors(
    views: list[SearchView], cheap: SearchKey, message: bytes
) -> None:
    loads: list[int] = []

    def loader(seq: int) -> SearchView:
        v = views[seq - 1]

        def load() -> bytes:
            loads.append(seq)
            return message

        return SearchView(v.seq, v.uid, v.flags, v.internaldate, v.size, v.modseq, load)

    counted = [loader(v.seq) for v in views]
    survivors = run(cheap, views)
    key = SearchGroup((SearchString("BODY", b"zz"), cheap))
    result = evaluate(key, counted, max_seq=len(views), max_uid=views[-1].uid if views else 0)
    assert loads == survivors
    assert set(result) <= set(survivors)


text_keys = st.one_of(
    st.builds(
        SearchString,
        st.sampled_from(["BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"]),
        st.binary(max_size=5),
    ),
    st.builds(SearchHeader, st.sampled_from(["Subject", "X-A", "Date", ""]), st.binary(max_size=5)),
    st.builds(
        SearchDate,
        st.sampled_from(["SENTBEFORE", "SENTON", "SENTSINCE"]),
        st.dates(dt.date(1990, 1, 1), dt.date(2030, 1, 1)),
    ),
)
_MESSAGE_BITS = st.sampled_from(
    [
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n",
        b"Subject: =?x-bogus?b?////?=\r\n",
        b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n",
        b"Date: 31 Feb 2024\r\n",
        b"Content-Type: text/plain; charset=koi8-r\r\n",
        b"Content-Type: text/plain; charset*=utf-8''%ff\r\n",
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"\r\n",
        b"--b\r\n",
        b"=E9=\r\n",
        b"\xff\xfe\x00",
        b"X-A:  folded\r\n value\r\n",
    ]
)
messages = st.lists(_MESSAGE_BITS | st.binary(max_size=20), max_size=12).map(b"".join)


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=4), text_keys, st.sampled_from(["UTF-8", "KOI8-R"]))
def test_text_keys_never_raise(bodies: list[bytes], key: SearchKey, charset: str) -> None:
    views = [
        SearchView(i, i, frozenset(), 0.0, len(b), 1, functools.partial(bytes, b))
        for i, b in enumerate(bodies, 1)
    ]
    result = evaluate(key, views, max_seq=len(views), max_uid=len(views), charset=charset)
    assert set(result) <= set(range(1, len(views) + 1))
    negated = evaluate(
        SearchNot(key), views, max_seq=len(views), max_uid=len(views), charset=charset
    )
    assert sorted(result + negated) == list(range(1, len(views) + 1))


_RANGE = re.compile(rb"(\d+)(?::(\d+))?")


@SETTINGS
@given(st.lists(st.integers(1, 2**32 - 1), max_size=30), st.booleans())
def test_esearch_all_round_trips(numbers: list[int], uid: bool) -> None:
    out = format_search(
        numbers, esearch=("MIN", "MAX", "COUNT", "ALL"), tag="t", uid=uid, modseq=None
    )
    head = b'* ESEARCH (TAG "t")' + (b" UID" if uid else b"")
    assert out.startswith(head) and out.endswith(b"\r\n")
    fields = out[len(head) : -2].split()
    data = dict(zip(fields[::2], fields[1::2], strict=True))
    assert int(data[b"COUNT"]) == len(set(numbers))
    if not numbers:
        assert set(data) == {b"COUNT"}
        return
    assert int(data[b"MIN"]) == min(numbers)
    assert int(data[b"MAX"]) == max(numbers)
    expanded: list[int] = []
    for item in data[b"ALL"].split(b","):
        m = _RANGE.fullmatch(item)
        assert m is not None
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        assert lo <= hi
        expanded += range(lo, hi + 1)
    assert expanded == sorted(set(numbers))
