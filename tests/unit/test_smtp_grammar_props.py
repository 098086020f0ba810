"""Property tests for homing.proto.smtp.grammar.

Invariants:
- round trip: parse(format(x)) == x for MailArgs and RcptArgs (with and without SMTPUTF8),
  and xtext_decode(xtext_encode(s)) == s for any string, the encoding being pure xtext;
- robustness: for any input, every parse_* returns or raises SMTPProtocolError (never another
  exception), and the reply it carries is a single line of one of the expected codes;
- a command's argument is the tail of the line it came from, byte for byte.
"""

from __future__ import annotations

import re
import string

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from homing.mail.address import Mailbox, Path
from homing.proto.smtp.errors import SMTPProtocolError
from homing.proto.smtp.grammar import (
    MailArgs,
    RcptArgs,
    format_mail_arg,
    format_rcpt_arg,
    parse_bdat_arg,
    parse_command,
    parse_helo_arg,
    parse_mail_arg,
    parse_rcpt_arg,
    xtext_decode,
    xtext_encode,
)
from tests.unit.test_address_props import mailboxes

EXTENSIONS = frozenset(
    {"SIZE", "8BITMIME", "BINARYMIME", "SMTPUTF8", "DSN", "AUTH", "REQUIRETLS", "MT-PRIORITY"}
    | {"RRVS", "DELIVERBY", "FUTURERELEASE"}
)
XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
PRINTABLE_ASCII = string.ascii_letters + string.digits + string.punctuation + " "
ESMTP_VALUE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "=")

values = st.text(ESMTP_VALUE, min_size=1, max_size=10)
printable = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)


def paths(utf8: bool) -> st.SearchStrategy[Path]:
    """Non-null paths writable in a transaction with (or without) SMTPUTF8."""
    return mailboxes(utf8=True).filter(lambda m: utf8 or m.local.isascii()).map(Path)


def params(keywords: list[str]) -> st.SearchStrategy[dict[str, str | None]]:
    return st.dictionaries(st.sampled_from(keywords), st.none() | values)


@st.composite
def mail_args(draw: st.DrawFn) -> MailArgs:
    smtputf8 = draw(st.booleans())
    return MailArgs(
        path=draw(st.just(Path(None)) | paths(smtputf8)),
        size=draw(st.none() | st.integers(0, 10**20 - 1)),
        body=draw(st.sampled_from([None, "7BIT", "8BITMIME", "BINARYMIME"])),
        smtputf8=smtputf8,
        ret=draw(st.sampled_from([None, "FULL", "HDRS"])),
        envid=draw(st.none() | st.text(PRINTABLE_ASCII, min_size=1, max_size=30)),
        auth=draw(st.none() | printable.filter(lambda s: bool(s) and s.isprintable())),
        extra=draw(params(["REQUIRETLS", "MT-PRIORITY", "BY"])),
    )


notifies = st.one_of(
    st.none(),
    st.just(frozenset({"NEVER"})),
    st.frozensets(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), min_size=1),
)
orcpts = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(["rfc822", "x400"]), st.text(PRINTABLE_ASCII, min_size=1, max_size=60)
    ),
    st.tuples(st.just("utf-8"), printable.filter(lambda s: bool(s) and s.isprintable())),
)


@given(mail_args())
@settings(max_examples=200)
def test_mail_args_round_trip(args: MailArgs) -> None:
    assert parse_mail_arg(format_mail_arg(args), extensions=EXTENSIONS) == args


@given(st.booleans(), st.data())
@settings(max_examples=200)
def test_rcpt_args_round_trip(utf8: bool, data: st.DataObject) -> None:
    path = data.draw(paths(utf8) | st.just(postmaster()))
    args = RcptArgs(path, data.draw(notifies), data.draw(orcpts), data.draw(params(["RRVS"])))
    text = format_rcpt_arg(args, utf8=utf8)
    assert parse_rcpt_arg(text, extensions=EXTENSIONS, utf8=utf8) == args


def postmaster() -> Path:
    return Path(Mailbox("Postmaster", ""))


@given(st.text())
def test_xtext_round_trips(text: str) -> None:
    encoded = xtext_encode(text)
    assert XTEXT.fullmatch(encoded)
    assert xtext_decode(encoded) == text


ERROR_CODES = {500, 501, 553, 555}
any_text = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
)
ARG_TOKENS = [
    *'<>@"\\ =+;,aé', "SIZE", "BODY", "NOTIFY", "ORCPT", "ENVID", "AUTH", "RET", "SMTPUTF8",
    "=1", "=NEVER", "rfc822;", "utf-8;", "\\x{41}", "+2B", "\x00", "\udcff", "postmaster",
    "x.example", "[IPv6:::1]",
]  # fmt: skip
prefixed = st.tuples(
    st.sampled_from(["FROM:", "TO:", "from: ", "TO:<", "FROM:<>", "TO:<a@b> ", "FROM:<a@b> "]),
    st.lists(st.sampled_from(ARG_TOKENS), max_size=12).map("".join),
).map("".join)


def expect_protocol_error_only(call: object, *args: object, **kwargs: object) -> None:
    assert callable(call)
    try:
        call(*args, **kwargs)
    except SMTPProtocolError as exc:
        assert exc.reply.code in ERROR_CODES
        assert "\r" not in exc.reply.text and "\n" not in exc.reply.text


@given(st.one_of(any_text, prefixed), st.booleans())
@settings(max_examples=1000)
def test_arguments_raise_only_protocol_errors(arg: str, utf8: bool) -> None:
    for exts in (EXTENSIONS, frozenset[str]()):
        expect_protocol_error_only(parse_mail_arg, arg, extensions=exts)
        expect_protocol_error_only(parse_rcpt_arg, arg, extensions=exts, utf8=utf8)
    expect_protocol_error_only(parse_helo_arg, arg)
    expect_protocol_error_only(parse_bdat_arg, arg)


@given(st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
@settings(max_examples=500)
def test_command_arg_is_the_tail_of_the_line(line: bytes) -> None:
    try:
        cmd = parse_command(line)
    except SMTPProtocolError as exc:
        assert exc.reply.code == 500
        assert line.strip(b" \t") == b"" or line[:1] in (b" ", b"\t")
        return
    assert cmd.verb and " " not in cmd.verb
    assert line.rstrip(b" \t").endswith(cmd.arg.encode("utf-8", "surrogateescape"))


@given(any_text)
def test_helo_result_is_a_stripped_token(arg: str) -> None:
    try:
        name = parse_helo_arg(arg)
    except SMTPProtocolError:
        return
    assume(name)
    assert name == arg.strip(" \t") and name.isprintable() and " " not in name
