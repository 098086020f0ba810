"""Property tests for homing.proto.imap.utf7.

Invariants:
- decode(encode(s)) == s for every str without surrogates;
- encode(decode(b)) == b for every b that decodes (decoding accepts only the canonical form, so
  two different wire names never name the same mailbox);
- the encoded form is printable ASCII, and decode raises only UTF7Error (a ValueError).
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from homing.proto.imap.utf7 import UTF7Error, decode, encode

texts = st.text(st.characters(codec="utf-8"), max_size=40)
# Wire-like input: mostly the characters modified UTF-7 is made of, so that many samples decode.
wire_like = st.lists(
    st.one_of(
        st.sampled_from([b"&", b"-", b"&-", b"a", b" ", b","]),
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,", max_size=8).map(
            lambda s: s.encode("ascii")
        ),
        st.binary(max_size=3),
    ),
    max_size=8,
).map(b"".join)


@given(texts)
@settings(max_examples=500)
@example("&\x00é&a🐀-")
def test_decode_inverts_encode(text: str) -> None:
    wire = encode(text)
    assert all(0x20 <= c <= 0x7E for c in wire)
    assert decode(wire) == text


@given(st.one_of(wire_like, texts.map(encode)))
@settings(max_examples=1000)
def test_encode_inverts_decode_and_only_utf7error_escapes(wire: bytes) -> None:
    try:
        text = decode(wire)
    except UTF7Error:
        return
    assert encode(text) == wire
