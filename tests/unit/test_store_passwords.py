"""Stored credentials: argon2id for password checks, SCRAM-SHA-256 verifiers (RFC 7677),
SASLprep (RFC 4013)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st

from homing.store import Credentials, make_credentials, saslprep, verify_password
from homing.store.passwords import scram_keys

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def test_rfc7677_example() -> None:
    """RFC 7677 §3: user "user", password "pencil"; our keys verify the client's proof and
    produce the server signature of the example exchange."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    stored_key, server_key = scram_keys("pencil", salt, 4096)
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    ).encode()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    signature = hmac.digest(stored_key, auth, "sha256")
    client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    server_signature = base64.b64encode(hmac.digest(server_key, auth, "sha256"))
    assert server_signature == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_make_and_verify() -> None:
    cred = make_credentials("correct horse", hasher=FAST, scram_iterations=4096)
    assert cred.password_hash.startswith("$argon2id$")
    assert cred.scram_iterations == 4096
    assert len(cred.scram_salt) == 16
    assert (cred.scram_stored_key, cred.scram_server_key) == scram_keys(
        "correct horse", cred.scram_salt, 4096
    )
    assert verify_password(cred, "correct horse")
    assert not verify_password(cred, "correct horse ")
    assert not verify_password(cred, "")
    assert not verify_password(cred, "bad\x00")
    assert "argon2" not in repr(cred)
    other = make_credentials("correct horse", hasher=FAST, scram_iterations=4096)
    assert other.scram_salt != cred.scram_salt


def test_default_parameters() -> None:
    cred = make_credentials("pw")
    assert cred.scram_iterations == 4096  # RFC 7677 §4 minimum
    assert verify_password(cred, "pw")


def test_saslprep_equivalent_passwords_match() -> None:
    # U+00A0 NO-BREAK SPACE maps to SPACE; U+00AD SOFT HYPHEN maps to nothing; NFKC.
    cred = make_credentials("I X", hasher=FAST, scram_iterations=4096)
    assert verify_password(cred, "I\u00a0X")
    assert verify_password(cred, "I \u00adX")
    assert verify_password(make_credentials("\u2168", hasher=FAST, scram_iterations=4096), "IX")


@pytest.mark.parametrize(
    ("text", "out"),
    [  # RFC 4013 §3 examples
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
    ],
)
def test_saslprep_examples(text: str, out: str) -> None:
    assert saslprep(text) == out


@pytest.mark.parametrize("text", ["\u0007", "a\u0000b", "\u0627\u0031"])
def test_saslprep_refused(text: str) -> None:
    """RFC 4013 §3: control characters and bidi violations are errors."""
    with pytest.raises(ValueError):
        saslprep(text)
    with pytest.raises(ValueError):
        make_credentials(text, hasher=FAST)


def test_empty_password_refused() -> None:
    with pytest.raises(ValueError):
        make_credentials("", hasher=FAST)
    with pytest.raises(ValueError):
        make_credentials("\u00ad", hasher=FAST)  # maps to nothing
    with pytest.raises(ValueError):
        make_credentials("x", hasher=FAST, scram_iterations=0)


def test_garbage_hash_does_not_verify() -> None:
    cred = Credentials("not a hash", b"s", 1, b"k", b"k")
    assert not verify_password(cred, "anything")


@given(st.text(max_size=20))
def test_saslprep_total_and_idempotent(text: str) -> None:
    """Invariant: only ValueError escapes, and a prepared string prepares to itself."""
    try:
        out = saslprep(text)
    except ValueError:
        return
    assert saslprep(out) == out
