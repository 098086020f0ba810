"""Property tests for homing.proto.imap.search.

Invariants:
* On random mailboxes (flags, keywords, sizes, dates, MODSEQs, UIDs) and random trees of
  metadata keys, `evaluate` agrees with a plain recursive reference evaluator, and
  OR a b == union, NOT a == complement, (a b) == intersection, in sequence order.
* Metadata-only keys never load a message; an AND of a metadata key and a text key loads
  exactly the messages the metadata key matches, once each.
* For any message bytes and any text key, `evaluate` never raises and returns a subset;
  the message as bytes and as the store hands it out (with the part map computed at
  delivery) give the same answer; the header ends where `homing.mail.mime` says.
* BODY is exact whatever the piece size: for any text in any charset (declared rightly,
  wrongly, or not at all) and transfer encoding, it matches iff the needle is a substring
  of the part's text as the documented decoding rule reads it, case-folded.
* Header keys are exact whatever the piece size (pieces at least as long as a field): a
  needle matches iff it is in one value of the field (raw UTF-8 or RFC 2047 encoded words,
  folded), and TEXT then matches too.
* ESEARCH ALL's sequence set expands back to the matches; COUNT, MIN and MAX agree.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.header
import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from homing.mail.mime import encode_partmap, parse_message
from homing.proto.imap import search as search_module
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
from homing.store import FetchRow

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


def stored(data: bytes) -> FetchRow:
    return FetchRow(0, partmap=encode_partmap(parse_message(data).parts), prefix=b"", body=data)


def matching(key: SearchKey, data: bytes | FetchRow, charset: str = "UTF-8") -> bool:
    view = SearchView(1, 1, frozenset(), 0.0, 1, 1, lambda: data)
    return evaluate(key, [view], max_seq=1, max_uid=1, charset=charset) == [1]


@contextmanager
def pieces_of(size: int) -> Iterator[None]:
    """Text made `size` octets at a time (hypothesis runs many examples per test call, so
    no monkeypatch fixture)."""
    saved = search_module._CHUNK
    search_module._CHUNK = size
    try:
        yield
    finally:
        search_module._CHUNK = saved


_HEADERISH = st.sampled_from(
    [b"From alice Mon Jan  1\r\n", b" cont\r\n", b"\tcont\n", b"not a field\r\n", b"X : y\n"]
)


@SETTINGS
@given(st.lists(_MESSAGE_BITS | _HEADERISH | st.binary(max_size=20), max_size=12).map(b"".join))
def test_header_end_agrees_with_mime(message: bytes) -> None:
    assert search_module._header_end(message) == parse_message(message).parts[0].body_start


@SETTINGS
@given(messages, text_keys, st.integers(8, 64) | st.just(256 * 1024))
def test_bytes_and_stored_form_agree(message: bytes, key: SearchKey, chunk: int) -> None:
    with pieces_of(chunk):
        assert matching(key, message) == matching(key, stored(message))


_ALPHABET = "abcXYZ 09.\t=é ßЖж😀İſ"
_ACTUAL = ["utf-8", "utf-16", "koi8-r", "latin-1"]
_DECLARED = ["utf-8", "utf-16", "koi8-r", "latin-1", "us-ascii", "", "x-unknown"]


def read(raw: bytes, declared: str) -> str:
    """The documented rule: the declared charset (US-ASCII and none read as UTF-8; UTF-16
    without a byte order mark as big-endian), else UTF-8, else Latin-1."""
    if declared == "utf-16" and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        declared = "utf-16-be"
    for charset in (declared if declared not in ("", "us-ascii") else "utf-8", "utf-8"):
        try:
            return raw.decode(charset)
        except (LookupError, UnicodeDecodeError):
            continue
    return raw.decode("latin-1")


@st.composite
def text_parts(draw: st.DrawFn) -> tuple[bytes, str, str]:
    """(message, the text of its one part as the rule reads it, the text written): text
    in a charset, declared rightly, wrongly or not at all, in a transfer encoding."""
    text = draw(st.text(_ALPHABET + "\n", max_size=300))
    actual = draw(st.sampled_from(_ACTUAL))
    declared = draw(st.sampled_from(_DECLARED))
    encoding = draw(st.sampled_from(["7bit", "base64", "quoted-printable"]))
    raw = text.encode(actual, "replace")
    if encoding == "base64":
        body = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    elif encoding == "quoted-printable":
        body = binascii.b2a_qp(raw, istext=False)
        assume(binascii.a2b_qp(body) == raw)
    else:
        body = raw
    message = (
        b"Content-Type: text/plain" + (b"; charset=" + declared.encode() if declared else b"")
        + b"\r\nContent-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n" + body
    )  # fmt: skip
    return message, read(raw, declared), text


@SETTINGS
@given(text_parts(), st.integers(4, 64), st.booleans(), st.data())
def test_body_search_is_exact_whatever_the_pieces(
    part: tuple[bytes, str, str], chunk: int, as_stored: bool, data: st.DataObject
) -> None:
    message, expected, text = part
    start = data.draw(st.integers(0, len(text)))
    size = data.draw(st.integers(0, 12))
    needle = data.draw(st.just(text[start : start + size]) | st.text(_ALPHABET, max_size=4))
    key = SearchString("BODY", needle.encode())
    with pieces_of(chunk):
        found = matching(key, stored(message) if as_stored else message)
    event(f"found: {found}")
    assert found == (needle.casefold() in expected.casefold())


_VALUES = st.text(_ALPHABET, max_size=60).map(lambda v: v.strip(" \t"))


def _field(value: str, form: str) -> bytes:
    if form == "raw":  # RFC 6532: UTF-8 as it is
        return b"Subject: " + value.encode() + b"\r\n"
    header = email.header.Header(value, form, header_name="Subject", maxlinelen=40)
    return b"Subject: " + header.encode(linesep="\r\n").encode("ascii") + b"\r\n"


@SETTINGS
@given(
    st.lists(st.tuples(_VALUES, st.sampled_from(["raw", "utf-8", "iso-8859-5"])), max_size=4),
    st.integers(0, 80),
    st.data(),
)
def test_header_search_is_exact_whatever_the_pieces(
    fields: list[tuple[str, str]], extra: int, data: st.DataObject
) -> None:
    values = []
    header = b"X-Before: abc\r\n"
    for value, form in fields:
        if form == "iso-8859-5":  # only text it can encode
            value = value.encode(form, "replace").decode(form)
        header += _field(value, form) + b"X-Between: abc\r\n"
        values.append(value)
    message = header + b"\r\nbody\r\n"
    chosen = data.draw(st.sampled_from(values)) if values else ""
    start = data.draw(st.integers(0, len(chosen)))
    needle = data.draw(
        st.just(chosen[start : start + data.draw(st.integers(1, 12))])
        | st.text(_ALPHABET, min_size=1, max_size=4)
    )
    longest = max((len(line) for line in header.split(b"\r\nX-")), default=0)
    expected = any(needle.casefold() in v.casefold() for v in values)
    event(f"expected: {expected}")
    with pieces_of(longest + extra):
        assert matching(SearchString("SUBJECT", needle.encode()), message) == expected
        if expected:
            assert matching(SearchString("TEXT", needle.encode()), message)


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
