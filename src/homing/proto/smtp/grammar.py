"""SMTP command lines: the verb, and the arguments of HELO/EHLO, MAIL, RCPT and BDAT.

RFC 5321 §4.1.1-4.1.2 (commands, paths, esmtp-param), RFC 1870 (SIZE), RFC 6152 (8BITMIME),
RFC 3030 (BDAT, BINARYMIME), RFC 6531 (SMTPUTF8), RFC 3461 (DSN: RET, ENVID, NOTIFY, ORCPT),
RFC 6533 §3 (the "utf-8" ORCPT address type), RFC 4954 §5 (AUTH=).

Every parse_* function returns a value or raises SMTPProtocolError carrying the reply to send;
no other exception escapes. The format_* functions are the inverse, for the SMTP client:
parse(format(x)) == x.

A parameter is accepted only when it is in the tables below and its extension is in
`extensions` (the EHLO keywords we advertised; empty after HELO); otherwise 555 (RFC 5321
§4.1.1.11). Parameters of extensions this module does not interpret (REQUIRETLS, MT-PRIORITY,
FUTURERELEASE, DELIVERBY, RRVS) are passed raw in `extra` for the session layer; a new one is a
line in the table.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

from homing.mail.address import AddressError, Mailbox, Path, parse_path, split_path
from homing.mail.reply import Reply
from homing.proto.smtp import codes
from homing.proto.smtp.errors import SMTPProtocolError

# RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# esmtp-value = 1*(%d33-60 / %d62-126), plus UTF8-non-ascii (RFC 6531 §3.3); C1 controls and
# surrogates (undecodable bytes) excluded.
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u00a0-\ud7ff\ue000-\U0010ffff]+")
_SIZE = re.compile(r"[0-9]{1,20}")  # RFC 1870 §3: size-value = 1*20DIGIT
_BDAT = re.compile(r"([0-9]{1,20})(?: +(LAST))?", re.IGNORECASE | re.ASCII)  # RFC 3030 §2
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*")  # RFC 3461 §4
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")  # RFC 3461 §4.2 addr-type = atom
# RFC 6533 §3: EmbeddedUnicodeChar = "\x{" HEXPOINT "}"; QCHAR excludes "+", "=" and "\".
_UNICODE_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("+=\\")
_XCHAR = _QCHAR | {"\\"}  # RFC 3461 §4: "!".."~" except "+" and "="

_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_MAX_ENVID = 100  # RFC 3461 §4.4
_MAX_ORCPT = 500  # RFC 3461 §4.2
_BODY_TYPES = frozenset({"7BIT", "8BITMIME"})  # RFC 6152 §2; BINARYMIME only if advertised
_RET_TYPES = frozenset({"FULL", "HDRS"})  # RFC 3461 §4.3
_NOTIFY_TYPES = frozenset({"SUCCESS", "FAILURE", "DELAY"})  # RFC 3461 §4.1, or NEVER alone

# Parameter -> the EHLO keywords, any one of which allows it.
_MAIL_PARAMS: Mapping[str, tuple[str, ...]] = {
    "SIZE": ("SIZE",),  # RFC 1870 §4
    "BODY": ("8BITMIME", "BINARYMIME"),  # RFC 6152 §2, RFC 3030 §3
    "SMTPUTF8": ("SMTPUTF8",),  # RFC 6531 §3.4
    "RET": ("DSN",),  # RFC 3461 §4.3
    "ENVID": ("DSN",),  # RFC 3461 §4.4
    "AUTH": ("AUTH",),  # RFC 4954 §5
    # Passed raw in `extra`:
    "REQUIRETLS": ("REQUIRETLS",),  # RFC 8689 §4.1
    "MT-PRIORITY": ("MT-PRIORITY",),  # RFC 6710 §3
    "HOLDFOR": ("FUTURERELEASE",),  # RFC 4865 §3
    "HOLDUNTIL": ("FUTURERELEASE",),  # RFC 4865 §3
    "BY": ("DELIVERBY",),  # RFC 2852 §4
}
_MAIL_FIELDS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"})
_RCPT_PARAMS: Mapping[str, tuple[str, ...]] = {
    "NOTIFY": ("DSN",),  # RFC 3461 §4.1
    "ORCPT": ("DSN",),  # RFC 3461 §4.2
    "RRVS": ("RRVS",),  # RFC 7293 §3, passed raw in `extra`
}
_RCPT_FIELDS = frozenset({"NOTIFY", "ORCPT"})

_MAIL_USAGE = codes.PARAM_SYNTAX.with_text("Syntax: MAIL FROM:<address>")
_RCPT_USAGE = codes.PARAM_SYNTAX.with_text("Syntax: RCPT TO:<address>")
_NULL_RCPT = codes.ADDRESS_SYNTAX.with_text("Null recipient <> is not allowed")
_BAD_RET = codes.PARAM_SYNTAX.with_text("Bad RET parameter")
_BAD_ENVID = codes.PARAM_SYNTAX.with_text("Bad ENVID parameter")
_BAD_AUTH = codes.PARAM_SYNTAX.with_text("Bad AUTH parameter")
_BAD_NOTIFY = codes.PARAM_SYNTAX.with_text("Bad NOTIFY parameter")
_BAD_ORCPT = codes.PARAM_SYNTAX.with_text("Bad ORCPT parameter")
_BAD_SMTPUTF8 = codes.PARAM_SYNTAX.with_text("SMTPUTF8 takes no value")

Params = dict[str, str | None]


@dataclass(frozen=True, slots=True)
class Command:
    """One command line: `verb` upper-cased, `arg` the rest (surrogate-escaped UTF-8)."""

    verb: str
    arg: str


@dataclass(frozen=True, slots=True)
class MailArgs:
    """MAIL FROM: the reverse-path and its parameters (values decoded, keywords upper-cased)."""

    path: Path
    size: int | None = None  # SIZE= (RFC 1870)
    body: str | None = None  # "7BIT", "8BITMIME" (RFC 6152), "BINARYMIME" (RFC 3030)
    smtputf8: bool = False  # SMTPUTF8 (RFC 6531)
    ret: str | None = None  # RET=FULL|HDRS (RFC 3461 §4.3)
    envid: str | None = None  # ENVID=, xtext-decoded (RFC 3461 §4.4)
    auth: str | None = None  # AUTH=, xtext-decoded: an addr-spec or "<>" (RFC 4954 §5)
    extra: Params = field(default_factory=dict)  # REQUIRETLS, MT-PRIORITY...: keyword -> raw value


@dataclass(frozen=True, slots=True)
class RcptArgs:
    """RCPT TO: the forward-path and its parameters.

    The path is never null. RCPT TO:<Postmaster> (any case, no domain; RFC 5321 §4.1.1.3) gives
    Mailbox(local=<as written>, domain=""); the session resolves it to its own postmaster.
    """

    path: Path
    notify: frozenset[str] | None = None  # NEVER alone, or a subset of SUCCESS, FAILURE, DELAY
    orcpt: tuple[str, str] | None = None  # (addr-type lower-cased, decoded address)
    extra: Params = field(default_factory=dict)


# --- parsing ----------------------------------------------------------------------------------


def parse_command(line: bytes) -> Command:
    """Split one command line (without CRLF) into verb and argument.

    Trailing spaces and tabs are ignored, and so are extra spaces between verb and argument.
    An empty line or one starting with white space is 500 5.5.2.
    """
    text = line.decode("utf-8", "surrogateescape").rstrip(" \t")
    if not text or text[0] in " \t":
        raise SMTPProtocolError(codes.SYNTAX_ERROR)
    verb, _, arg = text.partition(" ")
    return Command(_upper(verb), arg.lstrip(" "))


def parse_helo_arg(arg: str) -> str:
    """EHLO/HELO argument (RFC 5321 §4.1.1.1), accepted liberally and returned stripped.

    Anything printable without white space passes (underscores, trailing dots, bad literals
    included, as real servers accept them); judging the name is policy, not grammar.
    """
    name = arg.strip(" \t")
    if not name or not name.isprintable() or " " in name:
        raise SMTPProtocolError(codes.HELO_SYNTAX)
    return name


def parse_bdat_arg(arg: str) -> tuple[int, bool]:
    """Parse "1000" or "1000 LAST" (LAST in any case) into (size, last); RFC 3030 §2."""
    match = _BDAT.fullmatch(arg.strip(" \t"))
    if match is None:
        raise SMTPProtocolError(codes.BDAT_SYNTAX)
    return int(match[1]), match[2] is not None


def parse_mail_arg(arg: str, *, extensions: frozenset[str]) -> MailArgs:
    """MAIL FROM:<reverse-path> [params] (RFC 5321 §4.1.1.2); "FROM: <a@b>" is tolerated."""
    path_text, params = _split_arg(arg, "FROM:", _MAIL_USAGE, codes.SENDER_SYNTAX)
    exts = frozenset(e.upper() for e in extensions)
    _check_advertised(params, _MAIL_PARAMS, exts)
    smtputf8 = _smtputf8(params)
    return MailArgs(
        path=_path(path_text, smtputf8, codes.SENDER_SYNTAX),
        size=_size(params),
        body=_body(params, exts),
        smtputf8=smtputf8,
        ret=_ret(params),
        envid=_envid(params),
        auth=_auth(params),
        extra=_extra(params, _MAIL_FIELDS),
    )


def parse_rcpt_arg(arg: str, *, extensions: frozenset[str], utf8: bool) -> RcptArgs:
    """RCPT TO:<forward-path> [params] (RFC 5321 §4.1.1.3); `utf8`: MAIL carried SMTPUTF8."""
    path_text, params = _split_arg(arg, "TO:", _RCPT_USAGE, codes.ADDRESS_SYNTAX)
    _check_advertised(params, _RCPT_PARAMS, frozenset(e.upper() for e in extensions))
    return RcptArgs(
        path=_rcpt_path(path_text, utf8),
        notify=_notify(params),
        orcpt=_orcpt(params, utf8),
        extra=_extra(params, _RCPT_FIELDS),
    )


def _split_arg(arg: str, prefix: str, usage: Reply, bad_path: Reply) -> tuple[str, Params]:
    """Split "FROM:<path> params" into the path text and the parsed parameters."""
    text = arg.lstrip(" ")
    if _upper(text[: len(prefix)]) != prefix:
        raise SMTPProtocolError(usage)
    try:
        path_text, tail = split_path(text[len(prefix) :].lstrip(" "))
    except AddressError as exc:
        raise SMTPProtocolError(_address_reply(bad_path, exc)) from None
    tail = tail.rstrip(" \t")
    if tail and not tail.startswith(" "):
        raise SMTPProtocolError(bad_path.with_text(f"{bad_path.text}: junk after '>'"))
    return path_text, _parse_params(tail)


def _parse_params(text: str) -> Params:
    """esmtp-param *(SP esmtp-param) (RFC 5321 §4.1.2); runs of spaces are tolerated."""
    params: Params = {}
    for item in text.split(" "):
        if not item:
            continue
        keyword, eq, value = item.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (eq and not _VALUE.fullmatch(value)):
            raise SMTPProtocolError(codes.PARAM_SYNTAX)
        keyword = keyword.upper()
        if keyword in params:
            raise SMTPProtocolError(codes.PARAM_SYNTAX.with_text(f"Duplicate {keyword} parameter"))
        params[keyword] = value if eq else None
    return params


def _check_advertised(
    params: Params, table: Mapping[str, tuple[str, ...]], exts: frozenset[str]
) -> None:
    for keyword in params:
        if exts.isdisjoint(table.get(keyword, ())):
            raise SMTPProtocolError(
                codes.UNRECOGNIZED_PARAM.with_text(f"{keyword} parameter not recognized here")
            )


def _path(text: str, utf8: bool, bad: Reply) -> Path:
    try:
        return parse_path(text, utf8=utf8)
    except AddressError as exc:
        if not utf8 and not text.isascii() and _is_utf8_path(text):
            raise SMTPProtocolError(codes.SMTPUTF8_REQUIRED) from None  # RFC 6531 §3.5
        raise SMTPProtocolError(_address_reply(bad, exc)) from None


def _is_utf8_path(text: str) -> bool:
    try:
        parse_path(text, utf8=True)
    except AddressError:
        return False
    return True


def _rcpt_path(text: str, utf8: bool) -> Path:
    if text.isascii() and text.lower() == "<postmaster>":
        return Path(Mailbox(text[1:-1], ""))  # RFC 5321 §4.1.1.3
    path = _path(text, utf8, codes.ADDRESS_SYNTAX)
    if path.is_null:
        raise SMTPProtocolError(_NULL_RCPT)
    return path


def _address_reply(reply: Reply, exc: AddressError) -> Reply:
    return reply.with_text(f"{reply.text}: {exc.reason}")


def _value(params: Params, keyword: str, bad: Reply) -> str | None:
    """The value of `keyword`, None if absent; `bad` if it is present without a value."""
    if keyword not in params:
        return None
    value = params[keyword]
    if value is None:
        raise SMTPProtocolError(bad)
    return value


def _smtputf8(params: Params) -> bool:
    if "SMTPUTF8" not in params:
        return False
    if params["SMTPUTF8"] is not None:
        raise SMTPProtocolError(_BAD_SMTPUTF8)  # RFC 6531 §3.4: no value
    return True


def _size(params: Params) -> int | None:
    value = _value(params, "SIZE", codes.SIZE_SYNTAX)
    if value is None:
        return None
    if not _SIZE.fullmatch(value):
        raise SMTPProtocolError(codes.SIZE_SYNTAX)
    return int(value)


def _body(params: Params, exts: frozenset[str]) -> str | None:
    value = _value(params, "BODY", codes.BAD_BODY_TYPE)
    if value is None:
        return None
    body = _upper(value)
    if body in _BODY_TYPES or (body == "BINARYMIME" and "BINARYMIME" in exts):
        return body
    raise SMTPProtocolError(codes.BAD_BODY_TYPE)


def _ret(params: Params) -> str | None:
    value = _value(params, "RET", _BAD_RET)
    if value is None:
        return None
    if _upper(value) not in _RET_TYPES:
        raise SMTPProtocolError(_BAD_RET)
    return _upper(value)


def _envid(params: Params) -> str | None:
    """RFC 3461 §4.4: at most 100 characters, printable US-ASCII once decoded."""
    value = _value(params, "ENVID", _BAD_ENVID)
    if value is None:
        return None
    envid = _decode_or(value, _BAD_ENVID)
    if len(value) > _MAX_ENVID or not _is_printable_ascii(envid):
        raise SMTPProtocolError(_BAD_ENVID)
    return envid


def _auth(params: Params) -> str | None:
    """RFC 4954 §5: AUTH=<addr-spec or "<>", xtext-encoded>; kept as decoded, controls refused."""
    value = _value(params, "AUTH", _BAD_AUTH)
    if value is None:
        return None
    auth = _decode_or(value, _BAD_AUTH)
    if not auth.isprintable():
        raise SMTPProtocolError(_BAD_AUTH)
    return auth


def _notify(params: Params) -> frozenset[str] | None:
    value = _value(params, "NOTIFY", _BAD_NOTIFY)
    if value is None:
        return None
    notify = frozenset(_upper(value).split(","))
    if notify == {"NEVER"} or notify <= _NOTIFY_TYPES:
        return notify
    raise SMTPProtocolError(_BAD_NOTIFY)


def _orcpt(params: Params, utf8: bool) -> tuple[str, str] | None:
    """RFC 3461 §4.2: addr-type ";" xtext; RFC 6533 §3 for addr-type "utf-8"."""
    value = _value(params, "ORCPT", _BAD_ORCPT)
    if value is None:
        return None
    addr_type, semi, encoded = value.partition(";")
    if not (semi and encoded and _ATOM.fullmatch(addr_type)) or len(value) > _MAX_ORCPT:
        raise SMTPProtocolError(_BAD_ORCPT)
    kind = addr_type.lower()
    if kind == "utf-8":
        address = _utf8_addr_decode(encoded, utf8)
        ok = address.isprintable()
    else:
        address = _decode_or(encoded, _BAD_ORCPT)
        ok = _is_printable_ascii(address)  # RFC 3461 §4.2: printable US-ASCII
    if not ok:
        raise SMTPProtocolError(_BAD_ORCPT)
    return kind, address


def _extra(params: Params, fields: frozenset[str]) -> Params:
    return {k: v for k, v in params.items() if k not in fields}


def _decode_or(value: str, bad: Reply) -> str:
    try:
        return xtext_decode(value)
    except ValueError:
        raise SMTPProtocolError(bad) from None


def _is_printable_ascii(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _upper(text: str) -> str:
    """ASCII-only upper case: "quıt" must not become "QUIT" (Unicode case mapping)."""
    return text.translate(_ASCII_UPPER)


# --- xtext ------------------------------------------------------------------------------------


def xtext_decode(s: str) -> str:
    """Decode RFC 3461 §4 xtext ("+XX" is one octet; lower-case hex is tolerated).

    The octets are read as UTF-8. Raises ValueError on malformed xtext or invalid UTF-8.
    """
    if not _XTEXT.fullmatch(s):
        raise ValueError("malformed xtext")
    first, *rest = s.split("+")
    octets = bytearray(first.encode("ascii"))
    for part in rest:  # the regex guarantees two hex digits after every "+"
        octets.append(int(part[:2], 16))
        octets += part[2:].encode("ascii")
    return octets.decode("utf-8")


def xtext_encode(s: str) -> str:
    """Encode as RFC 3461 §4 xtext: "+", "=", controls, space and non-ASCII become "+XX" octets.

    Raises ValueError (UnicodeEncodeError) for a lone surrogate.
    """
    return "".join(c if c in _XCHAR else _hex_octets(c) for c in s)


def _hex_octets(c: str) -> str:
    return "".join(f"+{b:02X}" for b in c.encode("utf-8"))


def _utf8_addr_decode(s: str, utf8: bool) -> str:
    """RFC 6533 §3 utf-8-addr-xtext / utf-8-addr-unitext: "\\x{HEX}" escapes; raw UTF-8 only
    when the transaction is SMTPUTF8. Other characters (even "+") are taken literally."""
    if (not utf8 and not s.isascii()) or "\\" in _UNICODE_ESCAPE.sub("", s):
        raise SMTPProtocolError(_BAD_ORCPT)
    try:
        return _UNICODE_ESCAPE.sub(lambda m: _code_point(m[1]), s)
    except ValueError:
        raise SMTPProtocolError(_BAD_ORCPT) from None


def _code_point(hex_digits: str) -> str:
    value = int(hex_digits, 16)
    if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
        raise ValueError("not a Unicode scalar value")
    return chr(value)


def _utf8_addr_encode(s: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext: everything but QCHAR as "\\x{HEX}" (always 7-bit safe)."""
    return "".join(c if c in _QCHAR else f"\\x{{{ord(c):X}}}" for c in s)


# --- formatting (SMTP client) -------------------------------------------------------------------


def format_mail_arg(args: MailArgs) -> str:
    """The MAIL argument for `args`, e.g. "FROM:<a@b.example> SIZE=100".

    Without SMTPUTF8 the path is written with A-labels (AddressError if it cannot be).
    """
    path = str(args.path) if args.smtputf8 else args.path.as_ascii()
    params: list[str] = [f"FROM:{path}"]
    params += [f"SIZE={args.size}"] if args.size is not None else []
    params += [f"BODY={args.body}"] if args.body is not None else []
    params += ["SMTPUTF8"] if args.smtputf8 else []
    params += [f"RET={args.ret}"] if args.ret is not None else []
    params += [f"ENVID={xtext_encode(args.envid)}"] if args.envid is not None else []
    params += [f"AUTH={xtext_encode(args.auth)}"] if args.auth is not None else []
    return " ".join(params + _format_extra(args.extra))


def format_rcpt_arg(args: RcptArgs, *, utf8: bool = False) -> str:
    """The RCPT argument for `args`; `utf8` says the transaction is SMTPUTF8 (else A-labels)."""
    path = str(args.path) if utf8 else args.path.as_ascii()
    params: list[str] = [f"TO:{path}"]
    if args.notify is not None:
        params.append("NOTIFY=" + ",".join(sorted(args.notify)))
    if args.orcpt is not None:
        kind, address = args.orcpt
        encode = _utf8_addr_encode if kind.lower() == "utf-8" else xtext_encode
        params.append(f"ORCPT={kind};{encode(address)}")
    return " ".join(params + _format_extra(args.extra))


def _format_extra(extra: Params) -> list[str]:
    return [k if v is None else f"{k}={v}" for k, v in extra.items()]
