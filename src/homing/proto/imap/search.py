"""SEARCH evaluation and SEARCH / ESEARCH responses (RFC 9051 §6.4.4, §7.3.4; RFC 3501
§6.4.4; RFC 4731 ESEARCH; RFC 5182 SEARCHRES; RFC 7162 §3.1.5 MODSEQ; RFC 5032 WITHIN).

Theory of operation
-------------------
`evaluate` compiles the search key once into a predicate over one message, then runs it over
the session's `SearchView`s in sequence order. Each key has a cost class: metadata keys (flags,
keywords, sizes, internal dates, sequence and UID sets, MODSEQ, "$") cost nothing; header keys
need the message loaded and its header parsed; BODY and TEXT need the whole MIME tree decoded.
AND lists are reordered cheapest first and OR tries its cheaper side first, both
short-circuiting, so `SEARCH UNSEEN` never loads a message and `SEARCH UNSEEN SUBJECT x` loads
only the unseen ones. A message is loaded (`SearchView.load`) at most once per evaluation and
dropped before the next one, so memory stays bounded whatever the mailbox size.

Nesting is bounded: the parser caps it at `grammar.MAX_NESTING`; keys built by other code
deeper than `MAX_DEPTH` raise SearchError (BAD) instead of exhausting the stack.

Matching rules (RFC 9051 §6.4.4 leaves them to the server; mostly as Dovecot without FTS):

* Strings are compared as Unicode text, case-insensitively (str.casefold), as substrings.
  The search string is decoded from the command's CHARSET; an unknown charset raises
  SearchError with the BADCHARSET code.
* Header keys (FROM, TO, CC, BCC, SUBJECT, HEADER) look at every occurrence of the field,
  unfolded and RFC 2047-decoded (`email.header`); raw 8-bit values are read as UTF-8, else
  Latin-1. `HEADER name ""` matches every message that has the field. The trace fields the
  store prepends (Return-Path, Delivered-To, Received) are part of the header.
* BODY searches the text of the body: every text/* leaf part (no Content-Type means
  text/plain), base64 or quoted-printable decoded and converted from its charset, plus the
  header fields of embedded message/rfc822 parts. Other parts (images, archives) are not
  searched. TEXT searches the top-level header fields and the body text.
* Dates: BEFORE, ON and SINCE compare the internal date's day in UTC (the server's timezone
  for this purpose). SENTBEFORE, SENTON and SENTSINCE compare the day written in the Date:
  field, disregarding time and timezone (RFC 9051 §6.4.4); a message without a parsable
  Date: field matches none of them (and so matches NOT SENTON ...).
* OLDER / YOUNGER (RFC 5032) compare the internal date with `now`, which the caller passes:
  OLDER n matches internaldate <= now - n, YOUNGER n the others.
* MODSEQ n (RFC 7162 §3.1.5) matches messages whose MODSEQ is >= n; the per-flag entry name
  is accepted and ignored (the message MODSEQ bounds every entry's, as the RFC allows).
* "$" (RFC 5182) is the saved result, passed as the set of UIDs it holds; none saved: empty.
* Garbage never raises: undecodable text is read as Latin-1, broken MIME as raw text.
"""

from __future__ import annotations

import bisect
import calendar
import contextlib
import datetime as dt
import email
import email.header
import email.message
import email.policy
import email.utils
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from homing.mail.imapfmt import string
from homing.proto.imap.types import (
    SearchAge,
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
)

__all__ = [
    "MAX_DEPTH",
    "ReturnOptions",
    "SearchError",
    "SearchView",
    "evaluate",
    "format_search",
    "has_modseq",
    "saved_result",
    "sequence_set",
]

#: Nesting levels of NOT / OR / parentheses evaluated; deeper keys raise SearchError.
MAX_DEPTH = 200

#: SEARCH RETURN options as parsed (`types.Search.return_options`): MIN, MAX, ALL, COUNT,
#: SAVE; empty means ALL (RFC 9051 §6.4.4).
ReturnOptions: TypeAlias = Collection[str]


@dataclass(frozen=True, slots=True)
class SearchView:
    """What the session gives per message. `load` returns the whole stored message (prefix +
    body); it is called at most once per `evaluate`, and only for keys that need text."""

    seq: int
    uid: int
    flags: frozenset[str]
    internaldate: float
    size: int
    modseq: int
    load: Callable[[], bytes]


class SearchError(Exception):
    """A SEARCH that cannot be evaluated; `response(tag)` is the tagged reply: NO [BADCHARSET]
    for an unknown charset (RFC 9051 §6.4.4), BAD for keys nested beyond MAX_DEPTH."""

    def __init__(self, text: str, *, code: str | None = None, bad: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.bad = bad

    def response(self, tag: str) -> bytes:
        status = b"BAD" if self.bad else b"NO"
        code = b"[%s] " % self.code.encode("ascii") if self.code else b""
        text = self.text.encode("ascii", "replace")
        return b"%s %s %s%s\r\n" % (tag.encode("ascii", "replace"), status, code, text)


# --------------------------------------------------------------------------- message text


class _Text:
    """The searchable text of one message, computed on first use and kept for its keys."""

    __slots__ = ("_body", "_data", "_header_text", "_headers", "_items", "_load", "_message")

    def __init__(self, load: Callable[[], bytes]) -> None:
        self._load = load
        self._data: bytes | None = None
        self._message: email.message.Message | None = None
        self._items: list[tuple[str, str]] | None = None
        self._headers: dict[str, list[str]] | None = None
        self._header_text: str | None = None
        self._body: str | None = None

    def data(self) -> bytes:
        if self._data is None:
            self._data = self._load()
        return self._data

    def message(self) -> email.message.Message:
        if self._message is None:
            try:
                self._message = email.message_from_bytes(self.data(), policy=email.policy.compat32)
            except Exception:  # the parser is lenient; this is a last resort for odd input
                self._message = email.message.Message()
        return self._message

    def items(self) -> list[tuple[str, str]]:
        """The top-level header fields as (name, decoded unfolded value)."""
        if self._items is None:
            self._items = _split_header(self.data())
        return self._items

    def headers(self) -> dict[str, list[str]]:
        """Lower-case field name -> case-folded values, in order."""
        if self._headers is None:
            self._headers = {}
            for name, value in self.items():
                self._headers.setdefault(name.strip().lower(), []).append(value.casefold())
        return self._headers

    def header_text(self) -> str:
        if self._header_text is None:
            self._header_text = "\n".join(f"{n}: {v}" for n, v in self.items()).casefold()
        return self._header_text

    def body(self) -> str:
        if self._body is None:
            try:
                self._body = _body_text(self.message()).casefold()
            except Exception:  # a last resort: the raw octets after the header
                data = self.data()
                blank = _BLANK_LINE.search(data)
                self._body = data[blank.end() if blank else 0 :].decode("latin-1").casefold()
        return self._body


# One header field: name, colon, value with its continuation lines (RFC 5322 §2.2, §2.2.3).
_MBOX_FROM = re.compile(rb"From [^:\s]*\s")
_FIELD = re.compile(rb"([^:\n]*+)(:?)([^\n]*+(?:\n[ \t][^\n]*+)*+)\n?")


def _split_header(data: bytes) -> list[tuple[str, str]]:
    """The top-level header fields of a message as (name, decoded unfolded value).

    A regex split rather than the `email` parser, which would parse the whole MIME tree: the
    header ends at the blank line or at the first line that is not a field (as in
    `homing.mail.mime`); a leading mbox "From " line is skipped.
    """
    pos = data.find(b"\n") + 1 if _MBOX_FROM.match(data) else 0
    out: list[tuple[str, str]] = []
    for m in _FIELD.finditer(data, pos):
        name = m.group(1).rstrip(b" \t")
        if not m.group(2) or not name or name[:1] in (b" ", b"\t"):
            break  # the blank line, a line that is no field, or the end
        value = m.group(3)
        text = value.decode("ascii") if value.isascii() else _decode_octets(value, "utf-8")
        out.append((name.decode("latin-1"), _decode_header(text)))
    return out


def _header_items(msg: email.message.Message) -> list[tuple[str, str]]:
    """A message's header fields as (name, decoded unfolded value)."""
    return [(str(name), _decode_header(value)) for name, value in msg.raw_items()]


_FOLD = re.compile(r"\r?\n(?=[ \t])|\r?\n\Z")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_SURROGATE = re.compile("[\udc80-\udcff]")


def _decode_header(value: object) -> str:
    """RFC 2047-decode a raw header value (RFC 5322 §2.2.3 unfolding first)."""
    if isinstance(value, email.header.Header):  # compat32 hands these out for odd bytes
        value = str(value)
    text = _FOLD.sub("", str(value))
    if _SURROGATE.search(text):  # raw 8-bit octets, kept by the parser as surrogateescapes
        text = _decode_octets(text.encode("ascii", "surrogateescape"), "utf-8")
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:  # unknown charset, bad octets for the charset: decode word by word
        try:
            pairs = email.header.decode_header(text)
        except Exception:
            return text
        return "".join(
            part if isinstance(part, str) else _decode_octets(part, charset or "us-ascii")
            for part, charset in pairs
        )


def _decode_octets(data: bytes, charset: str) -> str:
    """`data` in `charset`; if that fails, UTF-8; if that fails, Latin-1 (never raises)."""
    for candidate in (charset, "utf-8"):
        text = _try_decode(data, candidate)
        if text is not None:
            return text
    return data.decode("latin-1")


def _try_decode(data: bytes, charset: str) -> str | None:
    try:
        return data.decode(charset)
    except Exception:  # LookupError, UnicodeError, and odd errors from odd codecs
        return None


def _body_text(msg: email.message.Message) -> str:
    """The decoded text of a message body (see the module docstring), walked iteratively."""
    out: list[str] = []
    stack: list[tuple[email.message.Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        # One odd part (RFC 2231 surprises in compat32, codec errors) spoils only itself.
        with contextlib.suppress(Exception):
            _part_text(part, depth, stack, out)
    return "\n".join(out)


def _part_text(
    part: email.message.Message,
    depth: int,
    stack: list[tuple[email.message.Message, int]],
    out: list[str],
) -> None:
    if part.is_multipart():  # multipart, or message/rfc822 holding one message
        embedded = part.get_content_type() in ("message/rfc822", "message/global")
        children = part.get_payload()
        if depth >= MAX_DEPTH or not isinstance(children, list):
            return
        for child in reversed(children):
            if isinstance(child, email.message.Message):
                stack.append((child, depth + 1))
                if embedded:
                    out.append("\n".join(f"{n}: {v}" for n, v in _header_items(child)))
        return
    if part.get_content_maintype() != "text":
        return
    octets = part.get_payload(decode=True)
    if isinstance(octets, bytes):
        out.append(_decode_octets(octets, part.get_content_charset() or "us-ascii"))


def _no_text() -> bytes:
    raise AssertionError("a metadata-only search key asked for message text")


_NO_TEXT = _Text(_no_text)


# --------------------------------------------------------------------------- compiling

_Pred: TypeAlias = Callable[[SearchView, _Text], bool]
_CHEAP, _HEADER, _BODY = 0, 1, 2  # cost classes


def _true(view: SearchView, text: _Text) -> bool:
    return True


def _false(view: SearchView, text: _Text) -> bool:
    return False


_SYSTEM = {
    "ANSWERED": "\\Answered",
    "DELETED": "\\Deleted",
    "DRAFT": "\\Draft",
    "FLAGGED": "\\Flagged",
    "SEEN": "\\Seen",
    "RECENT": "\\Recent",
}


@dataclass(slots=True)
class _Context:
    max_seq: int
    max_uid: int
    saved: frozenset[int] | None
    charset: str
    now: float | None


def _compile(key: SearchKey, ctx: _Context, depth: int) -> tuple[_Pred, int]:
    """A predicate for `key` and its cost class."""
    if depth > MAX_DEPTH:
        raise SearchError("Search keys nested too deeply", bad=True)
    match key:
        case SearchFlag(name):
            return _flag(name), _CHEAP
        case SearchKeyword(keyword, negated):
            return _keyword(keyword, negated), _CHEAP
        case SearchSize(name, size):
            if name == "LARGER":
                return (lambda v, t: v.size > size), _CHEAP
            return (lambda v, t: v.size < size), _CHEAP
        case SearchDate(name, date) if not name.startswith("SENT"):
            return _internal_date(name, date), _CHEAP
        case SearchDate(name, date):
            return _sent_date(name[4:], date), _HEADER
        case SearchAge(name, seconds):
            if ctx.now is None:
                raise ValueError("OLDER / YOUNGER need evaluate(..., now=...)")
            limit = ctx.now - seconds
            if name == "OLDER":
                return (lambda v, t: v.internaldate <= limit), _CHEAP
            return (lambda v, t: v.internaldate > limit), _CHEAP
        case SearchSet(sequence, uid):
            if sequence.saved:  # RFC 5182 §2.1: "$" is the saved result, UID or not
                saved = ctx.saved or frozenset()
                return (lambda v, t: v.uid in saved), _CHEAP
            ranges = sequence.resolve(ctx.max_uid if uid else ctx.max_seq)
            return _in_ranges(ranges, uid), _CHEAP
        case SearchModSeq(modseq):
            return (lambda v, t: v.modseq >= modseq), _CHEAP
        case SearchString(name, value):
            needle = _needle(value, ctx.charset)
            if name == "BODY":
                return (lambda v, t: needle in t.body()), _BODY
            if name == "TEXT":
                return (lambda v, t: needle in t.header_text() or needle in t.body()), _BODY
            return _header(name.lower(), needle), _HEADER
        case SearchHeader(field, value):
            return _header(field.strip().lower(), _needle(value, ctx.charset)), _HEADER
        case SearchNot(inner):
            pred, cost = _compile(inner, ctx, depth + 1)
            if pred is _true:
                return _false, _CHEAP
            if pred is _false:
                return _true, _CHEAP
            return (lambda v, t: not pred(v, t)), cost
        case SearchOr(left, right):
            return _or(_compile(left, ctx, depth + 1), _compile(right, ctx, depth + 1))
        case SearchGroup(keys):
            return _and([_compile(k, ctx, depth + 1) for k in keys])
    raise TypeError(f"not a search key: {key!r}")


def _flag(name: str) -> _Pred:
    if name == "ALL":
        return _true
    if name == "NEW":  # RFC 3501 §6.4.4: RECENT UNSEEN
        return lambda v, t: "\\Recent" in v.flags and "\\Seen" not in v.flags
    if name == "OLD":  # NOT RECENT
        return lambda v, t: "\\Recent" not in v.flags
    negated = name.startswith("UN")
    flag = _SYSTEM[name[2:] if negated else name]
    if negated:
        return lambda v, t: flag not in v.flags
    return lambda v, t: flag in v.flags


def _keyword(keyword: str, negated: bool) -> _Pred:
    """KEYWORD / UNKEYWORD: flag names compare case-insensitively (RFC 9051 §2.3.2)."""
    low = keyword.lower()

    def has(flags: frozenset[str]) -> bool:
        return keyword in flags or any(f.lower() == low for f in flags)

    if negated:
        return lambda v, t: not has(v.flags)
    return lambda v, t: has(v.flags)


def _day_start(date: dt.date) -> int:
    return calendar.timegm(date.timetuple())


def _internal_date(name: str, date: dt.date) -> _Pred:
    """BEFORE / ON / SINCE on the internal date's UTC day (RFC 9051 §6.4.4)."""
    start = _day_start(date)
    end = start + 86400
    if name == "BEFORE":
        return lambda v, t: v.internaldate < start
    if name == "ON":
        return lambda v, t: start <= v.internaldate < end
    return lambda v, t: v.internaldate >= start


def _sent_date(name: str, date: dt.date) -> _Pred:
    """SENTBEFORE / SENTON / SENTSINCE: the day written in Date:, timezone disregarded."""

    def sent(t: _Text) -> dt.date | None:
        value = next((v for n, v in t.items() if n.strip().lower() == "date"), None)
        return None if value is None else _parse_day(value)

    if name == "BEFORE":
        return lambda v, t: (d := sent(t)) is not None and d < date
    if name == "ON":
        return lambda v, t: sent(t) == date
    return lambda v, t: (d := sent(t)) is not None and d >= date


def _parse_day(value: str) -> dt.date | None:
    try:
        parsed = email.utils.parsedate_tz(_FOLD.sub("", value))
        return None if parsed is None else dt.date(parsed[0], parsed[1], parsed[2])
    except (ValueError, TypeError, OverflowError, IndexError):
        return None


def _in_ranges(ranges: list[tuple[int, int]], uid: bool) -> _Pred:
    if not ranges:
        return _false
    if len(ranges) == 1:
        lo, hi = ranges[0]
        if uid:
            return lambda v, t: lo <= v.uid <= hi
        return lambda v, t: lo <= v.seq <= hi
    starts = [lo for lo, _ in ranges]
    ends = [hi for _, hi in ranges]

    def inside(n: int) -> bool:
        i = bisect.bisect_right(starts, n) - 1
        return i >= 0 and n <= ends[i]

    if uid:
        return lambda v, t: inside(v.uid)
    return lambda v, t: inside(v.seq)


def _needle(value: bytes, charset: str) -> str:
    """The search string as text (the charset was checked by `evaluate`)."""
    try:
        text = value.decode(charset, "replace")
    except Exception:  # a codec without "replace" support
        text = value.decode("latin-1")
    return text.casefold()


def _header(name: str, needle: str) -> _Pred:
    """FROM / TO / CC / BCC / SUBJECT / HEADER: substring of any occurrence of the field."""
    if not needle:  # RFC 9051 §6.4.4: HEADER name "" matches every message with the field
        return lambda v, t: name in t.headers()
    return lambda v, t: any(needle in value for value in t.headers().get(name, ()))


def _or(left: tuple[_Pred, int], right: tuple[_Pred, int]) -> tuple[_Pred, int]:
    (a, cost_a), (b, cost_b) = sorted((left, right), key=lambda pc: pc[1])
    if a is _true or b is _true:
        return _true, _CHEAP
    if a is _false:
        return b, cost_b
    if b is _false:
        return a, cost_a
    return (lambda v, t: a(v, t) or b(v, t)), cost_b


def _and(compiled: list[tuple[_Pred, int]]) -> tuple[_Pred, int]:
    if any(pred is _false for pred, _ in compiled):
        return _false, _CHEAP
    preds = sorted((pc for pc in compiled if pc[0] is not _true), key=lambda pc: pc[1])
    if not preds:
        return _true, _CHEAP
    cost = preds[-1][1]
    if len(preds) == 1:
        return preds[0][0], cost
    if len(preds) == 2:
        a, b = preds[0][0], preds[1][0]
        return (lambda v, t: a(v, t) and b(v, t)), cost
    chain = [pred for pred, _ in preds]
    return (lambda v, t: all(pred(v, t) for pred in chain)), cost


# --------------------------------------------------------------------------- public API


def evaluate(
    key: SearchKey,
    views: Sequence[SearchView],
    *,
    max_seq: int,
    max_uid: int,
    saved: frozenset[int] | None = None,
    charset: str | None = "UTF-8",
    now: float | None = None,
) -> list[int]:
    """The sequence numbers of the views matching `key`, in the order of `views`.

    `views` are the messages to consider (normally all of the mailbox, in sequence order);
    `max_seq` and `max_uid` are what "*" stands for in message-number and UID sets. `saved`
    holds the UIDs of the saved result ("$", RFC 5182). `charset` is the command's CHARSET
    (none in the command means US-ASCII; UTF-8, a superset, is used for None). `now`
    (seconds since the epoch) is needed only by OLDER / YOUNGER. Several criteria of one
    command are passed as one `SearchGroup`.

    Raises SearchError for an unknown charset (NO [BADCHARSET]) or keys nested beyond
    MAX_DEPTH (BAD). Exceptions from `load` propagate.
    """
    charset = charset or "UTF-8"
    try:
        b"x".decode(charset, "replace")  # LookupError: unknown charset or not a text codec
    except LookupError:
        raise SearchError("Unsupported charset", code="BADCHARSET") from None
    ctx = _Context(max_seq, max_uid, saved, charset, now)
    pred, cost = _compile(key, ctx, 0)
    if pred is _true:
        return [v.seq for v in views]
    if pred is _false:
        return []
    if cost == _CHEAP:
        return [v.seq for v in views if pred(v, _NO_TEXT)]
    return [v.seq for v in views if pred(v, _Text(v.load))]


def has_modseq(key: SearchKey) -> bool:
    """Whether `key` uses MODSEQ anywhere: the response then carries the highest MODSEQ of
    the matches (RFC 7162 §3.1.5), and CONDSTORE is enabled by the command (§3.1)."""
    stack = [key]
    while stack:
        match stack.pop():
            case SearchModSeq():
                return True
            case SearchNot(inner):
                stack.append(inner)
            case SearchOr(left, right):
                stack += (left, right)
            case SearchGroup(keys):
                stack += keys
    return False


def saved_result(numbers: Sequence[int], options: ReturnOptions) -> frozenset[int]:
    """What RETURN (SAVE ...) saves from the matching `numbers` (UIDs): all of them, or only
    the MIN and/or MAX when those come without ALL or COUNT (RFC 5182 §2.4)."""
    opts = {o.upper() for o in options}
    if not numbers or opts & {"ALL", "COUNT"} or not opts & {"MIN", "MAX"}:
        return frozenset(numbers)
    picked = set()
    if "MIN" in opts:
        picked.add(min(numbers))
    if "MAX" in opts:
        picked.add(max(numbers))
    return frozenset(picked)


def sequence_set(numbers: Sequence[int]) -> bytes:
    """Numbers as a compact sequence set, ascending ("1:3,9"); b"" for none."""
    out: list[bytes] = []
    ordered = sorted(set(numbers))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(b"%d" % ordered[i] if i == j else b"%d:%d" % (ordered[i], ordered[j]))
        i = j + 1
    return b",".join(out)


def format_search(
    seqs: Sequence[int],
    *,
    esearch: ReturnOptions | None,
    tag: str,
    uid: bool,
    modseq: int | None,
) -> bytes:
    """The untagged response to a SEARCH whose matches are `seqs` (UIDs for UID SEARCH).

    `esearch` None gives the IMAP4rev1 form, "* SEARCH 1 2 3" (RFC 3501 §7.2.5), with
    " (MODSEQ n)" when `modseq` is given and something matched (RFC 7162 §3.1.5). Otherwise it
    is the RETURN options and the answer is ESEARCH (RFC 4731 §3.1, RFC 9051 §7.3.4):
    '* ESEARCH (TAG "a1") UID MIN 1 MAX 9 COUNT 3 ALL 1:3,9', ALL as a compressed sequence set,
    MIN / MAX / ALL left out when nothing matched, "MODSEQ n" last. No options means ALL
    (IMAP4rev2 sessions pass () for a SEARCH without RETURN: rev2 has no SEARCH response);
    SAVE alone gives no response at all (b"", RFC 5182 §2.1). `modseq` is the value to report:
    the highest MODSEQ of the matches (of the ones returned, for MIN / MAX alone).
    """
    if esearch is None:
        out = b"* SEARCH" + b"".join(b" %d" % n for n in seqs)
        if modseq is not None and seqs:
            out += b" (MODSEQ %d)" % modseq
        return out + b"\r\n"
    opts = {o.upper() for o in esearch} or {"ALL"}
    if opts == {"SAVE"}:
        return b""
    parts = [b"* ESEARCH (TAG " + string(tag.encode("ascii", "replace")) + b")"]
    if uid:
        parts.append(b"UID")
    if seqs:
        if "MIN" in opts:
            parts.append(b"MIN %d" % min(seqs))
        if "MAX" in opts:
            parts.append(b"MAX %d" % max(seqs))
    if "COUNT" in opts:
        parts.append(b"COUNT %d" % len(set(seqs)))
    if seqs and "ALL" in opts:
        parts.append(b"ALL " + sequence_set(seqs))
    if modseq is not None and seqs:
        parts.append(b"MODSEQ %d" % modseq)
    return b" ".join(parts) + b"\r\n"
