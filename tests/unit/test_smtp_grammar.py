"""Table tests for homing.proto.smtp.grammar: every form, and every error with its exact reply."""

from __future__ import annotations

import pytest

from homing.mail.address import AddressError, Mailbox, Path
from homing.mail.reply import Reply
from homing.proto.smtp import codes
from homing.proto.smtp.errors import SMTPProtocolError
from homing.proto.smtp.grammar import (
    Command,
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

ALL = frozenset({"SIZE", "8BITMIME", "SMTPUTF8", "DSN", "AUTH", "PIPELINING", "CHUNKING"})
NONE: frozenset[str] = frozenset()


def reply_of(call: object, *args: object, **kwargs: object) -> tuple[int, str]:
    assert callable(call)
    with pytest.raises(SMTPProtocolError) as info:
        call(*args, **kwargs)
    reply = info.value.reply
    assert "\r" not in reply.text and "\n" not in reply.text
    return reply.code, reply.enhanced


def mailbox_path(local: str, domain: str) -> Path:
    return Path(Mailbox(local, domain))


# --- command lines ----------------------------------------------------------------------------

COMMANDS = [
    (b"MAIL FROM:<a@b.example>", "MAIL", "FROM:<a@b.example>"),
    (b"ehlo client.example", "EHLO", "client.example"),
    (b"Rcpt TO:<a@b>", "RCPT", "TO:<a@b>"),
    (b"QUIT", "QUIT", ""),
    (b"NOOP   ", "NOOP", ""),
    (b"DATA\t", "DATA", ""),
    (b"RSET \t ", "RSET", ""),
    (b"MAIL  FROM:<a@b>", "MAIL", "FROM:<a@b>"),
    (b"XFOO bar baz", "XFOO", "bar baz"),
    (b"AUTH PLAIN AGEAYg==", "AUTH", "PLAIN AGEAYg=="),
    (b"BDAT 100 LAST", "BDAT", "100 LAST"),
    (b"VRFY \xc3\xa9", "VRFY", "é"),
    (b"VRFY \xff\xfe", "VRFY", "\udcff\udcfe"),  # undecodable bytes survive
    (b"qu\xc4\xb1t", "QU\u0131T", ""),  # no Unicode case mapping: "quıt" is not QUIT
]


@pytest.mark.parametrize(("line", "verb", "arg"), COMMANDS)
def test_parse_command(line: bytes, verb: str, arg: str) -> None:
    assert parse_command(line) == Command(verb, arg)


@pytest.mark.parametrize("line", [b"", b" ", b"   ", b"\t", b" MAIL FROM:<>", b"\tNOOP"])
def test_parse_command_errors(line: bytes) -> None:
    assert reply_of(parse_command, line) == (500, "5.5.2")


def test_command_arg_bytes_round_trip() -> None:
    line = b"RCPT TO:<\xe9\x80@x>"
    arg = parse_command(line).arg
    assert arg.encode("utf-8", "surrogateescape") == b"TO:<\xe9\x80@x>"


# --- HELO / EHLO --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "name"),
    [
        ("mail.example.com", "mail.example.com"),
        ("[192.0.2.1]", "[192.0.2.1]"),
        ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
        ("host_name.example.", "host_name.example."),  # liberal, like real servers
        ("  padded.example \t", "padded.example"),
        ("localhost", "localhost"),
        ("bücher.example", "bücher.example"),
    ],
)
def test_parse_helo_arg(arg: str, name: str) -> None:
    assert parse_helo_arg(arg) == name


@pytest.mark.parametrize("arg", ["", "   ", "two words", "a\tb", "a\x00b", "a\x7fb", "a\udcffb"])
def test_parse_helo_arg_errors(arg: str) -> None:
    assert reply_of(parse_helo_arg, arg) == (codes.HELO_SYNTAX.code, codes.HELO_SYNTAX.enhanced)
    assert codes.HELO_SYNTAX.code == 501 and codes.HELO_SYNTAX.enhanced == "5.5.4"


# --- BDAT -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("1000", (1000, False)),
        ("1000 LAST", (1000, True)),
        ("0 last", (0, True)),
        ("  5   Last  ", (5, True)),
        ("9" * 20, (10**20 - 1, False)),
    ],
)
def test_parse_bdat_arg(arg: str, expected: tuple[int, bool]) -> None:
    assert parse_bdat_arg(arg) == expected


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "LAST",
        "-1",
        "+1",
        "1 2",
        "1 LAST x",
        "1e3",
        "0x10",
        "١٢",
        "1" * 21,
        "1,000",
        "1 LA\u017fT",
    ],
)
def test_parse_bdat_arg_errors(arg: str) -> None:
    assert reply_of(parse_bdat_arg, arg) == (501, "5.5.4")


# --- MAIL -----------------------------------------------------------------------------------------

MAIL_OK: list[tuple[str, frozenset[str], MailArgs]] = [
    ("FROM:<a@b.example>", NONE, MailArgs(mailbox_path("a", "b.example"))),
    ("from:<A@B.EXAMPLE>", NONE, MailArgs(mailbox_path("A", "b.example"))),
    ("FROM: <a@b>", NONE, MailArgs(mailbox_path("a", "b"))),  # space after colon, like Postfix
    ("FROM:<>", NONE, MailArgs(Path(None))),
    ("FROM:<@r.example:a@b>", NONE, MailArgs(mailbox_path("a", "b"))),
    ("FROM:<a@b>   SIZE=5  ", ALL, MailArgs(mailbox_path("a", "b"), size=5)),
    ("FROM:<a@b> SIZE=" + "0" * 20, ALL, MailArgs(mailbox_path("a", "b"), size=0)),
    ("FROM:<a@b> size=100 body=8bitmime", ALL, MailArgs(mailbox_path("a", "b"), 100, "8BITMIME")),
    ("FROM:<a@b> BODY=7BIT", ALL, MailArgs(mailbox_path("a", "b"), body="7BIT")),
    (
        "FROM:<a@b> BODY=BINARYMIME",
        frozenset({"BINARYMIME"}),
        MailArgs(mailbox_path("a", "b"), body="BINARYMIME"),
    ),
    ("FROM:<é@b> SMTPUTF8", ALL, MailArgs(mailbox_path("é", "b"), smtputf8=True)),
    (
        "FROM:<a@bücher.example> SMTPUTF8",
        ALL,
        MailArgs(mailbox_path("a", "bücher.example"), smtputf8=True),
    ),
    ("FROM:<a@xn--bcher-kva.example>", NONE, MailArgs(mailbox_path("a", "bücher.example"))),
    (
        "FROM:<> RET=hdrs ENVID=QQ+2B1 AUTH=<>",
        ALL,
        MailArgs(Path(None), ret="HDRS", envid="QQ+1", auth="<>"),
    ),
    ("FROM:<a@b> RET=FULL", ALL, MailArgs(mailbox_path("a", "b"), ret="FULL")),
    ("FROM:<a@b> AUTH=u+2Bx@b", ALL, MailArgs(mailbox_path("a", "b"), auth="u+x@b")),
    ("FROM:<a@b> ENVID=" + "x" * 100, ALL, MailArgs(mailbox_path("a", "b"), envid="x" * 100)),
    (
        "FROM:<a@b> REQUIRETLS MT-PRIORITY=3 HOLDFOR=60 BY=120;R",
        frozenset({"REQUIRETLS", "MT-PRIORITY", "FUTURERELEASE", "DELIVERBY"}),
        MailArgs(
            mailbox_path("a", "b"),
            extra={"REQUIRETLS": None, "MT-PRIORITY": "3", "HOLDFOR": "60", "BY": "120;R"},
        ),
    ),
    (
        "FROM:<a@b> requiretls",
        frozenset({"requiretls"}),
        MailArgs(mailbox_path("a", "b"), extra={"REQUIRETLS": None}),
    ),
]


@pytest.mark.parametrize(("arg", "exts", "expected"), MAIL_OK)
def test_parse_mail_arg(arg: str, exts: frozenset[str], expected: MailArgs) -> None:
    assert parse_mail_arg(arg, extensions=exts) == expected


MAIL_ERRORS: list[tuple[str, frozenset[str], tuple[int, str]]] = [
    # syntax of the command itself: 501 5.5.4
    ("", ALL, (501, "5.5.4")),
    ("FROM<a@b>", ALL, (501, "5.5.4")),
    ("FROM :<a@b>", ALL, (501, "5.5.4")),
    ("TO:<a@b>", ALL, (501, "5.5.4")),
    # the address: 501 5.1.7
    ("FROM:", ALL, (501, "5.1.7")),
    ("FROM:a@b", ALL, (501, "5.1.7")),
    ("FROM:<a@b", ALL, (501, "5.1.7")),
    ("FROM:<a b@c>", ALL, (501, "5.1.7")),
    ("FROM:<a@b>junk", ALL, (501, "5.1.7")),
    ("FROM:<a@b@c>", ALL, (501, "5.1.7")),
    ("FROM:<a..b@c>", ALL, (501, "5.1.7")),
    ("FROM:<a@c.>", ALL, (501, "5.1.7")),
    ('FROM:<"a@c>', ALL, (501, "5.1.7")),
    ("FROM:<é..x@b>", ALL, (501, "5.1.7")),  # not ASCII, but bad even with SMTPUTF8
    ("FROM:<a\udcff@b>", ALL, (501, "5.1.7")),  # undecodable byte
    ("FROM:<a\udcff@b> SMTPUTF8", ALL, (501, "5.1.7")),
    # non-ASCII without SMTPUTF8: 553 5.6.7
    ("FROM:<é@b.example>", ALL, (553, "5.6.7")),
    ("FROM:<a@bücher.example>", ALL, (553, "5.6.7")),
    ("FROM:<é@b.example>", NONE, (553, "5.6.7")),
    # parameters: syntax 501 5.5.4, not advertised 555 5.5.4
    ("FROM:<a@b> =x", ALL, (501, "5.5.4")),
    ("FROM:<a@b> -X", ALL, (501, "5.5.4")),
    ("FROM:<a@b> X=a=b", ALL, (501, "5.5.4")),
    ("FROM:<a@b> X=\x01", ALL, (501, "5.5.4")),
    ("FROM:<a@b> SIZE=", ALL, (501, "5.5.4")),
    ("FROM:<a@b>\tSIZE=1", ALL, (501, "5.1.7")),
    ("FROM:<a@b> SIZE=1 size=2", ALL, (501, "5.5.4")),
    ("FROM:<a@b> SIZE", ALL, (501, "5.5.4")),
    ("FROM:<a@b> SIZE=abc", ALL, (501, "5.5.4")),
    ("FROM:<a@b> SIZE=-1", ALL, (501, "5.5.4")),
    ("FROM:<a@b> SIZE=1" + "0" * 20, ALL, (501, "5.5.4")),
    ("FROM:<a@b> SIZE=١", ALL, (501, "5.5.4")),
    ("FROM:<a@b> BODY=9BIT", ALL, (501, "5.5.4")),
    ("FROM:<a@b> BODY", ALL, (501, "5.5.4")),
    ("FROM:<a@b> BODY=BINARYMIME", ALL, (501, "5.5.4")),
    ("FROM:<a@b> BODY=7B\u0131T", ALL, (501, "5.5.4")),
    ("FROM:<a@b> SMTPUTF8=yes", ALL, (501, "5.5.4")),
    ("FROM:<a@b> RET=ALL", ALL, (501, "5.5.4")),
    ("FROM:<a@b> RET", ALL, (501, "5.5.4")),
    ("FROM:<a@b> ENVID=a+ZZ", ALL, (501, "5.5.4")),
    ("FROM:<a@b> ENVID=a+0Ab", ALL, (501, "5.5.4")),
    ("FROM:<a@b> ENVID=+C3+A9", ALL, (501, "5.5.4")),
    ("FROM:<a@b> ENVID=" + "x" * 101, ALL, (501, "5.5.4")),
    ("FROM:<a@b> AUTH=a+0D+0A", ALL, (501, "5.5.4")),
    ("FROM:<a@b> AUTH=+FF", ALL, (501, "5.5.4")),
    ("FROM:<a@b> SIZE=1", NONE, (555, "5.5.4")),  # after HELO nothing is advertised
    ("FROM:<a@b> BODY=8BITMIME", frozenset({"SIZE"}), (555, "5.5.4")),
    ("FROM:<a@b> SMTPUTF8", frozenset({"8BITMIME"}), (555, "5.5.4")),
    ("FROM:<a@b> RET=FULL", frozenset({"SIZE"}), (555, "5.5.4")),
    ("FROM:<a@b> AUTH=<>", frozenset({"SIZE"}), (555, "5.5.4")),
    ("FROM:<a@b> FOO", ALL, (555, "5.5.4")),
    ("FROM:<a@b> NOTIFY=NEVER", ALL, (555, "5.5.4")),  # an RCPT parameter
    ("FROM:<a@b> PIPELINING", ALL, (555, "5.5.4")),  # advertised, but not a parameter
    ("FROM:<a@b> REQUIRETLS", ALL, (555, "5.5.4")),
    ("FROM:<a@b> HOLDFOR=10", frozenset({"HOLDFOR"}), (555, "5.5.4")),  # FUTURERELEASE
]


@pytest.mark.parametrize(("arg", "exts", "expected"), MAIL_ERRORS)
def test_parse_mail_arg_errors(arg: str, exts: frozenset[str], expected: tuple[int, str]) -> None:
    assert reply_of(parse_mail_arg, arg, extensions=exts) == expected


def test_named_replies_are_used() -> None:
    def reply(arg: str, exts: frozenset[str] = ALL) -> Reply:
        with pytest.raises(SMTPProtocolError) as info:
            parse_mail_arg(arg, extensions=exts)
        return info.value.reply

    assert reply("FROM:<a@b> SIZE=x") == codes.SIZE_SYNTAX
    assert reply("FROM:<a@b> BODY=x") == codes.BAD_BODY_TYPE
    assert reply("FROM:<é@b>") == codes.SMTPUTF8_REQUIRED
    assert reply("FROM:<a@b> SIZE=1", NONE).code == codes.UNRECOGNIZED_PARAM.code
    err = reply("FROM:<a b@c>")
    assert err.code == codes.SENDER_SYNTAX.code and "space outside quotes" in err.text


# --- RCPT -----------------------------------------------------------------------------------------

RCPT_OK: list[tuple[str, bool, RcptArgs]] = [
    ("TO:<a@b.example>", False, RcptArgs(mailbox_path("a", "b.example"))),
    ("to: <a@b>", False, RcptArgs(mailbox_path("a", "b"))),
    ("TO:<Postmaster>", False, RcptArgs(mailbox_path("Postmaster", ""))),
    ("TO:<POSTMASTER>", False, RcptArgs(mailbox_path("POSTMASTER", ""))),
    ("TO:<postmaster@b.example>", False, RcptArgs(mailbox_path("postmaster", "b.example"))),
    ("TO:<@r.example,@s.example:a@b>", False, RcptArgs(mailbox_path("a", "b"))),
    ("TO:<user%other@b>", False, RcptArgs(mailbox_path("user%other", "b"))),
    ("TO:<é@b>", True, RcptArgs(mailbox_path("é", "b"))),
    ("TO:<a@b> NOTIFY=never", False, RcptArgs(mailbox_path("a", "b"), frozenset({"NEVER"}))),
    (
        "TO:<a@b> NOTIFY=success,DELAY",
        False,
        RcptArgs(mailbox_path("a", "b"), frozenset({"SUCCESS", "DELAY"})),
    ),
    (
        "TO:<a@b> NOTIFY=FAILURE ORCPT=rfc822;a+2Bb@c",
        False,
        RcptArgs(mailbox_path("a", "b"), frozenset({"FAILURE"}), ("rfc822", "a+b@c")),
    ),
    ("TO:<a@b> ORCPT=RFC822;x@y", False, RcptArgs(mailbox_path("a", "b"), orcpt=("rfc822", "x@y"))),
    (
        "TO:<a@b> ORCPT=utf-8;\\x{E9}+x@c",
        False,
        RcptArgs(mailbox_path("a", "b"), orcpt=("utf-8", "é+x@c")),
    ),
    ("TO:<a@b> ORCPT=UTF-8;é@c", True, RcptArgs(mailbox_path("a", "b"), orcpt=("utf-8", "é@c"))),
    (
        "TO:<a@b> rrvs=2014-04-03T23:01:00Z",
        False,
        RcptArgs(mailbox_path("a", "b"), extra={"RRVS": "2014-04-03T23:01:00Z"}),
    ),
]


@pytest.mark.parametrize(("arg", "utf8", "expected"), RCPT_OK)
def test_parse_rcpt_arg(arg: str, utf8: bool, expected: RcptArgs) -> None:
    exts = ALL | {"RRVS"}
    assert parse_rcpt_arg(arg, extensions=exts, utf8=utf8) == expected


RCPT_ERRORS: list[tuple[str, frozenset[str], bool, tuple[int, str]]] = [
    ("", ALL, False, (501, "5.5.4")),
    ("FROM:<a@b>", ALL, False, (501, "5.5.4")),
    ("TO:<>", ALL, False, (501, "5.1.3")),
    ("TO:a@b", ALL, False, (501, "5.1.3")),
    ("TO:<a b@c>", ALL, False, (501, "5.1.3")),
    ("TO:<Postmaster@>", ALL, False, (501, "5.1.3")),
    ("TO:<@r.example:>", ALL, False, (501, "5.1.3")),
    ("TO:<é@b>", ALL, False, (553, "5.6.7")),
    ("TO:<a@b> NOTIFY=NEVER,SUCCESS", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> NOTIFY=", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> NOTIFY", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> NOTIFY=SUCCESS,,DELAY", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> NOTIFY=SOMETIMES", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=a@c", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=rfc822;", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=;a@c", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=rfc822;a+0Ab", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=rfc822;+C3+A9", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=rfc822;a+G0", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=rfc822;" + "x" * 500, ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=utf-8;é@c", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=utf-8;\\x{D800}", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=utf-8;\\x{110000}", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=utf-8;\\x{A}", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> ORCPT=utf-8;a\\b", ALL, False, (501, "5.5.4")),
    ("TO:<a@b> SIZE=1", ALL, False, (555, "5.5.4")),  # a MAIL parameter
    ("TO:<a@b> NOTIFY=NEVER", frozenset({"SIZE"}), False, (555, "5.5.4")),
    ("TO:<a@b> ORCPT=rfc822;a@b", NONE, False, (555, "5.5.4")),
    ("TO:<a@b> X", ALL, False, (555, "5.5.4")),
]


@pytest.mark.parametrize(("arg", "exts", "utf8", "expected"), RCPT_ERRORS)
def test_parse_rcpt_arg_errors(
    arg: str, exts: frozenset[str], utf8: bool, expected: tuple[int, str]
) -> None:
    assert reply_of(parse_rcpt_arg, arg, extensions=exts, utf8=utf8) == expected


# --- xtext ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("", ""),
        ("abc", "abc"),
        ("a+2Bb", "a+b"),
        ("+2b+3d", "+="),
        ("a\\b", "a\\b"),
        ("+C3+A9", "é"),
    ],
)
def test_xtext_decode(encoded: str, decoded: str) -> None:
    assert xtext_decode(encoded) == decoded


@pytest.mark.parametrize("bad", ["+", "+2", "+GG", "a=b", "a b", "é", "+FF", "\x01", "+C3"])
def test_xtext_decode_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        xtext_decode(bad)


def test_xtext_encode() -> None:
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext_encode("é\\~!") == "+C3+A9\\~!"
    assert xtext_encode("\r\n") == "+0D+0A"


# --- formatting -----------------------------------------------------------------------------------


def test_format_mail_arg() -> None:
    args = MailArgs(mailbox_path("a", "bücher.example"), 10, "8BITMIME", False, "HDRS", "x y", "<>")
    text = "FROM:<a@xn--bcher-kva.example> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=x+20y AUTH=<>"
    assert format_mail_arg(args) == text
    assert parse_mail_arg(text, extensions=ALL) == args
    utf8 = MailArgs(mailbox_path("é", "bücher.example"), smtputf8=True, extra={"REQUIRETLS": None})
    assert format_mail_arg(utf8) == "FROM:<é@bücher.example> SMTPUTF8 REQUIRETLS"
    assert format_mail_arg(MailArgs(Path(None))) == "FROM:<>"


def test_format_mail_arg_cannot_downgrade_utf8_local_part() -> None:
    with pytest.raises(AddressError):
        format_mail_arg(MailArgs(mailbox_path("é", "b.example")))


def test_format_rcpt_arg() -> None:
    args = RcptArgs(
        mailbox_path("a", "bücher.example"), frozenset({"SUCCESS", "FAILURE"}), ("rfc822", "a+b@c")
    )
    text = "TO:<a@xn--bcher-kva.example> NOTIFY=FAILURE,SUCCESS ORCPT=rfc822;a+2Bb@c"
    assert format_rcpt_arg(args) == text
    assert format_rcpt_arg(args, utf8=True).startswith("TO:<a@bücher.example> ")
    utf8 = RcptArgs(mailbox_path("a", "b"), orcpt=("utf-8", "é+=\\x@c"))
    assert format_rcpt_arg(utf8) == "TO:<a@b> ORCPT=utf-8;\\x{E9}\\x{2B}\\x{3D}\\x{5C}x@c"
    assert parse_rcpt_arg(format_rcpt_arg(utf8), extensions=ALL, utf8=False) == utf8
    assert format_rcpt_arg(RcptArgs(mailbox_path("Postmaster", ""))) == "TO:<Postmaster>"
