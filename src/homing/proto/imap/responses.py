"""Named IMAP status responses and the wire forms the server core writes (RFC 9051 §7).

A status response is ``tag|* OK|NO|BAD|BYE|PREAUTH [CODE args] text``. Call sites use the
constants below (or `.with_text` / `.with_code` / `.format` on them); they never spell a response
by hand, and texts never echo client input. Response codes are RFC 9051 §7.1 and RFC 5530
unless noted.

Besides the status lines, this module writes the values that go into untagged data: quoted
strings, mailbox names (modified UTF-7 for IMAP4rev1 clients, UTF-8 once IMAP4rev2 is
enabled, RFC 9051 §5.1 and Appendix A.1), flag lists, and sequence sets (for COPYUID,
APPENDUID and ESEARCH).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from homing.proto.imap import utf7

Status = Literal["OK", "NO", "BAD", "BYE", "PREAUTH"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# quoted = DQUOTE *QUOTED-CHAR DQUOTE (RFC 9051 §9): no CR, LF or NUL; 8-bit only as UTF-8 in
# IMAP4rev2 (and then we still prefer a literal for IMAP4rev1 clients).
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")


@dataclass(frozen=True, slots=True)
class Response:
    """One status response (RFC 9051 §7.1). `code` is the response code without brackets,
    arguments included ("APPENDUID 38505 3955"), or None."""

    status: Status
    text: str
    code: str | None = None

    def with_text(self, text: str) -> Response:
        return replace(self, text=text)

    def with_code(self, code: str | None) -> Response:
        return replace(self, code=code)

    def format(self, **values: object) -> Response:
        """Fill the ``{name}`` placeholders of the text."""
        return replace(self, text=self.text.format(**values))

    def line(self, tag: str | None) -> bytes:
        """The response line, CRLF included; `tag` None makes it untagged ("*")."""
        code = f"[{self.code}] " if self.code else ""
        text = _CONTROL.sub(" ", self.text) or self.status.lower()
        return f"{tag or '*'} {self.status} {code}{text}\r\n".encode("utf-8", "replace")


# --- OK ---------------------------------------------------------------------------------------
GREETING = Response("OK", "Homing IMAP server ready")  # RFC 9051 §7.1.1 greeting
SHUTTING_DOWN_GREETING = Response("BYE", "Server shutting down", "UNAVAILABLE")  # §7.1.5
COMPLETED = Response("OK", "{command} completed")  # generic tagged OK
LOGGED_IN = Response("OK", "Logged in")  # §6.2.3 (a CAPABILITY code is added, §6.2.2)
BEGIN_TLS = Response("OK", "Begin TLS negotiation now")  # §6.2.1
LOGOUT = Response("BYE", "Logging out")  # §6.1.3
IDLING = Response("OK", "Still here")  # RFC 2177 keep-alive during IDLE (Dovecot's wording)
SELECTED_RW = Response("OK", "Select completed", "READ-WRITE")  # §6.3.2
SELECTED_RO = Response("OK", "Examine completed", "READ-ONLY")  # §6.3.3
CLOSED = Response("OK", "Previous mailbox closed", "CLOSED")  # §7.1 CLOSED, RFC 7162 §3.2.11
UIDVALIDITY = Response("OK", "UIDs valid", "UIDVALIDITY {value}")  # §7.1
UIDNEXT = Response("OK", "Predicted next UID", "UIDNEXT {value}")  # §7.1
HIGHESTMODSEQ = Response("OK", "Highest", "HIGHESTMODSEQ {value}")  # RFC 7162 §3.1.2.1
CONDITIONAL_STORE_FAILED = Response("OK", "Conditional STORE failed", "MODIFIED {set}")  # §3.1.3
UNSEEN = Response("OK", "First unseen", "UNSEEN {value}")  # RFC 3501 §7.1 (IMAP4rev1 only)
PERMANENT_FLAGS = Response("OK", "Flags permitted", "PERMANENTFLAGS {value}")  # §7.1
NO_PERMANENT_FLAGS = Response("OK", "Read-only mailbox", "PERMANENTFLAGS ()")  # §6.3.3
APPENDED = Response("OK", "Append completed", "APPENDUID {uidvalidity} {uids}")  # RFC 4315 §3
COPIED = Response("OK", "Copy completed", "COPYUID {uidvalidity} {source} {dest}")  # RFC 4315 §3
MOVED_UIDS = Response("OK", "Moved UIDs", "COPYUID {uidvalidity} {source} {dest}")  # RFC 6851 §4.3
NO_MESSAGES = Response("OK", "No messages matched")  # COPY/MOVE/UID EXPUNGE of nothing

# --- NO ---------------------------------------------------------------------------------------
AUTH_FAILED = Response("NO", "Authentication failed", "AUTHENTICATIONFAILED")  # RFC 5530 §3
AUTH_UNAVAILABLE = Response("NO", "Try again later", "UNAVAILABLE")  # RFC 5530 §3
AUTHZ_FAILED = Response(  # RFC 5530 §3: SASL authzid names another user
    "NO", "Not authorized to act as that user", "AUTHORIZATIONFAILED"
)
PRIVACY_REQUIRED = Response(  # RFC 5530 §3; RFC 9051 §6.2.3 LOGINDISABLED
    "NO", "Login needs TLS: use STARTTLS first", "PRIVACYREQUIRED"
)
NO_MECHANISM = Response("NO", "Unsupported authentication mechanism", "CANNOT")
NONEXISTENT = Response("NO", "Mailbox does not exist", "NONEXISTENT")  # RFC 5530 §3
TRYCREATE = Response("NO", "Mailbox does not exist", "TRYCREATE")  # §7.1 (APPEND, COPY, MOVE)
ALREADY_EXISTS = Response("NO", "Mailbox already exists", "ALREADYEXISTS")  # RFC 5530 §3
BAD_NAME = Response("NO", "Invalid mailbox name", "CANNOT")  # RFC 5530 §3
BAD_MUTF7 = Response("NO", "Mailbox name is not valid modified UTF-7", "CANNOT")
INBOX_UNDELETABLE = Response("NO", "INBOX cannot be deleted", "CANNOT")
BAD_USE = Response("NO", "Unsupported special-use attribute", "USEATTR")  # RFC 6154 §3
READ_ONLY = Response("NO", "Mailbox is read-only", "READ-ONLY")  # §7.1
EXPUNGE_ISSUED = Response(  # RFC 5530 §3; RFC 2180 §4.1.3
    "NO", "Some of the requested messages no longer exist", "EXPUNGEISSUED"
)
EMPTY_MESSAGE = Response("NO", "Cannot append an empty message", "CANNOT")
TEMPORARY_FAILURE = Response("NO", "Temporary failure, try again later", "UNAVAILABLE")
SERVER_BUG = Response("NO", "Internal error, see the server log", "SERVERBUG")  # RFC 5530 §3

# --- BAD --------------------------------------------------------------------------------------
NOT_AUTHENTICATED = Response("BAD", "Log in first")  # command needs authentication
ALREADY_AUTHENTICATED = Response("BAD", "Already logged in")  # LOGIN/AUTHENTICATE/STARTTLS
NOT_SELECTED = Response("BAD", "No mailbox selected")  # command needs SELECTED
WRONG_STATE = Response("BAD", "Command not allowed now")  # e.g. ENABLE in SELECTED
TLS_ACTIVE = Response("BAD", "TLS is already active")  # §6.2.1
TLS_UNAVAILABLE = Response("BAD", "STARTTLS is not available")
AUTH_CANCELLED = Response("BAD", "Authentication cancelled")  # §6.2.2 "*" cancels: BAD
AUTH_BAD_DATA = Response("BAD", "Invalid authentication data")  # §6.2.2 invalid base64: BAD
AUTH_LINE_TOO_LONG = Response("BAD", "Authentication response too long", "TOOBIG")
INVALID_SEQUENCE = Response("BAD", "Invalid message sequence number")  # §9 seq-number note
UNSUPPORTED_ITEM = Response("BAD", "Unsupported item")
INVALID_FLAGS = Response("BAD", "Invalid flag")  # \Recent and unknown system flags
INVALID_ARGUMENT = Response("BAD", "Invalid argument")
UTF8_NOT_ENABLED = Response("BAD", "UTF8 data needs ENABLE UTF8=ACCEPT first")  # RFC 6855 §4
QRESYNC_NOT_ENABLED = Response("BAD", "QRESYNC is not enabled (ENABLE QRESYNC first)")  # RFC 7162

# --- BYE --------------------------------------------------------------------------------------
TOO_MANY_ERRORS = Response("BYE", "Too many invalid commands")
TOO_MANY_AUTH_FAILURES = Response("BYE", "Too many failed logins")
AUTOLOGOUT = Response("BYE", "Autologout; idle for too long")  # §5.4
SHUTTING_DOWN = Response("BYE", "Server shutting down", "UNAVAILABLE")
MAILBOX_DELETED = Response("BYE", "Selected mailbox was deleted")


# --- values -----------------------------------------------------------------------------------


def quoted(value: bytes) -> bytes:
    """`value` as a quoted string (RFC 9051 §4.3); the caller made sure it is quotable."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string(value: bytes) -> bytes:
    """`value` as an IMAP string: quoted when 7-bit without CR/LF/NUL, a literal otherwise.

    8-bit text goes out as a literal whether or not the client enabled IMAP4rev2, which every
    client accepts. NUL cannot be sent at all (only literal8 carries it) and is dropped.
    """
    if _QUOTABLE.fullmatch(value) is not None:
        return quoted(value)
    value = value.replace(b"\x00", b"")
    return b"{%d}\r\n" % len(value) + value


def mailbox_name(name: str, *, utf8: bool) -> bytes:
    """A mailbox name as it goes in LIST, LSUB and STATUS responses (RFC 9051 §9 mailbox).

    IMAP4rev1 clients get modified UTF-7 (RFC 3501 §5.1.3); IMAP4rev2 clients UTF-8.
    """
    if name == "INBOX":
        return b"INBOX"
    if not utf8:
        return string(utf7.encode(name))
    raw = name.encode("utf-8")
    if _CONTROL.search(name) is None:  # RFC 9051 §9 quoted-char / RFC 6855 §3: UTF-8 quoted
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return string(raw)


def flag_list(flags: Iterable[str]) -> bytes:
    """A parenthesised flag list, system flags first then keywords, each group sorted, so the
    output is stable whatever order the flags were stored in."""
    ordered = sorted(flags, key=lambda f: (not f.startswith("\\"), f.lower()))
    return ("(" + " ".join(ordered) + ")").encode("ascii", "replace")


def sequence_set(numbers: Sequence[int]) -> str:
    """Ascending numbers as a compact sequence set ("1:3,7,9:10"); "" for none.

    The numbers must be ascending (UIDs in COPYUID, RFC 4315 §3, pair up by position, so the
    two sets of a COPYUID must be written in the same order: ascending source UIDs).
    """
    out: list[str] = []
    start = prev = -2
    for n in numbers:
        if n == prev + 1:
            prev = n
            continue
        if start >= 0:
            out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start >= 0:
        out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out)
