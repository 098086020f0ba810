"""IMAP client commands, sans I/O: framing (literals, limits) and parsing (RFC 9051 §9).

Theory of operation
-------------------
An IMAP command is a line, except that a line ending in a literal announcement ("{n}" or
"{n+}", or "~{n}" / "~{n+}" for literal8) is followed by n raw octets and then by more of the
same command: another line, which may itself announce a literal (RFC 9051 §4.3, §7.6). The
`CommandReader` is fed bytes and cuts them into `RawCommand`s: the lines, with the announcements
taken off, and the literals between them (`lines[i]` is followed by `literals[i]`). It never
looks inside a line beyond its end; tokens are the parser's business.

`CommandReader.next_event()` returns:

* `RawCommand` - one whole command; hand it to `parse_command`.
* `ContinuationRequest` - a synchronising literal was announced and fits the limits. The server
  either sends "+ ..." and calls `next_event()` again (the reader then reads the literal), or
  refuses the command (say NO [TRYCREATE] to an APPEND) with `refuse_literal()` followed by its
  tagged reply. Either way the client sends nothing of the literal until it sees "+", so the
  reader stays in step.
* `NEED_DATA` - everything buffered is consumed; read more from the peer, then `feed()`.

and raises `IMAPParseError` (`TooBig` for the limits) for what cannot be framed. A non-fatal
error has already put the reader back in step; the server answers `err.to_bytes()` (tagged BAD)
and carries on. A fatal one (`err.fatal`) means the byte stream can no longer be followed: the
server sends `* BYE` and closes, and the reader keeps raising it.

Limits (RFC 9051 leaves them to the server; RFC 7888 §4-5 for non-synchronising literals):

* A synchronising literal larger than `max_literal`, or one that would take the command past
  `max_command`, is refused at once with BAD [TOOBIG] and no "+": the client will not send it.
* A non-synchronising literal larger than `max_literal` cannot be skipped at an affordable cost:
  BYE [TOOBIG], fatal. One within `max_literal` but over `max_nonsync_literal` (LITERAL-: 4096)
  or over `max_command` is read and thrown away with the rest of the command (RFC 7888 §4
  choice 1), then answered BAD [TOOBIG].
* The lines of one command together may not exceed `max_line` octets. A longer command is thrown
  away up to its end (skipping the non-synchronising literals it announces) and answered BAD
  [TOOBIG]; if its last line announces a non-synchronising literal beyond `max_literal`, BYE.

So the reader holds at most `max_command` octets of a command plus what the adapter last fed
(feed only after NEED_DATA), whatever the peer sends. Bare LF ends a line as CRLF does (as in
Dovecot and Cyrus); a CR elsewhere in a line is left for the parser to reject.

Parsing
-------
`parse_command(raw, utf8=...)` turns a `RawCommand` into one of the dataclasses of
`homing.proto.imap.types`, or raises `IMAPParseError` carrying the tag (None when the tag itself
is bad) and the text for the BAD reply. It follows RFC 9051 §9 strictly (exactly one SP between
tokens, no trailing space, case-insensitive keywords) and also accepts the IMAP4rev1 forms
RFC 9051 dropped (LSUB, CHECK, RFC822.*, NEW/OLD/RECENT, STATUS RECENT) and these extensions:
LITERAL+/-, SASL-IR, ENABLE, UNSELECT, IDLE, NAMESPACE, ID, MOVE, UIDPLUS,
ESEARCH and SEARCHRES, CONDSTORE/QRESYNC, LIST-EXTENDED/LIST-STATUS/SPECIAL-USE, MULTIAPPEND,
BINARY, WITHIN, UTF8=ACCEPT. Whether a command is allowed in the current state, or an
extension was advertised or enabled, is the server's decision.

`utf8` is true once the client enabled UTF8=ACCEPT (RFC 6855) or IMAP4rev2: quoted strings may
then carry UTF-8 and mailbox names are UTF-8; otherwise quoted strings are 7-bit and mailbox
names are modified UTF-7 (RFC 3501 §5.1.3), decoded strictly.

Nothing is parsed by backtracking regular expressions over unbounded input, and nesting (search
keys inside parentheses, NOT and OR) is limited to `MAX_NESTING` levels, so a hostile command
costs time linear in its length and never exhausts the stack.
"""

from __future__ import annotations

import binascii
import datetime as dt
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from homing.proto.imap import utf7
from homing.proto.imap.types import (
    ASTRING_CHARS,
    ATOM_CHARS,
    LIST_CHARS,
    MAX_NUMBER,
    MAX_NUMBER64,
    MONTHS,
    SPECIAL_USES,
    STAR,
    SYSTEM_FLAGS,
    TAG_CHARS,
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAtt,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    Rename,
    Search,
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
    Section,
    Select,
    SequenceSet,
    StartTLS,
    Status,
    Store,
    StoreMode,
    Subscribe,
    Unselect,
    Unsubscribe,
    char_class,
)

__all__ = [
    "MAX_NESTING",
    "NEED_DATA",
    "CommandReader",
    "ContinuationRequest",
    "IMAPParseError",
    "Limits",
    "NeedData",
    "RawCommand",
    "RawLiteral",
    "TooBig",
    "is_idle_done",
    "parse_command",
    "parse_sasl_response",
]

#: Deepest nesting of search keys (parentheses, NOT, OR) a SEARCH may use.
MAX_NESTING: Final = 100


# --- errors -------------------------------------------------------------------------------------


class IMAPParseError(Exception):
    """A command the server cannot accept as sent; the reply is BAD, or BYE when `fatal`.

    `tag` is None when the command's tag could not be read (the reply is then untagged);
    `code` is a response code without brackets ("TOOBIG"), or None.
    """

    def __init__(
        self, tag: str | None, text: str, code: str | None = None, *, fatal: bool = False
    ) -> None:
        super().__init__(text)
        self.tag = tag
        self.text = text
        self.code = code
        self.fatal = fatal

    def to_bytes(self) -> bytes:
        """The wire reply: "<tag> BAD [CODE] text", "* BAD ..." or "* BYE ..." (RFC 9051 §7.1)."""
        if self.fatal:
            head, status = "*", "BYE"
        else:
            head, status = self.tag or "*", "BAD"
        code = f"[{self.code}] " if self.code else ""
        text = re.sub(r"[\x00-\x1f\x7f]", " ", self.text)
        return f"{head} {status} {code}{text}\r\n".encode("utf-8", "replace")

    def __repr__(self) -> str:
        return (
            f"IMAPParseError(tag={self.tag!r}, text={self.text!r}, code={self.code!r}, "
            f"fatal={self.fatal!r})"
        )


class TooBig(IMAPParseError):
    """A command, line or literal over the reader's `Limits` (response code TOOBIG, RFC 4469)."""

    def __init__(self, tag: str | None, text: str, *, fatal: bool = False) -> None:
        super().__init__(tag, text, "TOOBIG", fatal=fatal)


# --- framing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """What one command may cost the server. Built by the session layer from the config."""

    max_line: int = 64 * 1024
    """Octets in the lines of one command together (literals and line ends not counted, literal
    announcements counted). RFC 7162 §4 asks servers to take at least 8192."""
    max_literal: int = 64 * 1024 * 1024
    """Octets in one literal: the largest message APPEND takes (advertise it as APPENDLIMIT)."""
    max_command: int = 64 * 1024 * 1024 + 64 * 1024
    """Octets in one command, lines and literals together (all messages of a MULTIAPPEND)."""
    max_nonsync_literal: int | None = None
    """Largest non-synchronising literal: None with LITERAL+, 4096 with LITERAL- (RFC 7888 §5)."""


@dataclass(frozen=True, slots=True)
class RawLiteral:
    """The octets of one literal; `binary` for literal8 ("~{n}", RFC 3516 §4.3)."""

    data: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class RawCommand:
    """One framed command: `lines[i]` (announcement removed) is followed by `literals[i]`;
    there is always one line more than literals. Line ends are not included."""

    lines: tuple[bytes, ...]
    literals: tuple[RawLiteral, ...] = ()

    @property
    def tag(self) -> str | None:
        return _leading_tag(self.lines[0])

    @property
    def size(self) -> int:
        return sum(map(len, self.lines)) + sum(len(lit.data) for lit in self.literals)


@dataclass(frozen=True, slots=True)
class ContinuationRequest:
    """A synchronising literal of `size` octets was announced: send "+" or `refuse_literal()`.

    `tag` and `command` ("APPEND", "UID SEARCH"; "" when unreadable) come from the command's
    first line, so the server can refuse before the octets come.
    """

    tag: str | None
    command: str
    size: int
    binary: bool


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA

_CR, _LF, _SP = 0x0D, 0x0A, 0x20
_TAIL = 64  # octets kept from a line being thrown away: enough for any sane announcement
_HUGE = MAX_NUMBER64 + 1  # the size given to announcements with more digits than a number64


class _Mode(enum.Enum):
    LINE = "line"  # reading a line of a command (or a raw line for next_line())
    LITERAL = "literal"  # reading the octets of an accepted literal
    DISCARD = "discard"  # throwing away the rest of an over-limit command


@dataclass(frozen=True, slots=True)
class _Announcement:
    start: int  # where "{" (or "~") begins in the line
    size: int
    nonsync: bool
    binary: bool


def _announcement(line: bytes) -> _Announcement | None:
    """The literal announcement ending `line` (CRLF removed), if any: {n} {n+} ~{n} ~{n+}."""
    if not line.endswith(b"}"):
        return None
    start = line.rfind(b"{")
    if start < 0:
        return None
    inner = line[start + 1 : -1]
    nonsync = inner.endswith(b"+")
    digits = inner[:-1] if nonsync else inner
    if not digits or not digits.isdigit():  # bytes.isdigit() is ASCII-only
        return None
    significant = digits.lstrip(b"0")
    size = int(significant or b"0") if len(significant) <= 19 else _HUGE
    binary = start > 0 and line[start - 1] == ord("~")
    return _Announcement(start - 1 if binary else start, size, nonsync, binary)


_TAG_RE = re.compile(b"[" + char_class(TAG_CHARS) + b"]+")


def _leading_tag(line: bytes) -> str | None:
    match = _TAG_RE.match(line)
    if match is None or (match.end() < len(line) and line[match.end()] != _SP):
        return None
    return match.group().decode("ascii")


def _command_name(line: bytes) -> str:
    words = line.split(b" ", 3)
    name = words[1].upper() if len(words) > 1 else b""
    if name == b"UID" and len(words) > 2:
        name += b" " + words[2].upper()
    return name.decode("ascii") if name.replace(b" ", b"").isalpha() else ""


class CommandReader:
    """Cuts a byte stream from an IMAP client into commands (see the module docstring)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._scan = 0  # where to go on looking for LF in _buf
        self._mode = _Mode.LINE
        self._fatal: IMAPParseError | None = None
        # The command being read.
        self._lines: list[bytes] = []
        self._literals: list[RawLiteral] = []
        self._line_octets = 0
        self._size = 0
        # LITERAL mode.
        self._need = 0
        self._binary = False
        self._chunks: list[bytes] = []
        self._awaiting_continuation = False
        # DISCARD mode.
        self._tail = b""
        self._skip = 0
        self._pending: TooBig | None = None
        self._raw_line = False  # discarding a next_line() line: no literals in it

    @property
    def buffered(self) -> int:
        """Octets fed but not yet consumed (STARTTLS: must be 0 when the handshake starts)."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Add octets received from the client (ignored once a fatal error was raised)."""
        if self._fatal is None:
            self._buf += data

    def reset(self) -> None:
        """Forget everything buffered and any command in progress (after STARTTLS, RFC 9051
        §6.2.1, bytes received before the TLS handshake must not be used)."""
        if self._fatal is None:
            self._buf.clear()
            self._scan = 0
            self._mode = _Mode.LINE
            self._skip = 0
            self._pending = None
            self._tail = b""
            self._raw_line = False
            self._clear_command()

    def next_event(self) -> RawCommand | ContinuationRequest | NeedData:
        """The next complete command, a continuation request, or NEED_DATA."""
        if self._fatal is not None:
            raise self._fatal
        while True:
            if self._mode is _Mode.LITERAL:
                if not self._read_literal():
                    return NEED_DATA
                continue
            if self._mode is _Mode.DISCARD:
                self._discard()  # raises once the command has been thrown away
                return NEED_DATA
            line = self._take_line(self.limits.max_line - self._line_octets)
            if line is None:
                if self._discarding():
                    continue
                return NEED_DATA
            event = self._on_line(line)
            if event is not None:
                return event

    def next_line(self) -> bytes | NeedData:
        """A raw line (no literals), for an AUTHENTICATE response or IDLE's DONE, or NEED_DATA.

        Call it only between commands. A line over `max_line` is thrown away and raises TooBig
        (not fatal) once its end has been read.
        """
        if self._fatal is not None:
            raise self._fatal
        if self._lines or self._mode is _Mode.LITERAL:
            raise RuntimeError("next_line() called in the middle of a command")
        if self._mode is _Mode.DISCARD:
            self._discard()
            return NEED_DATA
        self._raw_line = True  # stays set while the line is being thrown away
        try:
            line = self._take_line(self.limits.max_line)
            if line is None:
                if self._discarding():
                    self._discard()
                return NEED_DATA
            return line
        finally:
            if not self._discarding():
                self._raw_line = False

    def refuse_literal(self) -> None:
        """Drop the command whose synchronising literal was just announced; the client, given
        no "+", sends none of it and starts a new command after the server's reply."""
        if not self._awaiting_continuation:
            raise RuntimeError("refuse_literal() without a pending ContinuationRequest")
        self._mode = _Mode.LINE
        self._clear_command()

    # -- internals

    def _discarding(self) -> bool:
        # A method, not an inline test: the mode changes inside calls mypy cannot see into.
        return self._mode is _Mode.DISCARD

    def _clear_command(self) -> None:
        self._lines = []
        self._literals = []
        self._line_octets = 0
        self._size = 0
        self._need = 0
        self._chunks = []
        self._awaiting_continuation = False

    def _tag(self) -> str | None:
        first = self._lines[0] if self._lines else bytes(self._buf[:_TAIL])
        return _leading_tag(first)

    def _take_line(self, budget: int) -> bytes | None:
        """The next line without its line end, None if incomplete; switches to DISCARD (and
        returns None) when the line is longer than `budget`."""
        buf = self._buf
        end = buf.find(b"\n", self._scan)
        if end < 0:
            if len(buf) > budget + 1:  # +1: the CR of a CRLF split from its LF
                self._start_discard(self._over_line(), bytes(buf[-_TAIL:]))
                buf.clear()
            else:
                self._scan = len(buf)
            return None
        length = end - 1 if end and buf[end - 1] == _CR else end
        self._scan = 0
        if length > budget:
            error = self._over_line()
            tail = bytes(buf[max(0, length - _TAIL) : length])
            del buf[: end + 1]
            self._start_discard(error, b"")
            self._end_of_discarded_line(tail)
            return None
        line = bytes(buf[:length])
        del buf[: end + 1]
        return line

    def _over_line(self) -> TooBig:
        if self._raw_line:
            return TooBig(None, "Line too long")
        return TooBig(self._tag(), "Command line too long")

    def _die(self, error: TooBig) -> TooBig:
        """Make `error` fatal: the reader raises it from now on and holds nothing more."""
        self._fatal = TooBig(error.tag, error.text, fatal=True)
        self._buf.clear()
        self._clear_command()
        return self._fatal

    def _on_line(self, line: bytes) -> RawCommand | ContinuationRequest | None:
        announced = _announcement(line)
        self._lines.append(line if announced is None else line[: announced.start])
        self._line_octets += len(line)
        self._size += len(line)
        if announced is None:
            command = RawCommand(tuple(self._lines), tuple(self._literals))
            self._clear_command()
            return command
        limits = self.limits
        tag = _leading_tag(self._lines[0])
        size = announced.size
        over_command = self._size + size > limits.max_command
        if announced.nonsync:
            if size > limits.max_literal:
                raise self._die(TooBig(tag, "Literal too large"))
            nonsync_max = limits.max_nonsync_literal
            if over_command or (nonsync_max is not None and size > nonsync_max):
                self._start_discard(TooBig(tag, "Literal too large"), b"")
                self._skip = size
                return None
        elif size > limits.max_literal or over_command:
            self._clear_command()
            raise TooBig(tag, "Literal too large")
        self._mode = _Mode.LITERAL
        self._need = size
        self._binary = announced.binary
        if announced.nonsync:
            return None
        self._awaiting_continuation = True
        return ContinuationRequest(tag, _command_name(self._lines[0]), size, announced.binary)

    def _read_literal(self) -> bool:
        self._awaiting_continuation = False
        buf = self._buf
        need = self._need
        if not self._chunks and len(buf) >= need:
            data = bytes(buf[:need])
            del buf[:need]
        else:
            take = min(need, len(buf))
            if take:
                self._chunks.append(bytes(buf[:take]))
                del buf[:take]
                self._need -= take
            if self._need:
                return False
            data = b"".join(self._chunks)
            self._chunks = []
        self._literals.append(RawLiteral(data, self._binary))
        self._size += len(data)
        self._need = 0
        self._mode = _Mode.LINE
        return True

    def _start_discard(self, error: TooBig, tail: bytes) -> None:
        self._mode = _Mode.DISCARD
        self._pending = error
        self._tail = tail
        self._skip = 0
        self._scan = 0

    def _discard(self) -> None:
        """Throw input away up to the end of the over-limit command; then raise its error."""
        buf = self._buf
        while True:
            if self._skip:
                take = min(self._skip, len(buf))
                del buf[:take]
                self._skip -= take
                if self._skip:
                    return
            end = buf.find(b"\n")
            if end < 0:
                self._tail = (self._tail + bytes(buf[-_TAIL:]))[-_TAIL:]
                buf.clear()
                return
            tail = (self._tail + bytes(buf[max(0, end - _TAIL) : end]))[-_TAIL:]
            del buf[: end + 1]
            self._end_of_discarded_line(tail)

    def _end_of_discarded_line(self, tail: bytes) -> None:
        """A thrown-away line ended: skip the literal it announces, or finish the command."""
        self._tail = b""
        if tail.endswith(b"\r"):
            tail = tail[:-1]
        announced = None if self._raw_line else _announcement(tail)
        error = self._pending
        assert error is not None
        if announced is not None and announced.nonsync:
            if announced.size > self.limits.max_literal:
                raise self._die(error)
            self._skip = announced.size
            return
        # No literal, or a synchronising one the client will not send without "+".
        self._mode = _Mode.LINE
        self._pending = None
        self._raw_line = False
        self._clear_command()
        raise error


def is_idle_done(line: bytes) -> bool:
    """Whether a line read after IDLE is "DONE" (RFC 9051 §6.3.13; case-insensitive)."""
    return line.upper() == b"DONE"


def parse_sasl_response(line: bytes, tag: str | None = None) -> bytes | None:
    """A client line during AUTHENTICATE (RFC 9051 §6.2.2): the decoded octets, or None
    when the client cancels with "*". Invalid base64 raises IMAPParseError (with `tag`)."""
    if line == b"*":
        return None
    decoded = _b64decode(line)
    if decoded is None:
        raise IMAPParseError(tag, "Invalid base64 in authentication response")
    return decoded


def _b64decode(data: bytes) -> bytes | None:
    # RFC 9051 §9: base64 = *(4base64-char) [base64-terminal]; padding is required.
    if _BASE64_RE.fullmatch(data) is None:
        return None
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


# --- tokens -------------------------------------------------------------------------------------

_ATOM_RE = re.compile(b"[" + char_class(ATOM_CHARS) + b"]+")
_ASTRING_RE = re.compile(b"[" + char_class(ASTRING_CHARS) + b"]+")
_LIST_RE = re.compile(b"[" + char_class(LIST_CHARS) + b"]+")
_FLAG_RE = re.compile(b"\\\\?[" + char_class(ATOM_CHARS) + b"]+")
# quoted = DQUOTE *QUOTED-CHAR DQUOTE, the escape being "\" quoted-specials only. Written as an
# unrolled loop: every octet has one way to match, so a failing match costs linear time.
_QUOTED_RE = re.compile(rb'"([^"\\]*(?:\\["\\][^"\\]*)*)"')
_UNESCAPE_RE = re.compile(rb'\\(["\\])')
_NOT_TEXT_RE = re.compile(rb"[\x00\r\n]")
_DIGITS_RE = re.compile(rb"[0-9]+")
_BASE64_RE = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_SEQSET_RE = re.compile(rb"(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?(?:,(?:[0-9]+|\*)(?::(?:[0-9]+|\*))?)*")
_NAME_RE = re.compile(rb"[A-Za-z0-9.]+")  # fetch-att and section-text names
_STORE_OP_RE = re.compile(rb"[+-]?[A-Za-z]+(?:\.[A-Za-z]+)?")
_DATE_RE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATETIME_RE = re.compile(
    rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{4})"'
)
_MONTHS = {m.lower().encode("ascii"): i for i, m in enumerate(MONTHS, 1)}
_SEQ_CHARS = frozenset(b"0123456789:,*$")
_DIGIT_CHARS = frozenset(b"0123456789")
_N_CHARS = frozenset(b"Nn")
_INITIAL_RESPONSE_RE = re.compile(rb"[A-Za-z0-9+/=]+")
_DQUOTE, _LPAREN, _RPAREN = ord('"'), ord("("), ord(")")

# --- vocabularies -------------------------------------------------------------------------------

_MACROS = {  # RFC 9051 §6.4.5
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_MACRO_ATTS = {name: tuple(FetchAtt(a) for a in atts) for name, atts in _MACROS.items()}
_FETCH_ATTS = frozenset(
    {
        "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY", "BODYSTRUCTURE", "UID",
        "RFC822", "RFC822.HEADER", "RFC822.TEXT",  # RFC 3501 only
        "MODSEQ",  # RFC 7162 §3.1.4
    }
)  # fmt: skip
_SECTION_ATTS = frozenset({"BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"})
_SECTION_TEXTS = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"})
_STORE_OPS: dict[bytes, tuple[StoreMode, bool]] = {
    b"FLAGS": ("replace", False),
    b"FLAGS.SILENT": ("replace", True),
    b"+FLAGS": ("add", False),
    b"+FLAGS.SILENT": ("add", True),
    b"-FLAGS": ("remove", False),
    b"-FLAGS.SILENT": ("remove", True),
}
_STATUS_ITEMS = frozenset(
    {
        "MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE",  # RFC 9051 §6.3.11
        "RECENT",  # RFC 3501
        "HIGHESTMODSEQ",  # RFC 7162 §3.1.7
        "APPENDLIMIT",  # RFC 7889
        "MAILBOXID",  # RFC 8474
    }
)  # fmt: skip
_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_BASE = frozenset({"SUBSCRIBED", "SPECIAL-USE"})  # RFC 5258 §3, RFC 6154 §5.1
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})  # RFC 9051 §6.4.4
_SEARCH_FLAGS = frozenset(
    {
        "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN",
        "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN",
        "NEW", "OLD", "RECENT",  # RFC 3501 only
    }
)  # fmt: skip
_SEARCH_STRINGS = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATES = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_SEARCH_SIZES = frozenset({"LARGER", "SMALLER"})
_SEARCH_AGES = frozenset({"OLDER", "YOUNGER"})  # RFC 5032
_SEARCH_WITH_ARG = (
    _SEARCH_STRINGS
    | _SEARCH_DATES
    | _SEARCH_SIZES
    | _SEARCH_AGES
    | {"HEADER", "KEYWORD", "UNKEYWORD", "UID", "NOT", "OR", "MODSEQ"}
)
_ENTRY_TYPES = frozenset({"priv", "shared", "all"})  # RFC 7162 §3.1.5 entry-type-req


# --- parsing ------------------------------------------------------------------------------------


def parse_command(raw: RawCommand, *, utf8: bool = False) -> Command:
    """The command `raw` holds, or IMAPParseError. See the module docstring for `utf8`."""
    return _Parser(raw, utf8).command()


_Handler = Callable[["_Parser"], Command]


class _Parser:
    """Recursive descent over the lines and literals of one command.

    The cursor is (segment, position); a string production at the very end of a segment
    takes the literal that follows it. Every method either consumes its production or raises.
    """

    __slots__ = ("_line", "_lines", "_literals", "_pos", "_seg", "_utf8", "tag")

    def __init__(self, raw: RawCommand, utf8: bool) -> None:
        self._lines = raw.lines
        self._literals = raw.literals
        self._seg = 0
        self._line = raw.lines[0]
        self._pos = 0
        self._utf8 = utf8
        self.tag: str | None = None

    def command(self) -> Command:
        tag = self._match(_TAG_RE)
        if tag is None or self._peek() not in (_SP, -1):
            raise self._error("Empty command line" if self._at_end() else "Invalid tag")
        self.tag = tag.decode("ascii")
        if self._at_end():
            raise self._error("Missing command")
        self._sp()
        name = self._word("a command name")
        handler = _COMMANDS.get(name)
        if handler is None:
            raise self._error("Unknown command")
        return handler(self)

    # -- cursor

    def _error(self, text: str) -> IMAPParseError:
        return IMAPParseError(self.tag, text)

    def _peek(self) -> int:
        return self._line[self._pos] if self._pos < len(self._line) else -1

    def _at_end(self) -> bool:
        return self._pos == len(self._line) and self._seg == len(self._lines) - 1

    def _end(self) -> None:
        if not self._at_end():
            raise self._error("Unexpected extra arguments")

    def _expect(self, char: int) -> None:
        if self._peek() != char:
            raise self._error(f"Expected {chr(char)!r}")
        self._pos += 1

    def _sp(self) -> None:
        if self._peek() != _SP:
            raise self._error("Missing argument" if self._at_end() else "Expected a space")
        self._pos += 1

    def _match(self, pattern: re.Pattern[bytes]) -> bytes | None:
        match = pattern.match(self._line, self._pos)
        if match is None:
            return None
        self._pos = match.end()
        return match.group()

    def _word(self, what: str) -> str:
        """An atom, upper-cased (command names, keywords, options)."""
        token = self._match(_ATOM_RE)
        if token is None:
            raise self._error(f"Expected {what}")
        return token.decode("ascii").upper()

    def _peek_word(self) -> str:
        match = _ATOM_RE.match(self._line, self._pos)
        return match.group().decode("ascii").upper() if match else ""

    def _parenthesised(self, item: Callable[[], object], *, empty: bool) -> None:
        """ "(" item *(SP item) ")" (or "()" when `empty` is allowed); `item` records itself."""
        self._expect(_LPAREN)
        if self._peek() == _RPAREN and empty:
            self._pos += 1
            return
        while True:
            item()
            if self._peek() != _SP:
                break
            self._pos += 1
        self._expect(_RPAREN)

    # -- strings

    def _literal(self, *, binary_ok: bool = False) -> RawLiteral:
        literal = self._literals[self._seg]
        self._seg += 1
        self._line = self._lines[self._seg]
        self._pos = 0
        if literal.binary and not binary_ok:
            raise self._error("literal8 is only allowed in APPEND")
        if not literal.binary and b"\x00" in literal.data:
            raise self._error("NUL in literal")  # CHAR8 excludes NUL; literal8 allows it
        return literal

    def _at_literal(self) -> bool:
        return self._pos == len(self._line) and self._seg < len(self._literals)

    def _quoted(self) -> bytes:
        match = _QUOTED_RE.match(self._line, self._pos)
        if match is None:
            raise self._error("Invalid quoted string")
        self._pos = match.end()
        value = match.group(1)
        if _NOT_TEXT_RE.search(value) is not None:
            raise self._error("Invalid character in quoted string")
        if b"\\" in value:
            value = _UNESCAPE_RE.sub(rb"\1", value)
        if not value.isascii():
            # RFC 9051 §9 QUOTED-CHAR allows UTF8-2/3/4; RFC 3501 only 7-bit TEXT-CHAR.
            if not self._utf8:
                raise self._error("8-bit characters in a quoted string need UTF8=ACCEPT")
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise self._error("Invalid UTF-8 in quoted string") from None
        return value

    def _string(self) -> bytes:
        if self._peek() == _DQUOTE:
            return self._quoted()
        if self._at_literal():
            return self._literal().data
        raise self._error("Expected a string")

    def _astring(self) -> bytes:
        if self._peek() == _DQUOTE:
            return self._quoted()
        if self._at_literal():
            return self._literal().data
        token = self._match(_ASTRING_RE)
        if token is None:
            raise self._error("Expected a string")
        return token

    def _nstring(self) -> bytes | None:
        if self._peek() in _N_CHARS:
            if self._word("NIL") != "NIL":
                raise self._error("Expected a string or NIL")
            return None
        return self._string()

    def _text(self, value: bytes, what: str) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise self._error(f"{what} is not valid UTF-8") from None

    # -- mailbox names

    def _mailbox(self) -> str:
        raw = self._astring()
        if len(raw) == 5 and raw.upper() == b"INBOX":  # RFC 9051 §9 mailbox: INBOX in any case
            return "INBOX"
        return self._mailbox_name(raw)

    def _mailbox_name(self, raw: bytes) -> str:
        if self._utf8:
            return self._text(raw, "Mailbox name")
        try:
            return utf7.decode(raw)
        except utf7.UTF7Error:
            raise self._error("Mailbox name is not valid modified UTF-7") from None

    def _list_mailbox(self) -> str:
        """list-mailbox = 1*list-char / string: a pattern with % and * wildcards."""
        if self._peek() == _DQUOTE or self._at_literal():
            return self._mailbox_name(self._string())
        token = self._match(_LIST_RE)
        if token is None:
            raise self._error("Expected a mailbox pattern")
        return self._mailbox_name(token)

    # -- numbers, sets, dates, flags

    def _number(self, what: str, *, low: int = 0, high: int = MAX_NUMBER, nz: bool = False) -> int:
        """number / number64 / nz-number / mod-sequence-value within [low, high]."""
        token = self._match(_DIGITS_RE)
        if token is None:
            raise self._error(f"Expected {what}")
        if (nz and token[0] == ord("0")) or len(token) > 20:
            raise self._error(f"Invalid {what}")
        value = int(token)
        if not low <= value <= high:
            raise self._error(f"{what[0].upper()}{what[1:]} out of range")
        return value

    def _sequence_set(self) -> SequenceSet:
        if self._peek() == ord("$"):  # RFC 9051 §9 seq-last-command (RFC 5182 SEARCHRES)
            self._pos += 1
            if self._peek() in _SEQ_CHARS:
                raise self._error("Invalid sequence set")
            return SequenceSet((), saved=True)
        token = self._match(_SEQSET_RE)
        if token is None:
            raise self._error("Expected a sequence set")
        if self._peek() in _SEQ_CHARS:  # "1:-1", "1,,2", "1:2:3"
            raise self._error("Invalid sequence set")
        ranges = []
        for item in token.split(b","):
            first, _, last = item.partition(b":")
            start = self._seq_number(first)
            ranges.append((start, self._seq_number(last) if last else start))
        return SequenceSet(tuple(ranges))

    def _seq_number(self, token: bytes) -> int:
        """seq-number = nz-number / "*" (nz-number: no leading zero, 1..2^32-1)."""
        if token == b"*":
            return STAR
        if token[0] == ord("0") or len(token) > 10 or int(token) > MAX_NUMBER:
            raise self._error("Invalid number in sequence set")
        return int(token)

    def _known_set(self) -> SequenceSet:
        """RFC 7162 §7 known-uids / known-sequence-set / known-uid-set: "*" not allowed."""
        sequence = self._sequence_set()
        if sequence.saved or sequence.has_star:
            raise self._error("'*' and '$' are not allowed in QRESYNC sets")
        return sequence

    def _date(self) -> dt.date:
        """date = date-text / DQUOTE date-text DQUOTE; date-text = 1*2DIGIT "-" Mon "-" 4DIGIT."""
        quoted = self._peek() == _DQUOTE
        if quoted:
            self._pos += 1
        match = _DATE_RE.match(self._line, self._pos)
        if match is None:
            raise self._error("Invalid date")
        try:
            date = dt.date(int(match[3]), _MONTHS.get(match[2].lower(), 0), int(match[1]))
        except ValueError:  # month 0 (unknown name) included
            raise self._error("Invalid date") from None
        self._pos = match.end()
        if quoted:
            self._expect(_DQUOTE)
        return date

    def _datetime(self) -> dt.datetime:
        """date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE."""
        match = _DATETIME_RE.match(self._line, self._pos)
        if match is None:
            raise self._error("Invalid date-time")
        day, mon, year, hour, minute, second, sign, zone = match.groups()
        month = _MONTHS.get(mon.lower(), 0)
        hours, minutes = divmod(int(zone), 100)
        try:
            if minutes > 59:
                raise ValueError
            offset = dt.timedelta(hours=hours, minutes=minutes) * (-1 if sign == b"-" else 1)
            when = dt.datetime(
                int(year), month, int(day), int(hour), int(minute), int(second),
                tzinfo=dt.timezone(offset),
            )  # fmt: skip
        except ValueError:
            raise self._error("Invalid date-time") from None
        self._pos = match.end()
        return when

    def _flag(self) -> str:
        token = self._match(_FLAG_RE)
        if token is None:
            raise self._error("Expected a flag")
        flag = token.decode("ascii")
        return SYSTEM_FLAGS.get(flag.upper(), flag) if flag[0] == "\\" else flag

    def _flag_list(self) -> tuple[str, ...]:
        flags: list[str] = []
        self._parenthesised(lambda: flags.append(self._flag()), empty=True)
        return tuple(flags)

    def _keyword(self) -> str:
        """flag-keyword = atom (no backslash)."""
        token = self._match(_ATOM_RE)
        if token is None:
            raise self._error("Expected a keyword")
        return token.decode("ascii")

    def _status_items(self) -> tuple[str, ...]:
        items: list[str] = []

        def item() -> None:
            name = self._word("a status item")
            if name not in _STATUS_ITEMS:
                raise self._error("Unknown status item")
            items.append(name)

        self._parenthesised(item, empty=False)
        return tuple(items)

    # -- commands without arguments, and the simple ones

    def _authenticate(self) -> Command:
        self._sp()
        mechanism = self._word("a SASL mechanism")
        response = None
        if not self._at_end():
            self._sp()  # RFC 4959 §7: initial-resp = base64 / "="
            token = self._match(_INITIAL_RESPONSE_RE)
            response = None if token is None else b"" if token == b"=" else _b64decode(token)
            if response is None:
                raise self._error("Invalid base64 in initial response")
        self._end()
        return Authenticate(self._tag_str(), mechanism, response)

    def _tag_str(self) -> str:
        assert self.tag is not None
        return self.tag

    def _login(self) -> Command:
        self._sp()
        userid = self._text(self._astring(), "User name")
        self._sp()
        password = self._astring()
        self._end()
        return Login(self._tag_str(), userid, password)

    def _enable(self) -> Command:
        capabilities = []
        while True:
            self._sp()
            capabilities.append(self._word("a capability"))
            if self._at_end():
                return Enable(self._tag_str(), tuple(capabilities))

    def _select(self, readonly: bool) -> Command:
        self._sp()
        mailbox = self._mailbox()
        condstore = False
        qresync: QResync | None = None
        if not self._at_end():
            self._sp()

            def param() -> None:  # RFC 4466 select-param; RFC 7162 §3.1.8, §3.2.5.1
                nonlocal condstore, qresync
                name = self._word("a SELECT parameter")
                if name == "CONDSTORE" and not condstore:
                    condstore = True
                elif name == "QRESYNC" and qresync is None:
                    self._sp()
                    qresync = self._qresync()
                else:
                    raise self._error("Unknown or repeated SELECT parameter")

            self._parenthesised(param, empty=False)
        self._end()
        return Select(self._tag_str(), mailbox, readonly, condstore, qresync)

    def _qresync(self) -> QResync:
        self._expect(_LPAREN)
        uidvalidity = self._number("a UIDVALIDITY", low=1, nz=True)
        self._sp()
        modseq = self._number("a mod-sequence", low=1, high=MAX_NUMBER64)
        known_uids = seq_match = None
        if self._peek() == _SP:
            self._pos += 1
            if self._peek() != _LPAREN:
                known_uids = self._known_set()
                if self._peek() == _SP:
                    self._pos += 1
                    seq_match = self._seq_match()
            else:
                seq_match = self._seq_match()
        self._expect(_RPAREN)
        return QResync(uidvalidity, modseq, known_uids, seq_match)

    def _seq_match(self) -> tuple[SequenceSet, SequenceSet]:
        self._expect(_LPAREN)
        sequences = self._known_set()
        self._sp()
        uids = self._known_set()
        self._expect(_RPAREN)
        return sequences, uids

    def _create(self) -> Command:
        self._sp()
        mailbox = self._mailbox()
        special_use: tuple[str, ...] | None = None
        if not self._at_end():
            self._sp()

            def param() -> None:  # RFC 4466 create-param; RFC 6154 §3 USE
                nonlocal special_use
                if self._word("a CREATE parameter") != "USE" or special_use is not None:
                    raise self._error("Unknown or repeated CREATE parameter")
                self._sp()
                special_use = self._use_attrs()

            self._parenthesised(param, empty=False)
        self._end()
        return Create(self._tag_str(), mailbox, special_use)

    def _use_attrs(self) -> tuple[str, ...]:
        attrs: list[str] = []

        def attr() -> None:
            flag = self._flag()
            if flag[0] != "\\":
                raise self._error("Expected a special-use attribute")
            attrs.append(SPECIAL_USES.get(flag.upper(), flag))

        self._parenthesised(attr, empty=True)
        return tuple(attrs)

    def _one_mailbox(self, cls: type[Delete | Subscribe | Unsubscribe]) -> Command:
        self._sp()
        mailbox = self._mailbox()
        self._end()
        return cls(self._tag_str(), mailbox)

    def _rename(self) -> Command:
        self._sp()
        old = self._mailbox()
        self._sp()
        new = self._mailbox()
        self._end()
        return Rename(self._tag_str(), old, new)

    def _list(self) -> Command:
        self._sp()
        selection: tuple[str, ...] | None = None
        if self._peek() == _LPAREN:
            selection = self._options(_LIST_SELECT, "LIST selection option")
            if "RECURSIVEMATCH" in selection and not _LIST_BASE.intersection(selection):
                # RFC 9051 §6.3.9.1: RECURSIVEMATCH alone (or with REMOTE) is a BAD.
                raise self._error("RECURSIVEMATCH needs another selection option")
            self._sp()
        reference = self._mailbox()
        self._sp()
        patterns: list[str] = []
        pattern_list = self._peek() == _LPAREN
        if pattern_list:
            self._parenthesised(lambda: patterns.append(self._list_mailbox()), empty=False)
        else:
            patterns.append(self._list_mailbox())
        return_options: tuple[str, ...] | None = None
        status_items: tuple[str, ...] = ()
        if not self._at_end():
            self._sp()
            if self._word("RETURN") != "RETURN":
                raise self._error("Expected RETURN")
            self._sp()
            options: list[str] = []

            def option() -> None:
                nonlocal status_items
                name = self._word("a LIST return option")
                if name not in _LIST_RETURN or name in options:
                    raise self._error("Unknown or repeated LIST return option")
                if name == "STATUS":  # RFC 5819 / RFC 9051 status-option
                    self._sp()
                    status_items = self._status_items()
                options.append(name)

            self._parenthesised(option, empty=True)
            return_options = tuple(options)
        self._end()
        return List(
            self._tag_str(), reference, tuple(patterns), selection, return_options,
            status_items, pattern_list,
        )  # fmt: skip

    def _options(self, allowed: frozenset[str], what: str) -> tuple[str, ...]:
        options: list[str] = []

        def option() -> None:
            name = self._word(f"a {what}")
            if name not in allowed:
                raise self._error(f"Unknown {what}")
            options.append(name)

        self._parenthesised(option, empty=True)
        return tuple(options)

    def _lsub(self) -> Command:
        self._sp()
        reference = self._mailbox()
        self._sp()
        pattern = self._list_mailbox()
        self._end()
        return Lsub(self._tag_str(), reference, pattern)

    def _status(self) -> Command:
        self._sp()
        mailbox = self._mailbox()
        self._sp()
        items = self._status_items()
        self._end()
        return Status(self._tag_str(), mailbox, items)

    def _append(self) -> Command:
        """RFC 9051 §6.3.12 / RFC 3502 §6.3.11: APPEND mailbox 1*([flags] [date-time] literal)."""
        self._sp()
        mailbox = self._mailbox()
        messages = []
        while True:
            self._sp()
            flags: tuple[str, ...] = ()
            if self._peek() == _LPAREN:
                flags = self._flag_list()
                self._sp()
            internal_date = None
            if self._peek() == _DQUOTE:
                internal_date = self._datetime()
                self._sp()
            if self._at_literal():
                literal = self._literal(binary_ok=True)
                messages.append(AppendMessage(literal.data, flags, internal_date, literal.binary))
            elif self._word("a message literal") == "UTF8":  # RFC 6855 §4
                self._sp()
                self._expect(_LPAREN)
                if not self._at_literal():
                    raise self._error("Expected a literal8")
                literal = self._literal(binary_ok=True)
                if not literal.binary:
                    raise self._error("Expected a literal8")
                self._expect(_RPAREN)
                messages.append(AppendMessage(literal.data, flags, internal_date, True, True))
            else:
                raise self._error("Expected a message literal")
            if self._at_end():
                return Append(self._tag_str(), mailbox, tuple(messages))

    def _expunge(self, uid: bool) -> Command:
        uids = None
        if uid:  # RFC 9051 §6.4.9 uid-expunge
            self._sp()
            uids = self._sequence_set()
        self._end()
        return Expunge(self._tag_str(), uids)

    def _copy(self, cls: type[Copy | Move], uid: bool) -> Command:
        self._sp()
        sequence = self._sequence_set()
        self._sp()
        mailbox = self._mailbox()
        self._end()
        return cls(self._tag_str(), sequence, mailbox, uid)

    def _id(self) -> Command:
        """RFC 2971 §4: ID ("(" *(string SP nstring) ")" / NIL)."""
        self._sp()
        if self._peek() in _N_CHARS:
            if self._word("NIL") != "NIL":
                raise self._error("Expected a parameter list or NIL")
            self._end()
            return Id(self._tag_str(), None)
        params: list[tuple[str, str | None]] = []

        def pair() -> None:
            key = self._string().decode("utf-8", "replace")
            self._sp()
            value = self._nstring()
            params.append((key, None if value is None else value.decode("utf-8", "replace")))

        self._parenthesised(pair, empty=True)
        self._end()
        return Id(self._tag_str(), tuple(params))

    def _uid(self) -> Command:
        self._sp()
        name = self._word("a UID command")
        handler = _UID_COMMANDS.get(name)
        if handler is None:
            raise self._error("Unknown UID command")
        return handler(self)

    # -- FETCH (RFC 9051 §6.4.5, RFC 7162 §3.1.4, §3.2.6)

    def _fetch(self, uid: bool) -> Command:
        self._sp()
        sequence = self._sequence_set()
        self._sp()
        attributes: list[FetchAtt] = []
        if self._peek() == _LPAREN:
            self._parenthesised(lambda: attributes.append(self._fetch_att()), empty=False)
        else:
            macro = _MACRO_ATTS.get(self._peek_word())
            if macro is not None:  # a macro must be used by itself
                self._word("a macro")
                attributes.extend(macro)
            else:
                attributes.append(self._fetch_att())
        changed_since: int | None = None
        vanished = False
        if not self._at_end():
            self._sp()

            def modifier() -> None:
                nonlocal changed_since, vanished
                name = self._word("a FETCH modifier")
                if name == "CHANGEDSINCE" and changed_since is None:
                    self._sp()  # chgsince-fetch-mod takes a mod-sequence-value: 0 is not one
                    changed_since = self._number("a mod-sequence", low=1, high=MAX_NUMBER64)
                elif name == "VANISHED" and not vanished:
                    vanished = True
                else:
                    raise self._error("Unknown or repeated FETCH modifier")

            self._parenthesised(modifier, empty=False)
            if vanished and (not uid or changed_since is None):
                # RFC 7162 §3.2.6: UID FETCH only, and only together with CHANGEDSINCE.
                raise self._error("VANISHED needs UID FETCH with CHANGEDSINCE")
        self._end()
        return Fetch(self._tag_str(), sequence, tuple(attributes), uid, changed_since, vanished)

    def _fetch_att(self) -> FetchAtt:
        token = self._match(_NAME_RE)
        name = token.decode("ascii").upper() if token else ""
        if name in _SECTION_ATTS and self._peek() == ord("["):
            peek = name.endswith(".PEEK")
            base = name.removesuffix(".PEEK")
            section = self._section() if base == "BODY" else self._section_binary()
            partial = None
            if base != "BINARY.SIZE" and self._peek() == ord("<"):
                partial = self._partial()
            return FetchAtt(base, section, partial, peek)
        if name not in _FETCH_ATTS:
            raise self._error("Unknown FETCH attribute")
        return FetchAtt(name)

    def _section(self) -> Section:
        """section = "[" [section-spec] "]" (RFC 9051 §6.4.5.1)."""
        self._expect(ord("["))
        part: list[int] = []
        text = None
        fields: list[str] = []
        while self._peek() != ord("]") or part:  # after "1." a part or text must follow
            if self._peek() in _DIGIT_CHARS:
                part.append(self._number("a part number", low=1, nz=True))
                if self._peek() == ord("."):
                    self._pos += 1
                    continue
                break
            token = self._match(_NAME_RE)
            text = token.decode("ascii").upper() if token else ""
            # MIME needs a part number; the others may stand alone (RFC 9051 §6.4.5.1).
            if text not in _SECTION_TEXTS or (text == "MIME" and not part):
                raise self._error("Invalid section")
            if text.startswith("HEADER.FIELDS"):
                self._sp()
                self._parenthesised(
                    lambda: fields.append(self._text(self._astring(), "Header field name")),
                    empty=False,
                )
            break
        self._expect(ord("]"))
        return Section(tuple(part), text, tuple(fields))

    def _section_binary(self) -> Section:
        """section-binary = "[" [section-part] "]"."""
        self._expect(ord("["))
        part: list[int] = []
        if self._peek() != ord("]"):
            part.append(self._number("a part number", low=1, nz=True))
            while self._peek() == ord("."):
                self._pos += 1
                part.append(self._number("a part number", low=1, nz=True))
        self._expect(ord("]"))
        return Section(tuple(part))

    def _partial(self) -> tuple[int, int]:
        """partial = "<" number64 "." nz-number64 ">"."""
        self._expect(ord("<"))
        offset = self._number("an offset", high=MAX_NUMBER64)
        self._expect(ord("."))
        count = self._number("a length", low=1, high=MAX_NUMBER64, nz=True)
        self._expect(ord(">"))
        return offset, count

    # -- STORE (RFC 9051 §6.4.6, RFC 7162 §3.1.3)

    def _store(self, uid: bool) -> Command:
        self._sp()
        sequence = self._sequence_set()
        self._sp()
        unchanged_since: int | None = None
        if self._peek() == _LPAREN:

            def modifier() -> None:
                nonlocal unchanged_since
                if (
                    self._word("a STORE modifier") != "UNCHANGEDSINCE"
                    or unchanged_since is not None
                ):
                    raise self._error("Unknown or repeated STORE modifier")
                self._sp()
                unchanged_since = self._number("a mod-sequence", high=MAX_NUMBER64)

            self._parenthesised(modifier, empty=False)
            self._sp()
        token = self._match(_STORE_OP_RE)
        operation = _STORE_OPS.get(token.upper()) if token else None
        if operation is None:
            raise self._error("Expected FLAGS, +FLAGS or -FLAGS")
        mode, silent = operation
        self._sp()
        if self._peek() == _LPAREN:
            flags = self._flag_list()
        else:
            flags_: list[str] = [self._flag()]
            while self._peek() == _SP:
                self._pos += 1
                flags_.append(self._flag())
            flags = tuple(flags_)
        self._end()
        return Store(self._tag_str(), sequence, mode, flags, silent, uid, unchanged_since)

    # -- SEARCH (RFC 9051 §6.4.4, RFC 7162 §3.1.5, RFC 5032)

    def _search(self, uid: bool) -> Command:
        self._sp()
        return_options: tuple[str, ...] | None = None
        charset: str | None = None
        if self._peek_word() == "RETURN":
            self._word("RETURN")
            self._sp()
            return_options = self._options(_SEARCH_RETURN, "SEARCH return option")
            self._sp()
        if self._peek_word() == "CHARSET":
            self._word("CHARSET")
            self._sp()
            charset = self._charset()
            self._sp()
        criteria = [self._search_key(1)]
        while not self._at_end():
            self._sp()
            criteria.append(self._search_key(1))
        return Search(self._tag_str(), tuple(criteria), charset, return_options, uid)

    def _charset(self) -> str:
        """charset = atom / quoted."""
        if self._peek() == _DQUOTE:
            value = self._quoted()
            if not value or not value.isascii():
                raise self._error("Invalid charset")
            return value.decode("ascii")
        token = self._match(_ATOM_RE)
        if token is None:
            raise self._error("Expected a charset")
        return token.decode("ascii")

    def _search_key(self, depth: int) -> SearchKey:
        if depth > MAX_NESTING:
            raise self._error("Search keys nested too deeply")
        char = self._peek()
        if char == _LPAREN:
            keys: list[SearchKey] = []
            self._parenthesised(lambda: keys.append(self._search_key(depth + 1)), empty=False)
            return SearchGroup(tuple(keys))
        if char in _SEQ_CHARS:
            return SearchSet(self._sequence_set())
        name = self._word("a search key")
        if name in _SEARCH_FLAGS:
            return SearchFlag(name)
        if name not in _SEARCH_WITH_ARG:
            raise self._error("Unknown search key")
        self._sp()
        if name in _SEARCH_STRINGS:
            return SearchString(name, self._astring())
        if name in _SEARCH_DATES:
            return SearchDate(name, self._date())
        if name in _SEARCH_SIZES:
            return SearchSize(name, self._number("a size", high=MAX_NUMBER64))
        if name in _SEARCH_AGES:
            return SearchAge(name, self._number("an interval", low=1, nz=True))
        if name == "HEADER":
            field = self._text(self._astring(), "Header field name")
            self._sp()
            return SearchHeader(field, self._astring())
        if name in ("KEYWORD", "UNKEYWORD"):
            return SearchKeyword(self._keyword(), name == "UNKEYWORD")
        if name == "UID":
            return SearchSet(self._sequence_set(), uid=True)
        if name == "NOT":
            return SearchNot(self._search_key(depth + 1))
        if name == "OR":
            left = self._search_key(depth + 1)
            self._sp()
            return SearchOr(left, self._search_key(depth + 1))
        return self._search_modseq()

    def _search_modseq(self) -> SearchModSeq:
        """MODSEQ [SP entry-name SP entry-type-req] SP mod-sequence-valzer (RFC 7162 §7)."""
        entry = entry_type = None
        if self._peek() == _DQUOTE:
            entry = self._text(self._quoted(), "Entry name")
            if not entry.lower().startswith("/flags/") or len(entry) == len("/flags/"):
                raise self._error("Invalid MODSEQ entry name")
            self._sp()
            entry_type = self._word("an entry type").lower()
            if entry_type not in _ENTRY_TYPES:
                raise self._error("Invalid MODSEQ entry type")
            self._sp()
        modseq = self._number("a mod-sequence", high=MAX_NUMBER64)
        return SearchModSeq(modseq, entry, entry_type)


def _no_arguments(cls: Callable[[str], Command]) -> _Handler:
    def handler(parser: _Parser) -> Command:
        parser._end()
        return cls(parser._tag_str())

    return handler


_COMMANDS: dict[str, _Handler] = {
    "CAPABILITY": _no_arguments(Capability),
    "NOOP": _no_arguments(Noop),
    "LOGOUT": _no_arguments(Logout),
    "STARTTLS": _no_arguments(StartTLS),
    "NAMESPACE": _no_arguments(Namespace),
    "IDLE": _no_arguments(Idle),
    "CHECK": _no_arguments(Check),
    "CLOSE": _no_arguments(Close),
    "UNSELECT": _no_arguments(Unselect),
    "AUTHENTICATE": _Parser._authenticate,
    "LOGIN": _Parser._login,
    "ENABLE": _Parser._enable,
    "SELECT": lambda p: p._select(readonly=False),
    "EXAMINE": lambda p: p._select(readonly=True),
    "CREATE": _Parser._create,
    "DELETE": lambda p: p._one_mailbox(Delete),
    "SUBSCRIBE": lambda p: p._one_mailbox(Subscribe),
    "UNSUBSCRIBE": lambda p: p._one_mailbox(Unsubscribe),
    "RENAME": _Parser._rename,
    "LIST": _Parser._list,
    "LSUB": _Parser._lsub,
    "STATUS": _Parser._status,
    "APPEND": _Parser._append,
    "EXPUNGE": lambda p: p._expunge(uid=False),
    "SEARCH": lambda p: p._search(uid=False),
    "FETCH": lambda p: p._fetch(uid=False),
    "STORE": lambda p: p._store(uid=False),
    "COPY": lambda p: p._copy(Copy, uid=False),
    "MOVE": lambda p: p._copy(Move, uid=False),
    "ID": _Parser._id,
    "UID": _Parser._uid,
}

_UID_COMMANDS: dict[str, _Handler] = {
    "EXPUNGE": lambda p: p._expunge(uid=True),
    "SEARCH": lambda p: p._search(uid=True),
    "FETCH": lambda p: p._fetch(uid=True),
    "STORE": lambda p: p._store(uid=True),
    "COPY": lambda p: p._copy(Copy, uid=True),
    "MOVE": lambda p: p._copy(Move, uid=True),
}
