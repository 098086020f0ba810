"""Property tests for proto.sasl.

Invariants: whatever bytes a client sends, at any stage of any mechanism, the machine returns a
Step or raises SASLError (nothing else escapes); base64 challenges round-trip through
`decode_response`; SASLprep either refuses with SASLError or yields a fixed point; and a SCRAM
exchange succeeds exactly when the client knows the password.
"""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from homing.proto import sasl
from tests.unit.test_sasl import ScramClient

STEPS = (sasl.Challenge, sasl.CheckPassword, sasl.NeedScramKeys, sasl.Success, sasl.Failure)
KEYS = sasl.scram_derive("pencil", b"0123456789abcdef", 4096)

# Bytes that look like protocol messages more often than pure noise would.
messages = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from([b"n", b"y", b"p=x", b"a=", b"n=", b"r=", b"c=", b"p=", b"m=", b"=2C"])
        | st.binary(max_size=8),
        max_size=12,
    ).map(b",".join),
    st.lists(st.binary(max_size=20), max_size=4).map(b"\0".join),
)


def _feed(mech: sasl.Mechanism, data: bytes, *, first: bool) -> None:
    try:
        step = mech.start(data) if first else mech.respond(data)
    except sasl.SASLError:
        return
    assert isinstance(step, STEPS)


@given(st.sampled_from(sasl.MECHANISMS), messages)
@settings(max_examples=300, deadline=None)
def test_any_initial_response(name: str, data: bytes) -> None:
    mech = sasl.mechanism(name, nonce=lambda: "srv")
    assert mech is not None
    _feed(mech, data, first=True)


@given(st.sampled_from(sasl.MECHANISMS), messages)
@settings(max_examples=300, deadline=None)
def test_any_response_after_empty_challenge(name: str, data: bytes) -> None:
    mech = sasl.mechanism(name, nonce=lambda: "srv")
    assert mech is not None
    assert isinstance(mech.start(None), sasl.Challenge)
    _feed(mech, data, first=False)


@given(messages)
@settings(max_examples=200, deadline=None)
def test_any_login_password(data: bytes) -> None:
    mech = sasl.Login()
    mech.start(b"alice")
    _feed(mech, data, first=False)


@given(messages, st.booleans())
@settings(max_examples=300, deadline=None)
def test_any_scram_client_final(data: bytes, known: bool) -> None:
    mech = sasl.ScramSHA256(lambda: "srv")
    mech.start(b"n,,n=user,r=cli")
    assert isinstance(mech.scram_keys(KEYS if known else None), sasl.Challenge)
    try:
        step = mech.respond(data)
    except sasl.SASLError:
        return
    assert isinstance(step, sasl.Failure)  # nobody guesses a proof


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_decode_response_any_line(line: bytes) -> None:
    try:
        assert isinstance(sasl.decode_response(line), bytes)
    except sasl.SASLError as err:
        assert err.kind in ("malformed", "cancelled", "too_long")


@given(st.binary(max_size=300))
def test_challenge_round_trip(data: bytes) -> None:
    assert sasl.decode_response(sasl.encode_challenge(data)) == data
    assert sasl.decode_response(base64.b64encode(data)) == data


@given(st.text(max_size=30), st.booleans())
@settings(max_examples=500, deadline=None)
def test_saslprep_refuses_or_is_a_fixed_point(text: str, stored: bool) -> None:
    try:
        prepared = sasl.saslprep(text, stored=stored)
    except sasl.SASLError as err:
        assert err.kind == "malformed"
        return
    assert sasl.saslprep(prepared, stored=stored) == prepared


name_chars = st.characters(codec="utf-8", categories=["L", "N", "P", "S"])


@given(
    st.text(name_chars, min_size=1, max_size=20),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20),
    st.booleans(),
)
@settings(max_examples=25, deadline=None)
def test_scram_succeeds_exactly_with_the_password(user: str, password: str, right: bool) -> None:
    try:
        prepared_user = sasl.saslprep(user)
    except sasl.SASLError:
        return
    if not prepared_user:
        return
    keys = sasl.scram_derive(password, b"salt-salt-salt!!", 4096)
    client = ScramClient(user, password if right else password + "x")
    mech = sasl.ScramSHA256(lambda: "S3rv3r")
    assert mech.start(client.first()) == sasl.NeedScramKeys(prepared_user)
    challenge = mech.scram_keys(keys)
    assert isinstance(challenge, sasl.Challenge)
    step = mech.respond(client.final(challenge.data))
    if right:
        assert isinstance(step, sasl.Success) and step.final is not None
        assert step.authcid == prepared_user
        assert client.verify(step.final)
    else:
        assert step == sasl.Failure("invalid proof", b"e=invalid-proof")
