"""SEARCH evaluation and SEARCH / ESEARCH responses (RFC 9051 §6.4.4, §7.3.4; RFC 3501
§6.4.4; RFC 4731 ESEARCH; RFC 5182 SEARCHRES; RFC 7162 §3.1.5 MODSEQ; RFC 5032 WITHIN).

Theory of operation
-------------------
`evaluate` compiles the search key once into a predicate over one message, then runs it over
the session's `SearchView`s in sequence order. Each key has a cost class: metadata keys (flags,
keywords, sizes, internal dates, sequence and UID sets, MODSEQ, "$") cost nothing; header keys
need the message loaded and its header scanned; BODY and TEXT need the text parts decoded.
AND lists are reordered cheapest first and OR tries its cheaper side first, both
short-circuiting, so `SEARCH UNSEEN` never loads a message and `SEARCH UNSEEN SUBJECT x` loads
only the unseen ones. A message is loaded (`SearchView.load`) at most once per evaluation and
dropped before the next one, so memory stays bounded whatever the mailbox size.

Text is never materialised whole: no `email` parse, no object per header field. A header key
scans the raw header octets with a regex for the field it names (C speed, no allocation per
other field) and decodes only the values found. TEXT and BODY turn the header and each text
part into text piece by piece (`_CHUNK` octets, cut at line boundaries where there are any):
unfold, decode, case-fold, search, drop, keeping only the last len(needle) - 1 characters to
find a match that straddles two pieces. The MIME structure is the part map computed at
delivery (`homing.mail.mime`), which the session may hand over with the bytes
(`StoredMessage`); without it a single-part message needs no parse at all and any other is
cut by `mime.parse_message`. So memory stays the message bytes plus a few pieces, and CPU
stays linear in the message size, whatever the shape: 20 MB of header fields, one 20 MB line,
100,000 parts.

Nesting is bounded: the parser caps it at `grammar.MAX_NESTING`; keys built by other code
deeper than `MAX_DEPTH` raise SearchError (BAD) instead of exhausting the stack.

Matching rules (RFC 9051 §6.4.4 leaves them to the server; mostly as Dovecot without FTS):

* Strings are compared as Unicode text, case-insensitively (str.casefold), as substrings.
  The search string is decoded from the command's CHARSET; an unknown charset raises
  SearchError with the BADCHARSET code. An empty string matches every message (BODY, TEXT)
  or every message that has the field (header keys; RFC 9051 §6.4.4 for HEADER).
* The header is what `homing.mail.mime` takes for one (and FETCH BODY[HEADER] returns): up
  to the first empty line or the first line that is neither a field, a continuation nor an
  mbox "From " line. The trace fields the store prepends (Return-Path, Delivered-To,
  Received) are part of it.
* Header keys (FROM, TO, CC, BCC, SUBJECT, HEADER) look at every occurrence of the field in
  the top-level header (names compare case-insensitively; white space before the colon is
  allowed, RFC 5322 §4.5.3), each value unfolded (RFC 5322 §2.2.3: line breaks removed,
  white space kept) and RFC 2047-decoded; raw 8-bit octets are read as UTF-8, else Latin-1
  (per line). A match lies within one value.
* BODY searches the text of the body: every text/* leaf part, transfer-decoded and
  converted from its charset, plus the header of every embedded message/rfc822 (or
  message/global) part, decoded as the top-level one. A match lies within one part (or one
  embedded header). In detail: no or an unparsable Content-Type means text/plain;
  Content-Type and Content-Transfer-Encoding are read from their first occurrence's first
  4 KiB. Base64 is decoded leniently, as FETCH BINARY does (octets outside the alphabet
  skipped, stopping at the first "="), quoted-printable as usual, other encodings are taken
  as they are. US-ASCII and no charset are read as UTF-8, UTF-16 and UTF-32 without a byte
  order mark as big-endian (RFC 2781 §4.3); a part that is not valid in its charset, or
  names an unknown one, is read as UTF-8, else Latin-1 (the whole part, as if decoded in one
  go). Other parts (images, archives) and parts beyond the MIME parser's caps
  (`mime.MAX_DEPTH` levels, `mime.MAX_PARTS` parts) are not searched.
* TEXT searches the top-level header, as its lines "name: value" unfolded and decoded as
  above and joined by LF, and the body text as BODY does.
* A header field longer than `_CHUNK` (256 KiB) is decoded in pieces cut at folding white
  space (else at a blank, else anywhere outside a UTF-8 sequence): encoded words on both
  sides of a cut are decoded separately, and the 8-bit choice is made per piece.
* Dates: BEFORE, ON and SINCE compare the internal date's day in UTC (the server's timezone
  for this purpose). SENTBEFORE, SENTON and SENTSINCE compare the day written in the first
  Date: field (its first 4 KiB), disregarding time and timezone (RFC 9051 §6.4.4); a message
  without a parsable Date: field matches none of them (and so matches NOT SENTON ...).
* OLDER / YOUNGER (RFC 5032) compare the internal date with `now`, which the caller passes:
  OLDER n matches internaldate <= now - n, YOUNGER n the others.
* MODSEQ n (RFC 7162 §3.1.5) matches messages whose MODSEQ is >= n; the per-flag entry name
  is accepted and ignored (the message MODSEQ bounds every entry's, as the RFC allows).
* "$" (RFC 5182) is the saved result, passed as the set of UIDs it holds; none saved: empty.
* Garbage never raises: undecodable text is read as Latin-1, a damaged part map is replaced
  by a parse, broken MIME is cut as `homing.mail.mime` cuts it.
"""

from __future__ import annotations

import binascii
import bisect
import calendar
import codecs
import datetime as dt
import email.utils
import itertools
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, TypeAlias

from homing.mail.imapfmt import string
from homing.mail.mime import PartSpan, decode_partmap, parse_message
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
    "StoredMessage",
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


class StoredMessage(Protocol):
    """A message as the store hands it out (`homing.store.FetchRow` is one): the stored
    bytes are `prefix + body` (None reads as b""); `partmap` is the part map computed at
    delivery (`mime.encode_partmap`, offsets relative to `body`), b"" if not read. A missing
    or damaged part map only costs a parse."""

    @property
    def prefix(self) -> bytes | None: ...

    @property
    def body(self) -> bytes | None: ...

    @property
    def partmap(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SearchView:
    """What the session gives per message. `load` returns the whole stored message, as its
    bytes (prefix + body) or as a `StoredMessage` (which spares a parse of multipart
    messages); it is called at most once per `evaluate`, and only for keys that need text."""

    seq: int
    uid: int
    flags: frozenset[str]
    internaldate: float
    size: int
    modseq: int
    load: Callable[[], bytes | StoredMessage]


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

#: Octets turned into text at a time (see the module docstring). Read at call time, so tests
#: can make it tiny to exercise the piece boundaries.
_CHUNK = 256 * 1024
#: Octets of a Content-Type, Content-Transfer-Encoding or Date value that are looked at.
_FIELD_CAP = 4096

#: (buffer, start, end): a range of the message bytes.
_Region: TypeAlias = tuple[bytes, int, int]
#: A field name as two regexes: at the region's first line, and after a LF (see `_fields`).
_FieldPattern: TypeAlias = tuple[re.Pattern[bytes], re.Pattern[bytes]]

_NAME_CHARS = rb"[\x21-\x39\x3b-\x7e]"  # RFC 5322 §3.6.8 ftext
_LINE_START = re.compile(rb"\n(?=[^ \t])")  # a line that is no continuation starts here
_FIELD_NAME = re.compile(_NAME_CHARS + rb"+")
# What follows a field name up to its value. The value itself runs to the next line start
# that is no continuation (`_LINE_START`), found by a second search: a regex repeat over the
# continuation lines would keep engine state per line (megabytes for a field of many lines).
_COLON = rb"[ \t]*+:[ \t]*+"


@lru_cache(maxsize=256)
def _field_pattern(name: str) -> _FieldPattern | None:
    """Regexes finding the field `name` (case-insensitive) in raw header octets; None if
    `name` cannot be a field name. Explicit case classes rather than re.IGNORECASE keep the
    literal LF prefix, so the engine skips between line starts with memchr."""
    try:
        raw = name.strip().encode("ascii")
    except UnicodeEncodeError:
        return None
    if _FIELD_NAME.fullmatch(raw) is None:
        return None
    cased = b"".join(
        b"[%c%c]" % (c & 0xDF, c | 0x20) if 0x61 <= c | 0x20 <= 0x7A else re.escape(bytes([c]))
        for c in raw
    )
    return re.compile(cased + _COLON), re.compile(rb"\n" + cased + _COLON)


def _known(name: str) -> _FieldPattern:
    pattern = _field_pattern(name)
    assert pattern is not None
    return pattern


def _fields(pattern: _FieldPattern, region: _Region) -> Iterator[tuple[int, int]]:
    """The value ranges of every occurrence of a field in a header region, in order: after
    the colon and its white space, to the end of the field's last line (RFC 5322 §2.2.3),
    without the line break."""
    buf, start, end = region
    first, rest = pattern
    m = first.match(buf, start, end)
    if m is not None:
        yield _value_range(buf, m.end(), end)
    for m in rest.finditer(buf, start, end):
        yield _value_range(buf, m.end(), end)


def _value_range(buf: bytes, start: int, end: int) -> tuple[int, int]:
    line = _LINE_START.search(buf, start, end)
    stop = end if line is None else line.start()
    if stop > start and buf[stop - 1] == 0x0A:  # the region's last line break
        stop -= 1
    if stop > start and buf[stop - 1] == 0x0D:
        stop -= 1
    return start, stop


def _capped(buf: bytes, start: int, end: int) -> bytes:
    """A field value's first `_FIELD_CAP` octets, unfolded and trimmed."""
    value = buf[start : min(end, start + _FIELD_CAP)]
    if b"\n" in value:
        value = value.replace(b"\r", b"").replace(b"\n", b"")
    return value.strip(b" \t")


# The header block, by the rules of `homing.mail.mime` (see `_header_end`).
_BLANK_LINE = re.compile(rb"\n\r?\n")
_FIELD_LINE = re.compile(_NAME_CHARS + rb"*+[ \t]*+:|[ \t]|From ")
_NOT_A_FIELD_LINE = re.compile(rb"\n(?!" + _NAME_CHARS + rb"*+[ \t]*+:|[ \t]|From )")


def _header_end(data: bytes) -> int:
    """Where the body of message `data` starts: `mime.parse_message(data).parts[0]
    .body_start`, without the parse. After the first empty line, or at the first line that is
    neither a field, a continuation nor an mbox "From " line; no such line: the end."""
    size = len(data)
    if not size or data[0] == 0x0A:
        return min(size, 1)
    if data.startswith(b"\r\n"):
        return 2
    if _FIELD_LINE.match(data) is None:
        return 0
    blank = _BLANK_LINE.search(data)
    stop, body = (size, size) if blank is None else (blank.start(), blank.end())
    bad = _NOT_A_FIELD_LINE.search(data, 0, stop)
    return body if bad is None else bad.start() + 1


# --------------------------------------------------------------------------- header text

_FOLD_START = re.compile(rb"\n[ \t]")  # a literal first octet: the engine skips with memchr


def _pieces(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """[start, end) cut into ranges of about `_CHUNK` octets (at most twice that), at line
    starts where possible (see `_cut`)."""
    chunk = _CHUNK
    while end - start > chunk:
        cut = _cut(buf, start + chunk, min(end, start + 2 * chunk))
        yield start, cut
        start = cut
    if end > start:
        yield start, end


def _cut(buf: bytes, pos: int, limit: int) -> int:
    """A cut point in [pos, limit) of header octets: a line start (not a continuation), else
    the line break of a fold, else a blank, else `pos` moved back off a UTF-8 sequence."""
    m = _LINE_START.search(buf, pos, limit)
    if m is not None:
        return m.end()
    m = _FOLD_START.search(buf, pos, limit)
    if m is not None:
        cut = m.start()
        return cut - 1 if buf[cut - 1] == 0x0D else cut  # keep a CR with its LF
    blanks = [i for i in (buf.find(b" ", pos, limit), buf.find(b"\t", pos, limit)) if i >= 0]
    if blanks:
        return min(blanks)
    cut = pos
    while cut > pos - 3 and 0x80 <= buf[cut] < 0xC0:
        cut -= 1
    return cut


def _header_text(region: _Region) -> Iterator[str]:
    """The case-folded text of raw header octets (a header block or one field value), piece
    by piece: unfolded, lines ending in LF, 8-bit lines read as UTF-8 else Latin-1, RFC 2047
    encoded words decoded."""
    buf, start, end = region
    for s, e in _pieces(buf, start, end):
        yield _piece_text(buf[s:e])


def _piece_text(raw: bytes) -> str:
    """One piece of `_header_text`."""
    if b"\r\n" in raw:
        raw = raw.replace(b"\r\n", b"\n")
    # RFC 5322 §2.2.3 unfolding: the line break goes, the WSP stays (bytes.replace rather
    # than a regex, which would build a list of every stretch between two folds).
    if b"\n " in raw:
        raw = raw.replace(b"\n ", b" ")
    if b"\n\t" in raw:
        raw = raw.replace(b"\n\t", b"\t")
    if raw.isascii() and b"=?" not in raw:
        return raw.decode("ascii").lower()  # casefold() of ASCII
    return "\n".join(_decode_line(line) for line in raw.split(b"\n")).casefold()


def _decode_line(line: bytes) -> str:
    text = line.decode("ascii") if line.isascii() else _decode_octets(line, "utf-8")
    return _decode_words(text) if "=?" in text else text


# RFC 2047 §2 encoded-word. Runs stop at "?" or white space, so no input makes the search
# scan a stretch of the line more than a few times.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")


def _decode_words(text: str) -> str:
    """Decode the RFC 2047 encoded words of a header line. White space between adjacent
    encoded words goes (§6.2); adjacent words in one charset are decoded together (a
    character split across words survives); a word whose octets are not in its charset
    (or whose charset is unknown) is read as UTF-8, else Latin-1; a word that does not
    decode at all stays as it is."""
    out: list[str] = []
    pending: list[bytes] = []  # the octets of adjacent words in `charset`
    charset = ""
    pos = 0
    after_word = False
    for m in _ENCODED_WORD.finditer(text):
        between = text[pos : m.start()]
        pos = m.end()
        if not after_word or between.strip(" \t"):
            _flush_words(out, pending, charset)
            out.append(between)
        octets = _word_octets(m.group(2), m.group(3))
        if octets is None:
            _flush_words(out, pending, charset)
            out.append(m.group())
            after_word = False
            continue
        word_charset = m.group(1).partition("*")[0].lower()  # RFC 2231 §5: charset*lang
        if word_charset != charset:
            _flush_words(out, pending, charset)
            charset = word_charset
        pending.append(octets)
        after_word = True
    _flush_words(out, pending, charset)
    out.append(text[pos:])
    return "".join(out)


def _word_octets(encoding: str, text: str) -> bytes | None:
    try:
        if encoding in "Bb":  # lenient: padding added, characters outside the alphabet skipped
            octets = binascii.a2b_base64(text + "=" * (-len(text) % 4))
            return octets if octets or not text else None
        return binascii.a2b_qp(text, header=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        return None


def _flush_words(out: list[str], pending: list[bytes], charset: str) -> None:
    if pending:
        out.append(_decode_octets(b"".join(pending), charset or "us-ascii"))
        pending.clear()


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


class _Finder:
    """Finds a needle in text fed piece by piece, also across two pieces."""

    __slots__ = ("_keep", "_needle", "_tail")

    def __init__(self, needle: str) -> None:
        self._needle = needle
        self._keep = len(needle) - 1
        self._tail = ""

    def feed(self, text: str) -> bool:
        if self._tail:
            text = self._tail + text
        if self._needle in text:
            return True
        if self._keep:
            self._tail = text[-self._keep :]
        return False


def _find(needle: str, pieces: Iterable[str]) -> bool:
    finder = _Finder(needle)
    return any(finder.feed(piece) for piece in pieces)


# --------------------------------------------------------------------------- body text

_TOKEN = rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"  # RFC 2045 §5.1
_MEDIA_TYPE = re.compile(rb"[ \t]*(" + _TOKEN + rb")[ \t]*/[ \t]*" + _TOKEN + rb"[ \t]*(?:;|\Z)")
_CHARSET = re.compile(rb';[ \t]*charset[ \t]*=[ \t]*(?:"([^"]*)"|([^;\s"]*))', re.IGNORECASE)
_ENCODING = re.compile(_TOKEN)
_CONTENT_TYPE = _known("Content-Type")
_TRANSFER_ENCODING = _known("Content-Transfer-Encoding")
_DATE = _known("Date")
_CONTAINERS = (b"multipart", b"message")


def _first(pattern: _FieldPattern, region: _Region) -> bytes | None:
    """The capped value of a field's first occurrence in `region` (the first one counts, as
    in `homing.mail.mime`), or None."""
    for start, end in _fields(pattern, region):
        return _capped(region[0], start, end)
    return None


# An RFC 5322 §3.2.2 comment holding no other (nested ones go from the inside out).
_COMMENT = re.compile(rb"\((?:[^()\\]++|\\.)*+\)", re.DOTALL)


def _strip_comments(value: bytes) -> bytes:
    """Comments replaced by a space, three levels deep (deeper ones stay: the type is then
    unparsable, so text/plain). Quoted strings are not told apart: this is for the type and
    the charset, which hold no parentheses."""
    for _ in range(3):
        if b"(" not in value:
            break
        value = _COMMENT.sub(b" ", value)
    return value


def _is_container(content_type: bytes | None) -> bool:
    """Whether a top-level Content-Type may make the message more than one leaf part (then
    the MIME parser cuts it; erring towards yes only costs that parse)."""
    if content_type is None:
        return False
    lower = content_type.lower()
    return any(name in lower for name in _CONTAINERS)


def _mime_info(region: _Region) -> tuple[bool, str, bytes]:
    """(is text/*, charset, transfer encoding) of a leaf part from its MIME header (RFC 2045
    §5.2 defaults: text/plain, US-ASCII, 7bit)."""
    text, charset = True, ""
    content_type = _first(_CONTENT_TYPE, region)
    if content_type is not None:
        if b"(" in content_type:
            content_type = _strip_comments(content_type)
        m = _MEDIA_TYPE.match(content_type)
        if m is not None:  # unparsable: text/plain, as in homing.mail.mime
            text = m.group(1).lower() == b"text"
            c = _CHARSET.search(content_type, m.end() - 1)
            if c is not None:
                charset = (c.group(1) or c.group(2) or b"").decode("latin-1").strip()[:64]
    encoding = _first(_TRANSFER_ENCODING, region) or b""
    e = _ENCODING.search(encoding)
    return text, charset.lower(), e.group().lower() if e is not None else b"7bit"


@lru_cache(maxsize=64)
def _codecs(charset: str) -> tuple[str, ...]:
    """The codecs to try on a part in `charset`, in order: it, UTF-8, Latin-1 (known text
    codecs only, each once; US-ASCII becomes UTF-8, its superset)."""
    names: list[str] = []
    for candidate in (charset, "utf-8", "latin-1"):
        name = _text_codec(candidate)
        if name is None:
            continue
        name = "utf-8" if name == "ascii" else name
        if name not in names:
            names.append(name)
    return tuple(names)


def _text_codec(charset: str) -> str | None:
    """The canonical name of a known text codec, else None (base64, rot13 ... are codecs
    but not text encodings: bytes.decode refuses them with LookupError)."""
    try:
        name = codecs.lookup(charset).name
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        return None
    try:
        b"x".decode(name, "replace")
    except LookupError:
        return None
    except Exception:  # a text codec that fails on anything: tried, then the next one
        return name
    return name


def _part_matches(needle: str, buf: bytes, header_start: int, start: int, end: int) -> bool:
    """Whether a leaf part's text contains `needle` (nothing if it is not text/*)."""
    text, charset, encoding = _mime_info((buf, header_start, start))
    if not text:
        return False
    if end - start <= _CHUNK:  # the common case: decoded whole, in one go
        octets = b"".join(_transfer_decoded(buf, start, end, encoding))
        for codec in _codecs(charset):
            decoded = _try_decode(octets, _byte_order(codec, octets))
            if decoded is not None:
                return needle in decoded.casefold()
        return False  # not reached: Latin-1 decodes anything
    for codec in _codecs(charset):
        found = _decoded_find(needle, _transfer_decoded(buf, start, end, encoding), codec)
        if found is not None:
            return found
    return False


def _decoded_find(needle: str, chunks: Iterable[bytes], codec: str) -> bool | None:
    """Whether the text of `chunks` in `codec` contains `needle`; None if they are not valid
    in it. After a match the rest is still decoded (not searched): a part that turns out
    invalid is then read with the next codec, as if it had been decoded whole."""
    finder = _Finder(needle)
    found = False
    pending = iter(chunks)
    head = b""
    for chunk in pending:  # enough octets to see a byte order mark
        head += chunk
        if len(head) >= 4:
            break
    try:
        decoder = codecs.getincrementaldecoder(_byte_order(codec, head))()
        for chunk in itertools.chain((head,), pending):
            text = decoder.decode(chunk)
            if not found and text:
                found = finder.feed(text.casefold())
                if found and codec == "iso8859-1":  # every octet is valid: done
                    return True
        decoder.decode(b"", True)  # an incomplete sequence at the end is an error too
    except Exception:  # UnicodeDecodeError, and odd errors from odd codecs
        return None
    return found


_BYTE_ORDER_MARKS = {
    "utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE),
    "utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),
}


def _byte_order(codec: str, head: bytes) -> str:
    """UTF-16 or UTF-32 text that does not start with a byte order mark is big-endian (RFC
    2781 §4.3; Python would take the machine's order, or refuse it when incremental)."""
    marks = _BYTE_ORDER_MARKS.get(codec)
    return codec + "-be" if marks is not None and not head.startswith(marks) else codec


def _transfer_decoded(buf: bytes, start: int, end: int, encoding: bytes) -> Iterator[bytes]:
    """A part body's octets without their transfer encoding (RFC 2045 §6), in chunks."""
    if encoding == b"base64":
        return _base64_chunks(buf, start, end)
    if encoding == b"quoted-printable":
        return _qp_chunks(buf, start, end)
    return _slices(buf, start, end)


def _slices(buf: bytes, start: int, end: int) -> Iterator[bytes]:
    chunk = _CHUNK
    for pos in range(start, end, chunk):
        yield buf[pos : min(pos + chunk, end)]


_NOT_BASE64 = bytes(c for c in range(256) if not re.fullmatch(rb"[A-Za-z0-9+/]", bytes([c])))


def _base64_chunks(buf: bytes, start: int, end: int) -> Iterator[bytes]:
    """Lenient base64 (RFC 2045 §6.8), as FETCH BINARY: characters outside the alphabet are
    skipped, decoding stops at the first "=", a truncated last group decodes as far as it
    goes. Whole 4-character groups are decoded per chunk, the rest carried over."""
    carry = b""
    for raw in _slices(buf, start, end):
        stop = raw.find(b"=")
        clean = carry + (raw if stop < 0 else raw[:stop]).translate(None, _NOT_BASE64)
        usable = len(clean) - len(clean) % 4
        carry = clean[usable:]
        if usable:
            yield binascii.a2b_base64(clean[:usable])
        if stop >= 0:
            break
    if len(carry) >= 2:  # 2 or 3 characters carry 1 or 2 octets
        yield binascii.a2b_base64(carry + b"=" * (4 - len(carry)))


def _qp_chunks(buf: bytes, start: int, end: int) -> Iterator[bytes]:
    """Quoted-printable (RFC 2045 §6.7), decoded in chunks cut after a LF, else before an
    "=" escape that would straddle the cut."""
    chunk = _CHUNK
    while end - start > chunk:
        pos = start + chunk
        lf = buf.find(b"\n", pos, min(end, pos + chunk))
        if lf >= 0:
            cut = lf + 1
        else:
            eq = buf.rfind(b"=", pos - 2, pos)
            cut = eq if eq > start else pos
        yield binascii.a2b_qp(buf[start:cut])
        start = cut
    if end > start:
        yield binascii.a2b_qp(buf[start:end])


# --------------------------------------------------------------------------- one message

_Leaf: TypeAlias = tuple[int, int, int]  # header_start, body_start, end (of the body)


class _Message:
    """One message for the keys of one evaluation: loaded on first use, its layout (header
    end, text leaves, embedded headers) computed once; its text never kept."""

    __slots__ = ("_body", "_embedded", "_header_end", "_leaves", "_load", "_parts", "_prefix")

    def __init__(self, load: Callable[[], bytes | StoredMessage]) -> None:
        self._load: Callable[[], bytes | StoredMessage] | None = load
        self._prefix = b""
        self._body = b""
        self._parts: tuple[PartSpan, ...] | None = None
        self._header_end = -1
        self._leaves: list[_Leaf] | None = None
        self._embedded: list[tuple[int, int]] = []

    def _fetch(self) -> None:
        load = self._load
        if load is None:
            return
        self._load = None
        loaded = load()
        if isinstance(loaded, bytes):
            self._body = loaded
            return
        self._prefix = loaded.prefix or b""
        self._body = loaded.body or b""
        if loaded.partmap:
            try:
                parts = decode_partmap(loaded.partmap)
            except ValueError:  # damaged: parse again when the structure is needed
                return
            if parts and parts[0].section == "":
                self._parts = parts

    def header(self) -> list[_Region]:
        """The top-level header: the stored trace fields, then the message's own."""
        self._fetch()
        if self._header_end < 0:
            parts = self._parts
            self._header_end = (
                min(parts[0].body_start, len(self._body)) if parts else _header_end(self._body)
            )
        own = (self._body, 0, self._header_end)
        return [(self._prefix, 0, len(self._prefix)), own] if self._prefix else [own]

    def field_values(self, pattern: _FieldPattern) -> Iterator[_Region]:
        """Every occurrence of a field in the top-level header, as its value's range."""
        for region in self.header():
            for start, end in _fields(pattern, region):
                yield region[0], start, end

    def has_field(self, pattern: _FieldPattern) -> bool:
        return next(self.field_values(pattern), None) is not None

    def field_matches(self, pattern: _FieldPattern, needle: str) -> bool:
        """Whether some value of a field contains `needle`. Values are decoded in batches of
        about `_CHUNK` octets joined by LF: that makes no fold, so each decodes as it would
        alone, and a needle without LF cannot match across two of them. A million tiny
        fields cost a million regex matches, not a million decodes."""
        if "\n" in needle:
            return any(_find(needle, _header_text(value)) for value in self.field_values(pattern))
        chunk = _CHUNK
        batch: list[bytes] = []
        size = 0
        for region in self.header():
            buf = region[0]
            for start, end in _fields(pattern, region):
                if end - start > chunk:
                    if _find(needle, _header_text((buf, start, end))):
                        return True
                    continue
                batch.append(buf[start:end])
                size += end - start + 64  # and the object's own size: tiny values add up
                if size >= chunk:
                    if needle in _piece_text(b"\n".join(batch)):
                        return True
                    batch.clear()
                    size = 0
        return bool(batch) and needle in _piece_text(b"\n".join(batch))

    def header_matches(self, needle: str) -> bool:
        return _find(needle, itertools.chain.from_iterable(map(_header_text, self.header())))

    def body_matches(self, needle: str) -> bool:
        leaves = self._layout()
        body = self._body
        return any(_find(needle, _header_text((body, s, e))) for s, e in self._embedded) or any(
            _part_matches(needle, body, *leaf) for leaf in leaves
        )

    def sent_day(self) -> dt.date | None:
        """The day written in the first Date: field (None: no field, or not a date)."""
        for buf, start, end in self.field_values(_DATE):
            return _parse_day(_capped(buf, start, end).decode("latin-1"))
        return None

    def _layout(self) -> list[_Leaf]:
        """The text-bearing leaves, and the embedded message headers (`_embedded`)."""
        if self._leaves is not None:
            return self._leaves
        header_end = self.header()[-1][2]
        body = self._body
        parts = self._parts
        if parts is None and _is_container(_first(_CONTENT_TYPE, (body, 0, header_end))):
            try:
                parts = parse_message(body).parts
            except Exception:  # never expected: the parser takes any bytes; search it flat
                parts = None
        if parts is None:  # one leaf: the message header is its MIME header
            self._leaves = [(0, header_end, len(body))]
            return self._leaves
        size = len(body)
        containers = {p.section.rpartition(".")[0] for p in parts if p.section}
        self._leaves = []
        for p in parts:
            start = min(max(p.body_start, 0), size)
            if p.is_message:
                self._embedded.append((start, min(max(p.text_start, start), size)))
            elif p.section and p.section not in containers:
                end = min(max(p.end, start), size)
                self._leaves.append((min(max(p.header_start, 0), start), start, end))
        return self._leaves


def _no_text() -> bytes:
    raise AssertionError("a metadata-only search key asked for message text")


_NO_TEXT = _Message(_no_text)


# --------------------------------------------------------------------------- compiling

_Pred: TypeAlias = Callable[[SearchView, _Message], bool]
_CHEAP, _HEADER, _BODY = 0, 1, 2  # cost classes


def _true(view: SearchView, text: _Message) -> bool:
    return True


def _false(view: SearchView, text: _Message) -> bool:
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
            if name not in ("BODY", "TEXT"):
                return _header(name, needle)
            if not needle:
                return _true, _CHEAP
            if name == "BODY":
                return (lambda v, t: t.body_matches(needle)), _BODY
            return (lambda v, t: t.header_matches(needle) or t.body_matches(needle)), _BODY
        case SearchHeader(field, value):
            return _header(field, _needle(value, ctx.charset))
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
    if name == "BEFORE":
        return lambda v, t: (d := t.sent_day()) is not None and d < date
    if name == "ON":
        return lambda v, t: t.sent_day() == date
    return lambda v, t: (d := t.sent_day()) is not None and d >= date


def _parse_day(value: str) -> dt.date | None:
    try:
        parsed = email.utils.parsedate_tz(value)
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


def _header(name: str, needle: str) -> tuple[_Pred, int]:
    """FROM / TO / CC / BCC / SUBJECT / HEADER: substring of any occurrence of the field."""
    pattern = _field_pattern(name)
    if pattern is None:  # no field can have that name
        return _false, _CHEAP
    if not needle:  # RFC 9051 §6.4.4: HEADER name "" matches every message with the field
        return (lambda v, t: t.has_field(pattern)), _HEADER
    return (lambda v, t: t.field_matches(pattern, needle)), _HEADER


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
    return [v.seq for v in views if pred(v, _Message(v.load))]


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
