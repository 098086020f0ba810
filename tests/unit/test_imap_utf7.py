"""Table tests for homing.proto.imap.utf7 (RFC 3501 §5.1.3, RFC 9051 Appendix A.1)."""

from __future__ import annotations

import pytest

from homing.proto.imap.utf7 import UTF7Error, decode, encode

PAIRS = [
    ("", b""),
    ("INBOX", b"INBOX"),
    ("Sent Items", b"Sent Items"),
    ("&", b"&-"),
    ("R&D", b"R&-D"),
    ("&&", b"&-&-"),
    ("-", b"-"),
    ("a-&-b", b"a-&--b"),
    ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
    ("台北日本語", b"&U,BTF2XlZyyKng-"),  # RFC 9051 A.1: the merged form
    ("☺!", b"&Jjo-!"),  # RFC 9051 A.1: "&Jjo!" corrected
    ("é", b"&AOk-"),
    ("éé", b"&AOkA6Q-"),
    ("é&", b"&AOk-&-"),
    ("&é", b"&-&AOk-"),
    ("Entwürfe", b"Entw&APw-rfe"),
    ("\x00", b"&AAA-"),  # controls are not printable: base64
    ("\t\x7f", b"&AAkAfw-"),
    ("🐀", b"&2D3cAA-"),  # a surrogate pair
    ("Ünïcödé/Ñame", b"&ANw-n&AO8-c&APY-d&AOk-/&ANE-ame"),
]


@pytest.mark.parametrize(("text", "wire"), PAIRS)
def test_encode(text: str, wire: bytes) -> None:
    assert encode(text) == wire


@pytest.mark.parametrize(("text", "wire"), PAIRS)
def test_decode(text: str, wire: bytes) -> None:
    assert decode(wire) == text


@pytest.mark.parametrize(
    "wire",
    [
        b"&AGE-",  # "a" encoded: printable ASCII must stand for itself
        b"&ACY-",  # "&" encoded instead of "&-"
        b"&ACA-",  # space encoded
        b"&AOkAYQ-",  # "éa": the "a" must leave base64
        b"&Jjo!",  # unterminated run (RFC 9051 A.1 example)
        b"&Jjo",
        b"&",
        b"abc&",
        b"&U,BTFw-&ZeVnLIqe-",  # null shift (RFC 9051 A.1 example)
        b"&AOk-&AOk-",
        b"&AOl-",  # non-zero padding bits
        b"&AOn-",
        b"&A-",  # impossible base64 length
        b"&AO-",  # 12 bits: not a whole UTF-16 unit
        b"&AOkA-",  # 24 bits: 1.5 units
        b"&AOk=-",  # padding is not part of modified base64
        b"&AO/p-",  # "/" is "," in modified base64
        b"&AO.k-",  # outside the alphabet
        b"&2D0-",  # lone high surrogate
        b"&3AA-",  # lone low surrogate
        b"&2D3YPQ-",  # two high surrogates
        b"\xc3\xa9",  # 8-bit octets sent as they are
        b"tab\there",  # control character sent as it is
        b"\x00",
        b"\x7f",
    ],
)
def test_decode_rejects_non_canonical_forms(wire: bytes) -> None:
    with pytest.raises(UTF7Error):
        decode(wire)


def test_error_is_a_value_error() -> None:
    assert issubclass(UTF7Error, ValueError)


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\udc80"])
def test_encode_rejects_lone_surrogates(text: str) -> None:
    with pytest.raises(UTF7Error):
        encode(text)
