"""Mailboxes and paths of the SMTP envelope (RFC 5321 §4.1.2), with RFC 6531 UTF-8 addresses.

Theory of operation. A mailbox is split at the one "@" that is outside a quoted string: a
dot-string local part cannot contain "@", and a quoted one is consumed up to its closing quote
first. Everything after that "@" is the domain, which is validated and normalised (lower case,
U-labels in NFC); the local part is kept verbatim, only unquoted. "%" and "!" are ordinary atext
characters: the percent hack and bang paths are never interpreted, and a source route
("<@a,@b:user@c>") is checked and dropped (RFC 5321 §3.6.1, App. C). So the router can decide
"is this local?" from `Mailbox.domain` alone, and nothing later can be tricked into relaying.

IDNA. The `idna` package is not a dependency, so U-labels are checked with the stdlib IDNA 2003
codec plus rules that bring it close to IDNA 2008 (RFC 5891, 5892), erring on the strict side:
a label must already be in the form nameprep would produce (so ß, final sigma, ZWJ/ZWNJ are
refused: IDNA 2003 would map them, IDNA 2008 keeps them), every character must be a lower-case
or other letter, a mark or a decimal digit (symbols and punctuation are refused, as IDNA 2008
does), a label may not start with a combining mark nor have "--" in positions 3-4. The bidi and
contextual rules of RFC 5893 / RFC 5892 App. A are only approximated by nameprep's bidi check.
"""

from __future__ import annotations

import ipaddress
import re
import string
import unicodedata
from dataclasses import dataclass
from encodings import idna as _idna

MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1, octets, as written (quotes included)
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2, octets
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3, octets, "<" and ">" included

# RFC 5322 §3.2.3 atext; RFC 6531 §3.3 adds UTF8-non-ascii.
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
# Unicode categories never allowed in an address: controls, lone surrogates (undecodable bytes
# arrive as surrogate escapes), unassigned code points, line and paragraph separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Cn", "Zl", "Zp"})
# RFC 5892 §2.1-2.2 LetterDigits, minus upper case (domains are lower-cased first).
_ULABEL_CATEGORIES = frozenset({"Ll", "Lo", "Lm", "Mn", "Mc", "Nd"})
# RFC 5321 §4.1.2 sub-domain = Let-dig [Ldh-str], at most 63 octets (RFC 1035 §2.3.4).
_LDH = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IPV4_CHARS = frozenset("0123456789.")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")


class AddressError(ValueError):
    """Bad address syntax; `.reason` is a short human text (no reply code: the caller picks it).

    The reason never contains the offending input except as printable ASCII or "U+XXXX", so it is
    safe to put in a reply line.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An RFC 5321 Mailbox: `local` unquoted, `domain` normalised (see `parse_domain`).

    `domain` is "" only for the RCPT TO:<Postmaster> special case (RFC 5321 §4.1.1.3).
    """

    local: str
    domain: str

    def __str__(self) -> str:
        """RFC 5321 form: the local part quoted only if it is not a valid dot-string."""
        local = self.local if _is_dot_string(self.local, utf8=True) else _quote(self.local)
        return f"{local}@{self.domain}" if self.domain else local

    @property
    def ascii_domain(self) -> str:
        """The domain with A-labels (punycode), for DNS and for peers without SMTPUTF8."""
        if self.domain.isascii() or self.domain.startswith("["):
            return self.domain
        return _to_ascii(self.domain)

    @property
    def is_utf8(self) -> bool:
        """True if any non-ASCII appears (strictly only a non-ASCII local part needs SMTPUTF8)."""
        return not (self.local.isascii() and self.domain.isascii())

    def key(self) -> str:
        """Lookup key for the store: the local part lower-cased, "@", the domain."""
        return f"{self.local.lower()}@{self.domain}"

    def as_ascii(self) -> str:
        """The RFC 5321 form with A-labels, for a peer without SMTPUTF8 (RFC 6531 §3.2).

        Raises AddressError if the local part is not ASCII: such a mailbox cannot be downgraded.
        """
        if not self.local.isascii():
            raise AddressError("non-ASCII local part needs SMTPUTF8")
        return str(Mailbox(self.local, self.ascii_domain))


@dataclass(frozen=True, slots=True)
class Path:
    """A Reverse-path or Forward-path (RFC 5321 §4.1.2); `mailbox` None is the null path <>."""

    mailbox: Mailbox | None

    @property
    def is_null(self) -> bool:
        return self.mailbox is None

    def __str__(self) -> str:
        return "<>" if self.mailbox is None else f"<{self.mailbox}>"

    def as_ascii(self) -> str:
        """Like str(), with A-labels; AddressError if the local part is not ASCII."""
        return "<>" if self.mailbox is None else f"<{self.mailbox.as_ascii()}>"


def parse_path(text: str, *, utf8: bool = False) -> Path:
    """Parse an RFC 5321 §4.1.2 Path or Reverse-path, angle brackets included.

    A source route is checked and ignored (RFC 5321 App. C). With `utf8` False any non-ASCII
    character is an error; with it True the RFC 6531 §3.3 syntax applies.
    """
    _check_charset(text, utf8)
    if _octets(text) > MAX_PATH:
        raise AddressError("path longer than 256 octets")
    if len(text) < 2 or text[0] != "<" or text[-1] != ">":
        raise AddressError("path must be enclosed in <>")
    inner = text[1:-1]
    if not inner:
        return Path(None)
    return Path(_mailbox(_drop_route(inner, utf8), utf8))


def parse_mailbox(text: str, *, utf8: bool = True) -> Mailbox:
    """Parse "local@domain" without brackets (command line tools, config, alias targets)."""
    _check_charset(text, utf8)
    if _octets(text) > MAX_PATH - 2:
        raise AddressError("address longer than 254 octets")
    return _mailbox(text, utf8)


def parse_domain(text: str, *, utf8: bool = True) -> str:
    """A validated domain: lower case, U-labels in NFC (A-labels are converted to U-labels).

    An address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]") is validated and kept as written.
    """
    _check_charset(text, utf8)
    return _domain(text, literal_ok=True)


def split_path(text: str) -> tuple[str, str]:
    """Split "<path> rest" just after the ">" that closes the path (quoted strings may hold ">").

    Only finds the end; `parse_path` validates what lies between.
    """
    if not text.startswith("<"):
        raise AddressError("path must start with '<'")
    quoted = escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = quoted
        elif c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return text[: i + 1], text[i + 1 :]
    raise AddressError("missing '>'")


# --- mailbox ----------------------------------------------------------------------------------


def _mailbox(text: str, utf8: bool) -> Mailbox:
    local, domain = _split_local(text, utf8)
    return Mailbox(local, _domain(domain, literal_ok=True))


def _split_local(text: str, utf8: bool) -> tuple[str, str]:
    """Split at the "@" that ends the local part: (unquoted local part, domain text)."""
    if text.startswith('"'):
        local, end = _take_quoted(text, utf8)
        raw, rest = text[:end], text[end:]
        if not rest.startswith("@"):
            raise AddressError("missing '@' after the quoted local part")
        domain = rest[1:]
    else:
        raw, at, domain = text.partition("@")
        if not at:
            raise AddressError("missing '@'")
        _check_dot_string(raw, utf8)
        local = raw
    if not local:
        raise AddressError("empty local part")
    if _octets(raw) > MAX_LOCAL:
        raise AddressError("local part longer than 64 octets")
    return local, domain


def _drop_route(text: str, utf8: bool) -> str:
    """Check and strip an A-d-l source route "@a,@b:" (RFC 5321 §4.1.2; ignored, App. C)."""
    if not text.startswith("@"):
        return text
    route, colon, rest = text.partition(":")
    if not colon:
        raise AddressError("source route without ':'")
    for hop in route.split(","):
        if not hop.startswith("@"):
            raise AddressError("bad source route")
        _domain(hop[1:], literal_ok=False)
    return rest


def _take_quoted(text: str, utf8: bool) -> tuple[str, int]:
    """Decode the Quoted-string at the start of `text`: (content, index after the closing quote).

    RFC 5321 §4.1.2: qtextSMTP is %d32-33 / %d35-91 / %d93-126 (plus UTF-8, RFC 6531 §3.3);
    quoted-pairSMTP is a backslash and one of %d32-126.
    """
    out: list[str] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            i += 1
            c = text[i : i + 1]
            if not (c and " " <= c <= "~"):
                raise AddressError("bad quoted-pair in local part")
        elif not _is_qtext(c, utf8):
            raise AddressError(f"{_char_reason(c)} in quoted local part")
        out.append(c)
        i += 1
    raise AddressError("unbalanced quotes")


def _check_dot_string(text: str, utf8: bool) -> None:
    """RFC 5321 §4.1.2 Dot-string = Atom *("." Atom), with a specific reason on failure."""
    if _is_dot_string(text, utf8) or not text:
        return
    if text[0] == "." or text[-1] == ".":
        raise AddressError("local part starts or ends with a dot")
    if ".." in text:
        raise AddressError("consecutive dots in local part")
    bad = next(c for c in text if c != "." and not _is_atext(c, utf8))
    raise AddressError(f"{_char_reason(bad)} in local part")


def _is_dot_string(text: str, utf8: bool) -> bool:
    return all(atom and all(_is_atext(c, utf8) for c in atom) for atom in text.split("."))


def _is_atext(c: str, utf8: bool) -> bool:
    return c in _ATEXT or (utf8 and _is_utf8_char(c) and unicodedata.category(c) != "Zs")


def _is_qtext(c: str, utf8: bool) -> bool:
    return (" " <= c <= "~" and c not in '"\\') or (utf8 and _is_utf8_char(c))


def _is_utf8_char(c: str) -> bool:
    """RFC 6532 §3.1 UTF8-non-ascii, less controls, lone surrogates and unassigned code points."""
    return c > "\x7f" and unicodedata.category(c) not in _BAD_CATEGORIES


def _quote(local: str) -> str:
    """Quoted-string form: only DQUOTE and backslash need a quoted-pair."""
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _char_reason(c: str) -> str:
    """Describe a bad character without echoing anything unsafe into a reply line."""
    if c == " ":
        return "space outside quotes"
    if c < " " or c == "\x7f":
        return "control character"
    if c.isascii():
        return f"character {c!r} not allowed"
    return f"character U+{ord(c):04X} not allowed"


# --- domain -----------------------------------------------------------------------------------


def _domain(text: str, *, literal_ok: bool) -> str:
    """RFC 5321 §4.1.2 Domain (or address-literal), normalised; RFC 6531 §3.3 U-labels."""
    if literal_ok and text.startswith("["):
        return _address_literal(text)
    if not text:
        raise AddressError("empty domain")
    if "@" in text:
        raise AddressError("more than one '@' outside quotes")
    if text.endswith("."):
        raise AddressError("domain ends with a dot")
    if _octets(text) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets")
    domain = ".".join(_label(label) for label in text.split("."))
    if len(_to_ascii(domain)) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets")
    return domain


def _label(label: str) -> str:
    if not label:
        raise AddressError("empty domain label")
    if not label.isascii():
        return _u_label(label)
    low = label.lower()
    if not _LDH.fullmatch(low):
        raise AddressError("domain label must be letters, digits and inner hyphens, 1-63 long")
    return _a_label_to_u(low) if low.startswith("xn--") else low


def _a_label_to_u(label: str) -> str:
    """An A-label becomes its U-label (RFC 5891 §5.4: it must round-trip)."""
    try:
        u_label = _idna.ToUnicode(label)
    except UnicodeError:
        raise AddressError("invalid A-label (punycode) in domain") from None
    _check_u_label(u_label)
    return u_label


def _u_label(label: str) -> str:
    """Lower-case and NFC a U-label, then check it (see the module docstring)."""
    u_label = unicodedata.normalize("NFC", label.lower())
    _check_u_label(u_label)
    try:
        stable = _idna.ToUnicode(_idna.ToASCII(u_label)) == u_label
    except UnicodeError:
        raise AddressError("invalid internationalised domain label") from None
    if not stable:
        raise AddressError("domain label is not in IDNA normal form")
    return u_label


def _check_u_label(label: str) -> None:
    """RFC 5891 §4.2.3.1-4.2.3.2 hyphen and leading-mark rules, RFC 5892 letters and digits."""
    if label.isascii():
        raise AddressError("invalid internationalised domain label")
    if label[0] == "-" or label[-1] == "-" or label[2:4] == "--":
        raise AddressError("misplaced hyphen in domain label")
    if unicodedata.category(label[0]).startswith("M"):
        raise AddressError("domain label starts with a combining mark")
    for c in label:
        if c != "-" and unicodedata.category(c) not in _ULABEL_CATEGORIES:
            raise AddressError(f"{_char_reason(c)} in domain")


def _to_ascii(domain: str) -> str:
    try:
        return ".".join(_idna.ToASCII(label).decode("ascii") for label in domain.split("."))
    except UnicodeError:
        raise AddressError("domain cannot be converted to A-labels") from None


def _address_literal(text: str) -> str:
    """RFC 5321 §4.1.3 address literal, kept as written.

    The General-address-literal form is refused: IANA registers no tag but "IPv6".
    """
    if len(text) < 3 or not text.endswith("]"):
        raise AddressError("bad address literal")
    body = text[1:-1]
    if body[:5].lower() == "ipv6:":
        _check_ip(body[5:], _IPV6_CHARS, ipaddress.IPv6Address)
    elif ":" in body:
        raise AddressError("unsupported address literal tag")
    else:
        _check_ip(body, _IPV4_CHARS, ipaddress.IPv4Address)
    return text


def _check_ip(
    text: str, chars: frozenset[str], kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> None:
    # The character check comes first: ipaddress would accept an IPv6 scope ("%eth0").
    if not text or not set(text) <= chars:
        raise AddressError("bad IP address in address literal")
    try:
        kind(text)
    except ValueError:
        raise AddressError("bad IP address in address literal") from None


# --- helpers ----------------------------------------------------------------------------------


def _check_charset(text: str, utf8: bool) -> None:
    if not utf8 and not text.isascii():
        raise AddressError("non-ASCII address needs SMTPUTF8")


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
