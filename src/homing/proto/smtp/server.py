"""Sans-I/O SMTP server session (RFC 5321, with PIPELINING, SIZE, 8BITMIME, SMTPUTF8, CHUNKING,
ENHANCEDSTATUSCODES, STARTTLS and DSN parameters).

Theory of operation
-------------------
`ServerConnection` is fed bytes with `receive_data()` and asked for events with `next_event()`;
the bytes it wants sent accumulate in an output buffer read with `data_to_send()`. It never
awaits, reads a clock or touches a socket (ARCHITECTURE.md rule 1).

Most commands are answered by the core itself (syntax, sequence, limits, EHLO, NOOP, RSET, ...).
Three kinds of event need a verdict from the session's policy before the core can go on, and
while one is outstanding the core parses nothing further (so pipelined commands keep their order):

* `MailFrom`        -> `respond(reply)`: a positive reply opens the transaction.
* `RcptTo`          -> `respond(reply)`: a positive reply adds the recipient.
* `MessageReceived` -> `respond(reply)`: the final reply to DATA/BDAT LAST (sent only after the
                        message is durably stored, which is the adapter's business).

Two more events ask the adapter to act: `StartTLS` (flush the 220, run the handshake, then call
`tls_established()`), and `Closed` (flush and close; the core will say nothing more).
`NEED_DATA` means every buffered byte has been dealt with: flush the output, read more.

The message body is never handled line by line in Python: DATA is scanned in whole chunks for
CRLF.CRLF with `bytes.find`; bare CR/LF detection, dot-unstuffing and line-length checks are done
once on the complete message with C-speed bytes methods.

State table (the only transitions; anything else is a 503):

    GREETING --start()--> CONNECTED --HELO/EHLO--> READY --MAIL--> MAIL --RCPT--> RCPT
    RCPT --DATA--> DATA --CRLF.CRLF--> (verdict) --> READY
    MAIL|RCPT --BDAT--> BDAT --chunk--> RCPT or (LAST: verdict) --> READY
    any --RSET--> READY (or CONNECTED before HELO); any --QUIT/fatal--> CLOSED
    READY|CONNECTED --STARTTLS--> TLS --tls_established()--> CONNECTED (everything forgotten)
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from homing.mail.reply import Reply
from homing.proto import sasl
from homing.proto.smtp import codes
from homing.proto.smtp.errors import SMTPProtocolError
from homing.proto.smtp.grammar import (
    MailArgs,
    RcptArgs,
    parse_bdat_arg,
    parse_command,
    parse_helo_arg,
    parse_mail_arg,
    parse_rcpt_arg,
)

#: RFC 4954 §4 replies for exchanges that broke rather than failed.
_SASL_REPLIES: dict[sasl.ErrorKind, Reply] = {
    "cancelled": codes.AUTH_CANCELLED,
    "malformed": codes.BASE64_ERROR,
    "authzid": codes.AUTH_INVALID,
    "too_long": codes.AUTH_LINE_TOO_LONG,
}

# A line with no end that keeps growing past this is abuse, not a long command: drop the client.
_MAX_DISCARD = 64 * 1024
_HTTP_VERBS = frozenset({"GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE"})
_HTTP_ARG = re.compile(r"\S+\s+HTTP/\d", re.ASCII)


class State(enum.Enum):
    GREETING = "greeting"  # connected, greeting not sent yet
    CONNECTED = "connected"  # greeted, no HELO/EHLO yet
    READY = "ready"  # HELO/EHLO done, no transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading DATA up to CRLF.CRLF
    BDAT = "bdat"  # reading a BDAT chunk of known size
    TLS = "tls"  # 220 to STARTTLS sent, handshake pending
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Settings:
    """What one listener's sessions offer and enforce. Built by the session layer from Config."""

    hostname: str
    banner: str = "ESMTP Homing"
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    max_command_line: int = 512
    max_text_line: int = 65536
    max_errors: int = 20
    starttls: bool = False
    """Offer STARTTLS (only while the session is not yet encrypted)."""
    tls_active: bool = False
    """The connection is already encrypted (implicit TLS, RFC 8314)."""
    dsn: bool = True
    chunking: bool = True
    smtputf8: bool = True
    auth_mechanisms: tuple[str, ...] = ()
    """SASL mechanisms for AUTH (RFC 4954), strongest first; empty: no AUTH (port 25)."""
    auth_requires_tls: bool = True
    """Offer AUTH only over TLS; before it, AUTH gets 538 5.7.11 unchecked (RFC 4954 §4)."""
    auth_required: bool = False
    """MAIL needs a successful AUTH first, 530 5.7.0 otherwise (submission, RFC 6409 §4.3)."""
    max_auth_line: int = sasl.MAX_RESPONSE
    """Longest AUTH response line, base64 (RFC 4954 §4: at least 12288 octets)."""


# ---------------------------------------------------------------------------------------- events


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class Helo:
    """HELO/EHLO was accepted (informational: the core has already replied)."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM passed syntax and generic checks; the policy must `respond()`."""

    args: MailArgs


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO passed syntax and limits; the policy must `respond()`."""

    args: RcptArgs


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete message (unstuffed, CRLF lines). The adapter stores it, then `respond()`s."""

    mail: MailArgs
    rcpts: tuple[RcptArgs, ...]
    data: bytes
    chunked: bool


@dataclass(frozen=True, slots=True)
class AuthPassword:
    """AUTH PLAIN/LOGIN gave a password: verify it, then `auth_verdict(ok)`."""

    user: str
    password: str = field(repr=False)
    authzid: str | None
    mechanism: str


@dataclass(frozen=True, slots=True)
class AuthScramKeys:
    """AUTH SCRAM-SHA-256 needs the user's verifier: answer `scram_keys(keys or None)`."""

    user: str


@dataclass(frozen=True, slots=True)
class AuthResult:
    """A SCRAM exchange ended (informational: the core has replied). `user` may be unknown."""

    user: str | None
    ok: bool
    mechanism: str


@dataclass(frozen=True, slots=True)
class StartTLS:
    """220 to STARTTLS is queued: flush it, handshake, then call `tls_established()`."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over; flush what is queued and close. `reason` is for the log."""

    reason: str


Event = (
    Helo
    | MailFrom
    | RcptTo
    | MessageReceived
    | StartTLS
    | Closed
    | AuthPassword
    | AuthScramKeys
    | AuthResult
    | _NeedData
)


@dataclass(slots=True)
class _Exchange:
    """An AUTH exchange in progress."""

    name: str
    machine: sasl.Mechanism
    user: str | None = None
    success: sasl.Success | None = None  # SCRAM: server-final sent, waiting for the empty reply


@dataclass(slots=True)
class _Transaction:
    mail: MailArgs
    rcpts: list[RcptArgs] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    chunked_size: int = 0
    chunked: bool = False
    failed: Reply | None = None  # a BDAT chunk failed: the rest is read and discarded


class ServerConnection:
    """One SMTP server session, bytes in and bytes out."""

    def __init__(
        self,
        settings: Settings,
        *,
        nonce: Callable[[], str] | None = None,
        scram_secret: bytes | None = None,
    ) -> None:
        """`nonce` makes SCRAM server nonces; `scram_secret` keys the fake SCRAM verifiers of
        unknown users (see proto.sasl). Both are needed only when AUTH is offered."""
        self.settings = settings
        self.user: str | None = None
        """The authenticated user (AUTH succeeded), else None."""
        self._nonce = nonce
        self._secret = scram_secret
        self._sasl: _Exchange | None = None
        self.state = State.GREETING
        self.tls = settings.tls_active
        self.helo: str | None = None
        self.extended = False
        self.errors = 0
        self.messages = 0
        self.progress = 0
        """Bumped on every complete command and every chunk of message data (adapters reset
        their inactivity deadline when it moves)."""
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._awaiting: (
            MailFrom | RcptTo | MessageReceived | AuthPassword | AuthScramKeys | None
        ) = None
        self._txn: _Transaction | None = None
        self._discarding = 0  # >0: inside an over-long command line, bytes dropped so far
        self._data = bytearray()  # DATA accumulator, starts with a CRLF sentinel
        self._data_overflow = False
        self._bdat_left = 0
        self._bdat_last = False
        self._chunk_refusal: Reply | None = None
        self._bdat_return = State.READY
        self._close_reason: str | None = None
        self._queued: Event | None = None
        self._advertised_cache: frozenset[str] = frozenset()
        self._advertised_for: tuple[bool, bool] | None = None
        self._closed_emitted = False

    # ------------------------------------------------------------------------------ adapter API

    def start(self, greeting: Reply | None = None) -> None:
        """Queue the 220 greeting (or `greeting`, e.g. a 554 refusal)."""
        if self.state is not State.GREETING:
            raise RuntimeError("start() called twice")
        if self._buf:
            # RFC 5321 §4.3.1: the client waits for the greeting. Talking first is a spam-bot tell.
            self._fail(
                codes.ILLEGAL_PIPELINING.with_text("Client spoke before the greeting"), "pregreet"
            )
            return
        if greeting is None:
            greeting = Reply(220, "", f"{self.settings.hostname} {self.settings.banner}")
        self._reply(greeting)
        if greeting.is_positive:
            self.state = State.CONNECTED
        else:
            self._close(f"greeting {greeting.code}")

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer. b"" means the peer closed its side."""
        if self.state is State.CLOSED:
            return
        if not data:
            self._close("peer closed the connection")
            return
        if self.state is State.TLS:
            return  # RFC 3207 §4.2: nothing before the handshake counts
        self._buf += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def respond(self, reply: Reply) -> None:
        """The policy's verdict on the outstanding MailFrom, RcptTo or MessageReceived."""
        event, self._awaiting = self._awaiting, None
        if event is None or isinstance(event, AuthPassword | AuthScramKeys):
            raise RuntimeError(f"respond() does not answer {event!r}")
        self._reply(reply)
        if isinstance(event, MailFrom):
            if reply.is_positive:
                self._txn = _Transaction(event.args)
                self.state = State.MAIL
            else:
                self._count_error()
        elif isinstance(event, RcptTo):
            if reply.is_positive and self._txn is not None:
                self._txn.rcpts.append(event.args)
                self.state = State.RCPT
            else:
                self._count_error()
        else:
            if reply.is_positive:
                self.messages += 1
            self._end_transaction()

    def auth_verdict(self, ok: bool, *, locked_out: bool = False, temporary: bool = False) -> None:
        """The answer to `AuthPassword`. `locked_out`: too many failures from this client; the
        credentials were not checked and the session ends with 421 4.7.0. `temporary`: our own
        trouble (454 4.7.0, RFC 4954 §6)."""
        event = self._awaiting
        exchange = self._sasl
        if not isinstance(event, AuthPassword) or exchange is None:
            raise RuntimeError("auth_verdict() without an outstanding AuthPassword")
        self._awaiting = None
        self._sasl = None
        if locked_out:
            self._fail(codes.RATE_LIMITED, "auth lockout")
            return
        if temporary:
            self._reply(codes.AUTH_TEMP_FAILURE)
            return
        step = exchange.machine.password_checked(ok)
        if ok and isinstance(step, sasl.Success):
            self.user = event.user
            self._reply(codes.AUTH_OK)
        else:
            self._auth_failed()

    def scram_keys(self, keys: sasl.ScramKeys | None, *, locked_out: bool = False) -> None:
        """The answer to `AuthScramKeys` (None: no such user; the exchange goes on, then fails)."""
        exchange = self._sasl
        if not isinstance(self._awaiting, AuthScramKeys) or exchange is None:
            raise RuntimeError("scram_keys() without an outstanding AuthScramKeys")
        self._awaiting = None
        if locked_out:
            self._sasl = None
            self._fail(codes.RATE_LIMITED, "auth lockout")
            return
        self._queued = self._sasl_step(exchange.machine.scram_keys(keys))

    def tls_established(self) -> None:
        """The STARTTLS handshake succeeded: forget everything (RFC 3207 §4.2)."""
        if self.state is not State.TLS:
            raise RuntimeError("tls_established() outside STARTTLS")
        self.tls = True
        self.user = None
        self._sasl = None
        self.helo = None
        self.extended = False
        self._txn = None
        self._buf.clear()
        self.state = State.CONNECTED

    def timed_out(self) -> None:
        """The adapter's inactivity deadline passed (RFC 5321 §4.5.3.2)."""
        self._fail(codes.TIMEOUT, "timeout")

    def shutdown(self) -> None:
        """The server is stopping: say so and close (call between transactions)."""
        self._fail(codes.SHUTTING_DOWN, "shutdown")

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def in_message(self) -> bool:
        """A message is being received or awaits its verdict (don't interrupt it)."""
        return self.state in (State.DATA, State.BDAT) or isinstance(self._awaiting, MessageReceived)

    @property
    def reading_data(self) -> bool:
        """Inside DATA or a BDAT chunk: the data timeout applies instead of the command timeout."""
        return self.state in (State.DATA, State.BDAT)

    def extensions(self) -> list[str]:
        """The EHLO keywords on offer right now (RFC 5321 §4.1.1.1)."""
        s = self.settings
        ext = ["PIPELINING", f"SIZE {s.max_message_size}", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if s.smtputf8:
            ext.append("SMTPUTF8")
        if s.chunking:
            ext.append("CHUNKING")
        if s.dsn:
            ext.append("DSN")
        if s.starttls and not self.tls:
            ext.append("STARTTLS")
        if self._auth_offered():
            ext.append("AUTH " + " ".join(s.auth_mechanisms))
        return ext

    def _auth_offered(self) -> bool:
        s = self.settings
        return bool(s.auth_mechanisms) and (self.tls or not s.auth_requires_tls)

    def next_event(self) -> Event:
        if self._awaiting is not None:
            raise RuntimeError(f"respond() to {self._awaiting!r} first")
        while True:
            if self.state is State.CLOSED:
                if self._closed_emitted:
                    return NEED_DATA
                self._closed_emitted = True
                return Closed(self._close_reason or "closed")
            if self._queued is not None:
                queued, self._queued = self._queued, None
                return queued
            if self.state in (State.GREETING, State.TLS):
                return NEED_DATA
            try:
                if self.state is State.DATA:
                    event = self._read_data()
                elif self.state is State.BDAT:
                    event = self._read_chunk()
                else:
                    event = self._read_command()
            except SMTPProtocolError as err:
                self._protocol_error(err)
                continue
            if event is not None:
                return event

    # ------------------------------------------------------------------------------ commands

    def _read_command(self) -> Event | None:
        line = self._next_line()
        if line is None:
            return NEED_DATA if self.state is not State.CLOSED else None
        self.progress += 1
        if self._sasl is not None:
            return self._sasl_response(line)
        return self._dispatch(line)

    def _protocol_error(self, err: SMTPProtocolError) -> None:
        if err.close:
            self._fail(err.reply, str(err.reply))
        elif self.errors + 1 >= self.settings.max_errors:
            self.errors += 1
            self._fail(
                codes.TOO_MANY_ERRORS, "too many errors"
            )  # instead of the last error's reply
        else:
            self._reply(err.reply)
            self.errors += 1

    def _next_line(self) -> bytes | None:
        """Take one CRLF-terminated command line off the buffer, or None if there is none yet."""
        buf = self._buf
        limit = self.settings.max_command_line
        if self._sasl is not None or buf[:5].upper() == b"AUTH ":
            limit = self.settings.max_auth_line + 2  # RFC 4954 §4: 12288 octets of base64
        while self.state is not State.CLOSED:
            if self._discarding:
                lf = buf.find(b"\n")
                if lf < 0:
                    self._discarding += len(buf)
                    buf.clear()
                    if self._discarding > _MAX_DISCARD:
                        self._fail(
                            codes.LINE_TOO_LONG.with_text("Line too long, closing"), "endless line"
                        )
                    return None
                del buf[: lf + 1]
                self._discarding = 0
                continue  # the rest of the buffer may hold pipelined commands
            lf = buf.find(b"\n", 0, limit)
            if lf >= 0:
                line = bytes(buf[:lf])
                del buf[: lf + 1]
                if not line.endswith(b"\r") or b"\r" in line[:-1]:
                    # RFC 5321 §2.3.8: lines end with CRLF only; a bare CR or LF ends none.
                    raise SMTPProtocolError(codes.BARE_LINE_ENDING)
                return line[:-1]
            if len(buf) < limit:
                return None
            # RFC 5321 §4.5.3.1.4: 512 octets with CRLF. Answer now, drop the rest of the line.
            if self._sasl is not None:
                self._sasl = None  # RFC 4954 §4: 500 5.5.6 ends the exchange
                self._reply(codes.AUTH_LINE_TOO_LONG)
            else:
                self._reply(codes.LINE_TOO_LONG)
            self._count_error()
            self._discarding = 1
        return None

    def _dispatch(self, line: bytes) -> Event | None:
        cmd = parse_command(line)
        verb = cmd.verb
        if verb in ("EHLO", "HELO"):
            return self._helo(cmd.arg, verb == "EHLO")
        if verb == "MAIL":
            return self._mail(cmd.arg)
        if verb == "RCPT":
            return self._rcpt(cmd.arg)
        if verb == "DATA":
            return self._data_cmd(cmd.arg)
        if verb == "BDAT":
            return self._bdat(cmd.arg)
        if verb == "RSET":
            self._no_args(cmd.arg)
            self._end_transaction()
            self._reply(codes.RESET_OK)
            return None
        if verb == "NOOP":
            self._reply(codes.NOOP_OK)  # RFC 5321 §4.1.1.9: the argument is ignored
            return None
        if verb == "QUIT":
            self._reply(
                codes.SERVICE_CLOSING.with_text(f"{self.settings.hostname} closing connection")
            )
            self._close("quit")
            return None
        if verb == "STARTTLS":
            return self._starttls(cmd.arg)
        if verb == "VRFY":
            # RFC 5321 §3.5.3: 252 neither confirms nor denies; never reveal who exists.
            self._reply(codes.CANNOT_VRFY)
            return None
        if verb == "EXPN":
            raise SMTPProtocolError(codes.NOT_IMPLEMENTED.with_text("EXPN is disabled"))
        if verb == "HELP":
            self._reply(codes.HELP)
            return None
        if verb in _HTTP_VERBS and _HTTP_ARG.match(cmd.arg):
            raise SMTPProtocolError(codes.HTTP_REJECTED, close=True)
        if verb == "AUTH":
            return self._auth(cmd.arg)
        raise SMTPProtocolError(codes.SYNTAX_ERROR)

    # ------------------------------------------------------------------------------ AUTH

    def _auth(self, arg: str) -> Event | None:
        """RFC 4954 §4: AUTH mechanism [initial-response]."""
        s = self.settings
        if not s.auth_mechanisms:
            raise SMTPProtocolError(codes.NOT_IMPLEMENTED.with_text("AUTH not available here"))
        if not self._auth_offered():
            # §4: before TLS the mechanisms on offer need encryption; nothing is checked.
            raise SMTPProtocolError(codes.ENCRYPTION_REQUIRED)
        if self.state is State.CONNECTED:
            raise SMTPProtocolError(codes.NEED_HELO)
        if self.user is not None:
            raise SMTPProtocolError(codes.BAD_SEQUENCE.with_text("Already authenticated"))
        if self._txn is not None:
            raise SMTPProtocolError(
                codes.BAD_SEQUENCE.with_text("AUTH not allowed in a transaction")
            )
        args = arg.split()
        if not args or len(args) > 2:
            raise SMTPProtocolError(
                codes.PARAM_SYNTAX.with_text("Syntax: AUTH mechanism [response]")
            )
        name = args[0].upper()
        if name not in s.auth_mechanisms:
            raise SMTPProtocolError(codes.PARAM_NOT_IMPLEMENTED.with_text("Unrecognized mechanism"))
        if self._nonce is None:
            raise RuntimeError("AUTH offered without a nonce source")
        machine = sasl.mechanism(name, nonce=self._nonce, secret=self._secret)
        if machine is None:
            raise SMTPProtocolError(codes.PARAM_NOT_IMPLEMENTED.with_text("Unrecognized mechanism"))
        exchange = _Exchange(name, machine)
        try:
            initial = None
            if len(args) == 2:
                initial = sasl.decode_response(
                    args[1].encode("ascii", "replace"), limit=s.max_auth_line
                )
            step = machine.start(initial)
        except sasl.SASLError as err:
            raise SMTPProtocolError(_SASL_REPLIES[err.kind]) from None
        self._sasl = exchange
        return self._sasl_step(step)

    def _sasl_response(self, line: bytes) -> Event | None:
        exchange = self._sasl
        assert exchange is not None
        try:
            data = sasl.decode_response(line, limit=self.settings.max_auth_line)
            if exchange.success is not None:
                if data:
                    raise sasl.SASLError("malformed", "expected an empty response")
                return self._auth_succeeded(exchange, exchange.success)
            step = exchange.machine.respond(data)
        except sasl.SASLError as err:
            self._sasl = None
            raise SMTPProtocolError(_SASL_REPLIES[err.kind]) from None
        return self._sasl_step(step)

    def _sasl_step(self, step: sasl.Step) -> Event | None:
        exchange = self._sasl
        assert exchange is not None
        if isinstance(step, sasl.Challenge):
            self._out.append(b"334 " + sasl.encode_challenge(step.data) + b"\r\n")
            return None
        if isinstance(step, sasl.CheckPassword):
            exchange.user = step.authcid
            self._awaiting = AuthPassword(step.authcid, step.password, step.authzid, exchange.name)
            return self._awaiting
        if isinstance(step, sasl.NeedScramKeys):
            exchange.user = step.authcid
            self._awaiting = AuthScramKeys(step.authcid)
            return self._awaiting
        if isinstance(step, sasl.Success):
            if step.final is not None:
                # RFC 4954 §4 has no additional data with 235: the server-final goes out as a
                # last 334 challenge, answered by an empty line (RFC 4422 §3.6).
                exchange.success = step
                self._out.append(b"334 " + sasl.encode_challenge(step.final) + b"\r\n")
                return None
            return self._auth_succeeded(exchange, step)
        self._sasl = None
        self._auth_failed()
        return AuthResult(exchange.user, False, exchange.name)

    def _auth_succeeded(self, exchange: _Exchange, step: sasl.Success) -> Event:
        self._sasl = None
        self.user = step.authcid
        self._reply(codes.AUTH_OK)
        return AuthResult(step.authcid, True, exchange.name)

    def _auth_failed(self) -> None:
        self._reply(codes.AUTH_INVALID)
        self._count_error()

    @staticmethod
    def _no_args(arg: str) -> None:
        if arg.strip():
            raise SMTPProtocolError(codes.PARAM_SYNTAX)

    def _helo(self, arg: str, extended: bool) -> Event:
        name = parse_helo_arg(arg)
        # RFC 5321 §4.1.4: a second EHLO/HELO resets the transaction like RSET.
        self._txn = None
        self.helo = name
        self.extended = extended
        self.state = State.READY
        host = self.settings.hostname
        if extended:
            self._reply(Reply(250, "", "\n".join([host, *self.extensions()])))
        else:
            self._reply(Reply(250, "", host))
        return Helo(name, extended)

    def _advertised(self) -> frozenset[str]:
        """The keywords the MAIL/RCPT parameters may use (none after HELO)."""
        if not self.extended:
            return frozenset()
        key = (self.tls, self.user is not None)
        if self._advertised_for != key:
            self._advertised_cache = frozenset(e.split(" ", 1)[0] for e in self.extensions())
            self._advertised_for = key
        return self._advertised_cache

    def _mail(self, arg: str) -> Event:
        if self.state is State.CONNECTED:
            raise SMTPProtocolError(codes.NEED_HELO)
        if self.state is not State.READY:
            raise SMTPProtocolError(codes.NESTED_MAIL)
        if self.settings.auth_required and self.user is None:
            raise SMTPProtocolError(codes.AUTH_REQUIRED)  # RFC 4954 §6, RFC 6409 §4.3
        args = parse_mail_arg(arg, extensions=self._advertised())
        if args.size is not None and args.size > self.settings.max_message_size:
            raise SMTPProtocolError(codes.MESSAGE_TOO_BIG)  # RFC 1870 §6
        self._awaiting = MailFrom(args)
        return self._awaiting

    def _rcpt(self, arg: str) -> Event:
        if self.state not in (State.MAIL, State.RCPT) or self._txn is None:
            raise SMTPProtocolError(codes.NEED_MAIL)
        args = parse_rcpt_arg(arg, extensions=self._advertised(), utf8=self._txn.mail.smtputf8)
        if len(self._txn.rcpts) >= self.settings.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 lets the client send the rest in another transaction.
            raise SMTPProtocolError(codes.TOO_MANY_RECIPIENTS)
        self._awaiting = RcptTo(args)
        return self._awaiting

    def _data_cmd(self, arg: str) -> Event | None:
        self._no_args(arg)
        if self._txn is not None and self._txn.chunked:
            raise SMTPProtocolError(codes.BDAT_AFTER_DATA)
        if self.state is State.MAIL:
            # RFC 2920 §3.1: DATA after every RCPT failed gets 554 (or 503), never 354.
            raise SMTPProtocolError(codes.NO_VALID_RECIPIENTS)
        if self.state is not State.RCPT:
            raise SMTPProtocolError(
                codes.NEED_RCPT if self.state is State.READY else codes.NEED_HELO
            )
        if self._buf:
            # RFC 2920 §3.1: DATA ends a pipelined group; message text before our 354 is a
            # client that does not wait for replies (the SMTP smuggling / spam-bot pattern).
            raise SMTPProtocolError(codes.ILLEGAL_PIPELINING, close=True)
        self._reply(codes.START_MAIL_INPUT)
        self.state = State.DATA
        self._data = bytearray(b"\r\n")  # sentinel: the CRLF that ended the DATA line
        self._data_overflow = False
        return None

    def _bdat(self, arg: str) -> Event | None:
        size, last = parse_bdat_arg(arg)
        txn = self._txn
        # RFC 3030 §2: the chunk is on its way whatever we think of it, so an unacceptable one is
        # still read to its end, then answered with the error; the state stays as it was.
        refusal: Reply | None = None
        if not self.settings.chunking or not self.extended:
            refusal = codes.NOT_IMPLEMENTED.with_text("CHUNKING not offered")
        elif txn is None:
            refusal = codes.NEED_MAIL if self.state is State.READY else codes.NEED_HELO
        elif not txn.rcpts:
            refusal = codes.NO_VALID_RECIPIENTS
        self._chunk_refusal = refusal
        self._bdat_return = self.state
        self._bdat_left = size
        self._bdat_last = last
        self.state = State.BDAT
        if refusal is None and txn is not None:
            txn.chunked = True
            if txn.failed is None and txn.chunked_size + size > self.settings.max_message_size:
                txn.failed = codes.MESSAGE_TOO_BIG
                txn.chunks.clear()
        return None

    def _starttls(self, arg: str) -> Event | None:
        self._no_args(arg)
        if self.tls:
            raise SMTPProtocolError(codes.TLS_ALREADY_ACTIVE)
        if not self.settings.starttls:
            raise SMTPProtocolError(codes.NOT_IMPLEMENTED.with_text("STARTTLS not available"))
        if self.state not in (State.CONNECTED, State.READY):
            raise SMTPProtocolError(codes.BAD_SEQUENCE)
        self._reply(codes.READY_FOR_TLS)
        # RFC 3207 §4.2 / CVE-2011-0411: anything pipelined after STARTTLS is discarded unanswered.
        self._buf.clear()
        self.state = State.TLS
        return StartTLS()

    # ------------------------------------------------------------------------------ message data

    def _read_data(self) -> Event | None:
        """Move buffered bytes into the message and look for CRLF.CRLF (RFC 5321 §4.1.1.4)."""
        if not self._buf:
            return NEED_DATA
        self.progress += 1
        data = self._data
        start = max(len(data) - 4, 0)
        data += self._buf
        self._buf.clear()
        end = data.find(b"\r\n.\r\n", start)
        if end < 0:
            self._bound_data()
            return NEED_DATA
        rest = data[end + 5 :]
        del data[end + 2 :]  # keep the final CRLF of the last line
        self._buf += rest
        return self._finish_data()

    def _bound_data(self) -> None:
        """Past the size limit keep only a tail long enough to see the terminator in."""
        data = self._data
        if len(data) > self.settings.max_message_size + 2:
            self._data_overflow = True
            del data[:-4]

    def _finish_data(self) -> Event | None:
        raw = self._data
        self._data = bytearray()
        self.state = State.RCPT
        txn = self._txn
        assert txn is not None
        if self._data_overflow or len(raw) - 2 > self.settings.max_message_size:
            self._reject_message(codes.MESSAGE_TOO_BIG)
            return None
        # Dot-unstuffing, RFC 5321 §4.5.2: a line's leading "." is removed (sentinel CRLF included).
        message = bytes(raw).replace(b"\r\n.", b"\r\n")[2:] if b"\r\n." in raw else bytes(raw[2:])
        return self._complete(message, chunked=False)

    def _read_chunk(self) -> Event | None:
        """Consume the bytes of a BDAT chunk (RFC 3030 §2): exactly `size` octets, no stuffing."""
        if self._bdat_left:
            if not self._buf:
                return NEED_DATA
            self.progress += 1
            take = bytes(self._buf[: self._bdat_left])
            del self._buf[: len(take)]
            self._bdat_left -= len(take)
            txn = self._txn
            if self._chunk_refusal is None and txn is not None and txn.failed is None:
                txn.chunks.append(take)
                txn.chunked_size += len(take)
            if self._bdat_left:
                return NEED_DATA
        return self._end_chunk()

    def _end_chunk(self) -> Event | None:
        refusal, self._chunk_refusal = self._chunk_refusal, None
        if refusal is not None:
            self.state = self._bdat_return
            raise SMTPProtocolError(refusal)
        txn = self._txn
        assert txn is not None
        self.state = State.RCPT
        if txn.failed is not None:
            if self._bdat_last:
                self._reject_message(txn.failed)
                return None
            raise SMTPProtocolError(txn.failed)
        if not self._bdat_last:
            self._reply(codes.CHUNK_OK.with_text(f"OK: {txn.chunked_size} octets received"))
            return None
        message = b"".join(txn.chunks)
        txn.chunks.clear()
        return self._complete(message, chunked=True)

    def _complete(self, message: bytes, *, chunked: bool) -> Event | None:
        # RFC 5321 §2.3.8: CRLF only. One count each is C-speed; equal counts mean no bare CR/LF.
        crlf = message.count(b"\r\n")
        if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
            self._reject_message(codes.BARE_LINE_IN_MESSAGE)
            return None
        if message and not message.endswith(b"\r\n"):
            # BDAT content must be CRLF lines too (no BINARYMIME); complete the last line.
            message += b"\r\n"
        limit = self.settings.max_text_line
        # Longest line via split (C speed; a counted regex costs ~40 ms per MiB here).
        if len(message) > limit and max(map(len, message.split(b"\n"))) >= limit:
            self._reject_message(codes.MESSAGE_TOO_BIG.with_text("Message has a line too long"))
            return None
        txn = self._txn
        assert txn is not None
        self._awaiting = MessageReceived(txn.mail, tuple(txn.rcpts), message, chunked)
        return self._awaiting

    def _reject_message(self, reply: Reply) -> None:
        self._reply(reply)
        self._count_error()
        self._end_transaction()

    # ------------------------------------------------------------------------------ helpers

    def _end_transaction(self) -> None:
        self._txn = None
        if self.state is not State.CLOSED:
            self.state = State.READY if self.helo is not None else State.CONNECTED

    def _reply(self, reply: Reply) -> None:
        if self.state is not State.CLOSED:
            self._out.append(reply.to_bytes())

    def _count_error(self) -> None:
        self.errors += 1
        if self.errors >= self.settings.max_errors and self.state is not State.CLOSED:
            self._fail(codes.TOO_MANY_ERRORS, "too many errors")

    def _fail(self, reply: Reply, reason: str) -> None:
        self._reply(reply)
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.state is not State.CLOSED:
            self._close_reason = reason
            self.state = State.CLOSED
            self._buf.clear()
            self._data = bytearray()
