"""The SASL step machines (proto.sasl): PLAIN, LOGIN, SCRAM-SHA-256, base64 lines, SASLprep."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field

import pytest

from homing.proto import sasl

# ----------------------------------------------------------------------------- a SCRAM client


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _escape(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


@dataclass
class ScramClient:
    """A client side of SCRAM-SHA-256 written from RFC 5802 §3 and §5, for the tests."""

    user: str
    password: str
    nonce: str = "fyko+d2lbbFgONRv9qkxdawL"
    gs2_header: str = "n,,"
    auth_message: bytes = field(default=b"", init=False)
    salted: bytes = field(default=b"", init=False)

    def first(self) -> bytes:
        return f"{self.gs2_header}{self.first_bare()}".encode()

    def first_bare(self) -> str:
        return f"n={_escape(self.user)},r={self.nonce}"

    def final(self, server_first: bytes, *, channel: str | None = None) -> bytes:
        attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
        assert attrs["r"].startswith(self.nonce)
        self.salted = hashlib.pbkdf2_hmac(
            "sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        cbind = channel or base64.b64encode(self.gs2_header.encode()).decode()
        without_proof = f"c={cbind},r={attrs['r']}"
        self.auth_message = f"{self.first_bare()},{server_first.decode()},{without_proof}".encode()
        client_key = _hmac(self.salted, b"Client Key")
        signature = _hmac(hashlib.sha256(client_key).digest(), self.auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> bool:
        expected = _hmac(_hmac(self.salted, b"Server Key"), self.auth_message)
        return server_final == b"v=" + base64.b64encode(expected)


def nonces(*values: str):  # type: ignore[no-untyped-def]
    it = iter(values)
    return lambda: next(it)


SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
PENCIL = sasl.scram_derive("pencil", SALT, 4096)


def scram(nonce: str = "3rfcNHYJY1ZVvWVs7j", secret: bytes | None = None) -> sasl.Mechanism:
    mech = sasl.mechanism("SCRAM-SHA-256", nonce=nonces(nonce), secret=secret)
    assert mech is not None
    return mech


# ----------------------------------------------------------------------------- base64 lines


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"", b""),
        (b"=", b""),
        (b"AGFsaWNlAHNlY3JldA==", b"\0alice\0secret"),
        (b"QUJD", b"ABC"),
    ],
)
def test_decode_response(line: bytes, expected: bytes) -> None:
    assert sasl.decode_response(line) == expected


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"*", "cancelled"),
        (b"=AAA", "malformed"),  # RFC 5034 §4: padding only at the end
        (b"AAA=BBB=", "malformed"),
        (b"QUJ", "malformed"),
        (b"QUJD ", "malformed"),
        (b"QU JD", "malformed"),
        (b"QU\x00D", "malformed"),
        (b"****", "malformed"),
        (b"QUJD" * 4000, "too_long"),
    ],
)
def test_decode_response_errors(line: bytes, kind: str) -> None:
    with pytest.raises(sasl.SASLError) as err:
        sasl.decode_response(line)
    assert err.value.kind == kind


def test_decode_response_limit_is_inclusive() -> None:
    assert sasl.decode_response(b"QUJD" * 3, limit=12) == b"ABC" * 3
    with pytest.raises(sasl.SASLError, match="longer"):
        sasl.decode_response(b"QUJD" * 4, limit=12)


def test_encode_challenge() -> None:
    assert sasl.encode_challenge(b"") == b""
    assert sasl.encode_challenge(b"Username:") == b"VXNlcm5hbWU6"


def test_mechanism_lookup_is_case_insensitive() -> None:
    for name in sasl.MECHANISMS:
        mech = sasl.mechanism(name.lower(), nonce=lambda: "x")
        assert mech is not None and mech.name == name
    assert sasl.mechanism("CRAM-MD5", nonce=lambda: "x") is None
    assert set(sasl.MECHANISMS) > sasl.PLAINTEXT_MECHANISMS


# ----------------------------------------------------------------------------- PLAIN


def test_plain_with_initial_response() -> None:
    mech = sasl.Plain()
    step = mech.start(b"\0alice@example.org\0sec ret")
    assert step == sasl.CheckPassword("alice@example.org", "sec ret", None)
    assert "sec ret" not in repr(step)
    assert mech.password_checked(True) == sasl.Success("alice@example.org", None, None)


def test_plain_without_initial_response_gets_empty_challenge() -> None:
    mech = sasl.Plain()
    assert mech.start(None) == sasl.Challenge(b"")
    assert mech.respond(b"bob\0bob\0pw") == sasl.CheckPassword("bob", "pw", "bob")
    assert isinstance(mech.password_checked(False), sasl.Failure)


def test_plain_authzid_for_someone_else_is_refused() -> None:
    with pytest.raises(sasl.SASLError) as err:
        sasl.Plain().start(b"root\0alice\0pw")
    assert err.value.kind == "authzid"


def test_plain_prepares_identities_not_the_password() -> None:
    # RFC 4013 §3 example 1 (soft hyphen mapped to nothing) in the user name.
    step = sasl.Plain().start("\0I\u00adX\0pass\u00adword".encode())
    assert step == sasl.CheckPassword("IX", "pass\u00adword", None)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"alice\0pw",
        b"\0alice\0pw\0",
        b"\0\0pw",
        b"\0alice\0",
        b"\0al\xffice\0pw",
        b"\0alice\0p\xffw",
        b"\0al\x07ice\0pw",  # prohibited control character
    ],
)
def test_plain_malformed(message: bytes) -> None:
    mech = sasl.Plain()
    with pytest.raises(sasl.SASLError) as err:
        mech.start(message)
    assert err.value.kind == "malformed"
    with pytest.raises(RuntimeError):
        mech.respond(b"\0a\0b")  # the exchange is over


def test_calls_out_of_order_are_adapter_bugs() -> None:
    mech = sasl.Plain()
    with pytest.raises(RuntimeError):
        mech.respond(b"x")
    mech.start(b"\0a\0b")
    with pytest.raises(RuntimeError):
        mech.respond(b"x")
    with pytest.raises(RuntimeError):
        mech.scram_keys(None)
    mech.password_checked(True)
    with pytest.raises(RuntimeError):
        mech.password_checked(True)


# ----------------------------------------------------------------------------- LOGIN


def test_login_without_initial_response() -> None:
    mech = sasl.Login()
    assert mech.start(None) == sasl.Challenge(b"Username:")
    assert mech.respond(b"alice") == sasl.Challenge(b"Password:")
    assert mech.respond(b"pass word") == sasl.CheckPassword("alice", "pass word", None)
    assert mech.password_checked(True) == sasl.Success("alice", None)


def test_login_initial_response_is_the_user_name() -> None:
    mech = sasl.Login()
    assert mech.start(b"alice") == sasl.Challenge(b"Password:")
    assert mech.respond(b"pw") == sasl.CheckPassword("alice", "pw", None)
    assert mech.password_checked(False) == sasl.Failure("invalid credentials")


@pytest.mark.parametrize(("user", "password"), [(b"", b"pw"), (b"a\0b", b"pw"), (b"a", b"")])
def test_login_malformed(user: bytes, password: bytes) -> None:
    mech = sasl.Login()
    mech.start(None)
    with pytest.raises(sasl.SASLError) as err:
        mech.respond(user)
        mech.respond(password)
    assert err.value.kind == "malformed"


# ----------------------------------------------------------------------------- SCRAM-SHA-256


def test_scram_rfc7677_vector_byte_for_byte() -> None:
    """RFC 7677 §3: user "user", password "pencil"."""
    mech = scram(nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert mech.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == sasl.NeedScramKeys("user")
    step = mech.scram_keys(PENCIL)
    assert step == sasl.Challenge(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    step = mech.respond(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert step == sasl.Success("user", None, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_scram_derive_matches_published_verifier() -> None:
    # The StoredKey/ServerKey of the RFC 7677 vector, as PostgreSQL stores them.
    assert base64.b64encode(PENCIL.stored_key) == b"WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
    assert base64.b64encode(PENCIL.server_key) == b"wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    assert "stored_key" not in repr(PENCIL)
    with pytest.raises(ValueError, match="4096"):
        sasl.scram_derive("pencil", SALT, 4095)
    with pytest.raises(sasl.SASLError):
        sasl.scram_derive("pen\x07cil", SALT, 4096)


def run_scram(
    client: ScramClient,
    keys: sasl.ScramKeys | None,
    *,
    initial: bool = True,
    secret: bytes | None = None,
) -> tuple[sasl.Step, bytes]:
    """Drive a whole exchange; returns the last step and the server-first message."""
    mech = scram(secret=secret)
    if initial:
        step = mech.start(client.first())
    else:
        assert mech.start(None) == sasl.Challenge(b"")
        step = mech.respond(client.first())
    assert step == sasl.NeedScramKeys(sasl.saslprep(client.user))
    challenge = mech.scram_keys(keys)
    assert isinstance(challenge, sasl.Challenge)
    return mech.respond(client.final(challenge.data)), challenge.data


@pytest.mark.parametrize("initial", [True, False])
def test_scram_with_our_client(initial: bool) -> None:
    keys = sasl.scram_derive("correct horse", b"0123456789abcdef", 4096)
    client = ScramClient("alice@example.org", "correct horse")
    step, first = run_scram(client, keys, initial=initial)
    assert first.startswith(f"r={client.nonce}3rfcNHYJY1ZVvWVs7j,s=".encode())
    assert isinstance(step, sasl.Success) and step.final is not None
    assert step.authcid == "alice@example.org"
    assert client.verify(step.final)


def test_scram_wrong_password_fails_with_invalid_proof() -> None:
    step, _ = run_scram(ScramClient("user", "pencil!"), PENCIL)
    assert step == sasl.Failure("invalid proof", b"e=invalid-proof")


def test_scram_unknown_user_goes_on_with_stable_fake_keys() -> None:
    step, first = run_scram(ScramClient("nobody", "pencil"), None, secret=b"k")
    assert step == sasl.Failure("invalid proof", b"e=invalid-proof")
    _, again = run_scram(ScramClient("nobody", "x"), None, secret=b"k")
    _, other = run_scram(ScramClient("somebody", "x"), None, secret=b"k")
    _, other_secret = run_scram(ScramClient("nobody", "x"), None, secret=b"j")
    salt = first.split(b",")[1]
    assert again.split(b",")[1] == salt  # the same probe sees the same salt
    assert other.split(b",")[1] != salt
    assert other_secret.split(b",")[1] != salt
    assert first.endswith(b",i=4096")


def test_scram_unknown_user_never_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if the fake verifier happened to match the client's password, the answer is no."""
    keys = sasl.scram_derive("pw", b"salt", 4096)
    monkeypatch.setattr(sasl.ScramSHA256, "_fake_keys", lambda self: keys)
    step, _ = run_scram(ScramClient("ghost", "pw"), None)
    assert step == sasl.Failure("invalid proof", b"e=invalid-proof")


def test_scram_username_escapes_and_saslprep() -> None:
    keys = sasl.scram_derive("pw", b"salt", 4096)
    client = ScramClient("a,b=c\u00ad", "pw")
    step, _ = run_scram(client, keys)
    assert isinstance(step, sasl.Success)
    assert step.authcid == "a,b=c"


def test_scram_authzid_same_user_is_accepted_other_refused() -> None:
    keys = sasl.scram_derive("pw", b"salt", 4096)
    client = ScramClient("alice", "pw", gs2_header="n,a=alice,")
    step, _ = run_scram(client, keys)
    assert isinstance(step, sasl.Success) and step.authzid == "alice"
    with pytest.raises(sasl.SASLError) as err:
        scram().start(b"n,a=root,n=alice,r=abc")
    assert err.value.kind == "authzid"


def test_scram_y_flag_is_accepted_without_plus() -> None:
    keys = sasl.scram_derive("pw", b"salt", 4096)
    step, _ = run_scram(ScramClient("alice", "pw", gs2_header="y,,"), keys)
    assert isinstance(step, sasl.Success)


def test_scram_channel_binding_mismatch() -> None:
    """A "y" client that then sends c=biws ("n,,") is a downgrade: refuse (RFC 5802 §6)."""
    keys = sasl.scram_derive("pw", b"salt", 4096)
    client = ScramClient("alice", "pw", gs2_header="y,,")
    mech = scram()
    mech.start(client.first())
    challenge = mech.scram_keys(keys)
    assert isinstance(challenge, sasl.Challenge)
    step = mech.respond(client.final(challenge.data, channel="biws"))
    assert step == sasl.Failure("channel binding data differs", b"e=channel-bindings-dont-match")


@pytest.mark.parametrize(
    ("first", "error"),
    [
        (b"p=tls-unique,,n=user,r=abc", b"e=channel-binding-not-supported"),
        (b"n,,m=ext,n=user,r=abc", b"e=extensions-not-supported"),
        (b"n,,n=us=41er,r=abc", b"e=invalid-username-encoding"),
        (b"n,,n=us\x07er,r=abc", b"e=invalid-username-encoding"),
        (b"n,,n=\xc2\xad,r=abc", b"e=invalid-username-encoding"),  # prepares to nothing
        (b"n,a=x=zz,n=user,r=abc", b"e=invalid-username-encoding"),
    ],
)
def test_scram_client_first_failures(first: bytes, error: bytes) -> None:
    step = scram().start(first)
    assert isinstance(step, sasl.Failure) and step.final == error


@pytest.mark.parametrize(
    "first",
    [
        b"",
        b"n,,",
        b"n,n=user,r=abc",
        b"x,,n=user,r=abc",
        b"n,b=x,n=user,r=abc",
        b"n,,r=abc,n=user",
        b"n,,n=user",
        b"n,,n=user,r=",
        b"n,,n=user,r=a b",
        b"n,,n=user,r=abc,,",
        b"n,,n=user,r=abc,toolong=1",
        b"n,,n=\xff,r=abc",
    ],
)
def test_scram_client_first_malformed(first: bytes) -> None:
    with pytest.raises(sasl.SASLError) as err:
        scram().start(first)
    assert err.value.kind == "malformed"


def _after_first(keys: sasl.ScramKeys = PENCIL) -> sasl.Mechanism:
    mech = scram(nonce="S")
    mech.start(b"n,,n=user,r=C")
    mech.scram_keys(keys)
    return mech


@pytest.mark.parametrize(
    ("final", "error"),
    [
        (b"c=biws,r=CS,p=AAAA", b"e=invalid-proof"),  # wrong length
        (b"c=biws,r=CX,p=" + base64.b64encode(bytes(32)), b"e=other-error"),  # nonce
        (b"c=eSws,r=CS,p=" + base64.b64encode(bytes(32)), b"e=channel-bindings-dont-match"),
        (b"c=biws,r=CS,p=" + base64.b64encode(bytes(32)), b"e=invalid-proof"),
        (b"c=biws,r=CS,x=ext,p=" + base64.b64encode(bytes(32)), b"e=invalid-proof"),
    ],
)
def test_scram_client_final_failures(final: bytes, error: bytes) -> None:
    step = _after_first().respond(final)
    assert isinstance(step, sasl.Failure) and step.final == error


@pytest.mark.parametrize(
    "final",
    [b"", b"c=biws,r=CS", b"r=CS,c=biws,p=AAAA", b"c=biws,r=CS,p=A", b"c=biws,r=CS,p=*", b"\xff"],
)
def test_scram_client_final_malformed(final: bytes) -> None:
    with pytest.raises(sasl.SASLError) as err:
        _after_first().respond(final)
    assert err.value.kind == "malformed"


def test_scram_refuses_weak_stored_verifiers_and_bad_nonce_sources() -> None:
    weak = sasl.ScramKeys(b"salt", 1024, bytes(32), bytes(32))
    mech = scram()
    mech.start(b"n,,n=user,r=C")
    step = mech.scram_keys(weak)
    assert isinstance(step, sasl.Failure) and step.final == b"e=other-error"
    mech = sasl.ScramSHA256(lambda: "has,comma")
    mech.start(b"n,,n=user,r=C")
    with pytest.raises(ValueError, match="nonce"):
        mech.scram_keys(PENCIL)


# ----------------------------------------------------------------------------- SASLprep


@pytest.mark.parametrize(
    ("text", "prepared"),
    [
        # RFC 4013 §3 examples.
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        # Non-ASCII space mapped to SPACE (§2.1); RTL text that starts and ends RTL.
        ("a\u00a0b", "a b"),
        ("\u0627\u0628", "\u0627\u0628"),
        ("", ""),
    ],
)
def test_saslprep(text: str, prepared: str) -> None:
    assert sasl.saslprep(text) == prepared


@pytest.mark.parametrize(
    "text",
    [
        "\u0007",  # RFC 4013 §3 example 6: prohibited
        "\u0627\u0031",  # example 7: bidi check
        "a\u0627b",  # RandALCat with LCat
        "\ue000",  # private use
        "\ud800",  # surrogate
        "a\u200eb",  # LRM: change display properties (C.8)
        "\U000e0001",  # tagging
    ],
)
def test_saslprep_prohibited(text: str) -> None:
    with pytest.raises(sasl.SASLError) as err:
        sasl.saslprep(text)
    assert err.value.kind == "malformed"


def test_saslprep_unassigned_only_allowed_in_queries() -> None:
    assert sasl.saslprep("\u0221") == "\u0221"  # unassigned in Unicode 3.2 (table A.1)
    with pytest.raises(sasl.SASLError):
        sasl.saslprep("\u0221", stored=True)
