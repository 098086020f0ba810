"""Header checks and fix-ups for submitted mail (RFC 6409 §8, RFC 5322 §3.6).

`from_addresses` extracts the author addresses of a message in a way that cannot be confused:
anything a mail client could display differently from what a parser reads is refused rather
than guessed at (the address-parsing confusions used to spoof senders).
"""

from __future__ import annotations

import email.policy
import re
from email.errors import HeaderParseError
from email.parser import BytesHeaderParser

from homing.mail.trace import header_section

_PARSER = BytesHeaderParser(policy=email.policy.default)
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:", re.MULTILINE)
_ADDRESS_LIKE = re.compile(r"[^\s<>@\"]+@[^\s<>@\"]+\.[^\s<>@\"]+")


class HeaderError(ValueError):
    """The header cannot be accepted; the text says why (safe to put in a reply)."""


def field_names(headers: bytes) -> list[str]:
    """Lower-cased names of the fields in a header section, in order."""
    return [m.group(1).decode("ascii", "replace").lower() for m in _FIELD.finditer(headers)]


def from_addresses(message: bytes) -> list[str]:
    """The addr-specs of the single From field, lower-cased domain; HeaderError if ambiguous.

    Refused: no From or more than one (RFC 5322 §3.6 allows exactly one), a field the parser
    finds defects in (e.g. `alice@dom <bob@dom>`, NUL bytes), a group with no member, and a
    display name that itself looks like a different address (`"alice@dom" <bob@dom>`).
    """
    headers = header_section(message)
    msg = _PARSER.parsebytes(headers + b"\r\n")
    try:
        fields = msg.get_all("From") or []
    except (HeaderParseError, IndexError, ValueError) as err:
        raise HeaderError("From header cannot be parsed") from err
    if len(fields) != 1:
        raise HeaderError("Message must have exactly one From header")
    field = fields[0]
    try:
        addresses = field.addresses
    except (AttributeError, HeaderParseError, IndexError, ValueError) as err:
        raise HeaderError("From header cannot be parsed") from err
    if field.defects or not addresses:
        raise HeaderError("From header is malformed or ambiguous")
    out = []
    for address in addresses:
        spec = address.addr_spec
        if "@" not in spec:
            raise HeaderError("From header is malformed or ambiguous")
        for lookalike in _ADDRESS_LIKE.findall(address.display_name or ""):
            if lookalike.lower() != spec.lower():
                raise HeaderError("From display name names another address")
        local, _, domain = spec.rpartition("@")
        out.append(f"{local}@{domain.lower()}")
    return out


def missing_fixups(message: bytes) -> tuple[bool, bool]:
    """(needs Message-ID, needs Date): RFC 6409 §8.3 and §8.2."""
    names = set(field_names(header_section(message)))
    return "message-id" not in names, "date" not in names


def add_header_fields(message: bytes, fields: bytes) -> bytes:
    """Insert complete CRLF-ended `fields` at the end of the header section."""
    if not fields:
        return message
    if message.startswith(b"\r\n"):
        return fields + message
    end = message.find(b"\r\n\r\n")
    if end < 0:
        body = message if message.endswith(b"\r\n") or not message else message + b"\r\n"
        return body + fields + b"\r\n"
    return message[: end + 2] + fields + message[end + 2 :]
