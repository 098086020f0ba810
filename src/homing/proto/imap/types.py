"""IMAP client commands as values, and their wire form.

Every command `homing.proto.imap.grammar.parse_command` accepts has a frozen dataclass here, with
its tag as the first field. Values are decoded and normalised the way RFC 9051 §9 defines them
equal: command words, capability names and option names upper-cased; system flags in their
canonical case ("\\SEEN" -> "\\Seen"); any case variant of INBOX as "INBOX"; FETCH macros expanded;
mailbox names as Unicode text (decoded from modified UTF-7, or from UTF-8 once UTF8=ACCEPT or
IMAP4rev2 is enabled). Text the server compares as octets (search strings, passwords, message data)
stays `bytes`.

`format_command` is the inverse of `parse_command`: `parse(format(cmd)) == cmd`. It writes the
shortest form (atom, then quoted, then literal), with non-synchronising literals ("{n+}") by
default, so an IMAP client, a proxy or a test can send what it produces without waiting for "+".
`SequenceSet`, `Section` and `FetchAtt` also render themselves for FETCH responses.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from homing.proto.imap import utf7

#: Stands for "*" (the largest number in use) inside `SequenceSet.ranges`; 0 is never a
#: message number or UID, so the sentinel cannot clash with a real one.
STAR = 0
MAX_NUMBER = 2**32 - 1  # number / nz-number: unsigned 32-bit (RFC 9051 §9)
MAX_NUMBER64 = 2**63 - 1  # number64 / mod-sequence-value: unsigned 63-bit

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# RFC 9051 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials /
# resp-specials. ATOM-CHAR is any other 7-bit character.
ATOM_CHARS = frozenset(c for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\]')
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
LIST_CHARS = ASTRING_CHARS | {ord("%"), ord("*")}
TAG_CHARS = ASTRING_CHARS - {ord("+")}


def char_class(chars: Iterable[int]) -> bytes:
    """A regex character class body (without brackets) matching exactly `chars`."""
    return b"".join(re.escape(bytes((c,))) for c in sorted(chars))


_ATOM_RE = re.compile(b"[" + char_class(ATOM_CHARS) + b"]+")
_ASTRING_RE = re.compile(b"[" + char_class(ASTRING_CHARS) + b"]+")
_LIST_RE = re.compile(b"[" + char_class(LIST_CHARS) + b"]+")
_TAG_RE = re.compile(b"[" + char_class(TAG_CHARS) + b"]+")
_UNQUOTABLE = re.compile(rb"[\x00\r\n]")

SYSTEM_FLAGS = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
SPECIAL_USES = {  # RFC 6154 §2 use-attr, RFC 9051 §7.3.1
    u.upper(): u
    for u in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}


class FormatError(ValueError):
    """A value that has no IMAP wire form (a NUL in a string, a bad flag, a naive datetime)."""


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence-set (RFC 9051 §4.1.1, §9) as the ranges written, so "1:*" costs O(1).

    Each range is (first, last) as the client wrote it, a single number being (n, n); `STAR`
    stands for "*". `saved` is the "$" marker (RFC 9051 §6.4.4.1, RFC 5182 SEARCHRES): the result
    of the last SEARCH RETURN (SAVE); `ranges` is then empty.
    """

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    @property
    def has_star(self) -> bool:
        return any(STAR in r for r in self.ranges)

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """The set as sorted, merged, inclusive (low, high) ranges, "*" being `largest`.

        Numbers above `largest` are kept: whether they are an error (message numbers) or simply
        match nothing (UIDs) is the caller's decision. Not meaningful for `saved`.
        """
        spans = sorted(_span(a, b, largest) for a, b in self.ranges)
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def contains(self, number: int, largest: int) -> bool:
        """Whether `number` is in the set, "*" being `largest`."""
        return any(lo <= number <= hi for lo, hi in (_span(a, b, largest) for a, b in self.ranges))

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(_seq_range(a, b) for a, b in self.ranges)


def _span(a: int, b: int, largest: int) -> tuple[int, int]:
    a = largest if a == STAR else a
    b = largest if b == STAR else b
    return (a, b) if a <= b else (b, a)


def _seq_range(a: int, b: int) -> str:
    first = "*" if a == STAR else str(a)
    return first if a == b else f"{first}:{'*' if b == STAR else b}"


@dataclass(frozen=True, slots=True)
class Section:
    """A FETCH section spec (RFC 9051 §6.4.5.1): BODY[<part>.<text> (<fields>)].

    `part` is the part number path (empty for the whole message); `text` is None (the whole
    part), "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME"; `fields` the
    header field names of HEADER.FIELDS[.NOT], as the client wrote them.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def to_bytes(self, *, utf8: bool = False, nonsync: bool = False) -> bytes:
        """The spec between the brackets, as a FETCH response echoes it.

        A field name that needs a literal gets a synchronising one, as servers send, unless
        `nonsync` (client side, LITERAL+).
        """
        out = ".".join(str(p) for p in self.part).encode("ascii")
        if self.text is not None:
            out += (b"." if out else b"") + self.text.encode("ascii")
        if self.text is not None and self.text.startswith("HEADER.FIELDS") and not self.fields:
            raise FormatError(f"{self.text} needs at least one field name")
        if self.fields:
            names = [_astring(f.encode("utf-8"), utf8, nonsync) for f in self.fields]
            out += b" (" + b" ".join(names) + b")"
        return out


@dataclass(frozen=True, slots=True)
class FetchAtt:
    """One fetch-att (RFC 9051 §6.4.5).

    `name` is ENVELOPE, FLAGS, INTERNALDATE, RFC822.SIZE, RFC822, RFC822.HEADER, RFC822.TEXT,
    BODY, BODYSTRUCTURE, UID, MODSEQ (RFC 7162), BINARY or BINARY.SIZE. BODY with a `section` is
    BODY[...]; without one it is the non-extensible body structure. BINARY and BINARY.SIZE
    always have a section (only `part` set). `peek` is BODY.PEEK / BINARY.PEEK; `partial` the
    (offset, count) of "<offset.count>".
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def to_bytes(self, *, utf8: bool = False, nonsync: bool = False) -> bytes:
        """The attribute as written in a FETCH command (see `Section.to_bytes` for literals)."""
        if self.section is None:
            return self.name.encode("ascii")
        out = self.name.encode("ascii") + (b".PEEK" if self.peek else b"")
        out += b"[" + self.section.to_bytes(utf8=utf8, nonsync=nonsync) + b"]"
        if self.partial is not None:
            out += b"<%d.%d>" % self.partial
        return out


@dataclass(frozen=True, slots=True)
class QResync:
    """The QRESYNC SELECT/EXAMINE parameter (RFC 7162 §3.2.5.1)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None  # (known-sequence-set, known-uid-set)


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of APPEND (RFC 9051 §6.3.12; RFC 3502 MULTIAPPEND sends several).

    `binary` when sent as literal8 (RFC 3516 §4.4); `utf8` when sent as "UTF8 (~{n}...)"
    (RFC 6855 §4). `flags` is empty when no flag list was given.
    """

    data: bytes
    flags: tuple[str, ...] = ()
    internal_date: dt.datetime | None = None
    binary: bool = False
    utf8: bool = False


# --- search keys (RFC 9051 §6.4.4) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchFlag:
    """A key without argument: ALL, ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, the UN- forms, and
    NEW, OLD, RECENT (RFC 3501 only)."""

    key: str


@dataclass(frozen=True, slots=True)
class SearchString:
    """BCC, BODY, CC, FROM, SUBJECT, TEXT or TO with its string (in the command's CHARSET)."""

    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class SearchHeader:
    """HEADER <field-name> <string>."""

    field: str
    value: bytes


@dataclass(frozen=True, slots=True)
class SearchKeyword:
    """KEYWORD <flag> or, with `negated`, UNKEYWORD <flag>."""

    keyword: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class SearchDate:
    """BEFORE, ON, SINCE (internal date) or SENTBEFORE, SENTON, SENTSINCE (Date: header)."""

    key: str
    date: dt.date


@dataclass(frozen=True, slots=True)
class SearchSize:
    """LARGER or SMALLER <number64>."""

    key: str
    size: int


@dataclass(frozen=True, slots=True)
class SearchAge:
    """OLDER or YOUNGER <seconds> (RFC 5032 WITHIN)."""

    key: str
    seconds: int


@dataclass(frozen=True, slots=True)
class SearchSet:
    """A sequence set: message numbers, or UIDs with UID <set>."""

    sequence: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class SearchModSeq:
    """MODSEQ ["/flags/<flag>" priv|shared|all] <mod-sequence-valzer> (RFC 7162 §3.1.5).

    `entry` is the entry name unquoted ("/flags/\\seen"), `entry_type` lower-cased.
    """

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True, slots=True)
class SearchNot:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class SearchOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SearchGroup:
    """A parenthesised list of keys (all must match)."""

    keys: tuple[SearchKey, ...]


SearchKey: TypeAlias = (
    SearchFlag
    | SearchString
    | SearchHeader
    | SearchKeyword
    | SearchDate
    | SearchSize
    | SearchAge
    | SearchSet
    | SearchModSeq
    | SearchNot
    | SearchOr
    | SearchGroup
)


# --- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability:
    tag: str


@dataclass(frozen=True, slots=True)
class Noop:
    tag: str


@dataclass(frozen=True, slots=True)
class Logout:
    tag: str


@dataclass(frozen=True, slots=True)
class StartTLS:
    tag: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    """AUTHENTICATE mechanism [initial-response] (RFC 9051 §6.2.2, RFC 4959 SASL-IR).

    `initial_response` is decoded; b"" was sent as "="; None means none was sent.
    """

    tag: str
    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True, slots=True)
class Login:
    tag: str
    userid: str
    password: bytes


@dataclass(frozen=True, slots=True)
class Enable:
    tag: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Select:
    """SELECT, or EXAMINE when `readonly`, with RFC 7162 CONDSTORE / QRESYNC parameters."""

    tag: str
    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True, slots=True)
class Create:
    """CREATE mailbox [(USE (attrs))] (RFC 6154 §3); `special_use` None when no USE was given."""

    tag: str
    mailbox: str
    special_use: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename:
    tag: str
    mailbox: str
    new_name: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class List:
    """LIST, basic or extended (RFC 9051 §6.3.9, RFC 5258, RFC 5819 LIST-STATUS, RFC 6154).

    `selection` is None without "(...)" selection options; `return_options` None without RETURN.
    STATUS among the return options carries its items in `status_items`. `pattern_list` says the
    patterns were given in parentheses (RFC 5258 §3, several patterns).
    """

    tag: str
    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] | None = None
    return_options: tuple[str, ...] | None = None
    status_items: tuple[str, ...] = ()
    pattern_list: bool = False

    @property
    def extended(self) -> bool:
        """RFC 5258 §3: an extended LIST command (its responses follow the extended rules)."""
        return self.selection is not None or self.return_options is not None or self.pattern_list


@dataclass(frozen=True, slots=True)
class Lsub:
    tag: str
    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Namespace:
    tag: str


@dataclass(frozen=True, slots=True)
class Status:
    tag: str
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Append:
    tag: str
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class Idle:
    tag: str


@dataclass(frozen=True, slots=True)
class Check:
    tag: str


@dataclass(frozen=True, slots=True)
class Close:
    tag: str


@dataclass(frozen=True, slots=True)
class Unselect:
    tag: str


@dataclass(frozen=True, slots=True)
class Expunge:
    """EXPUNGE, or UID EXPUNGE <uids> (RFC 9051 §6.4.9) when `uids` is set."""

    tag: str
    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Search:
    """SEARCH / UID SEARCH. `criteria` are ANDed; `return_options` None without RETURN
    (RETURN () is the empty tuple, which means ALL, RFC 9051 §6.4.4)."""

    tag: str
    criteria: tuple[SearchKey, ...]
    charset: str | None = None
    return_options: tuple[str, ...] | None = None
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Fetch:
    """FETCH / UID FETCH with macros expanded and RFC 7162 modifiers."""

    tag: str
    sequence: SequenceSet
    attributes: tuple[FetchAtt, ...]
    uid: bool = False
    changed_since: int | None = None
    vanished: bool = False


StoreMode: TypeAlias = Literal["replace", "add", "remove"]


@dataclass(frozen=True, slots=True)
class Store:
    """STORE / UID STORE: FLAGS (replace), +FLAGS (add) or -FLAGS (remove), [.SILENT]."""

    tag: str
    sequence: SequenceSet
    mode: StoreMode
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    tag: str
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Move:
    tag: str
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Id:
    """ID (RFC 2971): field/value pairs, or None for NIL."""

    tag: str
    params: tuple[tuple[str, str | None], ...] | None


Command: TypeAlias = (
    Capability
    | Noop
    | Logout
    | StartTLS
    | Authenticate
    | Login
    | Enable
    | Select
    | Create
    | Delete
    | Rename
    | Subscribe
    | Unsubscribe
    | List
    | Lsub
    | Namespace
    | Status
    | Append
    | Idle
    | Check
    | Close
    | Unselect
    | Expunge
    | Search
    | Fetch
    | Store
    | Copy
    | Move
    | Id
)


# --- formatting ---------------------------------------------------------------------------------


def format_command(cmd: Command, *, utf8: bool = False, literal_plus: bool = True) -> bytes:
    """`cmd` as the client sends it, CRLF included (the inverse of `parse_command`).

    `utf8` as for parsing: mailbox names go out as UTF-8 instead of modified UTF-7, and quoted
    strings may carry UTF-8. Literals are non-synchronising ("{n+}", RFC 7888) when
    `literal_plus`, else synchronising (the sender must then wait for "+" after each).
    Raises FormatError for a value with no wire form.
    """
    w = _Writer(utf8, literal_plus)
    w.raw(_tag(cmd.tag) + b" ")
    _FORMATTERS[type(cmd)](w, cmd)
    w.raw(b"\r\n")
    return bytes(w.out)


class _Writer:
    """Accumulates one command's bytes; strings needing a literal get a non-synchronising one."""

    __slots__ = ("nonsync", "out", "utf8")

    def __init__(self, utf8: bool, nonsync: bool) -> None:
        self.out = bytearray()
        self.utf8 = utf8
        self.nonsync = nonsync

    def raw(self, data: bytes) -> None:
        self.out += data

    def mailbox(self, name: str) -> None:
        if name == "INBOX":
            self.out += b"INBOX"
            return
        self.out += _astring(self._mailbox_octets(name), self.utf8, self.nonsync)

    def pattern(self, name: str) -> None:
        octets = self._mailbox_octets(name)
        if octets and _LIST_RE.fullmatch(octets):
            self.out += octets
        else:
            self.out += _string(octets, self.utf8, self.nonsync)

    def _mailbox_octets(self, name: str) -> bytes:
        try:
            return name.encode("utf-8") if self.utf8 else utf7.encode(name)
        except (UnicodeEncodeError, utf7.UTF7Error) as exc:
            raise FormatError(f"mailbox name {name!r} has no wire form") from exc

    def astring(self, value: bytes) -> None:
        self.out += _astring(value, self.utf8, self.nonsync)

    def string(self, value: bytes) -> None:
        self.out += _string(value, self.utf8, self.nonsync)

    def literal8(self, value: bytes) -> None:
        self.out += (b"~{%d+}\r\n" if self.nonsync else b"~{%d}\r\n") % len(value) + value

    def flags(self, flags: Iterable[str]) -> None:
        self.out += b"(" + b" ".join(_flag(f) for f in flags) + b")"

    def atoms(self, words: Iterable[str]) -> None:
        self.out += b"(" + b" ".join(_atom(a) for a in words) + b")"


def _ascii(word: str, pattern: re.Pattern[bytes], what: str) -> bytes:
    octets = word.encode("ascii", "replace")
    if pattern.fullmatch(octets) is None or not word.isascii():
        raise FormatError(f"invalid {what} {word!r}")
    return octets


_Formatter: TypeAlias = Callable[[_Writer, "Command"], None]


def _tag(tag: str) -> bytes:
    return _ascii(tag, _TAG_RE, "tag")


def _atom(word: str) -> bytes:
    return _ascii(word, _ATOM_RE, "atom")


def _seq(sequence: SequenceSet) -> bytes:
    if not sequence.ranges and not sequence.saved:
        raise FormatError("empty sequence set")
    return str(sequence).encode("ascii")


def _flag(flag: str) -> bytes:
    if flag.startswith("\\"):
        return b"\\" + _atom(flag[1:])
    return _atom(flag)


def _astring(value: bytes, utf8: bool, nonsync: bool = True) -> bytes:
    if value and _ASTRING_RE.fullmatch(value):
        return value
    return _string(value, utf8, nonsync)


def _string(value: bytes, utf8: bool, nonsync: bool = True) -> bytes:
    """quoted when it can carry `value` (RFC 9051 §4.3), else a literal ("{n+}" if `nonsync`)."""
    if _UNQUOTABLE.search(value) is None and (value.isascii() or (utf8 and _is_utf8(value))):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if b"\x00" in value:
        raise FormatError("a string cannot carry NUL (only literal8 can)")
    return (b"{%d+}\r\n" if nonsync else b"{%d}\r\n") % len(value) + value


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def format_date(date: dt.date) -> bytes:
    """date-text (RFC 9051 §9): 1-Feb-1994."""
    return f"{date.day}-{MONTHS[date.month - 1]}-{date.year:04d}".encode("ascii")


def format_datetime(when: dt.datetime) -> bytes:
    """date-time (RFC 9051 §9), quoted: "17-Jul-1996 02:44:25 -0700". Seconds precision."""
    offset = when.utcoffset()
    if offset is None or offset.total_seconds() % 60:
        raise FormatError("date-time needs a timezone of whole minutes")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return (
        f'"{when.day:02d}-{MONTHS[when.month - 1]}-{when.year:04d} '
        f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hours:02d}{mins:02d}"'
    ).encode("ascii")


def _format_search_key(w: _Writer, key: SearchKey) -> None:
    match key:
        case SearchFlag(name):
            w.raw(name.encode("ascii"))
        case SearchString(name, value):
            w.raw(name.encode("ascii") + b" ")
            w.astring(value)
        case SearchHeader(field, value):
            w.raw(b"HEADER ")
            w.astring(field.encode("utf-8"))
            w.raw(b" ")
            w.astring(value)
        case SearchKeyword(keyword, negated):
            w.raw((b"UNKEYWORD " if negated else b"KEYWORD ") + _atom(keyword))
        case SearchDate(name, date):
            w.raw(name.encode("ascii") + b" " + format_date(date))
        case SearchSize(name, size) | SearchAge(name, size):
            w.raw(b"%s %d" % (name.encode("ascii"), size))
        case SearchSet(sequence, uid):
            w.raw((b"UID " if uid else b"") + _seq(sequence))
        case SearchModSeq(modseq, entry, entry_type):
            w.raw(b"MODSEQ ")
            if entry is not None:
                w.string(entry.encode("utf-8"))
                w.raw(b" " + (entry_type or "all").encode("ascii") + b" ")
            w.raw(b"%d" % modseq)
        case SearchNot(inner):
            w.raw(b"NOT ")
            _format_search_key(w, inner)
        case SearchOr(left, right):
            w.raw(b"OR ")
            _format_search_key(w, left)
            w.raw(b" ")
            _format_search_key(w, right)
        case SearchGroup(keys):
            w.raw(b"(")
            _format_search_keys(w, keys)
            w.raw(b")")


def _format_search_keys(w: _Writer, keys: Iterable[SearchKey]) -> None:
    for i, key in enumerate(keys):
        if i:
            w.raw(b" ")
        _format_search_key(w, key)


def _bare(name: bytes) -> _Formatter:
    def fmt(w: _Writer, cmd: Command) -> None:
        w.raw(name)

    return fmt


def _fmt_authenticate(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Authenticate)
    w.raw(b"AUTHENTICATE " + _atom(cmd.mechanism))
    if cmd.initial_response is not None:
        w.raw(b" " + (base64.b64encode(cmd.initial_response) or b"="))


def _fmt_login(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Login)
    w.raw(b"LOGIN ")
    w.astring(cmd.userid.encode("utf-8"))
    w.raw(b" ")
    w.astring(cmd.password)


def _fmt_enable(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Enable)
    w.raw(b"ENABLE" + b"".join(b" " + _atom(c) for c in cmd.capabilities))


def _fmt_select(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Select)
    w.raw(b"EXAMINE " if cmd.readonly else b"SELECT ")
    w.mailbox(cmd.mailbox)
    params: list[bytes] = []
    if cmd.condstore:
        params.append(b"CONDSTORE")
    if (q := cmd.qresync) is not None:
        text = b"QRESYNC (%d %d" % (q.uidvalidity, q.modseq)
        if q.known_uids is not None:
            text += b" " + _seq(q.known_uids)
        if q.seq_match is not None:
            seqs, uids = q.seq_match
            text += b" (%s %s)" % (_seq(seqs), _seq(uids))
        params.append(text + b")")
    if params:
        w.raw(b" (" + b" ".join(params) + b")")


def _fmt_create(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Create)
    w.raw(b"CREATE ")
    w.mailbox(cmd.mailbox)
    if cmd.special_use is not None:
        w.raw(b" (USE ")
        w.flags(cmd.special_use)
        w.raw(b")")


def _mailbox_command(name: bytes) -> _Formatter:
    def fmt(w: _Writer, cmd: Command) -> None:
        assert isinstance(cmd, Delete | Subscribe | Unsubscribe)
        w.raw(name + b" ")
        w.mailbox(cmd.mailbox)

    return fmt


def _fmt_rename(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Rename)
    w.raw(b"RENAME ")
    w.mailbox(cmd.mailbox)
    w.raw(b" ")
    w.mailbox(cmd.new_name)


def _fmt_list(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, List)
    w.raw(b"LIST ")
    if cmd.selection is not None:
        w.atoms(cmd.selection)
        w.raw(b" ")
    w.mailbox(cmd.reference)
    w.raw(b" ")
    if cmd.pattern_list or len(cmd.patterns) != 1:
        w.raw(b"(")
        for i, pattern in enumerate(cmd.patterns):
            w.raw(b" " if i else b"")
            w.pattern(pattern)
        w.raw(b")")
    else:
        w.pattern(cmd.patterns[0])
    if cmd.return_options is not None:
        options = [
            b"STATUS " + b"(" + b" ".join(_atom(s) for s in cmd.status_items) + b")"
            if o == "STATUS"
            else _atom(o)
            for o in cmd.return_options
        ]
        w.raw(b" RETURN (" + b" ".join(options) + b")")


def _fmt_lsub(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Lsub)
    w.raw(b"LSUB ")
    w.mailbox(cmd.reference)
    w.raw(b" ")
    w.pattern(cmd.pattern)


def _fmt_status(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Status)
    w.raw(b"STATUS ")
    w.mailbox(cmd.mailbox)
    w.raw(b" ")
    w.atoms(cmd.items)


def _fmt_append(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Append)
    w.raw(b"APPEND ")
    w.mailbox(cmd.mailbox)
    for message in cmd.messages:
        if message.flags:
            w.raw(b" ")
            w.flags(message.flags)
        if message.internal_date is not None:
            w.raw(b" " + format_datetime(message.internal_date))
        if message.utf8:
            w.raw(b" UTF8 (")
            w.literal8(message.data)
            w.raw(b")")
        elif message.binary:
            w.raw(b" ")
            w.literal8(message.data)
        else:
            if b"\x00" in message.data:
                raise FormatError("a message with NUL must be sent as literal8")
            literal = b"{%d+}\r\n" if w.nonsync else b"{%d}\r\n"
            w.raw(b" " + literal % len(message.data) + message.data)


def _fmt_expunge(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Expunge)
    if cmd.uids is None:
        w.raw(b"EXPUNGE")
    else:
        w.raw(b"UID EXPUNGE " + _seq(cmd.uids))


def _fmt_search(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Search)
    w.raw(b"UID SEARCH" if cmd.uid else b"SEARCH")
    if cmd.return_options is not None:
        w.raw(b" RETURN ")
        w.atoms(cmd.return_options)
    if cmd.charset is not None:
        w.raw(b" CHARSET ")
        octets = cmd.charset.encode("ascii", "replace")
        w.raw(octets if _ATOM_RE.fullmatch(octets) else _string(octets, False))
    w.raw(b" ")
    _format_search_keys(w, cmd.criteria)


def _fmt_fetch(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Fetch)
    w.raw(b"UID FETCH " if cmd.uid else b"FETCH ")
    w.raw(_seq(cmd.sequence) + b" (")
    for i, att in enumerate(cmd.attributes):
        w.raw(b" " if i else b"")
        w.raw(att.to_bytes(utf8=w.utf8, nonsync=w.nonsync))
    w.raw(b")")
    modifiers = []
    if cmd.changed_since is not None:
        modifiers.append(b"CHANGEDSINCE %d" % cmd.changed_since)
    if cmd.vanished:
        modifiers.append(b"VANISHED")
    if modifiers:
        w.raw(b" (" + b" ".join(modifiers) + b")")


_STORE_OPS = {"replace": b"FLAGS", "add": b"+FLAGS", "remove": b"-FLAGS"}


def _fmt_store(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Store)
    w.raw(b"UID STORE " if cmd.uid else b"STORE ")
    w.raw(_seq(cmd.sequence))
    if cmd.unchanged_since is not None:
        w.raw(b" (UNCHANGEDSINCE %d)" % cmd.unchanged_since)
    w.raw(b" " + _STORE_OPS[cmd.mode] + (b".SILENT " if cmd.silent else b" "))
    w.flags(cmd.flags)


def _copy_command(name: bytes) -> _Formatter:
    def fmt(w: _Writer, cmd: Command) -> None:
        assert isinstance(cmd, Copy | Move)
        w.raw((b"UID " if cmd.uid else b"") + name + b" ")
        w.raw(_seq(cmd.sequence) + b" ")
        w.mailbox(cmd.mailbox)

    return fmt


def _fmt_id(w: _Writer, cmd: Command) -> None:
    assert isinstance(cmd, Id)
    if cmd.params is None:
        w.raw(b"ID NIL")
        return
    w.raw(b"ID (")
    for i, (key, value) in enumerate(cmd.params):
        w.raw(b" " if i else b"")
        w.string(key.encode("utf-8"))
        w.raw(b" ")
        if value is None:
            w.raw(b"NIL")
        else:
            w.string(value.encode("utf-8"))
    w.raw(b")")


_FORMATTERS: dict[type, _Formatter] = {
    Capability: _bare(b"CAPABILITY"),
    Noop: _bare(b"NOOP"),
    Logout: _bare(b"LOGOUT"),
    StartTLS: _bare(b"STARTTLS"),
    Namespace: _bare(b"NAMESPACE"),
    Idle: _bare(b"IDLE"),
    Check: _bare(b"CHECK"),
    Close: _bare(b"CLOSE"),
    Unselect: _bare(b"UNSELECT"),
    Authenticate: _fmt_authenticate,
    Login: _fmt_login,
    Enable: _fmt_enable,
    Select: _fmt_select,
    Create: _fmt_create,
    Delete: _mailbox_command(b"DELETE"),
    Subscribe: _mailbox_command(b"SUBSCRIBE"),
    Unsubscribe: _mailbox_command(b"UNSUBSCRIBE"),
    Rename: _fmt_rename,
    List: _fmt_list,
    Lsub: _fmt_lsub,
    Status: _fmt_status,
    Append: _fmt_append,
    Expunge: _fmt_expunge,
    Search: _fmt_search,
    Fetch: _fmt_fetch,
    Store: _fmt_store,
    Copy: _copy_command(b"COPY"),
    Move: _copy_command(b"MOVE"),
    Id: _fmt_id,
}
