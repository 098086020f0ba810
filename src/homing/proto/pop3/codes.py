"""Named POP3 responses: status, RFC 2449 §8 response code and text, with the RFC beside each.

Call sites use these constants (or `.format(...)` / `.with_text(...)` on them); they never spell
a response by hand. Texts never echo client input.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Response:
    """One POP3 status line (RFC 1939 §3, RFC 2449 §3): ``+OK``/``-ERR`` [``[CODE]``] text."""

    ok: bool
    text: str = ""
    code: str = ""
    """RFC 2449 §8 extended response code without brackets ("IN-USE", "SYS/TEMP", "AUTH")."""

    def with_text(self, text: str) -> Response:
        return Response(self.ok, text, self.code)

    def format(self, **values: object) -> Response:
        """Fill the ``{name}`` placeholders of the text."""
        return Response(self.ok, self.text.format(**values), self.code)

    def to_bytes(self) -> bytes:
        parts = ["+OK" if self.ok else "-ERR"]
        if self.code:
            parts.append(f"[{self.code}]")
        if self.text:
            parts.append(self.text.replace("\r", " ").replace("\n", " "))
        # RFC 2449 §4: a response line is at most 512 octets with its CRLF.
        return " ".join(parts).encode("utf-8", "replace")[:510] + b"\r\n"


# --- +OK ----------------------------------------------------------------------------------------
GREETING = Response(True, "Homing POP3 server ready")  # RFC 1939 §4 (no APOP timestamp)
OK = Response(True)  # RFC 1939 §5 NOOP, and any bare positive answer
CAPA_FOLLOWS = Response(True, "Capability list follows")  # RFC 2449 §5
MECHANISMS_FOLLOW = Response(True, "Available mechanisms")  # "AUTH" alone, RFC 1734 courtesy
BEGIN_TLS = Response(True, "Begin TLS negotiation")  # RFC 2595 §4 STLS
USER_OK = Response(True, "Send PASS")  # RFC 1939 §7 USER (never reveals whether it exists)
LOGGED_IN = Response(True, "Logged in, {count} messages ({size} octets)")  # RFC 1939 §7 PASS
STAT = Response(True, "{count} {size}")  # RFC 1939 §5 STAT: drop listing
SCAN = Response(True, "{index} {size}")  # RFC 1939 §5 LIST msg: scan listing
UNIQUE_ID = Response(True, "{index} {uidl}")  # RFC 1939 §7 UIDL msg
LISTING_FOLLOWS = Response(True, "{count} messages ({size} octets)")  # LIST / UIDL multi-line
MESSAGE_FOLLOWS = Response(True, "{size} octets")  # RFC 1939 §5 RETR
TOP_FOLLOWS = Response(True, "Top of message follows")  # RFC 1939 §7 TOP
DELETED = Response(True, "Message {index} deleted")  # RFC 1939 §5 DELE
RESET = Response(True, "Maildrop has {count} messages ({size} octets)")  # RFC 1939 §5 RSET
BYE = Response(True, "Bye")  # RFC 1939 §6 QUIT (AUTHORIZATION state: no UPDATE)
UPDATED = Response(True, "Bye, {deleted} messages deleted")  # RFC 1939 §6 QUIT after UPDATE

# --- -ERR: the client's fault -------------------------------------------------------------------
UNKNOWN_COMMAND = Response(False, "Unknown command")  # RFC 1939 §3
SYNTAX_ERROR = Response(False, "Syntax error in arguments")  # RFC 2449 §3 grammar
LINE_TOO_LONG = Response(False, "Line too long")  # RFC 2449 §4: 255 octets per command
INVALID_UTF8 = Response(False, "Command is not valid UTF-8")
NOT_LOGGED_IN = Response(False, "Not logged in")  # RFC 1939 §3: command in the wrong state
ALREADY_LOGGED_IN = Response(False, "Already logged in")  # RFC 1939 §3; RFC 5034 §4 AUTH twice
NO_SUCH_MESSAGE = Response(False, "No such message")  # RFC 1939 §5 LIST/RETR/DELE
MESSAGE_DELETED = Response(False, "Message already deleted")  # RFC 1939 §5 "marked as deleted"
USER_FIRST = Response(False, "Send USER first")  # RFC 1939 §7 PASS right after USER only
APOP_UNSUPPORTED = Response(False, "APOP not supported")  # RFC 1939 §7 optional command
TLS_ALREADY_ACTIVE = Response(False, "TLS already active")  # RFC 2595 §4
STLS_UNAVAILABLE = Response(False, "STLS not available")  # RFC 2595 §4
TOO_MANY_ERRORS = Response(False, "Too many errors, closing connection")
TIMEOUT = Response(False, "Autologout; idle for too long")  # RFC 1939 §3: no UPDATE state

# --- -ERR: authentication (RFC 2449 §8.1.1 IN-USE, RFC 3206 §4 AUTH) -----------------------------
AUTH_FAILED = Response(False, "Authentication failed", "AUTH")  # RFC 3206 §4
TLS_REQUIRED = Response(
    False, "Plaintext authentication disallowed without TLS", "AUTH"
)  # RFC 5034 §4, RFC 2595 §2.1
AUTHZID_REFUSED = Response(False, "Authorization identity not permitted", "AUTH")  # RFC 4616 §2
IN_USE = Response(False, "Maildrop already locked by another session", "IN-USE")  # RFC 2449 §8.1.1
NO_MECHANISM = Response(False, "Unsupported authentication mechanism")  # RFC 5034 §4
AUTH_CANCELLED = Response(False, "Authentication cancelled")  # RFC 5034 §4 "*" response
AUTH_BAD_DATA = Response(False, "Invalid authentication data")  # RFC 5034 §4 bad base64
AUTH_LINE_TOO_LONG = Response(False, "Authentication response too long")  # RFC 4954 §4 limit

# --- -ERR: our side (RFC 3206 §3 SYS/TEMP) -------------------------------------------------------
LOGIN_TEMP_FAILURE = Response(False, "Temporary failure, try again later", "SYS/TEMP")  # §3
RETRIEVE_FAILED = Response(False, "Message unavailable, try again later", "SYS/TEMP")  # §3
UPDATE_FAILED = Response(False, "Some deleted messages not removed", "SYS/TEMP")  # RFC 1939 §6
SHUTTING_DOWN = Response(False, "Server shutting down", "SYS/TEMP")  # RFC 3206 §3
