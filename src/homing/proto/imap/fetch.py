"""FETCH responses from stored message data (RFC 9051 §6.4.5, §7.5.2; RFC 3516 BINARY).

Theory of operation
-------------------
The session knows, per FETCH command, which attributes were asked for; the renderer for them is
compiled once (`compile_fetch`) and then called per message with a `MessageView`: the message's
metadata, the IMAP fragments computed at delivery (ENVELOPE, BODYSTRUCTURE, BODY and the part
map, see `homing.mail.mime`), and, only when an attribute needs them, the message bytes.
`needs_data` and `needs_parse` tell the session what to load; `sets_seen` whether the command
sets \\Seen (RFC 9051 §6.4.5: BODY[...] without .PEEK, BINARY[...] without .PEEK, RFC822,
RFC822.TEXT). When the command sets \\Seen on a message, RFC 9051 §7.5.2 wants the new FLAGS in
the response: the session updates `flags` and adds a FLAGS attribute if none was requested.

Metadata-only commands (`FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)`, the FAST/ALL/FULL macros)
take a fast path: one %-format template filled from one `attrgetter` call, 1-3 microseconds
per message. Commands with body sections build a list of chunks instead. Items come in the
order requested, duplicates once; UID FETCH puts UID first unless it was asked for
(RFC 9051 §6.4.9: the response always carries it).

Storage layout: a stored message is `prefix + body`. `prefix` holds the per-recipient trace
fields (Return-Path, Delivered-To, Received); `body` is the message as received, and the part map
offsets are relative to `body`. So every range here is a range of `body` shifted by
`len(prefix)`, except that a header range starting at offset 0 (the top-level header: section
HEADER, and N.MIME of part 1 of a non-multipart message, whose MIME header is the message
header) also takes in the prefix. RFC822.SIZE is the session's `size`: len(prefix) + len(body).

Copies: ranges of the stored bytes become `memoryview` slices, so a BODY[] response copies the
message once, in the final join (`compile_fetch`), or not at all (`compile_fetch_chunks`, whose
chunks can go straight to a transport's `writelines`).

Choices where the RFCs leave room (mostly as Dovecot does):

* A section that does not exist (BODY[7] of a two-part message, 1.HEADER of a part that is not
  message/rfc822, MIME of the whole message) is an empty string, not an error.
* Body sections always go out as literals, also when empty ("{0}"), and a partial fetch names
  its origin: BODY[]<0> (RFC 9051 §7.5.2); an origin beyond the end gives an empty literal.
* IMAP literals cannot carry NUL (RFC 9051 §4.3): NUL octets in BODY[...] data are sent as
  0x80, which keeps every length and offset (Dovecot does the same). BINARY data containing NUL
  goes out as literal8 "~{n}" (RFC 3516 §4.3), otherwise as a normal literal.
* BINARY decodes base64 and quoted-printable of leaf parts (RFC 3516 §4.2); 7bit, 8bit and
  binary are identity; any other encoding raises `FetchError` with code UNKNOWN-CTE. Base64 is
  decoded leniently (stray characters skipped, padding repaired): damaged data is still
  returned rather than refused. BINARY of a multipart or message/rfc822 part, or of the whole
  message, returns the raw bytes (they carry no transfer encoding of their own). A partial
  BINARY response names its origin as BODY does (RFC 3516 §4.3; Dovecot does the same).
* HEADER.FIELDS / HEADER.FIELDS.NOT keep the selected fields verbatim (folded lines included,
  in message order) and end with the blank line; the section is echoed with the field names as
  the client wrote them. Lines without a colon in a header block are no fields and are
  dropped by both.
* INTERNALDATE is written in UTC ("+0000").
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter
from typing import NamedTuple, TypeAlias

from homing.mail.mime import PartSpan, decode_partmap, parse_message
from homing.proto.imap.types import MONTHS, FetchAtt, FormatError, Section

__all__ = [
    "Chunk",
    "FetchError",
    "MessageView",
    "compile_fetch",
    "compile_fetch_chunks",
    "format_flags",
    "format_internaldate",
    "needs_data",
    "needs_parse",
    "render_fetch",
    "render_fetch_chunks",
    "sets_seen",
]

#: One piece of a FETCH response: a bytes object or a zero-copy slice of the stored message.
Chunk: TypeAlias = bytes | memoryview


class MessageView(NamedTuple):
    """What the session knows about one message when it renders FETCH data for it (a named
    tuple: a FETCH of a whole mailbox makes one per message, and a tuple is made fastest).

    `envelope`, `bodystructure`, `body_nx` (BODY without extension data) and `partmap` are
    the stored results of `homing.mail.mime.parse_message(body)`; pass b"" when `needs_parse`
    is false. `prefix` and `body` are the stored message (see the module docstring); leave them
    None when `needs_data` is false.
    """

    seq: int
    uid: int
    flags: frozenset[str]
    internaldate: float
    size: int
    modseq: int
    envelope: bytes
    bodystructure: bytes
    body_nx: bytes
    partmap: bytes
    prefix: bytes | None = None
    body: bytes | None = None


class FetchError(Exception):
    """A FETCH that cannot be answered; `response(tag)` is the tagged reply.

    `code` is the response code (UNKNOWN-CTE, RFC 3516 §4.2) or None; `bad` makes it a BAD
    (the client asked for something this session does not offer) instead of a NO.
    """

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


# --------------------------------------------------------------------------- attribute classes

# Attributes answered from the stored parse results.
_PARSED = frozenset({"ENVELOPE", "BODYSTRUCTURE"})
# Attributes whose data are message bytes.
_DATA = frozenset({"RFC822", "RFC822.HEADER", "RFC822.TEXT", "BINARY", "BINARY.SIZE"})


def _is_section(att: FetchAtt) -> bool:
    return att.name == "BODY" and att.section is not None


def needs_data(atts: Sequence[FetchAtt]) -> bool:
    """True if an attribute needs the message bytes (`prefix` and `body` of the view)."""
    return any(att.name in _DATA or _is_section(att) for att in atts)


def needs_parse(atts: Sequence[FetchAtt]) -> bool:
    """True if an attribute needs the stored parse results (what `read_parsed` returns).

    ENVELOPE, BODY and BODYSTRUCTURE use the serialised fragments; body sections other than
    the whole message (BODY[], RFC822) and BINARY use the part map. When false, the session
    may pass b"" for `envelope`, `bodystructure`, `body_nx` and `partmap`.
    """
    for att in atts:
        if att.name in _PARSED or (att.name == "BODY" and att.section is None):
            return True
        if att.name in ("RFC822.HEADER", "RFC822.TEXT", "BINARY", "BINARY.SIZE"):
            return True
        if _is_section(att) and att.section != _WHOLE:
            return True
    return False


def sets_seen(atts: Sequence[FetchAtt]) -> bool:
    """True if the FETCH sets \\Seen (RFC 9051 §6.4.5; RFC 3516 §4.2 for BINARY)."""
    for att in atts:
        if att.name in ("RFC822", "RFC822.TEXT"):
            return True
        if att.name in ("BODY", "BINARY") and att.section is not None and not att.peek:
            return True
    return False


_WHOLE = Section()
_HEADER = Section(text="HEADER")
_TEXT = Section(text="TEXT")


# --------------------------------------------------------------------------- value formats


@lru_cache(maxsize=4096)
def format_flags(flags: frozenset[str]) -> bytes:
    """A flag list, "(\\Seen $Label1)": system flags first, then keywords, each group sorted
    case-insensitively, so the output does not depend on how the flags were stored. Cached:
    a mailbox has few distinct flag sets."""
    ordered = sorted(flags, key=lambda f: (not f.startswith("\\"), f.lower()))
    return ("(" + " ".join(ordered) + ")").encode("utf-8", "replace")


_LAST_SECOND = 253402300799  # 31-Dec-9999 23:59:59: date-year is 4 digits
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


def format_internaldate(ts: float) -> bytes:
    """`ts` (seconds since the epoch) as a quoted RFC 9051 date-time in UTC:
    b'"17-Jul-1996 09:44:25 +0000"'. Out-of-range times are clamped to years 1970-9999."""
    days, seconds = divmod(min(max(int(ts), 0), _LAST_SECOND), 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return b'"%b %02d:%02d:%02d +0000"' % (_date(days), hours, minutes, seconds)


@lru_cache(maxsize=1024)
def _date(days: int) -> bytes:
    """date-day-fixed "-" date-month "-" date-year of a day number (cached: messages of one
    mailbox cluster on few days)."""
    d = dt.date.fromordinal(_EPOCH_ORDINAL + days)
    return b"%02d-%s-%04d" % (d.day, MONTHS[d.month - 1].encode("ascii"), d.year)


# --------------------------------------------------------------------------- message access

_Span = tuple[bytes, int, int]
"""A half-open range [start, end) of a bytes object: the unit message data is cut in."""


class _Message:
    """One message being rendered: its bytes, and its part map decoded on first use.

    Created per message by the chunk renderer; the bytes are only touched by data items, so a
    view without them is fine until one of those asks (then ValueError: the session did not
    load what `needs_data` said).
    """

    __slots__ = ("_binary", "_body", "_containers", "_parts", "prefix", "view")

    def __init__(self, view: MessageView) -> None:
        self.view = view
        self.prefix = view.prefix or b""
        self._body = view.body
        self._parts: dict[str, PartSpan] | None = None
        self._containers: frozenset[str] = frozenset()
        self._binary: dict[str, bytes] = {}

    @property
    def body(self) -> bytes:
        if self._body is None:
            raise ValueError(f"FETCH of UID {self.view.uid} needs the message bytes (needs_data)")
        return self._body

    def parts(self) -> dict[str, PartSpan]:
        if self._parts is None:
            body = self.body
            try:
                spans = decode_partmap(self.view.partmap)
            except ValueError:  # missing or damaged: parse again rather than fail the FETCH
                spans = parse_message(body).parts
            self._parts = {p.section: p for p in spans}
            self._containers = frozenset(s.rpartition(".")[0] for s in self._parts if s)
        return self._parts

    def root(self) -> PartSpan:
        root = self.parts().get("")
        return root if root is not None else PartSpan("", 0, 0, len(self.body), False)

    def whole(self) -> list[_Span]:
        body = self.body
        out = [(self.prefix, 0, len(self.prefix))] if self.prefix else []
        if body:
            out.append((body, 0, len(body)))
        return out

    def span(self, start: int, end: int, *, header: bool = False) -> list[_Span]:
        """[start, end) of `body`, clamped; a header range from 0 takes in the prefix."""
        body = self.body
        n = len(body)
        start = min(max(start, 0), n)
        end = min(max(end, start), n)
        out = [(self.prefix, 0, len(self.prefix))] if header and start == 0 and self.prefix else []
        if end > start:
            out.append((body, start, end))
        return out

    def section(self, section: Section) -> list[_Span]:
        """The data of BODY[section] (RFC 9051 §6.4.5), before any partial."""
        text = section.text
        if not section.part:
            if text is None:  # BODY[], RFC822: no part map needed (see `needs_parse`)
                return self.whole()
            root = self.root()
            if text == "TEXT":
                return self.span(root.body_start, root.end)
            if text == "MIME":  # needs a part number; the grammar refuses it anyway
                return []
            header = self.span(0, root.body_start, header=True)
            return header if text == "HEADER" else _filter_fields(header, section)
        part = self.parts().get(".".join(map(str, section.part)))
        if part is None:
            return []
        if text is None:
            return self.span(part.body_start, part.end)
        if text == "MIME":
            return self.span(part.header_start, part.body_start, header=True)
        if not part.is_message:  # HEADER, TEXT, HEADER.FIELDS: message/rfc822 parts only
            return []
        if text == "TEXT":
            return self.span(part.text_start, part.end)
        header = self.span(part.body_start, part.text_start)
        return header if text == "HEADER" else _filter_fields(header, section)

    def binary(self, part_path: tuple[int, ...]) -> bytes:
        """BINARY[part]: the part with its transfer encoding removed (RFC 3516 §4.2)."""
        key = ".".join(map(str, part_path))
        cached = self._binary.get(key)
        if cached is not None:
            return cached
        data = self._decode(key)
        self._binary[key] = data
        return data

    def _decode(self, key: str) -> bytes:
        if not key:
            return _join(self.whole())
        part = self.parts().get(key)
        if part is None:
            return b""
        raw = _join(self.span(part.body_start, part.end))
        if part.is_message or key in self._containers:
            return raw  # multipart and message/rfc822 bodies are not encoded themselves
        header = _join(self.span(part.header_start, part.body_start))
        return _decode_cte(_transfer_encoding(header), raw)


def _join(spans: list[_Span]) -> bytes:
    return b"".join(memoryview(src)[a:b] for src, a, b in spans)


# --------------------------------------------------------------------------- header fields

# One header field: its name (up to the colon), the rest of its line and its continuation lines
# (RFC 5322 §2.2.3 folding), line ends included. Possessive runs: one pass per field.
_FIELD = re.compile(rb"([^:\n]*+)(:?)[^\n]*+(?:\n[ \t][^\n]*+)*+\n?")
_WSP = b" \t"


def _fields(header: bytes) -> list[tuple[bytes | None, bytes]]:
    """Split a header block into (lower-case field name or None, field bytes with its folded
    continuation lines), stopping at the blank line. None marks a line that is not a field."""
    out: list[tuple[bytes | None, bytes]] = []
    for m in _FIELD.finditer(header):
        field = m.group()
        if field in (b"\r\n", b"\n", b""):
            break
        name = m.group(1).rstrip(_WSP)
        out.append((name.lower() if m.group(2) and name else None, field))
    return out


def _filter_fields(spans: list[_Span], section: Section) -> list[_Span]:
    """HEADER.FIELDS / HEADER.FIELDS.NOT (RFC 9051 §6.4.5) of a header block."""
    if section.text == "HEADER.FIELDS":  # the common case: one regex scan
        text = b"".join([b"\n", *(memoryview(src)[a:b] for src, a, b in spans)])
        end = len(text)
        selected = [
            m.group(1) + (b"\n" if m.end() < end else b"\r\n")  # the last line may lack one
            for m in _named_fields(section.fields).finditer(text)
        ]
    else:
        names = {f.encode("utf-8").lower() for f in section.fields}
        selected = [
            f if f.endswith(b"\n") else f + b"\r\n"
            for name, f in _fields(_join(spans))
            if name is not None and name not in names
        ]
    selected.append(b"\r\n")
    data = b"".join(selected)
    return [(data, 0, len(data))]


@lru_cache(maxsize=256)
def _named_fields(names: tuple[str, ...]) -> re.Pattern[bytes]:
    """Fields named one of `names` (ASCII case-insensitive) in b"\\n" + header, group 1 being
    the field without its final LF. A field starts a line and no name starts with WSP, so
    continuation lines never match; the leading LF lets the engine skip between lines fast."""
    alternatives = b"|".join(re.escape(n.encode("utf-8")) for n in names)
    return re.compile(
        rb"\n((?:" + alternatives + rb")[ \t]*+:[^\n]*+(?:\n[ \t][^\n]*+)*+)", re.IGNORECASE
    )


# --------------------------------------------------------------------------- transfer encodings

_TOKEN = re.compile(rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 2045 §5.1 token
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]+")
_IDENTITY = frozenset({b"7bit", b"8bit", b"binary"})


def _transfer_encoding(header: bytes) -> bytes:
    """The Content-Transfer-Encoding of a MIME header, lower-cased (RFC 2045 §6.1)."""
    for name, field in _fields(header):
        if name == b"content-transfer-encoding":
            value = field.partition(b":")[2]
            m = _TOKEN.search(value.replace(b"\r", b"").replace(b"\n", b""))
            return m.group().lower() if m is not None else b"7bit"
    return b"7bit"


def _decode_cte(encoding: bytes, data: bytes) -> bytes:
    if encoding in _IDENTITY:
        return data
    if encoding == b"base64":
        return _b64decode(data)
    if encoding == b"quoted-printable":
        return binascii.a2b_qp(data)
    raise FetchError("Unknown Content-Transfer-Encoding", code="UNKNOWN-CTE")


def _b64decode(data: bytes) -> bytes:
    """Lenient base64 (RFC 2045 §6.8): characters outside the alphabet are skipped, decoding
    stops at the first padding, and a truncated last group is decoded as far as it goes."""
    data = data.partition(b"=")[0]
    clean = _B64_JUNK.sub(b"", data)
    usable = len(clean) - len(clean) % 4
    tail = clean[usable:]
    out = binascii.a2b_base64(clean[:usable]) if usable else b""
    if len(tail) >= 2:  # 2 or 3 characters carry 1 or 2 octets
        out += binascii.a2b_base64(tail + b"=" * (4 - len(tail)))
    return out


# --------------------------------------------------------------------------- compiling

_Writer: TypeAlias = Callable[[_Message, list[Chunk]], None]


def _partial(spans: list[_Span], partial: tuple[int, int] | None) -> list[_Span]:
    """The <origin.octets> slice of `spans` (RFC 9051 §6.4.5: origin beyond the end -> "")."""
    if partial is None:
        return spans
    skip, left = partial
    out: list[_Span] = []
    for src, a, b in spans:
        if skip >= b - a:
            skip -= b - a
            continue
        first = a + skip
        skip = 0
        take = min(b - first, left)
        out.append((src, first, first + take))
        left -= take
        if left <= 0:
            break
    return out


def _literal(out: list[Chunk], name: bytes, spans: list[_Span], *, binary: bool) -> None:
    """Append `name` and the data as a literal (literal8 for BINARY data with NUL)."""
    size = 0
    nul = False
    for src, a, b in spans:
        size += b - a
        nul = nul or src.find(b"\x00", a, b) >= 0
    out.append(name + (b" ~{%d}\r\n" if nul and binary else b" {%d}\r\n") % size)
    for src, a, b in spans:
        if nul and not binary and src.find(b"\x00", a, b) >= 0:
            out.append(src[a:b].replace(b"\x00", b"\x80"))
        elif a == 0 and b == len(src):
            out.append(src)
        else:
            out.append(memoryview(src)[a:b])


def _section_name(att: FetchAtt, rev2: bool) -> bytes:
    """The item name of a response: BODY[1.HEADER]<0>, BINARY[2], BINARY.SIZE[2]."""
    assert att.section is not None
    try:
        section = att.section.to_bytes(utf8=rev2)
    except FormatError as exc:  # a field name no string can carry (NUL)
        raise FetchError("Invalid section", bad=True) from exc
    name = b"%s[%s]" % (att.name.encode("ascii"), section)
    if att.partial is not None:
        name += b"<%d>" % att.partial[0]
    return name


def _body_writer(name: bytes, section: Section, partial: tuple[int, int] | None) -> _Writer:
    def write(msg: _Message, out: list[Chunk]) -> None:
        _literal(out, name, _partial(msg.section(section), partial), binary=False)

    return write


def _binary_writer(name: bytes, part: tuple[int, ...], partial: tuple[int, int] | None) -> _Writer:
    def write(msg: _Message, out: list[Chunk]) -> None:
        data = msg.binary(part)
        _literal(out, name, _partial([(data, 0, len(data))], partial), binary=True)

    return write


def _binary_size_writer(name: bytes, part: tuple[int, ...]) -> _Writer:
    def write(msg: _Message, out: list[Chunk]) -> None:
        out.append(b"%s %d" % (name, len(msg.binary(part))))

    return write


def _value_writer(piece: bytes, value: _Value) -> _Writer:
    attr, convert = value.attr, value.convert

    if convert is None:

        def write(msg: _Message, out: list[Chunk]) -> None:
            out.append(piece % (getattr(msg.view, attr),))

    else:

        def write(msg: _Message, out: list[Chunk]) -> None:
            out.append(piece % (convert(getattr(msg.view, attr)),))

    return write


@dataclass(frozen=True, slots=True)
class _Value:
    """An item answered from one view attribute: "`template`" % convert(view.`attr`)."""

    template: bytes
    attr: str
    convert: Callable[[object], bytes] | None = None


def _convert_date(ts: object) -> bytes:
    assert isinstance(ts, float | int)
    return format_internaldate(ts)


# The attributes answered without message bytes (RFC 9051 §7.5.2; MODSEQ: RFC 7162 §3.1.4.1).
_VALUES: dict[str, _Value] = {
    "UID": _Value(b"UID %d", "uid"),
    "FLAGS": _Value(b"FLAGS %b", "flags", format_flags),
    "INTERNALDATE": _Value(b"INTERNALDATE %b", "internaldate", _convert_date),
    "RFC822.SIZE": _Value(b"RFC822.SIZE %d", "size"),
    "MODSEQ": _Value(b"MODSEQ (%d)", "modseq"),
    "ENVELOPE": _Value(b"ENVELOPE %b", "envelope"),
    "BODYSTRUCTURE": _Value(b"BODYSTRUCTURE %b", "bodystructure"),
    "BODY": _Value(b"BODY %b", "body_nx"),
}


@dataclass(frozen=True, slots=True)
class _Item:
    """One response item: a value (template + getter) or a data writer."""

    name: bytes
    value: _Value | None = None
    writer: _Writer | None = None


def _items(atts: Sequence[FetchAtt], *, uid: bool, rev2: bool, binary_ok: bool) -> list[_Item]:
    """The response items in the order requested, duplicates dropped, UID first when `uid`
    and not requested (UID FETCH always returns UID, RFC 9051 §6.4.9)."""
    items: list[_Item] = []
    seen: set[bytes] = set()
    wanted = list(atts)
    if uid and not any(att.name == "UID" for att in wanted):
        wanted.insert(0, FetchAtt("UID"))
    for att in wanted:
        item = _item(att, rev2, binary_ok)
        if item.name not in seen:
            seen.add(item.name)
            items.append(item)
    return items


def _item(att: FetchAtt, rev2: bool, binary_ok: bool) -> _Item:
    name = att.name
    if name in _VALUES and (name != "BODY" or att.section is None):
        return _Item(name.encode("ascii"), value=_VALUES[name])
    if name == "BODY" and att.section is not None:
        label = _section_name(att, rev2)
        return _Item(label, writer=_body_writer(label, att.section, att.partial))
    if name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):  # RFC 3501 §6.4.5
        section = {"RFC822": _WHOLE, "RFC822.HEADER": _HEADER, "RFC822.TEXT": _TEXT}[name]
        label = name.encode("ascii")
        return _Item(label, writer=_body_writer(label, section, None))
    if name in ("BINARY", "BINARY.SIZE") and att.section is not None:
        if not binary_ok:
            raise FetchError("BINARY is not available", bad=True)
        label = _section_name(att, rev2)
        if name == "BINARY":
            return _Item(label, writer=_binary_writer(label, att.section.part, att.partial))
        return _Item(label, writer=_binary_size_writer(label, att.section.part))
    raise FetchError(f"Unknown FETCH attribute {name}", bad=True)


def compile_fetch_chunks(
    atts: Sequence[FetchAtt], *, uid: bool, rev2: bool, binary_ok: bool = True
) -> Callable[[MessageView], list[Chunk]]:
    """A renderer returning the untagged FETCH response as chunks whose concatenation is the
    response; message data are zero-copy memoryview slices of the view's bytes (keep the view
    alive until the chunks are written).

    `rev2`: IMAP4rev2 / UTF8=ACCEPT is enabled (field names in an echoed section may then be
    UTF-8 quoted strings). `binary_ok`: the session offers BINARY (RFC 3516 or IMAP4rev2);
    when false, BINARY attributes raise FetchError (BAD). The renderer raises FetchError with
    code UNKNOWN-CTE for BINARY of a part in an unknown transfer encoding, and ValueError if
    the view lacks the bytes `needs_data` asked for.
    """
    items = _items(atts, uid=uid, rev2=rev2, binary_ok=binary_ok)
    writers: list[_Writer] = []
    for i, item in enumerate(items):
        if item.writer is not None:
            writers.append(_spaced(item.writer) if i else item.writer)
        else:
            assert item.value is not None
            piece = (b" " if i else b"") + item.value.template
            writers.append(_value_writer(piece, item.value))

    def render(view: MessageView) -> list[Chunk]:
        msg = _Message(view)
        out: list[Chunk] = [b"* %d FETCH (" % view.seq]
        for write in writers:
            write(msg, out)
        out.append(b")\r\n")
        return out

    return render


def _spaced(writer: _Writer) -> _Writer:
    def write(msg: _Message, out: list[Chunk]) -> None:
        out.append(b" ")
        writer(msg, out)

    return write


def compile_fetch(
    atts: Sequence[FetchAtt], *, uid: bool, rev2: bool, binary_ok: bool = True
) -> Callable[[MessageView], bytes]:
    """A renderer returning one message's untagged FETCH response, CRLF included:
    b"* 12 FETCH (UID 7 FLAGS (\\Seen) ...)\\r\\n". Compile once per command, call per message.

    Message data are copied once (the final join); see `compile_fetch_chunks` for a zero-copy
    form and for the meaning of the arguments and the errors.
    """
    items = _items(atts, uid=uid, rev2=rev2, binary_ok=binary_ok)
    if any(item.value is None for item in items):
        chunks = compile_fetch_chunks(atts, uid=uid, rev2=rev2, binary_ok=binary_ok)
        join = b"".join
        return lambda view: join(chunks(view))
    # Fast path: one %-template filled from one attrgetter call (a C-level tuple build); only
    # FLAGS and INTERNALDATE values need converting.
    values = [item.value for item in items if item.value is not None]
    template = b"* %d FETCH (" + b" ".join(v.template for v in values) + b")\r\n"
    fetch = attrgetter("seq", *(v.attr for v in values))
    converts = [(i, v.convert) for i, v in enumerate(values, 1) if v.convert is not None]
    if not converts:
        return lambda view: template % fetch(view)
    if len(converts) == 1:
        (at, convert), *_ = converts

        def render_one(view: MessageView) -> bytes:
            row = fetch(view)
            return template % (*row[:at], convert(row[at]), *row[at + 1 :])

        return render_one

    def render(view: MessageView) -> bytes:
        row = list(fetch(view))
        for i, convert in converts:
            row[i] = convert(row[i])
        return template % tuple(row)

    return render


def render_fetch(
    view: MessageView,
    atts: Sequence[FetchAtt],
    *,
    uid: bool,
    rev2: bool,
    binary_ok: bool = True,
) -> bytes:
    """One message's FETCH response (see `compile_fetch`; compile once for many messages)."""
    return compile_fetch(atts, uid=uid, rev2=rev2, binary_ok=binary_ok)(view)


def render_fetch_chunks(
    view: MessageView,
    atts: Sequence[FetchAtt],
    *,
    uid: bool,
    rev2: bool,
    binary_ok: bool = True,
) -> list[Chunk]:
    """One message's FETCH response as chunks (see `compile_fetch_chunks`)."""
    return compile_fetch_chunks(atts, uid=uid, rev2=rev2, binary_ok=binary_ok)(view)
