"""IMAP wire forms for values: NIL, strings (quoted or literal), numbers, lists.

RFC 9051 §4.3 and §9 (formal syntax):

    string          = quoted / literal
    quoted          = DQUOTE *QUOTED-CHAR DQUOTE
    QUOTED-CHAR     = <any TEXT-CHAR except quoted-specials> / "\\" quoted-specials
    TEXT-CHAR       = <any CHAR except CR and LF>        ; CHAR is 7-bit, NUL excluded
    literal         = "{" number64 ["+"] "}" CRLF *CHAR8  ; CHAR8 = %x01-ff
    nstring         = string / nil

A quoted string therefore cannot carry CR, LF, NUL or 8-bit octets; a literal can carry
everything but NUL. `string` picks the quoted form whenever it can represent the value
and the literal form otherwise, and also for values with many quote or backslash
characters (more than `MAX_QUOTED_ESCAPES`, the same cut-off Dovecot uses), where the
escaped form would be hard to read and no shorter. NUL octets cannot be sent in either
form (only in literal8, RFC 9051 §4.3.1), so they are dropped. 8-bit values always go
out as literals, which every client accepts whether or not it enabled UTF8=ACCEPT, so
the serialised bytes can be stored once and replayed to any session.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NIL = b"NIL"

#: Above this many `"` plus `\` characters a value is sent as a literal.
MAX_QUOTED_ESCAPES = 4

# Values that go between quotes as they are: QUOTED-CHAR without quoted-specials.
_PLAIN_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\x7f]*")
# Octets that a quoted string cannot hold (RFC 9051 §9: TEXT-CHAR is 7-bit, no CR/LF/NUL).
_NOT_QUOTABLE = re.compile(rb"[\x00\r\n\x80-\xff]")


def string(value: bytes) -> bytes:
    """Serialise `value` as an IMAP string: quoted when possible, else a literal."""
    if _PLAIN_QUOTABLE.fullmatch(value) is not None:
        return b'"' + value + b'"'
    if b"\x00" in value:
        value = value.replace(b"\x00", b"")
    if _NOT_QUOTABLE.search(value) is None:
        escapes = value.count(b'"') + value.count(b"\\")
        if escapes == 0:
            return b'"' + value + b'"'
        if escapes <= MAX_QUOTED_ESCAPES:
            return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n%b" % (len(value), value)


def nstring(value: bytes | None) -> bytes:
    """`string(value)`, or NIL for None."""
    return NIL if value is None else string(value)


def number(value: int) -> bytes:
    """An IMAP number (RFC 9051 §4.2): decimal digits."""
    return b"%d" % value


def plist(items: Iterable[bytes]) -> bytes:
    """A parenthesised list of already serialised items, separated by single spaces."""
    return b"(" + b" ".join(items) + b")"
