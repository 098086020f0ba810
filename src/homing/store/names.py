"""Validation and normalisation of the names the store keeps: domains, addresses, mailbox
names, flags and special-use attributes. Pure functions; no database here.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from homing.store.errors import InvalidName

#: The one mailbox hierarchy separator (RFC 9051 §5.1.1).
SEPARATOR = "/"
INBOX = "INBOX"
#: Longest mailbox name accepted, in UTF-8 octets.
MAX_MAILBOX_NAME = 1000

# System flags (RFC 9051 §2.3.2) as bits of the `messages.flags` column.
SEEN = 1
ANSWERED = 2
FLAGGED = 4
DELETED = 8
DRAFT = 16
SYSTEM_FLAGS: dict[str, int] = {
    "\\Seen": SEEN,
    "\\Answered": ANSWERED,
    "\\Flagged": FLAGGED,
    "\\Deleted": DELETED,
    "\\Draft": DRAFT,
}
_SYSTEM_BY_LOWER = {name.lower(): bit for name, bit in SYSTEM_FLAGS.items()}

#: RFC 6154 §2 special-use attributes, plus \Important (RFC 8457).
SPECIAL_USES = frozenset(
    {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash", "\\Important"}
)
_SPECIAL_BY_LOWER = {s.lower(): s for s in SPECIAL_USES}

# RFC 9051 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials
# / resp-specials. A keyword is an atom, so ASCII only.
_ATOM_SPECIALS = frozenset('(){ %*"\\]')


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def domain_key(name: str) -> str:
    """A domain as stored: lower-cased, without a trailing dot; InvalidName if malformed."""
    key = name.strip().lower().removesuffix(".")
    if not key or "@" in key or any(c.isspace() for c in key) or _has_control(key):
        raise InvalidName(f"invalid domain name {name!r}")
    if ".." in key or key.startswith(".") or key.endswith("."):
        raise InvalidName(f"invalid domain name {name!r}")
    return key


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain) of `local@domain`, split at the last "@"."""
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain or _has_control(address):
        raise InvalidName(f"invalid address {address!r}")
    return local, domain


def address_key(address: str) -> str:
    """The normalised key every address is compared by: local part and domain lower-cased.

    Local parts are case-sensitive in RFC 5321 §2.4 in theory; in practice (and here) a
    mailbox is one account whatever the case.
    """
    local, domain = split_address(address)
    return f"{local.lower()}@{domain_key(domain)}"


def alias_key(alias: str) -> tuple[str, str]:
    """(key, domain) of an alias: `local@domain`, or `@domain` for a catch-all."""
    if alias.startswith("@"):
        domain = domain_key(alias[1:])
        return f"@{domain}", domain
    key = address_key(alias)
    return key, key.rpartition("@")[2]


def mailbox_name(name: str) -> str:
    """A mailbox name as stored: validated, with INBOX's case normalised.

    RFC 9051 §5.1: INBOX is case-insensitive; so is the first component of its children
    ("inbox/x" is "INBOX/x"). Refused: empty names or components ("a//b", "/a", "a/"),
    control characters, and the LIST wildcards "*" and "%" (RFC 9051 §5.1 says names with
    them SHOULD NOT be created).
    """
    if not name:
        raise InvalidName("empty mailbox name")
    if _has_control(name) or "*" in name or "%" in name:
        raise InvalidName(f"invalid character in mailbox name {name!r}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_MAILBOX_NAME:
        raise InvalidName("mailbox name too long")
    parts = name.split(SEPARATOR)
    if any(not p for p in parts):
        raise InvalidName(f"empty hierarchy level in mailbox name {name!r}")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    return SEPARATOR.join(parts)


def superiors(name: str) -> list[str]:
    """The hierarchy names above `name`, outermost first ("a/b/c" -> ["a", "a/b"])."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def special_use(value: str | None) -> str | None:
    """A special-use attribute in its canonical spelling, or InvalidName."""
    if value is None:
        return None
    canonical = _SPECIAL_BY_LOWER.get(value.lower())
    if canonical is None:
        raise InvalidName(f"unknown special-use attribute {value!r}")
    return canonical


def parse_flags(flags: Iterable[str]) -> tuple[int, dict[str, str]]:
    """Split flags into the system-flag bitmask and the keywords (lower-case -> spelling).

    Flags compare case-insensitively (RFC 9051 §9 note 3: alphabetic characters are case
    insensitive); a keyword keeps the spelling it was first given. \\Recent is gone in
    IMAP4rev2 and, like any other unknown "\\" flag, is refused.
    """
    mask = 0
    keywords: dict[str, str] = {}
    for flag in flags:
        if flag.startswith("\\"):
            bit = _SYSTEM_BY_LOWER.get(flag.lower())
            if bit is None:
                raise InvalidName(f"unknown system flag {flag!r}")
            mask |= bit
            continue
        if not flag or any(c in _ATOM_SPECIALS or not (0x20 < ord(c) < 0x7F) for c in flag):
            raise InvalidName(f"invalid keyword {flag!r}")
        keywords.setdefault(flag.lower(), flag)
    return mask, keywords


def encode_keywords(keywords: dict[str, str]) -> str:
    """The `messages.keywords` column: keywords separated by spaces, in a stable order."""
    return " ".join(keywords[k] for k in sorted(keywords))


def decode_keywords(text: str) -> dict[str, str]:
    return {k.lower(): k for k in text.split()}


def flag_set(mask: int, keywords: str) -> frozenset[str]:
    """The flags of a message as the API presents them: system flags then keywords."""
    out = [name for name, bit in SYSTEM_FLAGS.items() if mask & bit]
    out.extend(keywords.split())
    return frozenset(out)
