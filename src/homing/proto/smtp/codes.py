"""Named SMTP replies: code, RFC 3463 enhanced code and meaning, with the RFC beside each.

Call sites use these constants (or `.with_text(...)` on them); they never spell a
reply by hand.
"""

from __future__ import annotations

from homing.mail.reply import Reply

# --- 2xx: positive completion (RFC 5321 §4.2.2) -----------------------------------------
SERVICE_CLOSING = Reply(221, "2.0.0", "Bye")  # §4.2.2 221
OK = Reply(250, "2.0.0", "OK")  # §4.2.2 250
SENDER_OK = Reply(250, "2.1.0", "Sender OK")  # RFC 3463 X.1.0 other address status
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")  # RFC 3463 X.1.5 destination valid
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "OK: queued")  # after DATA/BDAT LAST
CHUNK_OK = Reply(250, "2.0.0", "OK: chunk received")  # RFC 3030 §2 BDAT (not LAST)
RESET_OK = Reply(250, "2.0.0", "OK: reset")  # RSET
NOOP_OK = Reply(250, "2.0.0", "OK")  # NOOP
CANNOT_VRFY = Reply(
    252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"
)  # §3.5.3
HELP = Reply(
    214, "2.0.0", "See RFC 5321; commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"
)  # §4.1.1.8
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")  # RFC 4954 §6

# --- 3xx: intermediate --------------------------------------------------------------------
START_MAIL_INPUT = Reply(
    354, "", "End data with <CR><LF>.<CR><LF>"
)  # §4.2.2 354 (no enhanced code, RFC 2034)
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")  # RFC 3207 §4

# --- 4xx: transient failures ----------------------------------------------------------------
SHUTTING_DOWN = Reply(
    421, "4.3.2", "Service shutting down, try again later"
)  # RFC 3463 X.3.2 system not accepting
TIMEOUT = Reply(
    421, "4.4.2", "Timeout, closing connection"
)  # RFC 5321 §4.5.3.2, RFC 3463 X.4.2 bad connection
TOO_MANY_ERRORS = Reply(
    421, "4.7.0", "Too many errors, closing connection"
)  # RFC 3463 X.7.0 security/policy
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address")  # X.7.0
RATE_LIMITED = Reply(421, "4.7.0", "Too many failures, try again later")  # X.7.0
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")  # §4.2.3 451, X.3.0
STORE_UNAVAILABLE = Reply(451, "4.3.0", "Mail store temporarily unavailable")  # X.3.0
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")  # §4.2.2 452, X.3.1
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")  # RFC 5321 §4.5.3.1.10, X.5.3
TEMP_RECIPIENT = Reply(450, "4.2.0", "Mailbox temporarily unavailable")  # §4.2.2 450
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available due to temporary reason")  # RFC 3207 §4
AUTH_TEMP_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")  # RFC 4954 §6

# --- 5xx: permanent failures -----------------------------------------------------------------
SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")  # §4.2.2 500, X.5.2
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")  # §4.5.3.1.4 command line 512 octets
BARE_LINE_ENDING = Reply(500, "5.5.2", "Bare CR or LF not allowed, use CRLF")  # §2.3.8
BARE_LINE_IN_MESSAGE = Reply(
    554, "5.5.2", "Bare CR or LF in message text, rejected"
)  # §2.3.8, smuggling
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")  # RFC 4954 §4
PARAM_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")  # §4.2.2 501, X.5.4
ADDRESS_SYNTAX = Reply(
    501, "5.1.3", "Bad address syntax"
)  # X.1.3 bad destination mailbox address syntax
SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")  # X.1.7
HELO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")  # §4.1.1.1
SIZE_SYNTAX = Reply(501, "5.5.4", "Bad SIZE parameter")  # RFC 1870 §6
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")  # RFC 4954 §4
BASE64_ERROR = Reply(501, "5.5.2", "Invalid base64 data")  # RFC 4954 §4
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")  # §4.2.2 502
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")  # §4.2.2 503, X.5.1
NEED_HELO = Reply(503, "5.5.1", "Send HELO/EHLO first")  # §4.1.4
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")  # §4.1.1.2
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")  # §4.1.1.3
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")  # §4.1.1.4
NO_VALID_RECIPIENTS = Reply(
    554, "5.5.1", "No valid recipients"
)  # RFC 2920 §3.1 DATA after all RCPTs failed
PARAM_NOT_IMPLEMENTED = Reply(504, "5.5.4", "Parameter not implemented")  # §4.2.2 504
UNRECOGNIZED_PARAM = Reply(
    555, "5.5.4", "MAIL FROM/RCPT TO parameters not recognized or not implemented"
)  # §4.1.1.11
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")  # RFC 4954 §6
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")  # RFC 3207 §4
AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")  # RFC 4954 §6
ENCRYPTION_REQUIRED = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)  # RFC 4954 §6
USER_UNKNOWN = Reply(550, "5.1.1", "No such user here")  # X.1.1 bad destination mailbox address
MAILBOX_DISABLED = Reply(550, "5.2.1", "Mailbox disabled")  # X.2.1
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")  # X.7.1 delivery not authorized
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by authenticated user")  # X.7.1
FROM_NOT_OWNED = Reply(550, "5.7.1", "From header names an address you do not own")  # RFC 6409 §8
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")  # RFC 1870 §6, X.3.4
LOOP_DETECTED = Reply(554, "5.4.0", "Mail loop detected")  # RFC 5321 §6.3, X.4.0 (hop count / loop)
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")  # RFC 3207
ILLEGAL_PIPELINING = Reply(554, "5.5.0", "Improper pipelining, closing connection")  # RFC 2920 §3.1
NO_SERVICE = Reply(554, "5.3.2", "No SMTP service here")  # §3.1 554 greeting
SMTPUTF8_REQUIRED = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")  # RFC 6531 §3.7.4.1
BAD_BODY_TYPE = Reply(501, "5.5.4", "Bad BODY parameter")  # RFC 6152
BDAT_AFTER_DATA = Reply(503, "5.5.1", "BDAT and DATA cannot be mixed")  # RFC 3030 §2
BDAT_SYNTAX = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")  # RFC 3030 §2
HTTP_REJECTED = Reply(554, "5.7.0", "This is an SMTP server, not HTTP")  # X.7.0
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")  # §4.2.2 554
