"""Parse a message once at delivery into what IMAP FETCH needs later.

`parse_message(data)` returns the serialised ENVELOPE, BODYSTRUCTURE and BODY (RFC 9051
§7.5.2, formal syntax §9) and the byte offsets of every MIME part, so the IMAP server
answers those items and BODY[section]<partial> from the store without parsing again.

Design choices
--------------
* Speed: this runs for every delivered message, so there is no `email` parser here. A
  message is cut top-down with C-speed primitives: one regex finds the blank line ending a
  header, one validates the header lines, one picks out the few fields we use
  (Content-*, and the envelope fields for messages), `bytes.find` finds boundaries,
  `bytes.count` counts lines. Only the fields we use are decoded, by small parsers below;
  address lists of the common forms take a regex fast path straight to wire bytes.
* Header block: it ends at the first empty line (CRLF or bare LF), or before the first
  line that is neither a field (`name:`) nor a continuation (leading WSP) -- then that
  line starts the body, as Python's `email` feedparser does. No blank line and no such
  line: everything is header and the body is empty (RFC 9051 §7.5.2 keeps the blank line
  in the header; "a message that has no body and no blank line" has none).
* Boundaries (RFC 2046 §5.1.1): a delimiter line is "--" boundary, optionally "--"
  (close), optional SP/HTAB, then end of line. The CRLF (or LF) before a delimiter belongs
  to it, not to the part. Parts are cut top-down: an enclosing multipart is split first,
  so an outer boundary ends every inner part (RFC 2046 §5.1.2). Text before the first
  delimiter (preamble) and after the close delimiter (epilogue) belongs to no part. No
  close delimiter: the last part runs to the end of its parent.
* Broken multiparts, as Dovecot does: a multipart without a boundary parameter is a leaf
  ("MULTIPART" "MIXED" as a basic body); one whose first delimiter never appears gets a
  single empty text/plain child (body-type-mpart needs one body), with a zero-length span.
* Limits, as Dovecot's defaults: 100 nesting levels and 10,000 parts. A multipart deeper
  than that is a leaf; a message/rfc822 deeper than that is reported as
  application/octet-stream (a basic body typed MESSAGE/RFC822 would make clients expect
  an envelope). Parts past the 10,000th are left inside their parent's body. The parser
  recurses at most ~3 frames per level, so never near the recursion limit. Address lists
  and MIME parameter fields are parsed from their first 64 KiB only (cut at a separator),
  so megabyte-long fields cost milliseconds; raw-text envelope fields are kept whole.
  Regexes use possessive runs where a run can be followed by a failure, so no input
  makes them backtrack per octet.
* Sections (RFC 9051 §6.4.5): `parts[0]` is the whole message (section ""). A
  non-multipart message has part "1" = its body (same offsets as ""). A message/rfc822
  (or message/global) part N holds a message whose parts are N.1, N.2 ... if it is
  multipart, else N.1 is its body. `PartSpan.text_start` records where that embedded
  message's body begins, so N.HEADER = [body_start, text_start), N.TEXT = [text_start, end).
* Defaults (RFC 2045 §5.2, RFC 2046 §5.1.5): no or unparsable Content-Type means
  text/plain; charset=us-ascii, except message/rfc822 inside multipart/digest. A text/*
  part without a charset parameter gets ("CHARSET" "US-ASCII"). No Content-Transfer-
  Encoding means "7BIT". Duplicate Content-* or envelope fields: the first one counts.
* Case: type, subtype, encoding, disposition type and parameter names are case-insensitive
  tokens (RFC 2045 §5.1, RFC 2183) and are sent upper-cased, as in RFC 9051's examples
  and UW/Cyrus imapd; parameter values and everything else keep their case.
* Parameters, RFC 2231 the way Dovecot does it (its rfc2231-parser): continuations
  `name*0, name*1 ...` are merged into `name`; if any piece is extended (`name*`,
  `name*0*`) the merged parameter is `name*` and its value stays `charset'lang'%XX..`
  (plain pieces get their "%" escaped as "%25"; a plain first piece gets a "''" prefix).
  RFC 9051 §7.5.2 suggests converting extended values to UTF-8 but still naming the
  parameter `foo*`, which a client cannot tell from a still-encoded value; Dovecot's
  form is lossless, keeps the charset, and is what clients already handle because most
  servers they meet are Dovecot. Pieces with a missing or repeated index are passed
  through under their own names. Parameters keep their order of first appearance.
* Envelope (RFC 9051 §7.5.2): date, subject, in-reply-to and message-id are the raw
  header text, unfolded (CR/LF removed) and trimmed: NIL when absent, "" when empty.
  RFC 2047 encoded words stay encoded (IMAP sends raw header text; clients decode).
  Addresses are parsed by a small RFC 5322 tokenizer: display names are the phrase words
  joined by one space with quotes and backslash escapes removed (quoted local parts are
  unquoted the same way, as Dovecot does); an addr-spec's trailing comment is its name;
  routes become "@a,@b"; groups become (NIL NIL "name" NIL) ...
  (NIL NIL NIL NIL). A missing local part or domain is filled with "MISSING_MAILBOX" /
  "MISSING_DOMAIN" as Dovecot does (a NIL host would mean a group marker). Sender and
  Reply-To default to From when absent or empty.
* Sizes and lines are of the stored bytes: body-fld-octets is the part's body length,
  body-fld-lines the number of LF octets in it (text/* and message/rfc822), as Dovecot.
* Wire strings (see `imapfmt`): quoted when possible, literal for CR, LF, 8-bit or many
  quote/backslash characters; NUL octets are dropped.
"""

from __future__ import annotations

import binascii
import re
import struct
from dataclasses import dataclass

from homing.mail.imapfmt import NIL, string

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "MAX_STRUCTURED",
    "ParsedMessage",
    "PartSpan",
    "decode_partmap",
    "encode_partmap",
    "parse_message",
]

#: Nesting levels (multipart or message/rfc822) parsed before parts are treated as opaque.
MAX_DEPTH = 100
#: Parts parsed in one message; later ones stay inside their parent's body.
MAX_PARTS = 10_000
#: Octets of one structured field (address list, Content-Type ...) that are parsed.
MAX_STRUCTURED = 64 * 1024


@dataclass(frozen=True, slots=True)
class PartSpan:
    """Byte offsets of one MIME part inside the message bytes (half-open ranges)."""

    section: str
    """IMAP section number: "" for the whole message, "1", "1.2", "2.1.3" ..."""
    header_start: int
    """Start of this part's MIME header (BODY[N.MIME]; for "" the message header)."""
    body_start: int
    """First byte after the blank line ending the header (or == end if no body)."""
    end: int
    """End of this part's body (the CRLF before the next boundary belongs to the boundary)."""
    is_message: bool
    """message/rfc822 or message/global part: its body is a message whose header starts at
    body_start (sections "N.HEADER", "N.TEXT" apply to it)."""
    text_start: int = -1
    """For is_message parts, where the embedded message's body starts: N.HEADER is
    [body_start, text_start) and N.TEXT is [text_start, end). -1 for other parts."""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """Everything IMAP FETCH needs about one message, computed once at delivery."""

    envelope: bytes
    """The IMAP ENVELOPE list as it goes on the wire: b'("date" "subject" ...)'."""
    bodystructure: bytes
    """IMAP BODYSTRUCTURE (with extension data), serialised."""
    body: bytes
    """IMAP BODY (non-extensible form), serialised."""
    parts: tuple[PartSpan, ...]
    """Every part, depth-first, starting with the whole message (section "")."""
    message_id: str | None
    """Message-ID header value (unfolded, stripped), for logs and loop checks; None if
    the field is absent or empty."""
    subject: str
    """Decoded (RFC 2047) subject, for logs and search convenience; "" if none. At most
    the first 64 KiB of the field are decoded."""
    has_8bit: bool
    """Any octet >= 0x80 anywhere in the message."""


# --------------------------------------------------------------------------- headers

# A blank line: LF followed by an empty line (CRLF or bare LF).
_BLANK_LINE = re.compile(rb"\n\r?\n")
# The start of a line that cannot be in a header block. Header lines (as Python's
# feedparser headerRE) are a field name and colon, a continuation, or an mbox "From ";
# we also take the RFC 5322 §4.5 obsolete form with WSP between field name and colon.
_NOT_A_FIELD_LINE = re.compile(rb"\n(?![\x21-\x39\x3b-\x7e]*+[ \t]*+:|[ \t]|From )")


# The fields we read, with their folded values, searched in b"\n" + header: a literal
# first character lets the regex engine skip quickly between line starts. Names are
# matched with explicit case classes, which is faster than re.IGNORECASE here. Runs that
# are followed by something that can fail are possessive (`*+`) so that a long line
# costs one pass, not one pass per octet of backtracking.
def _field_names(*names: str) -> bytes:
    return b"|".join(
        "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in name).encode() for name in names
    )


_VALUE = rb"[ \t]*+:([^\n]*(?:\n[ \t][^\n]*)*)"
_CONTENT = _field_names("content-") + rb"[\x21-\x39\x3b-\x7e]*+"
_MIME_FIELDS = re.compile(rb"\n(" + _CONTENT + rb")" + _VALUE)
_MESSAGE_FIELDS = re.compile(
    rb"\n("
    + _field_names(
        "date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to"
    )
    + rb"|"
    + _field_names("message-id")
    + rb"|"
    + _CONTENT
    + rb")"
    + _VALUE
)
_FOLD = re.compile(rb"\r?\n")
_WSP = b" \t\r\n"


def _unfold(value: bytes) -> bytes:
    """RFC 5322 §2.2.3 unfolding (drop the line breaks), trimmed, without NULs."""
    if b"\n" in value:
        value = _FOLD.sub(b"", value)
    if b"\x00" in value:
        value = value.replace(b"\x00", b"")
    return value.strip(_WSP)


def _structured(value: bytes, separator: bytes) -> bytes:
    """`_unfold(value)`, cut to MAX_STRUCTURED octets at the last `separator` before it.

    Parsing addresses or parameters costs Python work per token; this bounds the cost
    of absurd fields (megabytes of To: or of parameters) while keeping every realistic
    one whole (64 KiB is a couple of thousand addresses).
    """
    value = _unfold(value)
    if len(value) > MAX_STRUCTURED:
        cut = value.rfind(separator, 0, MAX_STRUCTURED)
        value = value[: cut if cut > 0 else MAX_STRUCTURED]
    return value


# --------------------------------------------------------------------------- MIME values

_TOKEN = re.compile(rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 2045 §5.1 token
# One ";"-separated segment, honouring quoted strings (unterminated ones run to the end).
_SEGMENT = re.compile(rb'(?:[^;"]+|"(?:[^"\\]+|\\.?)*"?)*', re.S)
_QUOTED = re.compile(rb'"((?:[^"\\]+|\\.?)*)"?', re.S)
_BACKSLASH = re.compile(rb"\\(.?)", re.S)
_DIGITS = re.compile(rb"[0-9]{1,9}")

_Params = list[tuple[bytes, bytes]]


def _unquote(value: bytes) -> bytes:
    return _BACKSLASH.sub(rb"\1", value) if b"\\" in value else value


def _strip_comments(value: bytes) -> bytes:
    """Remove RFC 5322 comments (nested, with quoted-pairs) outside quoted strings."""
    out = bytearray()
    depth = 0
    quoted = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == 0x5C and (quoted or depth):  # backslash: quoted-pair
            if not depth:
                out += value[i : i + 2]
            i += 2
            continue
        if depth:
            depth += (c == 0x28) - (c == 0x29)
        elif c == 0x22:
            quoted = not quoted
            out.append(c)
        elif c == 0x28 and not quoted:
            depth = 1
            out.append(0x20)
        else:
            out.append(c)
        i += 1
    return bytes(out)


def _segments(value: bytes) -> list[bytes]:
    """Split a MIME field value at ";" outside quoted strings (comments removed)."""
    if b"(" in value:
        value = _strip_comments(value)
    if b'"' not in value:
        return value.split(b";")
    out = []
    pos = 0
    n = len(value)
    while True:
        m = _SEGMENT.match(value, pos)
        end = m.end() if m is not None else pos
        out.append(value[pos:end])
        if end >= n:
            return out
        pos = end + 1


def _parse_params(segments: list[bytes]) -> _Params:
    """Parameters `name=value` (RFC 2045 §5.1), with RFC 2231 continuations merged."""
    params: _Params = []
    rfc2231 = False
    for seg in segments:
        name, eq, value = seg.partition(b"=")
        name = name.strip(_WSP)
        if not eq or _TOKEN.fullmatch(name) is None:
            continue  # not a parameter: skip it, as Dovecot does
        value = value.strip(_WSP)
        if value[:1] == b'"':
            m = _QUOTED.match(value)
            value = _unquote(m.group(1)) if m is not None else b""
        params.append((name, value))
        rfc2231 = rfc2231 or b"*" in name
    return _merge_rfc2231(params) if rfc2231 else params


def _merge_rfc2231(params: _Params) -> _Params:
    """Merge RFC 2231 §3/§4 pieces (`name*0`, `name*1*`, `name*`) the way Dovecot does."""
    # base name (lowercase) -> list of (index, extended, value, original name)
    groups: dict[bytes, list[tuple[int, bool, bytes, bytes]]] = {}
    order: list[tuple[bytes, bytes] | bytes] = []  # plain (name, value) or a group key
    for name, value in params:
        base, _, rest = name.partition(b"*")
        piece: tuple[int, bool] | None = None
        if b"*" in name and base:
            if rest == b"":
                piece = (0, True)  # name*=charset'lang'value
            else:
                m = _DIGITS.match(rest)
                if m is not None and rest[m.end() :] in (b"", b"*"):
                    piece = (int(m.group()), rest.endswith(b"*"))
        if piece is None:
            order.append((name, value))
            continue
        key = base.lower()
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((piece[0], piece[1], value, name))
    merged: _Params = []
    for item in order:
        if isinstance(item, tuple):
            merged.append(item)
            continue
        pieces = sorted(groups[item], key=lambda p: p[0])
        if any(p[0] != i for i, p in enumerate(pieces)):
            merged.extend((p[3], p[2]) for p in pieces)  # gaps or repeats: pass through
            continue
        base = pieces[0][3].partition(b"*")[0]
        if not any(p[1] for p in pieces):
            merged.append((base, b"".join(p[2] for p in pieces)))
            continue
        # RFC 2231 §4.1: only extended pieces are %-encoded, so escape "%" in plain ones.
        value = b"" if pieces[0][1] else b"''"
        value += b"".join(p[2] if p[1] else p[2].replace(b"%", b"%25") for p in pieces)
        merged.append((base + b"*", value))
    return merged


def _param(params: _Params, name: bytes) -> bytes | None:
    for key, value in params:
        if key.lower() == name:
            return value
    return None


def _boundary(params: _Params) -> bytes | None:
    value = _param(params, b"boundary")
    if value is None:
        ext = _param(params, b"boundary*")
        if ext is not None:  # RFC 2231 ext-value: charset'lang'%XX
            value = _percent_decode(ext.split(b"'", 2)[-1])
    if value is None:
        return None
    value = value.rstrip(b" \t")  # RFC 2046 §5.1.1: bcharsnospace last (as Python's email)
    return value or None


_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _percent_decode(value: bytes) -> bytes:
    return _PERCENT.sub(lambda m: bytes((int(m.group(1), 16),)), value)


# --------------------------------------------------------------------------- addresses

# RFC 5322 §3.2-3.4 lexical tokens. Atoms keep their dots ("John Q. Public", "a.b@c.d").
_ADDR_TOKEN = re.compile(
    rb'"((?:[^"\\]+|\\.?)*)"?'  # 1: quoted-string (unterminated: to the end)
    rb"|\[((?:[^\]\\]+|\\.?)*)\]?"  # 2: domain-literal
    rb'|([^\x00-\x20"(),:;<>@\[\]\\\x7f]+)'  # 3: atom (8-bit allowed, RFC 6532)
    rb"|([(),:;<>@])",  # 4: specials; "(" starts a comment
    re.S,
)
_WORD, _QUOTE, _LITERAL, _SPECIAL, _COMMENT = range(5)
_Token = tuple[int, bytes]
_Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]
_GROUP_END: _Address = (None, None, None, None)
_MISSING_MAILBOX = b"MISSING_MAILBOX"
_MISSING_DOMAIN = b"MISSING_DOMAIN"


def _address_tokens(value: bytes) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    n = len(value)
    search = _ADDR_TOKEN.search
    while True:
        m = search(value, pos)
        if m is None:
            return tokens
        pos = m.end()
        kind = m.lastindex or 0
        if kind == 4:
            text = m.group(4)
            if text == b"(":
                pos, comment = _comment(value, pos, n)
                tokens.append((_COMMENT, comment))
            else:
                tokens.append((_SPECIAL, text))
        elif kind == 3:
            tokens.append((_WORD, m.group(3)))
        elif kind == 1:
            tokens.append((_QUOTE, _unquote(m.group(1))))
        else:
            tokens.append((_LITERAL, b"[" + m.group(2) + b"]"))


def _comment(value: bytes, pos: int, n: int) -> tuple[int, bytes]:
    """Scan a (possibly nested) comment whose "(" ended at `pos`; return end and text."""
    depth = 1
    start = pos
    while pos < n:
        c = value[pos]
        if c == 0x5C:
            pos += 2
            continue
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return pos + 1, _unquote(value[start:pos]).strip(_WSP)
        pos += 1
    return n, _unquote(value[start:n]).strip(_WSP)


def _phrase(tokens: list[_Token]) -> bytes:
    return b" ".join(t[1] for t in tokens if t[0] <= _QUOTE and t[1])


def _addr_spec(tokens: list[_Token]) -> tuple[bytes, bytes]:
    """local-part "@" domain from tokens; specials other than "@" and comments ignored."""
    local: list[bytes] = []
    domain: list[bytes] = []
    side = local
    for kind, text in tokens:
        if kind <= _LITERAL:
            side.append(text)
        elif kind == _SPECIAL and text == b"@" and side is local:
            side = domain
    return b"".join(local), b"".join(domain)


def _mailbox(tokens: list[_Token], out: list[_Address]) -> None:
    """Append the address in `tokens` (a name-addr or an addr-spec) to `out`."""
    if not any(kind <= _LITERAL or text == b"<" for kind, text in tokens):
        return  # empty list element (RFC 5322 §4.4 obs-addr-list) or only comments
    name: bytes | None
    route: bytes | None = None
    lt = next((i for i, t in enumerate(tokens) if t == (_SPECIAL, b"<")), -1)
    if lt >= 0:  # name-addr: [display-name] "<" [route ":"] addr-spec ">"
        name = _phrase(tokens[:lt]) or None
        inner = tokens[lt + 1 :]
        gt = next((i for i, t in enumerate(inner) if t == (_SPECIAL, b">")), len(inner))
        inner = inner[:gt]
        if inner and inner[0] == (_SPECIAL, b"@"):
            colon = next((i for i, t in enumerate(inner) if t == (_SPECIAL, b":")), -1)
            if colon >= 0:  # RFC 5322 §4.4 obs-route
                route = b"".join(t[1] for t in inner[:colon] if t[0] != _COMMENT) or None
                inner = inner[colon + 1 :]
        local, domain = _addr_spec(inner)
    else:  # addr-spec; a comment after it is the traditional place for the name
        local, domain = _addr_spec(tokens)
        comments = [text for kind, text in tokens if kind == _COMMENT and text]
        name = comments[-1] if comments else None
    out.append((name, route, local or _MISSING_MAILBOX, domain or _MISSING_DOMAIN))


# The common address forms, one list element at a time: `local@domain`,
# `Name <local@domain>` and `"Name" <local@domain>`, all ASCII, no comments or routes.
_ATEXT = rb"!#-'*+\-/-9=?A-Z^-~"
_FAST_ADDRESS = re.compile(
    rb'[ \t]*(?:(?:"([^"\\\r\n]*)"|([ \t.' + _ATEXT + rb"]*?))[ \t]*<"
    rb"([." + _ATEXT + rb"]+)@([A-Za-z0-9.\-]+)>"
    rb"|([." + _ATEXT + rb"]+)@([A-Za-z0-9.\-]+))[ \t]*(?:,|\Z)"
)


def _addresses(value: bytes) -> bytes:
    """An address-list field value as the IMAP list of address structures, or NIL.

    Lists made only of the common forms take a regex fast path that writes the wire form
    directly; anything else goes through `_parse_address_list`. Both give the same bytes.
    """
    out = b"("
    pos = 0
    n = len(value)
    match = _FAST_ADDRESS.match
    while pos < n:
        m = match(value, pos)
        if m is None or m.end() == pos:
            return _address_list(_parse_address_list(value))
        pos = m.end()
        local = m.group(3)
        if local is None:  # local-part, domain: atext and dots, never escaped
            out += b'(NIL NIL "%b" "%b")' % (m.group(5), m.group(6))
            continue
        name = m.group(1)
        if name is None:
            name = b" ".join(m.group(2).split())
        out += b'(%b NIL "%b" "%b")' % (string(name) if name else NIL, local, m.group(4))
    return out + b")" if pos else NIL


def _parse_address_list(value: bytes) -> list[_Address]:
    """RFC 5322 §3.4 address-list (lenient) -> IMAP address structures, with groups."""
    out: list[_Address] = []
    current: list[_Token] = []
    in_group = False
    in_angle = False
    for token in _address_tokens(value):
        kind, text = token
        if kind == _SPECIAL:
            if in_angle:
                in_angle = text != b">"
            elif text == b"<":
                in_angle = True
            elif text == b",":
                _mailbox(current, out)
                current = []
                continue
            elif text == b";":
                _mailbox(current, out)
                current = []
                if in_group:
                    out.append(_GROUP_END)
                    in_group = False
                continue
            elif text == b":" and not in_group:
                name = _phrase(current)
                if name and all(k in (_WORD, _QUOTE, _COMMENT) for k, _ in current):
                    out.append((None, None, name, None))  # RFC 9051 §7.5.2 group start
                    in_group = True
                    current = []
                    continue
        current.append(token)
    _mailbox(current, out)
    if in_group:
        out.append(_GROUP_END)
    return out


def _address_list(addresses: list[_Address]) -> bytes:
    if not addresses:
        return NIL
    out = b"("
    for name, route, mailbox, host in addresses:
        out += b"(%b %b %b %b)" % (
            NIL if name is None else string(name),
            NIL if route is None else string(route),
            NIL if mailbox is None else string(mailbox),
            NIL if host is None else string(host),
        )
    return out + b")"


def _envelope(fields: dict[bytes, bytes]) -> bytes:
    """RFC 9051 §7.5.2 ENVELOPE from a message's (first-occurrence) header fields."""
    get = fields.get

    def text(name: bytes) -> bytes:
        value = get(name)
        return NIL if value is None else string(_unfold(value))

    def addresses(name: bytes) -> bytes:
        value = get(name)
        return NIL if value is None else _addresses(_structured(value, b","))

    sender_from = addresses(b"from")
    sender = addresses(b"sender")
    reply_to = addresses(b"reply-to")
    return b"(%b %b %b %b %b %b %b %b %b %b)" % (
        text(b"date"),
        text(b"subject"),
        sender_from,
        sender_from if sender is NIL else sender,
        sender_from if reply_to is NIL else reply_to,
        addresses(b"to"),
        addresses(b"cc"),
        addresses(b"bcc"),
        text(b"in-reply-to"),
        text(b"message-id"),
    )


# --------------------------------------------------------------------------- RFC 2047

_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")


def _decode_words(raw: bytes) -> str:
    """Decode RFC 2047 encoded words for display; undecodable words stay as they are."""
    if b"=?" not in raw:
        return raw.decode("utf-8", "replace")
    out: list[str] = []
    pending: list[bytes] = []  # decoded octets of adjacent words in one charset
    charset = ""
    pos = 0
    after_word = False
    for m in _ENCODED_WORD.finditer(raw):
        between = raw[pos : m.start()]
        pos = m.end()
        # RFC 2047 §6.2: whitespace between adjacent encoded words is not displayed.
        if not after_word or between.strip(_WSP):
            _flush_words(out, pending, charset)
            out.append(between.decode("utf-8", "replace"))
        word_charset = m.group(1).partition(b"*")[0].decode("ascii", "replace").lower()
        octets = _decode_word(m.group(2), m.group(3), word_charset)
        if octets is None:
            _flush_words(out, pending, charset)
            out.append(m.group().decode("ascii", "replace"))
            after_word = False
            continue
        if word_charset != charset:
            _flush_words(out, pending, charset)
            charset = word_charset
        pending.append(octets)
        after_word = True
    _flush_words(out, pending, charset)
    out.append(raw[pos:].decode("utf-8", "replace"))
    return "".join(out)


def _decode_word(encoding: bytes, text: bytes, charset: str) -> bytes | None:
    """The octets of one encoded word, or None if its charset or encoding is unusable."""
    try:
        "".encode(charset)  # LookupError for unknown charsets and non-text codecs
        if encoding in b"Bb":
            # Lenient: missing padding is added, stray characters are skipped.
            octets = binascii.a2b_base64(text + b"=" * (-len(text) % 4))
            return octets if octets or not text else None
        return binascii.a2b_qp(text, header=True)
    except (LookupError, ValueError):  # binascii.Error is a ValueError
        return None


def _flush_words(out: list[str], pending: list[bytes], charset: str) -> None:
    if not pending:
        return
    octets = b"".join(pending)
    pending.clear()
    try:
        out.append(octets.decode(charset, "replace"))
    except Exception:  # some codecs (idna, punycode ...) refuse "replace": show raw UTF-8
        out.append(octets.decode("utf-8", "replace"))


# --------------------------------------------------------------------------- structure

_LEAF, _MULTIPART, _MESSAGE = range(3)
_MESSAGE_TYPES = (b"rfc822", b"global")
_OPAQUE_MESSAGE = (b"application", b"octet-stream")
_DEFAULT_CHARSET = b'"CHARSET" "US-ASCII"'
_EMPTY_CHILD = (  # Dovecot's stand-in body for a multipart without parts
    b'("TEXT" "PLAIN" (' + _DEFAULT_CHARSET + b') NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)',
    b'("TEXT" "PLAIN" (' + _DEFAULT_CHARSET + b') NIL NIL "7BIT" 0 0)',
)


class _Entity:
    """One parsed entity: a message or a MIME part (internal, mutable while parsing)."""

    __slots__ = (
        "body_start",
        "children",
        "end",
        "envelope",
        "fields",
        "header_start",
        "inner",
        "kind",
        "mtype",
        "params",
        "stype",
    )

    def __init__(
        self, header_start: int, body_start: int, end: int, fields: dict[bytes, bytes]
    ) -> None:
        self.header_start = header_start
        self.body_start = body_start
        self.end = end
        self.fields = fields
        self.kind = _LEAF
        self.mtype = b"text"
        self.stype = b"plain"
        self.params: _Params = []
        self.children: list[_Entity] = []
        self.inner: _Entity | None = None
        self.envelope = b""


class _Parser:
    __slots__ = ("count", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.count = 0

    def header(self, start: int, end: int) -> tuple[int, bytes]:
        """Return (body_start, b"\\n" + header text) for the entity in [start, end)."""
        data = self.data
        if start >= end:
            return end, b"\n"
        first = data[start]
        if first == 0x0A:
            return start + 1, b"\n"
        if first == 0x0D and start + 1 < end and data[start + 1] == 0x0A:
            return start + 2, b"\n"
        blank = _BLANK_LINE.search(data, start, end)
        if blank is None:
            header_end = body_start = end
        else:
            header_end = blank.start() + 1  # keep the last field's line end
            body_start = blank.end()
        text = b"\n" + data[start:header_end]
        # The final LF of `text` is no line start when a blank line follows it.
        bad = _NOT_A_FIELD_LINE.search(text, 0, len(text) - (blank is not None))
        if bad is not None:  # that line and all after it are body
            return start + bad.start(), text[: bad.start() + 1]
        return body_start, text

    def entity(self, start: int, end: int, depth: int, *, message: bool, digest: bool) -> _Entity:
        """Parse the entity in [start, end): header, type, and its children if any."""
        body_start, text = self.header(start, end)
        found = (_MESSAGE_FIELDS if message else _MIME_FIELDS).findall(text)
        # The first occurrence of a field counts: build from the last one backwards.
        fields = {name.lower(): value for name, value in reversed(found)} if found else {}
        e = _Entity(start, body_start, end, fields)
        self.count += 1
        if message:
            e.envelope = _envelope(fields)
        self.content_type(e, digest)
        if e.mtype == b"multipart":
            boundary = _boundary(e.params)
            if boundary is not None and depth < MAX_DEPTH and self.count < MAX_PARTS:
                e.kind = _MULTIPART
                child_digest = e.stype == b"digest"
                for part_start, part_end in self.split(body_start, end, boundary):
                    if self.count >= MAX_PARTS:
                        break
                    e.children.append(
                        self.entity(
                            part_start, part_end, depth + 1, message=False, digest=child_digest
                        )
                    )
        elif e.mtype == b"message" and e.stype in _MESSAGE_TYPES:
            if depth < MAX_DEPTH and self.count < MAX_PARTS:
                e.kind = _MESSAGE
                e.inner = self.entity(body_start, end, depth + 1, message=True, digest=False)
            else:
                e.mtype, e.stype = _OPAQUE_MESSAGE
        return e

    def content_type(self, e: _Entity, digest: bool) -> None:
        """Set type, subtype and parameters from Content-Type (RFC 2045 §5, defaults §5.2)."""
        raw = e.fields.get(b"content-type")
        if raw is not None:
            segments = _segments(_structured(raw, b";"))
            mtype, slash, stype = segments[0].partition(b"/")
            mtype = mtype.strip(_WSP)
            stype = stype.strip(_WSP)
            if slash and _TOKEN.fullmatch(mtype) and _TOKEN.fullmatch(stype):
                e.mtype = mtype.lower()
                e.stype = stype.lower()
                e.params = _parse_params(segments[1:])
                return
        if digest:  # RFC 2046 §5.1.5
            e.mtype, e.stype = b"message", b"rfc822"

    def split(self, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
        """Cut a multipart body at its delimiter lines (RFC 2046 §5.1.1)."""
        data = self.data
        delimiter = b"--" + boundary
        needle = b"\n" + delimiter
        size = len(delimiter)
        room = MAX_PARTS - self.count
        spans: list[tuple[int, int]] = []
        part_start = -1
        line = start if data.startswith(delimiter, start, end) else -1
        if line < 0:
            line = data.find(needle, start, end) + 1 or -1
        while line >= 0:
            tail = self.delimiter_tail(line + size, end)
            if tail is not None:
                if part_start >= 0:
                    part_end = line - 1  # the LF before "--" belongs to the delimiter
                    if part_end > part_start and data[part_end - 1] == 0x0D:
                        part_end -= 1
                    spans.append((part_start, max(part_start, part_end)))
                    if len(spans) >= room:
                        return spans
                next_line, close = tail
                if close:
                    return spans
                part_start = next_line
            line = data.find(needle, line, end) + 1 or -1
        if part_start >= 0:
            spans.append((part_start, end))  # no close delimiter: runs to the end
        return spans

    def delimiter_tail(self, pos: int, end: int) -> tuple[int, bool] | None:
        """After "--boundary": ["--"] *(SP/HTAB) end-of-line -> (next line, is close)."""
        data = self.data
        close = data.startswith(b"--", pos, end)
        if close:
            pos += 2
        while pos < end and data[pos] in (0x20, 0x09):
            pos += 1
        if pos >= end:
            return end, close
        c = data[pos]
        if c == 0x0A:
            return pos + 1, close
        if c == 0x0D and (pos + 1 == end or data[pos + 1] == 0x0A):
            return min(pos + 2, end), close
        return None


# --------------------------------------------------------------------------- writing


def _token(token: bytes) -> bytes:
    """A validated RFC 2045 token, upper-cased, as an IMAP quoted string (never escapes)."""
    return b'"' + token.upper() + b'"'


def _params(params: _Params, default_charset: bool) -> bytes:
    """body-fld-param: ("NAME" "value" ...) or NIL."""
    items = [b'"%b" %b' % (name.upper(), string(value)) for name, value in params]
    if default_charset and not any(name.lower() in (b"charset", b"charset*") for name, _ in params):
        items.append(_DEFAULT_CHARSET)
    return b"(" + b" ".join(items) + b")" if items else NIL


def _extension(e: _Entity) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc (RFC 9051 §9)."""
    fields = e.fields
    disposition = NIL
    raw = fields.get(b"content-disposition")
    if raw is not None:
        segments = _segments(_structured(raw, b";"))
        kind = segments[0].strip(_WSP)
        if _TOKEN.fullmatch(kind):
            disposition = b"(%b %b)" % (
                _token(kind),
                _params(_parse_params(segments[1:]), False),
            )
    language = NIL
    raw = fields.get(b"content-language")
    if raw is not None:
        raw = _structured(raw, b",")
        if b"(" in raw:
            raw = _strip_comments(raw)
        tags = [t.strip(_WSP) for t in raw.split(b",")]
        if any(tags):
            language = b"(" + b" ".join(string(t) for t in tags if t) + b")"
    return b"%b %b %b" % (disposition, language, _nfield(fields, b"content-location"))


def _nfield(fields: dict[bytes, bytes], name: bytes) -> bytes:
    value = fields.get(name)
    return NIL if value is None else string(_unfold(value))


def _encoding(fields: dict[bytes, bytes]) -> bytes:
    raw = fields.get(b"content-transfer-encoding")
    if raw is not None:
        m = _TOKEN.search(_unfold(raw))
        if m is not None:
            return _token(m.group())
    return b'"7BIT"'


def _write(e: _Entity, data: bytes) -> tuple[bytes, bytes]:
    """Serialise an entity as (BODYSTRUCTURE, BODY) per RFC 9051 §9 `body`."""
    if e.kind == _MULTIPART:
        if e.children:
            written = [_write(child, data) for child in e.children]
            structure = b"".join(w[0] for w in written)
            plain = b"".join(w[1] for w in written)
        else:
            structure, plain = _EMPTY_CHILD
        subtype = _token(e.stype)
        extension = b"%b %b" % (_params(e.params, False), _extension(e))
        return (
            b"(%b %b %b)" % (structure, subtype, extension),
            b"(%b %b)" % (plain, subtype),
        )
    fields = e.fields
    basic = b"%b %b %b %b %b %b %d" % (
        _token(e.mtype),
        _token(e.stype),
        _params(e.params, e.mtype == b"text"),
        _nfield(fields, b"content-id"),
        _nfield(fields, b"content-description"),
        _encoding(fields),
        e.end - e.body_start,
    )
    if e.mtype == b"text":
        basic += b" %d" % data.count(b"\n", e.body_start, e.end)
        plain = basic
    elif e.kind == _MESSAGE and e.inner is not None:
        lines = data.count(b"\n", e.body_start, e.end)
        inner_structure, inner_plain = _write(e.inner, data)
        env = e.inner.envelope
        plain = b"%b %b %b %d" % (basic, env, inner_plain, lines)
        basic = b"%b %b %b %d" % (basic, env, inner_structure, lines)
    else:
        plain = basic
    extension = b"%b %b" % (_nfield(fields, b"content-md5"), _extension(e))
    return b"(%b %b)" % (basic, extension), b"(%b)" % plain


def _spans(e: _Entity, section: str, out: list[PartSpan]) -> None:
    """Append the PartSpan of part `section` (entity `e`) and of everything inside it."""
    inner = e.inner
    if e.kind == _MESSAGE and inner is not None:
        out.append(PartSpan(section, e.header_start, e.body_start, e.end, True, inner.body_start))
        _body_spans(inner, section + ".", out)
        return
    out.append(PartSpan(section, e.header_start, e.body_start, e.end, False))
    if e.kind == _MULTIPART:
        _child_spans(e, section + ".", out)


def _body_spans(e: _Entity, prefix: str, out: list[PartSpan]) -> None:
    """The parts of message `e`: its multipart children, or part 1 (its body)."""
    if e.kind == _MULTIPART:
        _child_spans(e, prefix, out)
    else:
        _spans(e, prefix + "1", out)


def _child_spans(e: _Entity, prefix: str, out: list[PartSpan]) -> None:
    if not e.children:  # the stand-in empty text/plain part
        out.append(PartSpan(prefix + "1", e.end, e.end, e.end, False))
    for number, child in enumerate(e.children, 1):
        _spans(child, prefix + str(number), out)


# --------------------------------------------------------------------------- public API


def parse_message(data: bytes) -> ParsedMessage:
    """Parse a message (any bytes at all) into its IMAP FETCH data and part offsets."""
    data = bytes(data)
    root = _Parser(data).entity(0, len(data), 0, message=True, digest=False)
    structure, body = _write(root, data)
    parts = [PartSpan("", 0, root.body_start, len(data), False)]
    _body_spans(root, "", parts)
    fields = root.fields
    message_id = fields.get(b"message-id")
    if message_id is not None:
        message_id = _unfold(message_id)
    subject = fields.get(b"subject")
    return ParsedMessage(
        envelope=root.envelope,
        bodystructure=structure,
        body=body,
        parts=tuple(parts),
        message_id=message_id.decode("utf-8", "replace") if message_id else None,
        subject=_decode_words(_structured(subject, b" ")) if subject is not None else "",
        has_8bit=not data.isascii(),
    )


# Part map: b"P1" + count, then per part: header_start, body_start, end, text_start + 1,
# is_message, section length, section. Little-endian, fixed width (u64 offsets).
_MAP_MAGIC = b"P1"
_MAP_COUNT = struct.Struct("<I")
_MAP_PART = struct.Struct("<QQQQBH")


def encode_partmap(parts: tuple[PartSpan, ...]) -> bytes:
    """Serialise part offsets compactly for the store (see `decode_partmap`)."""
    out = [_MAP_MAGIC, _MAP_COUNT.pack(len(parts))]
    for p in parts:
        section = p.section.encode("ascii")
        out.append(
            _MAP_PART.pack(
                p.header_start,
                p.body_start,
                p.end,
                p.text_start + 1,
                p.is_message,
                len(section),
            )
        )
        out.append(section)
    return b"".join(out)


def decode_partmap(blob: bytes) -> tuple[PartSpan, ...]:
    """Inverse of `encode_partmap`; raises ValueError for a blob it did not produce."""
    if blob[:2] != _MAP_MAGIC or len(blob) < 2 + _MAP_COUNT.size:
        raise ValueError("not a Homing part map")
    (count,) = _MAP_COUNT.unpack_from(blob, 2)
    pos = 2 + _MAP_COUNT.size
    parts = []
    try:
        for _ in range(count):
            hs, bs, end, text_start, is_message, n = _MAP_PART.unpack_from(blob, pos)
            pos += _MAP_PART.size
            section = blob[pos : pos + n]
            if len(section) != n:
                raise ValueError("truncated part map")
            pos += n
            parts.append(
                PartSpan(section.decode("ascii"), hs, bs, end, bool(is_message), text_start - 1)
            )
    except struct.error as exc:
        raise ValueError("truncated part map") from exc
    if pos != len(blob):
        raise ValueError("trailing bytes after part map")
    return tuple(parts)
