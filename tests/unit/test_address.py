"""Table tests for homing.mail.address: the classic forms, the relay traps, every rejection."""

from __future__ import annotations

import pytest

from homing.mail.address import (
    AddressError,
    Mailbox,
    Path,
    parse_domain,
    parse_mailbox,
    parse_path,
    split_path,
)

# text, utf8, expected (local, domain) or None for the null path
VALID: list[tuple[str, bool, tuple[str, str] | None]] = [
    ("<user@example.com>", False, ("user", "example.com")),
    ("<User.Name+tag@Example.COM>", False, ("User.Name+tag", "example.com")),
    ("<>", False, None),
    ("<@a.example,@b.example:user@c.example>", False, ("user", "c.example")),
    ("<@a.example:user@c.example>", False, ("user", "c.example")),
    ('<"john doe"@example.com>', False, ("john doe", "example.com")),
    ('<"john"@example.com>', False, ("john", "example.com")),
    ('<"a\\"b\\\\c"@example.com>', False, ('a"b\\c', "example.com")),
    ('<"\\a"@example.com>', False, ("a", "example.com")),
    ('<".dot."@example.com>', False, (".dot.", "example.com")),
    ('<"a>b"@example.com>', False, ("a>b", "example.com")),
    ("<a@[192.0.2.1]>", False, ("a", "[192.0.2.1]")),
    ("<a@[IPv6:2001:db8::1]>", False, ("a", "[IPv6:2001:db8::1]")),
    ("<a@[ipv6:::1]>", False, ("a", "[ipv6:::1]")),
    ("<a@[IPv6:::ffff:192.0.2.1]>", False, ("a", "[IPv6:::ffff:192.0.2.1]")),
    ("<a@localhost>", False, ("a", "localhost")),
    ("<a@127.0.0.1>", False, ("a", "127.0.0.1")),  # a Domain of digit labels, not an IP
    ("<a@x--y.example>", False, ("a", "x--y.example")),
    ("<!#$%&'*+-/=?^_`{|}~@example.com>", False, ("!#$%&'*+-/=?^_`{|}~", "example.com")),
    ("<a@xn--bcher-kva.example>", False, ("a", "bücher.example")),
    ("<a@XN--BCHER-KVA.example>", False, ("a", "bücher.example")),
    ("<a@bücher.example>", True, ("a", "bücher.example")),
    ("<a@BÜCHER.Example>", True, ("a", "bücher.example")),
    ("<a@bu\u0308cher.example>", True, ("a", "bücher.example")),  # NFD -> NFC
    ("<用户@例え.jp>", True, ("用户", "例え.jp")),
    ("<Δοκιμή@παράδειγμα.δοκιμή>", True, ("Δοκιμή", "παράδειγμα.δοκιμή")),
    ('<"é è"@example.com>', True, ("é è", "example.com")),
    ("<pelé@[192.0.2.1]>", True, ("pelé", "[192.0.2.1]")),
    ("<" + "a" * 64 + "@example.com>", False, ("a" * 64, "example.com")),
]


@pytest.mark.parametrize(("text", "utf8", "expected"), VALID)
def test_valid_paths(text: str, utf8: bool, expected: tuple[str, str] | None) -> None:
    path = parse_path(text, utf8=utf8)
    if expected is None:
        assert path == Path(None)
        assert path.is_null
    else:
        assert path == Path(Mailbox(*expected))
        assert not path.is_null


# The relay traps: the domain is what follows the last "@" outside quotes, nothing else.
RELAY_TRAPS = [
    ("<user%other.example@local.example>", "user%other.example", "local.example"),
    ("<other.example!user@local.example>", "other.example!user", "local.example"),
    ('<"user@other.example"@local.example>', "user@other.example", "local.example"),
    ('<"user%other.example"@local.example>', "user%other.example", "local.example"),
    ("<@local.example:user@other.example>", "user", "other.example"),  # route ignored
    ("<@other.example:user@local.example>", "user", "local.example"),
    ('<"@"@local.example>', "@", "local.example"),
    ('<"a\\"@x"@local.example>', 'a"@x', "local.example"),
]


@pytest.mark.parametrize(("text", "local", "domain"), RELAY_TRAPS)
def test_relay_traps_keep_the_real_domain(text: str, local: str, domain: str) -> None:
    mailbox = parse_path(text).mailbox
    assert mailbox == Mailbox(local, domain)
    assert parse_path(f"<{mailbox}>") == Path(mailbox)


REJECTED = [
    ("user@example.com", "enclosed in <>"),
    ("<user@example.com", "enclosed in <>"),
    ("<user>", "missing '@'"),
    ("<@example.com>", "source route without ':'"),
    ("<user@>", "empty domain"),
    ("<user@example.com.>", "ends with a dot"),
    ("<user@.example.com>", "empty domain label"),
    ("<user@a..example>", "empty domain label"),
    ("<a..b@example.com>", "consecutive dots"),
    ("<.a@example.com>", "starts or ends with a dot"),
    ("<a.@example.com>", "starts or ends with a dot"),
    ('<""@example.com>', "empty local part"),
    ("<a\x01@example.com>", "control character"),
    ('<"a\x01"@example.com>', "control character"),
    ('<"a\\\x01"@example.com>', "bad quoted-pair"),
    ('<"a@example.com>', "unbalanced quotes"),
    ('<"a"b@example.com>', "missing '@' after the quoted"),
    ('<a"b"@example.com>', "not allowed"),
    ("<a b@example.com>", "space outside quotes"),
    ("< a@example.com>", "space outside quotes"),
    ("<a@example.com >", "domain label"),
    ("<a>b@example.com>", "not allowed"),
    ("<a@b@example.com>", "more than one '@'"),
    ("<a@-x.example>", "domain label"),
    ("<a@x-.example>", "domain label"),
    ("<a@x_y.example>", "domain label"),
    ("<a@" + "x" * 64 + ".example>", "domain label"),
    ("<" + "a" * 65 + "@example.com>", "local part longer than 64"),
    ('<"' + "a" * 63 + '"@example.com>', "local part longer than 64"),
    ("<a@" + ".".join(["x" * 60] * 5) + ">", "longer than 256"),
    ("<a@[192.0.2.1>", "bad address literal"),
    ("<a@[300.0.0.1]>", "bad IP address"),
    ("<a@[192.0.2]>", "bad IP address"),
    ("<a@[IPv6:fe80::1%eth0]>", "bad IP address"),
    ("<a@[IPv6:192.0.2.1]>", "bad IP address"),
    ("<a@[x-tag:foo]>", "unsupported address literal tag"),
    ("<a@[]>", "bad address literal"),
    ("<@[192.0.2.1]:a@example.com>", "domain label"),
    ("<a,@b:c@example.com>", "not allowed"),
    ("<@a.example,b.example:c@example.com>", "bad source route"),
    ("<@a.example:>", "missing '@'"),
    ("<é@example.com>", "needs SMTPUTF8"),
    ("<a@bücher.example>", "needs SMTPUTF8"),
]


@pytest.mark.parametrize(("text", "reason"), REJECTED)
def test_rejected_paths(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_path(text)
    assert reason in info.value.reason


UTF8_REJECTED = [
    ("<a@straße.de>", "IDNA normal form"),  # IDNA 2003 would map ß to ss
    ("<a@a\u200db.example>", "U+200D"),  # ZWJ
    ("<a@xn--ls8h.example>", "U+1F4A9"),  # a symbol, refused by IDNA 2008
    ("<a@\U0001f4a9.example>", "U+1F4A9"),
    ("<a@\u0301a.example>", "combining mark"),
    ("<a@ab--ü.example>", "misplaced hyphen"),
    ("<a@-ü.example>", "misplaced hyphen"),
    ("<a@xn--zz.example>", "A-label"),
    ("<a@xn--abc.example>", "A-label"),
    ("<a@\u212a.example>", "internationalised"),  # Kelvin sign lower-cases to ASCII "k"
    ("<a\u00a0b@example.com>", "U+00A0"),  # a space outside quotes
    ("<a\u2028@example.com>", "U+2028"),
    ("<a\udcff@example.com>", "U+DCFF"),  # an undecodable byte, surrogate-escaped
    ("<a\u0085@example.com>", "U+0085"),  # C1 control
    ("<a@例え。jp>", "U+3002"),  # ideographic full stop is not a label separator here
]


@pytest.mark.parametrize(("text", "reason"), UTF8_REJECTED)
def test_rejected_utf8_paths(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_path(text, utf8=True)
    assert reason in info.value.reason


def test_reasons_never_echo_unsafe_characters() -> None:
    for text in ["<a\r\n@x>", '<"a\r\n"@x>', "<a@x\r\n.y>", "<a\x00@x>"]:
        with pytest.raises(AddressError) as info:
            parse_path(text)
        assert info.value.reason.isprintable() and info.value.reason.isascii()


def test_mailbox_str_quotes_only_when_needed() -> None:
    assert str(Mailbox("user", "example.com")) == "user@example.com"
    assert str(Mailbox("john doe", "example.com")) == '"john doe"@example.com'
    assert str(Mailbox('a"b\\c', "x")) == '"a\\"b\\\\c"@x'
    assert str(Mailbox(".a", "x")) == '".a"@x'
    assert str(Mailbox("a..b", "x")) == '"a..b"@x'
    assert str(Mailbox("user@other", "x")) == '"user@other"@x'
    assert str(Mailbox("pelé", "bücher.example")) == "pelé@bücher.example"
    assert str(Mailbox("Postmaster", "")) == "Postmaster"
    assert str(Path(None)) == "<>"
    assert str(Path(Mailbox("a", "b"))) == "<a@b>"


def test_ascii_forms() -> None:
    mailbox = Mailbox("a", "bücher.example")
    assert mailbox.ascii_domain == "xn--bcher-kva.example"
    assert mailbox.as_ascii() == "a@xn--bcher-kva.example"
    assert Path(mailbox).as_ascii() == "<a@xn--bcher-kva.example>"
    assert Path(None).as_ascii() == "<>"
    assert Mailbox("a", "[IPv6:::1]").ascii_domain == "[IPv6:::1]"
    assert Mailbox("a", "example.com").ascii_domain == "example.com"
    with pytest.raises(AddressError):
        Mailbox("pelé", "example.com").as_ascii()


def test_is_utf8_and_key() -> None:
    assert not Mailbox("a", "example.com").is_utf8
    assert Mailbox("pelé", "example.com").is_utf8
    assert Mailbox("a", "bücher.example").is_utf8
    assert Mailbox("John.Doe", "example.com").key() == "john.doe@example.com"
    assert Mailbox("Postmaster", "").key() == "postmaster@"


def test_a_label_and_u_label_give_one_key() -> None:
    a = parse_path("<Kim@xn--bcher-kva.example>")
    u = parse_path("<kim@BÜCHER.example>", utf8=True)
    assert a.mailbox is not None and u.mailbox is not None
    assert a.mailbox.key() == u.mailbox.key() == "kim@bücher.example"


def test_parse_mailbox() -> None:
    assert parse_mailbox("Kim@Example.COM") == Mailbox("Kim", "example.com")
    assert parse_mailbox('"a b"@x') == Mailbox("a b", "x")
    assert parse_mailbox("pelé@bücher.example") == Mailbox("pelé", "bücher.example")
    for bad in ["<a@b>", "a", "a@", "@b", "a@b c", " a@b"]:
        with pytest.raises(AddressError):
            parse_mailbox(bad)
    with pytest.raises(AddressError, match="SMTPUTF8"):
        parse_mailbox("pelé@x", utf8=False)
    with pytest.raises(AddressError, match="254"):
        parse_mailbox("a@" + ".".join(["x" * 63] * 4))


def test_parse_domain() -> None:
    assert parse_domain("Mail.Example.COM") == "mail.example.com"
    assert parse_domain("xn--bcher-kva.example") == "bücher.example"
    assert parse_domain("BÜCHER.example") == "bücher.example"
    assert parse_domain("[192.0.2.1]") == "[192.0.2.1]"
    assert parse_domain("[IPv6:2001:DB8::1]") == "[IPv6:2001:DB8::1]"  # as written
    for bad in ["", ".", "a.", "a..b", "-a", "a_b", "a b", "a@b", "[1.2.3.4"]:
        with pytest.raises(AddressError):
            parse_domain(bad)
    with pytest.raises(AddressError, match="SMTPUTF8"):
        parse_domain("bücher.example", utf8=False)


def test_domain_length_limit() -> None:
    ok = ".".join(["x" * 63] * 3 + ["x" * 61])  # 253 octets
    assert parse_domain(ok) == ok
    with pytest.raises(AddressError):
        parse_domain(".".join(["x" * 63] * 4 + ["xx"]))  # 256 octets


def test_split_path() -> None:
    assert split_path("<a@b> SIZE=1") == ("<a@b>", " SIZE=1")
    assert split_path("<>") == ("<>", "")
    assert split_path('<"a>b"@c> X') == ('<"a>b"@c>', " X")
    assert split_path('<"a\\">"@c>') == ('<"a\\">"@c>', "")
    assert split_path("<a>b@c>") == ("<a>", "b@c>")
    for bad in ["a@b", "<a@b", '<"a>', ""]:
        with pytest.raises(AddressError):
            split_path(bad)
