"""Sans-I/O SMTP client session (RFC 5321) for delivering to a mail exchanger or a smarthost, with
PIPELINING, SIZE, 8BITMIME, SMTPUTF8, CHUNKING, DSN, STARTTLS and AUTH PLAIN.

Theory of operation
-------------------
`ClientConnection` mirrors the server core: the driver feeds it the peer's bytes with
`receive_data()` (b"" when the peer closed), asks for events with `next_event()` until it says
`NEED_DATA`, and writes whatever `data_to_send()` returns. The core never awaits, reads a clock or
touches a socket (ARCHITECTURE.md rule 1).

The driver hands over work with `start_transaction()` (before the greeting or whenever the
previous transaction is done) and ends the session with `quit()`. Events:

* `NeedStartTLS`    -> flush, run the TLS handshake, call `tls_established()` or `tls_failed()`.
* `TransactionDone` -> one result per recipient; start another transaction or `quit()`.
* `SessionFailed`   -> the session is over (greeting refused, EHLO/HELO refused, TLS required and
                       missing, a 421, a malformed reply, lost connection, timeout); the results
                       of the transaction in progress say which recipients are settled anyway.
* `Closed`          -> flush what is queued (perhaps a QUIT), close; nothing more will come.
* `NEED_DATA`       -> read more (after flushing `data_to_send()`).

Every command sent is pushed on a queue of awaited replies and every reply is matched to the
oldest one (RFC 2920 §3.2: replies come in order), so pipelined and one-at-a-time sessions run
the same reply handlers; they differ only in how much is written before waiting.

State table (anything else is a `RuntimeError` from the driver side, or a `SessionFailed`):

    GREETING --220--> SETUP: EHLO --5xx--> HELO
    SETUP --STARTTLS offered--> STARTTLS --220--> TLS --tls_established()--> SETUP: EHLO again
    SETUP --credentials--> AUTH PLAIN --235--> READY
    READY --start_transaction()--> TRANSACTION: [RSET] MAIL RCPT... DATA|BDAT --> READY
    READY --quit()--> QUIT --221 or EOF--> CLOSED;  any --failure--> CLOSED

Choices (documented where the RFCs leave them open):

* Message text is CRLF-normalised (a bare CR or LF becomes CRLF, RFC 5321 §2.3.8), and a line
  longer than `max_line` octets is folded by inserting CRLF SP (as Postfix's
  smtp_line_length_limit does): header fields stay well-formed folded fields and no new line can
  start with "." or a MIME boundary "--". A line that starts with "." is folded one octet earlier,
  so even dot-stuffed no line on the wire exceeds the limit (RFC 5321 §4.5.3.1.6).
* An 8-bit message for a server without 8BITMIME is not downgraded (no MIME re-encoding here):
  its recipients fail with 554 5.6.3, RFC 6152 §3's other option. The queue may re-encode and
  retry with `needs_8bit=False`.
* With CHUNKING the message goes as one `BDAT <n> LAST` (RFC 3030 §2), pipelined with MAIL and
  RCPT only when it is at most `pipeline_bdat_limit` octets; a larger one waits for the RCPT
  replies so it is never sent to a server that refused every recipient.
* SMTPUTF8 (RFC 6531 §3.5) is demanded of the server, else 553 5.6.7, for a non-ASCII local part,
  or when the sender asked for SMTPUTF8 and the header or a domain really is UTF-8. Raw UTF-8 in
  a header that never asked is sent as it came (needing only 8BITMIME), as Postfix does.
* A reply to RCPT of 552 is treated as temporary (RFC 5321 §4.5.3.1.10).
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, TypeAlias

from homing.mail.address import AddressError, Path
from homing.mail.reply import Reply
from homing.proto.smtp import codes
from homing.proto.smtp.errors import SMTPProtocolError
from homing.proto.smtp.grammar import MailArgs, RcptArgs, format_mail_arg, format_rcpt_arg

# --------------------------------------------------------------------------- local replies
# Replies the client makes up itself, for the queue and the bounce (RFC 3463 codes).
CONNECTION_LOST = Reply(451, "4.4.2", "Connection lost")  # RFC 5321 §3.8, X.4.2 bad connection
TIMED_OUT = Reply(451, "4.4.2", "Timed out waiting for the server")  # RFC 5321 §4.5.3.2, X.4.2
MALFORMED_REPLY = Reply(451, "4.5.0", "Malformed reply from server")  # X.5.0 protocol status
TLS_NOT_OFFERED = Reply(451, "4.7.4", "TLS is required, but was not offered")  # X.7.4
TLS_FAILED = Reply(451, "4.7.5", "TLS handshake failed")  # RFC 3463 X.7.5 cryptographic failure
AUTH_NOT_OFFERED = Reply(451, "4.7.4", "Server does not offer AUTH PLAIN")  # X.7.4
AUTH_NEEDS_TLS = Reply(451, "4.7.4", "Not sending credentials without TLS")  # RFC 4616 §6
CONVERSION_REQUIRED = Reply(
    554, "5.6.3", "Message is 8-bit and the server does not support 8BITMIME"
)  # RFC 6152 §3, RFC 3463 X.6.3 conversion required but not supported
SMTPUTF8_NOT_OFFERED = codes.SMTPUTF8_REQUIRED.with_text(
    "Message needs SMTPUTF8 and the server does not support it"
)  # RFC 6531 §3.5: 553 5.6.7
REQUIRETLS_NOT_OFFERED = Reply(550, "5.7.30", "REQUIRETLS support required")  # RFC 8689 §5
BAD_ENVELOPE = codes.PARAM_SYNTAX.with_text("Envelope cannot be sent on the wire")
MAY_HAVE_BEEN_DELIVERED = "; the message may have been delivered"  # RFC 5321 §6.1

_MAX_REPLY_LINE = 8192  # RFC 5321 §4.5.3.1.5 says 512; be generous, but bounded
_MAX_REPLY = 64 * 1024  # one (multi-line) reply
_MAX_AUTH_LINE = 512  # RFC 4954 §4: a longer AUTH line goes without the initial response

# reply-line = Reply-code [ SP / "-" textstring ] CRLF (RFC 5321 §4.2); a bare code is tolerated.
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)
# RFC 3463 §2: class "." subject "." detail, the class matching the reply's first digit.
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: +|$)")
_KEYWORD = re.compile(r"[A-Z0-9][A-Z0-9-]*")  # RFC 5321 §4.1.1.1 ehlo-keyword
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")

# MAIL/RCPT parameters kept in `extra` -> the EHLO keyword that must be offered to send them.
_EXTRA_MAIL: Mapping[str, str] = {
    "REQUIRETLS": "REQUIRETLS",  # RFC 8689 §4.1
    "MT-PRIORITY": "MT-PRIORITY",  # RFC 6710 §3
    "HOLDFOR": "FUTURERELEASE",  # RFC 4865 §3
    "HOLDUNTIL": "FUTURERELEASE",  # RFC 4865 §3
    "BY": "DELIVERBY",  # RFC 2852 §4
}
_EXTRA_RCPT: Mapping[str, str] = {"RRVS": "RRVS"}  # RFC 7293 §3


# ------------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How one outbound session behaves. Built by the outbound driver from config and route."""

    helo_name: str
    """Our name for EHLO/HELO: a fully qualified domain name in A-labels (RFC 5321 §4.1.1.1)."""
    require_tls: bool = False
    """Policy: never send the message in clear; without STARTTLS the session fails (deferral)."""
    tls_available: bool = True
    """The driver has a client TLS context, so STARTTLS is used whenever the server offers it
    (opportunistic TLS, RFC 7435: certificate checks are the context's business)."""
    auth: tuple[str, str] | None = None
    """(username, password) for AUTH PLAIN to a smarthost; sent only over TLS (RFC 4954 §4)."""
    max_line: int = 998
    """Longest message line sent, in octets without CRLF (RFC 5321 §4.5.3.1.6); longer lines are
    folded with CRLF SP."""
    prefer_chunking: bool = True
    """Use BDAT when CHUNKING is offered (RFC 3030): no dot-stuffing, no scan for the end."""
    pipeline_bdat_limit: int = 1024 * 1024
    """Largest message sent as BDAT in the same write as MAIL and RCPT (RFC 2920, RFC 3030 §4.2);
    larger ones wait for the RCPT replies."""

    def __post_init__(self) -> None:
        name = self.helo_name
        if not name or not name.isascii() or not name.isprintable() or " " in name:
            raise ValueError("helo_name must be a printable ASCII name without spaces")
        if not 2 <= self.max_line <= 998:
            raise ValueError("max_line must be between 2 and 998")
        if self.pipeline_bdat_limit < 0:
            raise ValueError("pipeline_bdat_limit must not be negative")


# ------------------------------------------------------------------------------- events


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class Stage(enum.Enum):
    """Where in the session something happened (`SessionFailed.stage`, logs)."""

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    TLS = "tls-handshake"
    AUTH = "auth"
    IDLE = "idle"
    RSET = "rset"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    END_OF_DATA = "end-of-data"  # the final dot or BDAT LAST is sent, its reply awaited
    QUIT = "quit"


class Timeout(enum.Enum):
    """The RFC 5321 §4.5.3.2 timeout that applies while a reply is awaited: (meaning, seconds)."""

    INITIAL = ("initial 220 message", 300.0)  # §4.5.3.2.1
    COMMAND = ("EHLO, HELO, STARTTLS, AUTH, RSET or QUIT reply", 300.0)  # unspecified: as MAIL
    MAIL = ("MAIL reply", 300.0)  # §4.5.3.2.2
    RCPT = ("RCPT reply", 300.0)  # §4.5.3.2.3
    DATA_INIT = ("DATA initiation", 120.0)  # §4.5.3.2.4: the 354
    DATA_BLOCK = ("data block", 180.0)  # §4.5.3.2.5: for each write of message data (driver)
    DATA_TERMINATION = ("data termination", 600.0)  # §4.5.3.2.6: reply to "." / BDAT LAST

    @property
    def seconds(self) -> float:
        return self.value[1]


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """What this server said about one recipient.

    `reply` is the RCPT reply if that was not positive, else the reply to the message data (or
    MAIL's reply if MAIL was refused). `final` is True when the recipient's fate is settled (2xx:
    delivered, 5xx: bounce); False means try again later (4xx, or the session failed).
    """

    rcpt: RcptArgs
    reply: Reply
    final: bool


@dataclass(frozen=True, slots=True)
class NeedStartTLS:
    """The server said 220 to STARTTLS: flush, handshake, then `tls_established()` or
    `tls_failed()`. Bytes already received in clear have been discarded (RFC 3207 §4.2)."""


@dataclass(frozen=True, slots=True)
class TransactionDone:
    """The transaction is over and the connection can be reused.

    One result per recipient, in the order given. `data_reply` is the server's last word on the
    message (reply to DATA if not 354, to the final dot or to BDAT), None when no recipient was
    accepted or the transaction was refused before anything was sent (SIZE, 8BITMIME, SMTPUTF8).
    """

    results: tuple[RecipientResult, ...]
    data_reply: Reply | None


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session is over; `Closed` follows.

    `retry_other_mx` is False only when the end of the data was sent and no reply came: the
    message may have been delivered, so defer rather than hurry to another host (RFC 5321 §6.1
    accepts the duplicate that a later retry may make). `results` covers the transaction that was
    pending or in progress (empty if none): recipients refused with a 5xx are final; the others
    carry `reply` and are not. After `Stage.TLS` with `require_tls` off, the driver may
    reconnect to the same host with `tls_available=False` (RFC 7435 opportunistic fallback).
    """

    reply: Reply
    stage: Stage
    retry_other_mx: bool
    results: tuple[RecipientResult, ...] = ()


@dataclass(frozen=True, slots=True)
class Closed:
    """Flush what is queued and close the connection; `reason` is for the log."""

    reason: str


Event = NeedStartTLS | TransactionDone | SessionFailed | Closed | _NeedData


# ------------------------------------------------------------------------------- message text


def normalize_line_endings(message: bytes) -> bytes:
    """CRLF line endings only (RFC 5321 §2.3.8): a bare CR or LF becomes CRLF, and a last line
    without an end gets one. Messages that are already clean are returned unchanged (no copy)."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = _LINE_BREAK.sub(b"\r\n", message)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def fold_long_lines(message: bytes, limit: int = 998) -> bytes:
    """Fold lines longer than `limit` octets (CRLF excluded) by inserting CRLF SP.

    `message` must be CRLF-normalised. A line starting with "." may hold only `limit - 1` octets,
    leaving room for the dot that stuffing adds (RFC 5321 §4.5.2). Continuation lines start with
    SP, so they never need stuffing. Deleting each inserted CRLF SP gives the input back.
    """
    lines = message.split(b"\r\n")  # C speed; a regex scan for long lines is ~100x slower
    if max(map(len, lines)) < limit:
        return message  # the common case
    out: list[bytes] = []
    for line in lines:
        first = limit - 1 if line.startswith(b".") else limit
        if len(line) <= first:
            out.append(line)
            continue
        out.append(line[:first])
        out.extend(b" " + line[i : i + limit - 1] for i in range(first, len(line), limit - 1))
    return b"\r\n".join(out)


def prepare_message(message: bytes, max_line: int = 998) -> bytes:
    """The message exactly as the server will store it: CRLF lines, none longer than `max_line`."""
    return fold_long_lines(normalize_line_endings(message), max_line)


def dot_stuff(message: bytes) -> bytes:
    """DATA transparency (RFC 5321 §4.5.2) plus the end-of-data line; `message` ends in CRLF."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def message_needs_smtputf8(mail: MailArgs, rcpts: Sequence[RcptArgs], message: bytes) -> bool:
    """Whether only an SMTPUTF8 server may take this message (RFC 6531 §3.2, §3.5).

    Always for a non-ASCII local part (it has no ASCII form). Otherwise only if the sender asked
    for SMTPUTF8 and the header or an envelope domain really is non-ASCII; a message with raw
    8-bit header octets that never asked for SMTPUTF8 is sent as it came (as Postfix does), since
    refusing it would bounce mail that legacy software writes every day. `message` is
    CRLF-normalised.
    """
    if _utf8_local(mail, rcpts):
        return True
    if not mail.smtputf8:
        return False
    domains = [p.mailbox.domain for p in _paths(mail, rcpts) if p.mailbox is not None]
    end = message.find(b"\r\n\r\n")
    header = message if end < 0 else message[:end]
    return not header.isascii() or not all(d.isascii() for d in domains)


# ------------------------------------------------------------------------------- internals


class State(enum.Enum):
    GREETING = "greeting"  # waiting for the 220
    SETUP = "setup"  # EHLO/HELO, STARTTLS, AUTH
    TLS = "tls"  # 220 to STARTTLS received, handshake pending
    READY = "ready"  # no transaction in progress
    TRANSACTION = "transaction"
    QUIT = "quit"  # QUIT sent
    CLOSED = "closed"


class _Await(enum.Enum):
    """The reply a sent command waits for."""

    GREETING = enum.auto()
    EHLO = enum.auto()
    HELO = enum.auto()
    STARTTLS = enum.auto()
    AUTH = enum.auto()
    RSET = enum.auto()
    MAIL = enum.auto()
    RCPT = enum.auto()
    DATA = enum.auto()
    DOT = enum.auto()  # the reply to the end of the message data
    EMPTY_DOT = enum.auto()  # a 354 came although no RCPT was accepted: "." sent (RFC 2920 §3.1)
    BDAT = enum.auto()  # BDAT <n> LAST with the whole message
    QUIT = enum.auto()


_STAGE: Mapping[_Await, Stage] = {
    _Await.GREETING: Stage.GREETING,
    _Await.EHLO: Stage.EHLO,
    _Await.HELO: Stage.HELO,
    _Await.STARTTLS: Stage.STARTTLS,
    _Await.AUTH: Stage.AUTH,
    _Await.RSET: Stage.RSET,
    _Await.MAIL: Stage.MAIL,
    _Await.RCPT: Stage.RCPT,
    _Await.DATA: Stage.DATA,
    _Await.DOT: Stage.END_OF_DATA,
    _Await.EMPTY_DOT: Stage.DATA,
    _Await.BDAT: Stage.END_OF_DATA,
    _Await.QUIT: Stage.QUIT,
}
_TIMEOUT: Mapping[_Await, Timeout] = {
    _Await.GREETING: Timeout.INITIAL,
    _Await.MAIL: Timeout.MAIL,
    _Await.RCPT: Timeout.RCPT,
    _Await.DATA: Timeout.DATA_INIT,
    _Await.DOT: Timeout.DATA_TERMINATION,
    _Await.EMPTY_DOT: Timeout.DATA_TERMINATION,
    _Await.BDAT: Timeout.DATA_TERMINATION,
}
# The 3xx replies that are expected; any other 3xx (or a 2xx to DATA) is a desynchronised peer.
_INTERMEDIATE: Mapping[_Await, int] = {_Await.DATA: 354, _Await.AUTH: 334}


@dataclass(frozen=True, slots=True)
class _RawReply:
    code: int
    lines: tuple[str, ...]  # text after "ddd " / "ddd-", controls sanitised

    def reply(self) -> Reply:
        """As a Reply, with the RFC 3463 enhanced code split off when the first line has one."""
        match = _ENHANCED.match(self.lines[0])
        if match is None or int(match[1]) != self.code // 100:
            return Reply(self.code, "", "\n".join(self.lines))
        texts = [_strip_enhanced(line) for line in self.lines]
        return Reply(self.code, f"{match[1]}.{match[2]}.{match[3]}", "\n".join(texts))


@dataclass(slots=True)
class _Transaction:
    mail: MailArgs
    rcpts: tuple[RcptArgs, ...]
    message: bytes  # prepared: CRLF lines, folded, not stuffed
    needs_8bit: bool
    needs_smtputf8: bool
    mail_line: bytes = b""
    rcpt_lines: list[bytes] = field(default_factory=list)
    rset_sent: bool = False
    mail_sent: bool = False
    rcpts_sent: int = 0
    data_started: bool = False
    end_sent: bool = False  # final dot / BDAT LAST written
    end_answered: bool = False
    mail_reply: Reply | None = None
    rcpt_replies: list[Reply | None] = field(default_factory=list)
    data_reply: Reply | None = None

    @property
    def accepted(self) -> int:
        return sum(1 for r in self.rcpt_replies if r is not None and r.is_positive)

    def settled(self, i: int) -> RecipientResult | None:
        """The result for recipient `i` if MAIL or its RCPT decided it, else None."""
        rcpt = self.rcpts[i]
        if self.mail_reply is not None and not self.mail_reply.is_positive:
            return RecipientResult(rcpt, self.mail_reply, self.mail_reply.is_permanent)
        reply = self.rcpt_replies[i] if i < len(self.rcpt_replies) else None
        if reply is not None and not reply.is_positive:
            # RFC 5321 §4.5.3.1.10: a 552 to RCPT is an old "too many recipients"; temporary.
            return RecipientResult(rcpt, reply, reply.is_permanent and reply.code != 552)
        return None


def _strip_enhanced(line: str) -> str:
    match = _ENHANCED.match(line)
    return line if match is None else line[match.end() :]


def _decode_text(raw: bytes) -> str:
    """Reply text as UTF-8 (RFC 6531 §3.7.3). It ends up in logs and bounces, so anything not
    printable (controls, line separators) shows as "?" and a tab as a space."""
    text = raw.decode("utf-8", "replace")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text.replace("\t", " "))
    return text.rstrip(" ")


def _parse_extensions(lines: Sequence[str]) -> dict[str, str]:
    """EHLO keywords (upper case) -> their parameters (RFC 5321 §4.1.1.1); the first line is the
    server's name. "AUTH=PLAIN LOGIN" (pre-RFC 4954 servers) counts as AUTH."""
    ext: dict[str, str] = {}
    for line in lines[1:]:
        word, _, params = line.strip().partition(" ")
        keyword, _, value = word.partition("=")
        keyword = keyword.upper()
        if not _KEYWORD.fullmatch(keyword):
            continue
        value = " ".join(v for v in (value, params.strip()) if v)
        ext[keyword] = f"{ext[keyword]} {value}".strip() if keyword in ext else value
    return ext


# ------------------------------------------------------------------------------- the session

_Handler: TypeAlias = "Callable[[ClientConnection, _RawReply, Reply, int], None]"


class ClientConnection:
    """One SMTP client session, bytes in and bytes out."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.state = State.GREETING
        self.tls = False
        self.authenticated = False
        self.esmtp = False
        """EHLO was accepted (False after a HELO fallback)."""
        self.greeting: Reply | None = None
        self._ext: dict[str, str] = {}
        self._buf = bytearray()
        self._lines: list[str] = []  # lines of a multi-line reply read so far
        self._reply_code = 0
        self._reply_size = 0
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._awaiting: deque[tuple[_Await, int]] = deque([(_Await.GREETING, -1)])
        self._tls_tried = False
        self._auth_response: bytes | None = None  # the PLAIN response, when sent after a 334
        self._pending: _Transaction | None = None
        self._txn: _Transaction | None = None
        self._dirty = False  # the server may still hold a transaction: RSET before MAIL
        self._quit_requested = False
        self._eof = False

    # ------------------------------------------------------------------------ driver API

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; b"" means it closed the connection."""
        if self.state is State.CLOSED or self._eof:
            return
        if not data:
            self._eof = True
        elif self.state is not State.TLS:  # RFC 3207 §4.2: nothing sent in clear counts
            self._buf += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event:
        while not self._events:
            if self.state is State.CLOSED:
                return NEED_DATA
            try:
                raw = None if self.state is State.TLS else self._take_reply()
            except SMTPProtocolError as err:
                if self.state is State.QUIT:
                    self._close("quit")  # everything is done: a bad goodbye changes nothing
                else:
                    self._session_failed(err.reply, quit=False)
                continue
            if raw is not None:
                self._dispatch(raw)
            elif self._eof:
                self._connection_lost()
            else:
                return NEED_DATA
        return self._events.popleft()

    def start_transaction(
        self,
        mail: MailArgs,
        rcpts: Sequence[RcptArgs],
        message: bytes,
        *,
        needs_8bit: bool | None = None,
        needs_smtputf8: bool | None = None,
    ) -> None:
        """Queue one message for `rcpts`; it starts as soon as the session is ready.

        `needs_8bit` / `needs_smtputf8` default to what the message and envelope show (any octet
        over 127; `message_needs_smtputf8()`); a non-ASCII local part always needs SMTPUTF8. The
        MAIL/RCPT parameters are recomputed for this server: SIZE, BODY and SMTPUTF8 from the
        message, DSN and other parameters only if the server offers them (RFC 3461 §4).
        """
        if self.state in (State.CLOSED, State.QUIT):
            raise RuntimeError("the session is closed or closing")
        if self._pending is not None or self._txn is not None or self._quit_requested:
            raise RuntimeError("a transaction is in progress or QUIT was requested")
        if not rcpts:
            raise ValueError("a transaction needs at least one recipient")
        prepared = prepare_message(message, self.settings.max_line)
        if needs_8bit is None:
            needs_8bit = not prepared.isascii()
        if needs_smtputf8 is None:
            needs_smtputf8 = message_needs_smtputf8(mail, rcpts, prepared)
        txn = _Transaction(
            mail=mail,
            rcpts=tuple(rcpts),
            message=prepared,
            needs_8bit=needs_8bit,
            # A non-ASCII local part cannot be written without SMTPUTF8, whatever the caller says.
            needs_smtputf8=needs_smtputf8 or _utf8_local(mail, rcpts),
        )
        if self.state is State.READY:
            self._begin(txn)
        else:
            self._pending = txn

    def quit(self) -> None:
        """End the session politely (RFC 5321 §4.1.1.10) once setup is over."""
        if self.state in (State.CLOSED, State.QUIT):
            return
        if self._pending is not None or self._txn is not None:
            raise RuntimeError("quit() during a transaction")
        if self.state is State.READY:
            self._send_quit()
        else:
            self._quit_requested = True

    def tls_established(self) -> None:
        """The handshake succeeded: forget the extensions and say EHLO again (RFC 3207 §4.2)."""
        if self.state is not State.TLS:
            raise RuntimeError("tls_established() without NeedStartTLS")
        self.tls = True
        self._ext = {}
        self.esmtp = False
        self._buf.clear()
        self.state = State.SETUP
        self._send(f"EHLO {self.settings.helo_name}\r\n".encode("ascii"), _Await.EHLO)

    def tls_failed(self) -> None:
        """The handshake failed: the connection is unusable."""
        if self.state is not State.TLS:
            raise RuntimeError("tls_failed() without NeedStartTLS")
        self._session_failed(TLS_FAILED, quit=False, stage=Stage.TLS)

    def timed_out(self) -> None:
        """The driver's deadline (see `timeout`) passed without the awaited reply."""
        if self.state is State.CLOSED:
            return
        if self.state is State.QUIT or not (self._awaiting or self.state is State.TLS):
            self._close("timeout")
        else:
            self._session_failed(TIMED_OUT, quit=False)

    @property
    def timeout(self) -> Timeout | None:
        """The RFC 5321 §4.5.3.2 timeout for the reply awaited now, None when nothing is.

        While message data is being written, the driver also applies `Timeout.DATA_BLOCK` to
        each write (RFC 5321 §4.5.3.2.5); this property then already names the wait for the
        reply to the end of data.
        """
        if self.state is State.CLOSED:
            return None
        if self.state is State.TLS:
            return Timeout.COMMAND
        if not self._awaiting:
            return None
        return _TIMEOUT.get(self._awaiting[0][0], Timeout.COMMAND)

    @property
    def extensions(self) -> Mapping[str, str]:
        """The server's EHLO keywords -> parameters (empty after HELO, reset by STARTTLS)."""
        return dict(self._ext)

    @property
    def idle(self) -> bool:
        """Ready for `start_transaction()` to send at once."""
        return self.state is State.READY

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # ------------------------------------------------------------------------ replies

    def _take_reply(self) -> _RawReply | None:
        """Take one complete (possibly multi-line) reply off the buffer, or None."""
        buf = self._buf
        while True:
            lf = buf.find(b"\n")
            if lf < 0 and len(buf) <= _MAX_REPLY_LINE:
                return None
            if lf < 0 or lf > _MAX_REPLY_LINE:
                raise SMTPProtocolError(MALFORMED_REPLY.with_text("Reply line too long"))
            line = bytes(buf[:lf]).removesuffix(b"\r")  # a bare LF is tolerated
            del buf[: lf + 1]
            match = _REPLY_LINE.fullmatch(line)
            code = int(match[1]) if match else 0
            if match is None or (self._lines and code != self._reply_code):
                # RFC 5321 §4.2.1: every line of a reply has the same code.
                shown = _decode_text(line[:60])
                raise SMTPProtocolError(
                    MALFORMED_REPLY.with_text(f"{MALFORMED_REPLY.text}: {shown}")
                )
            self._reply_code = code
            self._reply_size += len(line)
            if self._reply_size > _MAX_REPLY:
                raise SMTPProtocolError(MALFORMED_REPLY.with_text("Reply too long"))
            self._lines.append(_decode_text(match[3] or b""))
            if match[2] != b"-":
                lines, self._lines, self._reply_size = tuple(self._lines), [], 0
                return _RawReply(code, lines)

    def _dispatch(self, raw: _RawReply) -> None:
        if not self._awaiting:
            reply = raw.reply()
            if raw.code != 421:
                reply = MALFORMED_REPLY.with_text(f"Unexpected reply: {reply}")
            self._session_failed(reply, quit=False, stage=Stage.IDLE)
            return
        kind, index = self._awaiting.popleft()
        unexpected_3xx = 300 <= raw.code < 400 and _INTERMEDIATE.get(kind) != raw.code
        if unexpected_3xx or (kind is _Await.DATA and raw.code < 300):
            self._session_failed(
                MALFORMED_REPLY.with_text(f"Unexpected reply: {raw.reply()}"),
                quit=False,
                stage=_STAGE[kind],
            )
            return
        reply = raw.reply()
        if raw.code == 421 and kind is not _Await.QUIT:
            # RFC 5321 §3.8: the server is closing the connection; so does everything pending.
            if self._txn is not None and kind in (_Await.DOT, _Await.BDAT):
                self._txn.end_answered = True
            self._session_failed(reply, quit=False, stage=_STAGE[kind])
            return
        self._HANDLERS[kind](self, raw, reply, index)

    # ------------------------------------------------------------------------ setup

    def _on_greeting(self, raw: _RawReply, reply: Reply, _: int) -> None:
        if not reply.is_positive:  # RFC 5321 §3.1: a 554 greeting still expects our QUIT
            self._session_failed(reply, quit=True, stage=Stage.GREETING)
            return
        self.greeting = reply
        self.state = State.SETUP
        self._send(f"EHLO {self.settings.helo_name}\r\n".encode("ascii"), _Await.EHLO)

    def _on_ehlo(self, raw: _RawReply, reply: Reply, _: int) -> None:
        if reply.is_positive:
            self.esmtp = True
            self._ext = _parse_extensions(raw.lines)
            self._after_hello()
        elif reply.is_permanent:  # RFC 5321 §3.2: an old server; fall back to HELO
            self._send(f"HELO {self.settings.helo_name}\r\n".encode("ascii"), _Await.HELO)
        else:
            self._session_failed(reply, quit=True, stage=Stage.EHLO)

    def _on_helo(self, raw: _RawReply, reply: Reply, _: int) -> None:
        if not reply.is_positive:
            self._session_failed(reply, quit=True, stage=Stage.HELO)
            return
        self.esmtp = False
        self._ext = {}
        self._after_hello()

    def _after_hello(self) -> None:
        s = self.settings
        if not self.tls and not self._tls_tried and "STARTTLS" in self._ext and s.tls_available:
            self._tls_tried = True
            self._send(b"STARTTLS\r\n", _Await.STARTTLS)
            return
        if s.require_tls and not self.tls:
            reply = TLS_NOT_OFFERED
            if "STARTTLS" in self._ext and not s.tls_available:
                reply = reply.with_text("TLS is required, but no TLS client context is set up")
            self._session_failed(reply, quit=True, stage=Stage.STARTTLS)
            return
        if s.auth is not None and not self.authenticated:
            self._start_auth(s.auth)
            return
        self._ready()

    def _on_starttls(self, raw: _RawReply, reply: Reply, _: int) -> None:
        if reply.is_positive:
            # RFC 3207 §4.2 / CVE-2011-0411: anything the server sent after its 220 is dropped.
            self._buf.clear()
            self.state = State.TLS
            self._events.append(NeedStartTLS())
        elif self.settings.require_tls:
            self._session_failed(reply, quit=True, stage=Stage.STARTTLS)
        else:
            self._after_hello()  # opportunistic: go on in clear

    def _start_auth(self, credentials: tuple[str, str]) -> None:
        """AUTH PLAIN (RFC 4616 §2, RFC 4954 §4), with the initial response when it fits."""
        if not self.tls:
            self._session_failed(AUTH_NEEDS_TLS, quit=True, stage=Stage.AUTH)
            return
        if "PLAIN" not in self._ext.get("AUTH", "").upper().split():
            self._session_failed(AUTH_NOT_OFFERED, quit=True, stage=Stage.AUTH)
            return
        user, password = credentials
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        line = b"AUTH PLAIN " + token + b"\r\n"
        if len(line) <= _MAX_AUTH_LINE:
            self._send(line, _Await.AUTH)
        else:
            self._auth_response = token + b"\r\n"
            self._send(b"AUTH PLAIN\r\n", _Await.AUTH)

    def _on_auth(self, raw: _RawReply, reply: Reply, _: int) -> None:
        if raw.code == 334:
            response, self._auth_response = self._auth_response, None
            if response is None:  # PLAIN has nothing more to say
                self._session_failed(
                    MALFORMED_REPLY.with_text(f"Unexpected AUTH challenge: {reply}"),
                    quit=False,
                    stage=Stage.AUTH,
                )
                return
            self._send(response, _Await.AUTH)
        elif reply.is_positive:
            self.authenticated = True
            self._ready()
        else:
            self._session_failed(reply, quit=True, stage=Stage.AUTH)

    def _ready(self) -> None:
        self.state = State.READY
        if self._pending is not None:
            txn, self._pending = self._pending, None
            self._begin(txn)
        elif self._quit_requested:
            self._send_quit()

    def _send_quit(self) -> None:
        self.state = State.QUIT
        self._send(b"QUIT\r\n", _Await.QUIT)

    def _on_quit(self, raw: _RawReply, reply: Reply, _: int) -> None:
        self._close("quit")

    # ------------------------------------------------------------------------ transactions

    def _begin(self, txn: _Transaction) -> None:
        refusal = self._refusal(txn)
        if refusal is None:
            refusal = self._envelope_lines(txn)
        if refusal is not None:
            final = not refusal.is_transient
            results = tuple(RecipientResult(r, refusal, final) for r in txn.rcpts)
            self._events.append(TransactionDone(results, None))
            self._ready()
            return
        txn.rcpt_replies = [None] * len(txn.rcpts)
        self._txn = txn
        self.state = State.TRANSACTION
        self._step()

    def _refusal(self, txn: _Transaction) -> Reply | None:
        """A reason not to send this message to this server at all."""
        ext = self._ext
        if txn.needs_smtputf8 and "SMTPUTF8" not in ext:
            return SMTPUTF8_NOT_OFFERED  # RFC 6531 §3.5
        if txn.needs_8bit and "8BITMIME" not in ext:
            return CONVERSION_REQUIRED  # RFC 6152 §3
        limit = ext.get("SIZE", "").split(" ")[0]
        if limit.isdigit() and 0 < int(limit) < len(txn.message):  # RFC 1870 §4: 0 = no limit
            return codes.MESSAGE_TOO_BIG.with_text(
                f"Message size exceeds the server's limit of {int(limit)} octets"
            )
        if "REQUIRETLS" in txn.mail.extra and not (self.tls and "REQUIRETLS" in ext):
            return REQUIRETLS_NOT_OFFERED  # RFC 8689 §4.2.1: never downgrade silently
        return None

    def _envelope_lines(self, txn: _Transaction) -> Reply | None:
        """Write MAIL and RCPT for this server's extensions (RFC 3461 §4: DSN only if offered)."""
        ext = self._ext
        dsn = "DSN" in ext
        utf8 = "SMTPUTF8" in ext and (txn.needs_smtputf8 or txn.mail.smtputf8)
        mail = replace(
            txn.mail,
            size=len(txn.message) if "SIZE" in ext else None,  # RFC 1870 §3: before stuffing
            body="8BITMIME" if txn.needs_8bit else None,  # RFC 6152 §2
            smtputf8=utf8,
            ret=txn.mail.ret if dsn else None,
            envid=txn.mail.envid if dsn else None,
            auth=txn.mail.auth if self.authenticated and "AUTH" in ext else None,  # RFC 4954 §5
            extra=_offered(txn.mail.extra, _EXTRA_MAIL, ext),
        )
        try:
            lines = [f"MAIL {format_mail_arg(mail)}\r\n"]
            for given in txn.rcpts:
                rcpt = replace(
                    given,
                    notify=given.notify if dsn else None,
                    orcpt=given.orcpt if dsn else None,
                    extra=_offered(given.extra, _EXTRA_RCPT, ext),
                )
                lines.append(f"RCPT {format_rcpt_arg(rcpt, utf8=utf8)}\r\n")
            encoded = [line.encode("utf-8") for line in lines]
        except (AddressError, UnicodeEncodeError):
            return BAD_ENVELOPE
        if any(_injects(line) for line in encoded):
            return BAD_ENVELOPE  # a line break inside a parameter would inject a command
        txn.mail_line, txn.rcpt_lines = encoded[0], encoded[1:]
        return None

    def _step(self) -> None:
        """Send what comes next once every reply sent for has arrived (RFC 2920 §3.1: a
        pipelined group ends with DATA or BDAT; without PIPELINING one command at a time)."""
        txn = self._txn
        if txn is None or self._awaiting:
            return
        pipelining = "PIPELINING" in self._ext
        if self._dirty and not txn.mail_sent and not txn.rset_sent:
            txn.rset_sent = True
            self._send(b"RSET\r\n", _Await.RSET)
            if not pipelining:
                return
        if not txn.mail_sent:
            txn.mail_sent = True
            self._send(txn.mail_line, _Await.MAIL)
            if pipelining:
                for i, line in enumerate(txn.rcpt_lines):
                    self._send(line, _Await.RCPT, i)
                txn.rcpts_sent = len(txn.rcpt_lines)
                self._start_data(txn, in_group=True)
            return
        if txn.mail_reply is None or not txn.mail_reply.is_positive:
            self._finish(txn)
        elif txn.rcpts_sent < len(txn.rcpt_lines):
            self._send(txn.rcpt_lines[txn.rcpts_sent], _Await.RCPT, txn.rcpts_sent)
            txn.rcpts_sent += 1
        elif not txn.data_started and txn.accepted:
            self._start_data(txn, in_group=False)
        else:
            self._finish(txn)

    def _start_data(self, txn: _Transaction, *, in_group: bool) -> None:
        if not (self.settings.prefer_chunking and "CHUNKING" in self._ext):
            txn.data_started = True
            self._send(b"DATA\r\n", _Await.DATA)
            return
        size = len(txn.message)
        if in_group and size > self.settings.pipeline_bdat_limit:
            return  # wait for the RCPT replies before sending a large message
        txn.data_started = True
        txn.end_sent = True
        # RFC 3030 §2: the whole message as the one and last chunk, sent as it is (no stuffing).
        self._send(f"BDAT {size} LAST\r\n".encode("ascii"), _Await.BDAT)
        self._out.append(txn.message)

    def _on_rset(self, raw: _RawReply, reply: Reply, _: int) -> None:
        if not reply.is_positive:  # the server's state is unknown: give up on this connection
            self._session_failed(reply, quit=True, stage=Stage.RSET)
            return
        self._dirty = False
        self._step()

    def _on_mail(self, raw: _RawReply, reply: Reply, _: int) -> None:
        assert self._txn is not None
        self._txn.mail_reply = reply
        if reply.is_positive:
            self._dirty = True
        self._step()

    def _on_rcpt(self, raw: _RawReply, reply: Reply, index: int) -> None:
        assert self._txn is not None
        self._txn.rcpt_replies[index] = reply
        self._step()

    def _on_data(self, raw: _RawReply, reply: Reply, _: int) -> None:
        txn = self._txn
        assert txn is not None
        if raw.code != 354:
            if txn.accepted:
                txn.data_reply = reply
        elif txn.accepted:
            txn.end_sent = True
            self._send(dot_stuff(txn.message), _Await.DOT)
        else:
            # RFC 2920 §3.1: a 354 although every RCPT failed; end it with an empty message.
            self._send(b".\r\n", _Await.EMPTY_DOT)
        self._step()

    def _on_dot(self, raw: _RawReply, reply: Reply, _: int) -> None:
        txn = self._txn
        assert txn is not None
        txn.end_answered = True
        txn.data_reply = reply
        self._dirty = False  # RFC 5321 §4.1.1.4: the end of data ends the transaction
        self._step()

    def _on_empty_dot(self, raw: _RawReply, reply: Reply, _: int) -> None:
        self._dirty = False
        self._step()

    def _on_bdat(self, raw: _RawReply, reply: Reply, _: int) -> None:
        txn = self._txn
        assert txn is not None
        txn.end_answered = True
        if txn.accepted:
            txn.data_reply = reply
        if reply.is_positive:
            self._dirty = False  # RFC 3030 §2; after a failed BDAT we RSET to be sure
        self._step()

    def _finish(self, txn: _Transaction) -> None:
        results: list[RecipientResult] = []
        for i, rcpt in enumerate(txn.rcpts):
            result = txn.settled(i)
            if result is None:
                reply = txn.data_reply
                assert reply is not None  # an accepted recipient always leads to a data reply
                result = RecipientResult(rcpt, reply, not reply.is_transient)
            results.append(result)
        self._txn = None
        self._events.append(
            TransactionDone(tuple(results), txn.data_reply if txn.accepted else None)
        )
        self._ready()

    # ------------------------------------------------------------------------ endings

    def _connection_lost(self) -> None:
        if self.state is State.QUIT:
            self._close("quit")  # the 221 is optional once QUIT is sent
        elif self.state is State.READY and not self._awaiting:
            self._close("connection closed by server")
        else:
            self._session_failed(CONNECTION_LOST, quit=False)

    def _session_failed(self, reply: Reply, *, quit: bool, stage: Stage | None = None) -> None:
        if self.state is State.CLOSED:
            return
        txn = self._txn or self._pending
        uncertain = txn is not None and txn.end_sent and not txn.end_answered
        if stage is None:
            stage = _STAGE[self._awaiting[0][0]] if self._awaiting else Stage.IDLE
            if self.state is State.TLS:
                stage = Stage.TLS
        if uncertain:
            stage = Stage.END_OF_DATA
            reply = reply.with_text(reply.text + MAY_HAVE_BEEN_DELIVERED)
        results: tuple[RecipientResult, ...] = ()
        if txn is not None:
            results = tuple(
                txn.settled(i) or RecipientResult(rcpt, reply, False)
                for i, rcpt in enumerate(txn.rcpts)
            )
        self._events.append(SessionFailed(reply, stage, not uncertain, results))
        self._txn = self._pending = None
        if quit:
            self._out.append(b"QUIT\r\n")  # the connection is sane: say goodbye, don't wait
        self._close(f"{stage.value}: {reply}")

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self._awaiting.clear()
        self._buf.clear()
        self._events.append(Closed(reason))

    def _send(self, line: bytes, kind: _Await, index: int = -1) -> None:
        self._out.append(line)
        self._awaiting.append((kind, index))

    _HANDLERS: ClassVar[Mapping[_Await, _Handler]] = {
        _Await.GREETING: _on_greeting,
        _Await.EHLO: _on_ehlo,
        _Await.HELO: _on_helo,
        _Await.STARTTLS: _on_starttls,
        _Await.AUTH: _on_auth,
        _Await.RSET: _on_rset,
        _Await.MAIL: _on_mail,
        _Await.RCPT: _on_rcpt,
        _Await.DATA: _on_data,
        _Await.DOT: _on_dot,
        _Await.EMPTY_DOT: _on_empty_dot,
        _Await.BDAT: _on_bdat,
        _Await.QUIT: _on_quit,
    }


def _injects(line: bytes) -> bool:
    """A NUL, CR or LF anywhere but the final CRLF."""
    return b"\0" in line or line.count(b"\n") != 1 or line.count(b"\r") != 1


def _paths(mail: MailArgs, rcpts: Sequence[RcptArgs]) -> list[Path]:
    return [mail.path, *(r.path for r in rcpts)]


def _utf8_local(mail: MailArgs, rcpts: Sequence[RcptArgs]) -> bool:
    return any(p.mailbox is not None and not p.mailbox.local.isascii() for p in _paths(mail, rcpts))


def _offered(
    extra: Mapping[str, str | None], table: Mapping[str, str], ext: Mapping[str, str]
) -> dict[str, str | None]:
    """The raw parameters whose extension this server offers; others are dropped."""
    return {k: v for k, v in extra.items() if table.get(k, k) in ext}
