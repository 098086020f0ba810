"""Sans-I/O POP3 server session: RFC 1939, RFC 2449 (CAPA, response codes, PIPELINING),
RFC 2595 (STLS), RFC 5034 (SASL AUTH) and RFC 3206 (AUTH and SYS response codes).

Theory of operation
-------------------
`ServerConnection` is fed bytes with `receive_data()` and asked for events with `next_event()`;
what it wants sent accumulates in an output buffer read with `data_to_send()`. It never awaits,
reads a clock or touches a socket (ARCHITECTURE.md rule 1). Most commands are answered by the
core alone (CAPA, STAT, LIST, UIDL, DELE, NOOP, RSET, USER, every syntax or sequence error).
The events below ask the adapter to act; while one is outstanding the core parses nothing
further, so pipelined commands (RFC 2449 §6.6) keep their order.

Adapter contract (`pop3d/`)
---------------------------
* `StartTLS`      -> flush the queued "+OK", run the TLS handshake, then `tls_established()`
                     (or close if it fails). Bytes pipelined after STLS were already dropped.
* `CheckPassword` -> USER/PASS, or AUTH PLAIN/LOGIN. Verify the password (the store, argon2);
                     if good, lock the maildrop and load its snapshot, then
                     `logged_in(messages, uidls=...)`; otherwise `login_failed()`,
                     `login_failed(in_use=True)` (maildrop locked: "-ERR [IN-USE]") or
                     `login_failed(temporary=True)` (store trouble: "-ERR [SYS/TEMP]").
                     Any delay after a failure (RFC 1939 §13) is the adapter's to impose.
* `NeedScramKeys` -> AUTH SCRAM-SHA-256: `scram_keys(keys)`, or `scram_keys(None)` for an
                     unknown user (the exchange then goes on with fake keys and fails).
* `Authenticated` -> SCRAM proved the user: lock and load as above, `logged_in`/`login_failed`.
* `Retrieve`      -> RETR or TOP: fetch message `uid` and pass all of it to `send_message(data)`
                     (the core cuts TOP, normalises line ends and dot-stuffs), or call
                     `retrieve_failed()`. `queued_retrievals()` names the messages that the
                     RETR and TOP commands pipelined behind it will want, so the adapter can
                     read them from the store in one go (a hint: each still comes as its own
                     `Retrieve`, and may have been expunged by then).
* `Update`        -> QUIT in TRANSACTION (RFC 1939 §6): expunge `deleted_uids`, release the
                     lock, then `update_done(ok)`. A dropped connection or a timeout never
                     produces it: nothing is deleted unless the client said QUIT.
* `Closed`        -> flush and close; release the maildrop lock if one is held.
* `NEED_DATA`     -> everything buffered has been dealt with: flush the output, read more.

Messages are numbered from 1 in the order `logged_in` gave them; `Retrieve.index` is that
number. `timed_out()` (the adapter's autologout timer, at least 10 minutes, RFC 1939 §3) and
`shutdown()` close the session without an UPDATE. `progress` moves on every complete line so
the adapter can re-arm its inactivity timer.

State table (`_COMMANDS` holds which command is valid in which state; any other is -ERR):

    GREETING --start()--> AUTHORIZATION
    AUTHORIZATION --STLS--> TLS --tls_established()--> AUTHORIZATION (everything forgotten)
    AUTHORIZATION --USER+PASS / AUTH, then logged_in()--> TRANSACTION
    TRANSACTION --QUIT--> UPDATE --update_done()--> CLOSED
    AUTHORIZATION --QUIT--> CLOSED;  any --EOF/timeout/shutdown/too many errors--> CLOSED
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from homing.proto import sasl
from homing.proto.pop3 import codes
from homing.proto.pop3.codes import Response

# A line with no end that keeps growing past this is abuse, not a long command: drop the client.
_MAX_DISCARD = 64 * 1024
# A message number or line count: ASCII digits only (str.isdigit would take "²" and "١").
_NUMBER = re.compile(r"[0-9]{1,20}")
# RFC 1939 §7 UIDL: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
_UIDL = re.compile(r"[\x21-\x7e]{1,70}")
_LINE_END = re.compile(rb"\r\n|\r|\n")
# A message is sent as stored when it has CRLF line ends only and no line starting with "."
# (the common case: the store keeps CRLF). These two find what needs work: a CR followed by
# anything but LF (`_wire_ready` checks the last two octets are CRLF), and an LF that is bare
# or starts a line with "." (RFC 1939 §3). A regular expression with a literal first octet
# scans at C speed: the two take about a third of what counting line ends with bytes.count
# did (measured on 10 KiB messages).
_LONE_CR = re.compile(rb"\r[^\n]")
_LF_NEEDS_WORK = re.compile(rb"\n(?:\.|(?<!\r\n))")
# A pipelined RETR or TOP line, for `queued_retrievals` (a hint: the real parsing is later).
_QUEUED_RETRIEVAL = re.compile(rb"(?i:RETR|TOP) ([0-9]{1,20})(?:[ \r]|$)")
_SASL_REFUSALS: dict[sasl.ErrorKind, Response] = {
    "cancelled": codes.AUTH_CANCELLED,
    "malformed": codes.AUTH_BAD_DATA,
    "authzid": codes.AUTHZID_REFUSED,
    "too_long": codes.AUTH_LINE_TOO_LONG,
}


class State(enum.Enum):
    GREETING = "greeting"  # connected, greeting not sent yet
    AUTHORIZATION = "authorization"  # RFC 1939 §4
    TLS = "tls"  # "+OK" to STLS queued, handshake pending
    TRANSACTION = "transaction"  # RFC 1939 §5: maildrop locked
    UPDATE = "update"  # RFC 1939 §6: QUIT received, expunge in progress
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Settings:
    """What one POP3 listener offers and enforces. Built by the session layer from Config."""

    allow_plaintext_auth: bool = False
    """Allow USER/PASS and AUTH without TLS. RFC 5034 §4 and RFC 2595 §2.1 want this off by
    default: a password (or a mailbox) should not cross the network in clear text."""
    tls_active: bool = False
    """The connection is already encrypted (port 995, implicit TLS, RFC 8314)."""
    starttls: bool = False
    """Offer STLS (RFC 2595 §4) while the session is not yet encrypted."""
    mechanisms: tuple[str, ...] = sasl.MECHANISMS
    """SASL mechanisms for AUTH, in the order CAPA lists them (names from `sasl.MECHANISMS`)."""
    max_errors: int = 10
    """Erroneous commands (or failed logins) before the session is closed."""
    max_line: int = 255
    """Longest command line with its CRLF (RFC 2449 §4: 255 octets)."""
    max_auth_line: int = sasl.MAX_RESPONSE
    """Longest AUTH command or SASL response line (RFC 4954 §4 sets 12288 octets for SMTP;
    RFC 5034 §4 wants the largest response of any offered mechanism accepted)."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.mechanisms if m not in sasl.MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported SASL mechanisms: {', '.join(unknown)}")


# ---------------------------------------------------------------------------------------- events


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class StartTLS:
    """ "+OK" to STLS is queued: flush it, handshake, then call `tls_established()`."""


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """Verify the password; if good lock and load the maildrop; answer with `logged_in` or
    `login_failed`. `mechanism` is "USER" for USER/PASS, else the SASL mechanism name."""

    user: str
    password: str = field(repr=False)
    authzid: str | None
    mechanism: str


@dataclass(frozen=True, slots=True)
class NeedScramKeys:
    """Look up the SCRAM-SHA-256 verifier of `user`; answer with `scram_keys(keys or None)`."""

    user: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """SASL proved the user's identity (SCRAM): lock and load the maildrop, then `logged_in`
    or `login_failed`."""

    user: str
    authzid: str | None
    mechanism: str


@dataclass(frozen=True, slots=True)
class Retrieve:
    """RETR (`top_lines` None) or TOP: fetch message `uid` and pass it to `send_message`."""

    index: int
    uid: int
    top_lines: int | None


@dataclass(frozen=True, slots=True)
class Update:
    """QUIT in TRANSACTION: expunge these UIDs, release the lock, then `update_done(ok)`."""

    deleted_uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over; flush what is queued and close. `reason` is for the log."""

    reason: str


Event = (
    StartTLS
    | CheckPassword
    | NeedScramKeys
    | Authenticated
    | Retrieve
    | Update
    | Closed
    | _NeedData
)
_Verdict = CheckPassword | NeedScramKeys | Authenticated | Retrieve | Update


@dataclass(frozen=True, slots=True)
class _Message:
    uid: int
    size: int
    uidl: str


@dataclass(slots=True)
class _Exchange:
    """An AUTH exchange in progress."""

    name: str
    machine: sasl.Mechanism
    success: sasl.Success | None = None
    """Set once the final challenge (SCRAM's server signature) is sent: the client's empty
    response completes the exchange (RFC 5034 §4: no additional data with +OK, so RFC 4422
    §3.6 applies)."""


class _Refused(Exception):
    """A command is answered with `response` (a -ERR) and counted as an error."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.text)
        self.response = response


class ServerConnection:
    """One POP3 server session, bytes in and bytes out."""

    def __init__(
        self,
        settings: Settings,
        *,
        nonce: Callable[[], str],
        scram_secret: bytes | None = None,
    ) -> None:
        """`nonce` and `scram_secret` are passed to `sasl.mechanism` (SCRAM server nonces, and
        the key for unknown users' fake verifiers)."""
        self.settings = settings
        self.state = State.GREETING
        self.tls = settings.tls_active
        self.user: str | None = None
        """The authenticated user, once in TRANSACTION."""
        self.errors = 0
        self.progress = 0
        """Bumped on every complete line (adapters reset their inactivity timer when it moves)."""
        self._nonce = nonce
        self._secret = scram_secret
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._awaiting: _Verdict | None = None
        self._queued: Event | None = None
        self._discarding = 0  # >0: inside an over-long line, bytes dropped so far
        self._pending_user: str | None = None  # USER just accepted: PASS may follow
        self._user_given: str | None = None  # the USER name, while handling the line after it
        self._sasl: _Exchange | None = None
        self._messages: list[_Message] = []
        self._deleted: set[int] = set()  # 0-based indexes into _messages
        self._close_reason: str | None = None
        self._closed_emitted = False

    # ------------------------------------------------------------------------------ adapter API

    def start(self, greeting: Response = codes.GREETING) -> None:
        """Queue the greeting (RFC 1939 §4)."""
        if self.state is not State.GREETING:
            raise RuntimeError("start() called twice")
        self._reply(greeting)
        if greeting.ok:
            self.state = State.AUTHORIZATION
        else:
            self._close("refused at greeting")

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer. b"" means the peer closed its side."""
        if self.state is State.CLOSED:
            return
        if not data:
            # RFC 1939 §6: only QUIT leads to UPDATE; a dropped session deletes nothing.
            self._close("peer closed the connection")
            return
        if self.state is State.TLS:
            return  # RFC 2595 §4 / CVE-2011-0411: nothing before the handshake counts
        self._buf += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event:
        while True:
            if self._queued is not None:
                queued, self._queued = self._queued, None
                return queued
            if self.state is State.CLOSED:
                if self._closed_emitted:
                    return NEED_DATA
                self._closed_emitted = True
                return Closed(self._close_reason or "closed")
            if self._awaiting is not None:
                raise RuntimeError(f"answer {self._awaiting!r} first")
            if self.state in (State.GREETING, State.TLS, State.UPDATE):
                return NEED_DATA
            line = self._next_line()
            if line is None:
                if self.closed:  # the line was an endless one
                    continue
                return NEED_DATA
            self.progress += 1
            try:
                event = self._handle_line(line)
            except _Refused as refused:
                self._error(refused.response)
                continue
            if event is not None:
                return event

    def tls_established(self) -> None:
        """The STLS handshake succeeded: forget everything from before (RFC 2595 §4)."""
        if self.state is not State.TLS:
            raise RuntimeError("tls_established() outside STLS")
        self.tls = True
        self._buf.clear()
        self._pending_user = None
        self.state = State.AUTHORIZATION

    def logged_in(self, messages: Sequence[tuple[int, int]], *, uidls: Sequence[str] = ()) -> None:
        """The user is authenticated and the maildrop locked: its snapshot is `messages`, a
        (uid, exact size in octets) pair per message; `uidls` gives each one's UIDL string
        (RFC 1939 §7: 1-70 characters 0x21-0x7E, never reused), default ``str(uid)``."""
        snapshot = self._snapshot(messages, uidls)
        event = self._take(CheckPassword, Authenticated)
        if event is None:
            return
        assert isinstance(event, CheckPassword | Authenticated)
        if isinstance(event, CheckPassword) and self._sasl is not None:
            step = self._sasl.machine.password_checked(True)
            if not isinstance(step, sasl.Success) or step.final is not None:
                raise RuntimeError(f"{self._sasl.name}: unexpected step {step!r}")
        self._sasl = None
        self._messages = snapshot
        self._deleted.clear()
        self.user = event.user
        self.state = State.TRANSACTION
        self._reply(codes.LOGGED_IN.format(count=len(snapshot), size=self._total()))

    def login_failed(self, in_use: bool = False, *, temporary: bool = False) -> None:
        """Credentials refused (-ERR [AUTH]), maildrop locked elsewhere (`in_use`: -ERR [IN-USE],
        RFC 2449 §8.1.1) or our own trouble (`temporary`: -ERR [SYS/TEMP], RFC 3206 §3)."""
        event = self._take(CheckPassword, Authenticated)
        if event is None:
            return
        if isinstance(event, CheckPassword) and self._sasl is not None:
            self._sasl.machine.password_checked(False)
        self._sasl = None
        if in_use:
            self._reply(codes.IN_USE)
        elif temporary:
            self._reply(codes.LOGIN_TEMP_FAILURE)
        else:
            self._error(codes.AUTH_FAILED)

    def scram_keys(self, keys: sasl.ScramKeys | None) -> None:
        """The SCRAM verifier asked for by `NeedScramKeys` (None: no such user)."""
        if self._take(NeedScramKeys) is None:
            return
        assert self._sasl is not None
        self._queued = self._sasl_step(self._sasl.machine.scram_keys(keys))

    def send_message(self, data: bytes) -> None:
        """The whole message asked for by `Retrieve`, as stored (CRLF lines, unstuffed)."""
        event = self._take(Retrieve)
        if event is None:
            return
        assert isinstance(event, Retrieve)
        ready = _wire_ready(data)
        body = data if ready else _normalise(data)
        if event.top_lines is None:
            head = _MESSAGE_FOLLOWS % len(body)
        else:
            body = _top(body, event.top_lines)
            head = _TOP_FOLLOWS
        self._out += (head, body if ready else _stuff(body), b".\r\n")

    def queued_retrievals(self, limit: int) -> list[int]:
        """The UIDs that up to `limit` RETR and TOP commands already received, but not yet
        handled, ask for, in order (RFC 2449 §6.6: a client may pipeline them).

        A hint for reading ahead, nothing more: those commands are parsed and answered later
        one by one, as usual, and may yet be refused. Numbers of messages marked as deleted
        or out of range are left out."""
        if self.state is not State.TRANSACTION:
            return []
        buf, messages, deleted = self._buf, self._messages, self._deleted
        uids: list[int] = []
        start = 0
        while len(uids) < limit:
            lf = buf.find(b"\n", start)
            if lf < 0:
                break
            match = _QUEUED_RETRIEVAL.match(buf, start, lf)
            start = lf + 1
            if match is not None:
                i = int(match[1]) - 1
                if 0 <= i < len(messages) and i not in deleted:
                    uids.append(messages[i].uid)
        return uids

    def retrieve_failed(self) -> None:
        """The message asked for by `Retrieve` could not be read (-ERR [SYS/TEMP])."""
        if self._take(Retrieve) is not None:
            self._reply(codes.RETRIEVE_FAILED)

    def update_done(self, ok: bool) -> None:
        """The UPDATE state's expunge finished (`ok`) or failed; the session then ends."""
        event = self._take(Update)
        if event is None:
            return
        assert isinstance(event, Update)
        if ok:
            self._reply(codes.UPDATED.format(deleted=len(event.deleted_uids)))
        else:
            self._reply(codes.UPDATE_FAILED)  # RFC 1939 §6
        self._close("quit")

    def timed_out(self) -> None:
        """The autologout timer expired (RFC 1939 §3): close without entering UPDATE."""
        self._fail(codes.TIMEOUT, "timeout")

    def shutdown(self) -> None:
        """The server is stopping: say so and close (no UPDATE)."""
        self._fail(codes.SHUTTING_DOWN, "shutdown")

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def capabilities(self) -> list[str]:
        """The CAPA list (RFC 2449 §5). It is the same in both states: capabilities of the
        AUTHORIZATION state MUST be announced in both."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"]
        if self._auth_allowed():
            caps.append("USER")
        mechanisms = self._offered()
        if mechanisms:
            caps.append("SASL " + " ".join(mechanisms))
        if self.settings.starttls and not self.tls:
            caps.append("STLS")
        caps.append("IMPLEMENTATION Homing")
        return caps

    # ------------------------------------------------------------------------------ lines

    def _next_line(self) -> bytes | None:
        """Take one line (without its line end) off the buffer, or None if there is none yet.

        RFC 1939 §3 lines end with CRLF; a bare LF is accepted too (as common servers do: POP3
        has no message data from the client that could be smuggled that way)."""
        buf = self._buf
        while True:
            if self._discarding:
                lf = buf.find(b"\n")
                if lf < 0:
                    self._discarding += len(buf)
                    buf.clear()
                    if self._discarding > _MAX_DISCARD:
                        self._fail(codes.LINE_TOO_LONG, "endless line")
                    return None
                del buf[: lf + 1]
                self._discarding = 0
                continue
            limit = self._line_limit()
            lf = buf.find(b"\n", 0, limit)
            if lf < 0:
                if len(buf) < limit:
                    return None
                self._line_too_long()
                self._discarding = 1
                continue
            line = bytes(buf[:lf])
            del buf[: lf + 1]
            return line[:-1] if line.endswith(b"\r") else line

    def _line_limit(self) -> int:
        if self._sasl is not None or self._buf[:5].upper() == b"AUTH ":
            return self.settings.max_auth_line
        return self.settings.max_line

    def _line_too_long(self) -> None:
        self.progress += 1
        self._pending_user = None
        if self._sasl is not None:
            self._sasl = None
            self._error(codes.AUTH_LINE_TOO_LONG)
        else:
            self._error(codes.LINE_TOO_LONG)

    def _handle_line(self, line: bytes) -> Event | None:
        if self._sasl is not None:
            return self._sasl_response(line)
        self._user_given, self._pending_user = self._pending_user, None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused(codes.INVALID_UTF8) from None
        verb, _, arg = text.partition(" ")
        # RFC 2449 §3: keywords are case-insensitive ASCII ("lıst".upper() is "LIST").
        command = _COMMANDS.get(verb.upper()) if verb.isascii() else None
        if command is None:
            raise _Refused(codes.UNKNOWN_COMMAND)
        states, handler = command
        if self.state not in states:
            if self.state is State.AUTHORIZATION:
                raise _Refused(codes.NOT_LOGGED_IN)
            raise _Refused(codes.ALREADY_LOGGED_IN)
        return handler(self, arg)

    # ------------------------------------------------------------------------------ AUTHORIZATION

    def _auth_allowed(self) -> bool:
        return self.tls or self.settings.allow_plaintext_auth

    def _offered(self) -> list[str]:
        return list(self.settings.mechanisms) if self._auth_allowed() else []

    def _require_auth_allowed(self) -> None:
        if not self._auth_allowed():
            raise _Refused(codes.TLS_REQUIRED)

    def _cmd_user(self, arg: str) -> Event | None:
        self._require_auth_allowed()
        try:
            name = sasl.saslprep(arg.strip(" "))
        except sasl.SASLError:
            raise _Refused(codes.SYNTAX_ERROR) from None
        if not name:
            raise _Refused(codes.SYNTAX_ERROR)
        self._pending_user = name
        self._reply(codes.USER_OK)  # RFC 1939 §7: never say whether the mailbox exists
        return None

    def _cmd_pass(self, arg: str) -> Event | None:
        # RFC 1939 §7: PASS only right after USER, and its argument is the rest of the line
        # (spaces included).
        user = self._user_given
        if user is None:
            raise _Refused(codes.USER_FIRST)
        self._require_auth_allowed()
        if not arg:
            raise _Refused(codes.SYNTAX_ERROR)
        return self._await(CheckPassword(user, arg, None, "USER"))

    def _cmd_apop(self, arg: str) -> Event | None:
        raise _Refused(codes.APOP_UNSUPPORTED)  # no timestamp in our greeting (RFC 1939 §7)

    def _cmd_stls(self, arg: str) -> Event | None:
        _no_args(arg)
        if self.tls:
            raise _Refused(codes.TLS_ALREADY_ACTIVE)
        if not self.settings.starttls:
            raise _Refused(codes.STLS_UNAVAILABLE)
        self._reply(codes.BEGIN_TLS)
        # RFC 2595 §4 / CVE-2011-0411: anything pipelined after STLS is discarded unanswered.
        self._buf.clear()
        self.state = State.TLS
        return StartTLS()

    def _cmd_auth(self, arg: str) -> Event | None:
        args = arg.split()
        if not args:
            # Not in RFC 5034, but clients (Outlook among them) probe with a bare AUTH.
            self._multiline(codes.MECHANISMS_FOLLOW, self._offered())
            return None
        if len(args) > 2:
            raise _Refused(codes.SYNTAX_ERROR)
        self._require_auth_allowed()
        name = args[0].upper()
        if name not in self._offered():
            raise _Refused(codes.NO_MECHANISM)
        machine = sasl.mechanism(name, nonce=self._nonce, secret=self._secret)
        assert machine is not None  # Settings only holds names sasl knows
        try:
            initial = None
            if len(args) == 2:
                initial = sasl.decode_response(
                    args[1].encode("utf-8"), limit=self.settings.max_auth_line
                )
            step = machine.start(initial)
        except sasl.SASLError as err:
            raise _Refused(_SASL_REFUSALS[err.kind]) from None
        self._sasl = _Exchange(name, machine)
        return self._sasl_step(step)

    def _sasl_response(self, line: bytes) -> Event | None:
        exchange = self._sasl
        assert exchange is not None
        try:
            data = sasl.decode_response(line, limit=self.settings.max_auth_line)
            if exchange.success is not None:
                if data:
                    raise sasl.SASLError("malformed", "expected an empty response")
                self._sasl = None
                success = exchange.success
                return self._await(Authenticated(success.authcid, success.authzid, exchange.name))
            step = exchange.machine.respond(data)
        except sasl.SASLError as err:
            self._sasl = None
            self._error(_SASL_REFUSALS[err.kind])
            return None
        return self._sasl_step(step)

    def _sasl_step(self, step: sasl.Step) -> Event | None:
        """Turn a mechanism's step into output, an event, or the end of the exchange."""
        exchange = self._sasl
        assert exchange is not None
        if isinstance(step, sasl.Challenge):
            # RFC 5034 §4: "+" SP base64; an empty challenge is "+ " alone.
            self._out.append(b"+ " + sasl.encode_challenge(step.data) + b"\r\n")
            return None
        if isinstance(step, sasl.CheckPassword):
            return self._await(
                CheckPassword(step.authcid, step.password, step.authzid, exchange.name)
            )
        if isinstance(step, sasl.NeedScramKeys):
            return self._await(NeedScramKeys(step.authcid))
        if isinstance(step, sasl.Success):
            if step.final is not None:
                # RFC 5034 §4: POP3 has no additional data with success, so it goes out as a
                # last challenge answered by an empty line (RFC 4422 §3.6).
                exchange.success = step
                self._out.append(b"+ " + sasl.encode_challenge(step.final) + b"\r\n")
                return None
            self._sasl = None
            return self._await(Authenticated(step.authcid, step.authzid, exchange.name))
        self._sasl = None
        self._error(codes.AUTH_FAILED)
        return None

    # ------------------------------------------------------------------------------ TRANSACTION

    def _cmd_stat(self, arg: str) -> Event | None:
        _no_args(arg)
        live = self._live()
        self._reply(codes.STAT.format(count=len(live), size=self._total()))
        return None

    def _cmd_list(self, arg: str) -> Event | None:
        self._listing(arg, codes.SCAN, lambda m: str(m.size))
        return None

    def _cmd_uidl(self, arg: str) -> Event | None:
        self._listing(arg, codes.UNIQUE_ID, lambda m: m.uidl)
        return None

    def _listing(self, arg: str, single: Response, value: Callable[[_Message], str]) -> None:
        """LIST and UIDL (RFC 1939 §5, §7): one message, or every one not marked deleted."""
        args = arg.split()
        if len(args) > 1:
            raise _Refused(codes.SYNTAX_ERROR)
        if args:
            i = self._message_arg(args[0])
            msg = self._messages[i]
            self._reply(single.format(index=i + 1, size=msg.size, uidl=msg.uidl))
            return
        live = self._live()
        head = codes.LISTING_FOLLOWS.format(count=len(live), size=self._total())
        self._multiline(head, (f"{i + 1} {value(m)}" for i, m in live))

    def _cmd_retr(self, arg: str) -> Event | None:
        args = arg.split()
        if len(args) != 1:
            raise _Refused(codes.SYNTAX_ERROR)
        i = self._message_arg(args[0])
        return self._await(Retrieve(i + 1, self._messages[i].uid, None))

    def _cmd_top(self, arg: str) -> Event | None:
        args = arg.split()
        if len(args) != 2:
            raise _Refused(codes.SYNTAX_ERROR)
        i = self._message_arg(args[0])
        if not _NUMBER.fullmatch(args[1]):
            raise _Refused(codes.SYNTAX_ERROR)  # RFC 1939 §7: a non-negative number of lines
        return self._await(Retrieve(i + 1, self._messages[i].uid, int(args[1])))

    def _cmd_dele(self, arg: str) -> Event | None:
        args = arg.split()
        if len(args) != 1:
            raise _Refused(codes.SYNTAX_ERROR)
        i = self._message_arg(args[0])
        self._deleted.add(i)
        self._reply(codes.DELETED.format(index=i + 1))
        return None

    def _cmd_noop(self, arg: str) -> Event | None:
        _no_args(arg)
        self._reply(codes.OK)
        return None

    def _cmd_rset(self, arg: str) -> Event | None:
        _no_args(arg)
        self._deleted.clear()
        self._reply(codes.RESET.format(count=len(self._messages), size=self._total()))
        return None

    def _cmd_quit(self, arg: str) -> Event | None:
        if self.state is State.AUTHORIZATION:
            self._reply(codes.BYE)
            self._close("quit")
            return None
        # RFC 1939 §6: QUIT from TRANSACTION enters UPDATE and removes the deleted messages.
        self.state = State.UPDATE
        deleted = tuple(self._messages[i].uid for i in sorted(self._deleted))
        return self._await(Update(deleted))

    def _cmd_capa(self, arg: str) -> Event | None:
        _no_args(arg)
        self._multiline(codes.CAPA_FOLLOWS, self.capabilities())
        return None

    def _message_arg(self, arg: str) -> int:
        """The 0-based index of message number `arg`, which must exist and not be deleted."""
        if not _NUMBER.fullmatch(arg):
            raise _Refused(codes.SYNTAX_ERROR)
        number = int(arg)
        if not 1 <= number <= len(self._messages):
            raise _Refused(codes.NO_SUCH_MESSAGE)
        if number - 1 in self._deleted:
            raise _Refused(codes.MESSAGE_DELETED)  # RFC 1939 §5: may not refer to it
        return number - 1

    def _live(self) -> list[tuple[int, _Message]]:
        return [(i, m) for i, m in enumerate(self._messages) if i not in self._deleted]

    def _total(self) -> int:
        return sum(m.size for _, m in self._live())

    @staticmethod
    def _snapshot(messages: Sequence[tuple[int, int]], uidls: Sequence[str]) -> list[_Message]:
        if uidls and len(uidls) != len(messages):
            raise ValueError("one UIDL per message")
        names = list(uidls) if uidls else [str(uid) for uid, _ in messages]
        if len(set(names)) != len(names):
            raise ValueError("UIDLs must be unique in a maildrop (RFC 1939 §7)")
        snapshot = []
        for (uid, size), uidl in zip(messages, names, strict=True):
            if not _UIDL.fullmatch(uidl):
                raise ValueError(f"bad UIDL {uidl!r}: 1-70 characters 0x21-0x7E (RFC 1939 §7)")
            if size < 0:
                raise ValueError("negative message size")
            snapshot.append(_Message(uid, size, uidl))
        return snapshot

    # ------------------------------------------------------------------------------ helpers

    def _await(self, event: _Verdict) -> _Verdict:
        self._awaiting = event
        return event

    def _take(self, *kinds: type) -> _Verdict | None:
        """The outstanding event a verdict answers (None once the session has closed)."""
        event = self._awaiting
        if self.state is State.CLOSED:
            self._awaiting = None
            return None
        if not isinstance(event, kinds):
            raise RuntimeError(f"no outstanding {' or '.join(k.__name__ for k in kinds)}")
        self._awaiting = None
        return event

    def _multiline(self, head: Response, lines: Iterable[str]) -> None:
        """A multi-line response (RFC 1939 §3); none of our lines starts with "."."""
        body = "".join(f"{line}\r\n" for line in lines)
        self._out += (head.to_bytes(), body.encode("utf-8"), b".\r\n")

    def _reply(self, response: Response) -> None:
        if self.state is not State.CLOSED:
            self._out.append(response.to_bytes())

    def _error(self, response: Response) -> None:
        """Answer a client's mistake and count it; too many end the session."""
        self._reply(response)
        self.errors += 1
        if self.errors >= self.settings.max_errors:
            self._fail(codes.TOO_MANY_ERRORS, "too many errors")

    def _fail(self, response: Response, reason: str) -> None:
        self._reply(response)
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.state is not State.CLOSED:
            self._close_reason = reason
            self.state = State.CLOSED
            self._buf.clear()
            self._sasl = None
            self._queued = None


def _no_args(arg: str) -> None:
    if arg.strip():
        raise _Refused(codes.SYNTAX_ERROR)


# Status lines sent once per message, built once: `%` on bytes costs a tenth of what
# Response.format().to_bytes() does, which was a measurable share of a pipelined RETR.
_MESSAGE_FOLLOWS = codes.MESSAGE_FOLLOWS.format(size="%d").to_bytes()
_TOP_FOLLOWS = codes.TOP_FOLLOWS.to_bytes()


def _wire_ready(data: bytes) -> bool:
    """True when `data` can go on the wire as it is: CRLF line ends only, the last line
    included, and no line starting with "." (so `_normalise` and `_stuff` would not change
    it). The store keeps messages with CRLF line ends, so this is the usual case."""
    return (
        data.endswith(b"\r\n")
        and not data.startswith(b".")
        and _LF_NEEDS_WORK.search(data) is None
        and _LONE_CR.search(data) is None
    )


def _normalise(data: bytes) -> bytes:
    """CRLF line ends throughout, the last line included (RFC 1939 §3). Stored messages already
    are; a bare LF left in would let a "\\n.\\r\\n" end the response early for some clients."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_END.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def _stuff(body: bytes) -> bytes:
    """Byte-stuff lines starting with "." (RFC 1939 §3), with C-speed bytes methods."""
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..")


def _top(body: bytes, lines: int) -> bytes:
    """The header, the blank line after it and `lines` lines of the body (RFC 1939 §7 TOP)."""
    if body.startswith(b"\r\n"):
        end = 2
    else:
        blank = body.find(b"\r\n\r\n")
        if blank < 0:
            return body  # all header, no body
        end = blank + 4
    for _ in range(lines):
        nl = body.find(b"\r\n", end)
        if nl < 0:
            return body
        end = nl + 2
    return body[:end]


_Handler = Callable[[ServerConnection, str], Event | None]
_AUTH = frozenset({State.AUTHORIZATION})
_TRANS = frozenset({State.TRANSACTION})
_BOTH = _AUTH | _TRANS

# The state table: which commands each state accepts (RFC 1939 §4-§7, RFC 2449 §5, RFC 2595 §4,
# RFC 5034 §4). A known command in another state gets -ERR and changes nothing.
_COMMANDS: dict[str, tuple[frozenset[State], _Handler]] = {
    "USER": (_AUTH, ServerConnection._cmd_user),
    "PASS": (_AUTH, ServerConnection._cmd_pass),
    "APOP": (_AUTH, ServerConnection._cmd_apop),
    "AUTH": (_AUTH, ServerConnection._cmd_auth),
    "STLS": (_AUTH, ServerConnection._cmd_stls),
    "CAPA": (_BOTH, ServerConnection._cmd_capa),
    "QUIT": (_BOTH, ServerConnection._cmd_quit),
    "STAT": (_TRANS, ServerConnection._cmd_stat),
    "LIST": (_TRANS, ServerConnection._cmd_list),
    "UIDL": (_TRANS, ServerConnection._cmd_uidl),
    "RETR": (_TRANS, ServerConnection._cmd_retr),
    "TOP": (_TRANS, ServerConnection._cmd_top),
    "DELE": (_TRANS, ServerConnection._cmd_dele),
    "NOOP": (_TRANS, ServerConnection._cmd_noop),
    "RSET": (_TRANS, ServerConnection._cmd_rset),
}
