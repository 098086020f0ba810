"""From-header checks and RFC 6409 fix-ups for submitted mail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homing.mail.headers import HeaderError, add_header_fields, from_addresses, missing_fixups


def msg(*headers: str) -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\nbody\r\n").encode()


@pytest.mark.parametrize(
    ("header", "addresses"),
    [
        ("From: alice@dom.test", ["alice@dom.test"]),
        ("From: Alice <alice@DOM.test>", ["alice@dom.test"]),
        ("From: <alice@dom.test> (comment)", ["alice@dom.test"]),
        ('From: "Alice Smith" <alice@dom.test>', ["alice@dom.test"]),
        ('From: "alice@dom.test" <alice@dom.test>', ["alice@dom.test"]),
        ("From: alice@dom.test, bob@dom.test", ["alice@dom.test", "bob@dom.test"]),
        ("From: =?utf-8?q?Al=C3=AFce?= <alice@dom.test>", ["alice@dom.test"]),
    ],
)
def test_unambiguous_from(header: str, addresses: list[str]) -> None:
    assert from_addresses(msg(header, "Subject: x")) == addresses


@pytest.mark.parametrize(
    "headers",
    [
        ("From: alice@dom.test <bob@dom.test>",),
        ('From: "alice@dom.test" <bob@dom.test>',),
        ("From: =?utf-8?q?alice=40dom.test?= <bob@dom.test>",),
        ("From: alice@dom.test", "From: bob@dom.test"),
        ("Subject: no from",),
        ("From: undisclosed:;",),
        ("From: ",),
    ],
)
def test_ambiguous_or_missing_from_is_refused(headers: tuple[str, ...]) -> None:
    with pytest.raises(HeaderError):
        from_addresses(msg(*headers))


def test_nul_in_from_is_refused() -> None:
    with pytest.raises(HeaderError):
        from_addresses(b"From: alice@dom.test\x00<bob@dom.test>\r\n\r\nx\r\n")


def test_fixups() -> None:
    assert missing_fixups(msg("From: a@b.test")) == (True, True)
    assert missing_fixups(msg("From: a@b.test", "Message-ID: <x@y>", "Date: today")) == (
        False,
        False,
    )
    out = add_header_fields(msg("From: a@b.test"), b"Date: now\r\n")
    assert out == b"From: a@b.test\r\nDate: now\r\n\r\nbody\r\n"
    assert add_header_fields(b"From: a@b.test\r\n", b"Date: now\r\n") == (
        b"From: a@b.test\r\nDate: now\r\n\r\n"
    )


@given(st.binary(max_size=300))
def test_any_header_bytes_give_addresses_or_header_error(data: bytes) -> None:
    try:
        result = from_addresses(data)
    except HeaderError:
        return
    assert all("@" in a for a in result)


def test_from_without_domain_is_refused() -> None:
    with pytest.raises(HeaderError):
        from_addresses(msg("From: alice"))
