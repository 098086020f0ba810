"""Server-side SASL (RFC 4422) mechanisms as step machines: PLAIN, LOGIN and SCRAM-SHA-256.

Shared by SMTP AUTH (RFC 4954), IMAP AUTHENTICATE (RFC 9051 §6.2.2) and POP3 AUTH (RFC 5034).
The machines never touch the store, a clock or a random source: credential checks are requests
the adapter answers, and the SCRAM nonce source is injected.

Adapter contract
----------------
1. ``mech = mechanism(name, nonce=..., secret=...)``; ``None`` means "not a mechanism we have".
   Offering PLAIN or LOGIN (`PLAINTEXT_MECHANISMS`) only under TLS is the protocol layer's call.
2. Decode each client line with `decode_response` (base64 with the RFC 4954 / RFC 5034 rules:
   ``*`` cancels, ``=`` is an empty initial response) and feed it in:
   ``mech.start(initial_or_None)`` first, then ``mech.respond(data)`` after every `Challenge`.
3. Act on the returned step:

   * `Challenge`     -> send ``encode_challenge(step.data)`` as a continuation (334 / ``+``).
   * `CheckPassword` -> verify the password (argon2, in the store), call
     ``mech.password_checked(ok)``.
   * `NeedScramKeys` -> look the SCRAM verifier up, call ``mech.scram_keys(keys_or_None)``;
     ``None`` for an unknown user makes the machine go on with fake keys derived from `secret`
     so that neither the flow nor the salt reveals whether the account exists, then fail.
   * `Success`       -> authenticated as ``step.authcid``. ``step.final`` is additional data with
     success (RFC 4422 §3.6; the SCRAM server-final ``v=...``). A protocol that cannot carry it
     in its success reply (POP3, RFC 5034 §4) sends it as one more challenge, waits for an empty
     response, and only then says +OK.
   * `Failure`       -> authentication failed (wrong credentials, refused channel binding, ...).
     ``step.final`` holds the SCRAM ``e=`` server-error for logs or protocols able to carry it.

   `SASLError` is raised for exchanges that are broken rather than failed; ``kind`` says which
   wire answer fits: ``"cancelled"`` (client sent ``*``), ``"malformed"`` (bad base64 or a
   message the mechanism cannot parse), ``"authzid"`` (asked to act as someone else: SMTP
   535 5.7.8), ``"too_long"`` (response over the limit). The exchange is over after either.

Calling a method the machine is not waiting for is a bug in the adapter (RuntimeError).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import stringprep
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

#: RFC 4954 §4: responses of at least 12288 octets must be accepted (base64 text).
MAX_RESPONSE = 12288
#: RFC 7677 §4: the SCRAM iteration count SHOULD be at least 4096.
SCRAM_MIN_ITERATIONS = 4096
#: Mechanisms this module implements, strongest first (the order to advertise them in).
MECHANISMS: tuple[str, ...] = ("SCRAM-SHA-256", "PLAIN", "LOGIN")
#: Mechanisms that send the password itself: offer them only over TLS (RFC 4616 §6, RFC 5034 §4).
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN"})

ErrorKind = Literal["malformed", "cancelled", "authzid", "too_long"]


class SASLError(Exception):
    """The exchange is broken (not merely unsuccessful); `kind` selects the protocol reply."""

    def __init__(self, kind: ErrorKind, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind: ErrorKind = kind
        self.detail = detail


# ------------------------------------------------------------------------------------- steps


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send `data` to the client (base64 in a continuation line) and feed back its answer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """Verify `password` for `authcid`, then call `password_checked(ok)`.

    `authcid` and `authzid` are SASLprep'd (RFC 4013, query rules); `password` is as sent: the
    store applies SASLprep when it verifies (RFC 4616 §5). `authzid` is None or equals `authcid`.
    """

    authcid: str
    password: str = field(repr=False)
    authzid: str | None


@dataclass(frozen=True, slots=True)
class NeedScramKeys:
    """Look up the SCRAM-SHA-256 verifier of `authcid`, then call `scram_keys(keys or None)`."""

    authcid: str


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """A stored SCRAM-SHA-256 verifier (RFC 5802 §3); never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated. `final` is additional data with success (RFC 4422 §3.6), or None."""

    authcid: str
    authzid: str | None
    final: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """Authentication failed. `reason` is for the log, never for the client."""

    reason: str
    final: bytes | None = None
    """SCRAM server-error message (``e=...``, RFC 5802 §7), when the mechanism has one."""


Step = Challenge | CheckPassword | NeedScramKeys | Success | Failure


class Mechanism(Protocol):
    """One server-side authentication exchange (see the module docstring for the contract)."""

    name: str

    def start(self, initial: bytes | None) -> Step: ...

    def respond(self, data: bytes) -> Step: ...

    def password_checked(self, ok: bool) -> Step: ...

    def scram_keys(self, keys: ScramKeys | None) -> Step: ...


# ------------------------------------------------------------------------------- base64 lines


def decode_response(line: bytes, *, limit: int = MAX_RESPONSE) -> bytes:
    """Decode one client response line (without CRLF).

    RFC 4954 §4 / RFC 5034 §4: ``*`` cancels the exchange, ``=`` is an empty (initial) response,
    anything else must be strict base64: no characters outside the alphabet, padding only at
    the end ("=AAA" and "AAA=BBB" are refused).
    """
    if len(line) > limit:
        raise SASLError("too_long", f"response longer than {limit} octets")
    if line == b"*":
        raise SASLError("cancelled", "client cancelled the exchange")
    if line == b"=":
        return b""
    if len(line) % 4:
        raise SASLError("malformed", "base64 length is not a multiple of 4")
    try:
        return binascii.a2b_base64(line, strict_mode=True)
    except binascii.Error as err:
        raise SASLError("malformed", f"invalid base64: {err}") from None


def encode_challenge(data: bytes) -> bytes:
    """Base64 for a challenge line (b"" stays empty: the bare "+ " / "334 " line)."""
    return base64.b64encode(data)


# ----------------------------------------------------------------------------------- SASLprep

# RFC 4013 §2.3: the prohibited output tables of RFC 3454 (C.1.2 and C.2.1 ... C.9).
_PROHIBITED: tuple[Callable[[str], bool], ...] = (
    stringprep.in_table_c12,  # non-ASCII space characters
    stringprep.in_table_c21_c22,  # ASCII and non-ASCII control characters
    stringprep.in_table_c3,  # private use
    stringprep.in_table_c4,  # non-character code points
    stringprep.in_table_c5,  # surrogate codes
    stringprep.in_table_c6,  # inappropriate for plain text
    stringprep.in_table_c7,  # inappropriate for canonical representation
    stringprep.in_table_c8,  # change display properties or deprecated
    stringprep.in_table_c9,  # tagging characters
)


def saslprep(text: str, *, stored: bool = False) -> str:
    """SASLprep (RFC 4013, the stringprep profile of RFC 3454) for user names and passwords.

    `stored=True` applies the "stored strings" rule: unassigned code points are refused too
    (RFC 3454 §7); queries (what a client sends) allow them. Raises SASLError("malformed").
    """
    # §2.1 mapping: non-ASCII spaces (C.1.2) to SPACE; "commonly mapped to nothing" (B.1) removed.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    # §2.2 normalisation form KC, on the Unicode 3.2 tables stringprep is defined against.
    out = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    for c in out:
        if any(table(c) for table in _PROHIBITED):
            raise SASLError("malformed", f"prohibited character U+{ord(c):04X} (RFC 4013 §2.3)")
        if stored and stringprep.in_table_a1(c):
            raise SASLError("malformed", f"unassigned code point U+{ord(c):04X} (RFC 4013 §2.5)")
    # §2.4 / RFC 3454 §6: a string with RandALCat characters has no LCat ones, and starts and
    # ends with RandALCat.
    if any(stringprep.in_table_d1(c) for c in out):
        if any(stringprep.in_table_d2(c) for c in out):
            raise SASLError("malformed", "mixed right-to-left and left-to-right text")
        if not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            raise SASLError("malformed", "right-to-left text must start and end with RTL")
    return out


def _utf8(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLError("malformed", f"{what} is not UTF-8") from None
    if "\0" in text:
        raise SASLError("malformed", f"{what} contains NUL")
    return text


def _identity(data: bytes, what: str) -> str:
    """A user name as sent, decoded and SASLprep'd; empty ones are refused."""
    name = saslprep(_utf8(data, what))
    if not name:
        raise SASLError("malformed", f"empty {what}")
    return name


# ------------------------------------------------------------------------------ the machines

_Expect = Literal["start", "response", "password", "keys", "done"]
_T = TypeVar("_T")


class _Machine:
    """Common bookkeeping: which call the machine waits for, derived from the last step."""

    name = ""

    def __init__(self) -> None:
        self._expect: _Expect = "start"

    def start(self, initial: bytes | None) -> Step:
        self._require("start")
        return self._run(self._start, initial)

    def respond(self, data: bytes) -> Step:
        self._require("response")
        return self._run(self._respond, data)

    def password_checked(self, ok: bool) -> Step:
        self._require("password")
        return self._run(self._password_checked, ok)

    def scram_keys(self, keys: ScramKeys | None) -> Step:
        self._require("keys")
        return self._run(self._scram_keys, keys)

    @property
    def done(self) -> bool:
        return self._expect == "done"

    def _require(self, expect: _Expect) -> None:
        if self._expect != expect:
            raise RuntimeError(f"{self.name}: called for {expect!r}, waiting for {self._expect!r}")

    def _run(self, fn: Callable[[_T], Step], arg: _T) -> Step:
        self._expect = "done"  # stays so if fn raises: a broken exchange is over
        step = fn(arg)
        if isinstance(step, Challenge):
            self._expect = "response"
        elif isinstance(step, CheckPassword):
            self._expect = "password"
        elif isinstance(step, NeedScramKeys):
            self._expect = "keys"
        return step

    # Subclasses override the steps they have; the machine state makes the others unreachable.
    def _start(self, initial: bytes | None) -> Step:
        raise NotImplementedError

    def _respond(self, data: bytes) -> Step:
        raise NotImplementedError

    def _password_checked(self, ok: bool) -> Step:
        raise NotImplementedError

    def _scram_keys(self, keys: ScramKeys | None) -> Step:
        raise NotImplementedError


class _PasswordMechanism(_Machine):
    """PLAIN and LOGIN end the same way: the adapter checks a password."""

    def __init__(self) -> None:
        super().__init__()
        self._identity: tuple[str, str | None] = ("", None)  # never the password

    def _ask(self, authcid: str, password: str, authzid: str | None) -> CheckPassword:
        self._identity = (authcid, authzid)
        return CheckPassword(authcid, password, authzid)

    def _password_checked(self, ok: bool) -> Step:
        if not ok:
            return Failure("invalid credentials")
        return Success(*self._identity)


class Plain(_PasswordMechanism):
    """PLAIN (RFC 4616): one message ``[authzid] NUL authcid NUL passwd``."""

    name = "PLAIN"

    def _start(self, initial: bytes | None) -> Step:
        # RFC 4422 §5: a client-first mechanism without an initial response gets an empty
        # challenge.
        return Challenge(b"") if initial is None else self._respond(initial)

    def _respond(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        if len(parts) != 3:
            raise SASLError("malformed", "PLAIN message is not authzid NUL authcid NUL passwd")
        raw_authzid, raw_authcid, raw_password = parts
        if not raw_password:
            raise SASLError("malformed", "empty password")  # RFC 4616 §2: passwd = 1*SAFE
        authcid = _identity(raw_authcid, "authcid")
        authzid = _identity(raw_authzid, "authzid") if raw_authzid else None
        password = _utf8(raw_password, "password")
        if authzid is not None and authzid != authcid:
            # RFC 4616 §2: acting for another identity needs authorisation we never grant.
            raise SASLError("authzid", "authorization identity differs from authcid")
        return self._ask(authcid, password, authzid)


class Login(_PasswordMechanism):
    """LOGIN (draft-murchison-sasl-login-00): "Username:" and "Password:" challenges.

    An initial response is the user name (§2 of the draft); the challenge texts are the ones
    clients have been seeing from servers for decades (they ignore them anyway).
    """

    name = "LOGIN"

    def __init__(self) -> None:
        super().__init__()
        self._user: str | None = None

    def _start(self, initial: bytes | None) -> Step:
        return Challenge(b"Username:") if initial is None else self._respond(initial)

    def _respond(self, data: bytes) -> Step:
        if self._user is None:
            self._user = _identity(data, "user name")
            return Challenge(b"Password:")
        password = _utf8(data, "password")
        if not password:
            raise SASLError("malformed", "empty password")
        return self._ask(self._user, password, None)


# --- SCRAM-SHA-256 (RFC 5802, RFC 7677) ----------------------------------------------------------

_ATTR = re.compile(r"([A-Za-z])=(.*)", re.DOTALL)
# RFC 5802 §7: printable = %x21-2B / %x2D-7E (no comma); nonces are made of it.
_PRINTABLE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_BAD_ESCAPE = re.compile(r"=(?!2[Cc]|3[Dd])")
_ESCAPE = re.compile(r"=(2[Cc]|3[Dd])")


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def scram_derive(password: str, salt: bytes, iterations: int) -> ScramKeys:
    """The SCRAM-SHA-256 verifier for `password` (RFC 5802 §3), to store when it is set.

    SaltedPassword = Hi(Normalize(password), salt, i) (PBKDF2-HMAC-SHA-256),
    StoredKey = H(HMAC(SaltedPassword, "Client Key")), ServerKey = HMAC(SaltedPassword, "Server
    Key"). Normalize is SASLprep with the stored-strings rules (SASLError if prohibited).
    """
    if iterations < SCRAM_MIN_ITERATIONS:
        raise ValueError(f"SCRAM iteration count must be at least {SCRAM_MIN_ITERATIONS}")
    prepared = saslprep(password, stored=True).encode("utf-8")
    salted = hashlib.pbkdf2_hmac("sha256", prepared, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramKeys(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=_hmac(salted, b"Server Key"),
    )


def _saslname(value: str) -> str | None:
    """Decode RFC 5802 §7 saslname ("=2C" is ",", "=3D" is "="); None if badly escaped."""
    if not value or _BAD_ESCAPE.search(value) or "," in value:
        return None
    return _ESCAPE.sub(lambda m: "," if m.group(1).upper() == "2C" else "=", value)


def _attributes(message: str) -> list[tuple[str, str]]:
    """Split ``a=1,b=2`` into pairs; every attribute is one letter, "=", and a value."""
    pairs = []
    for part in message.split(","):
        m = _ATTR.fullmatch(part)
        if m is None:
            raise SASLError("malformed", f"SCRAM attribute {part[:20]!r} is not a=value")
        pairs.append((m.group(1), m.group(2)))
    return pairs


def _scram_failure(reason: str, error: str) -> Failure:
    return Failure(reason, b"e=" + error.encode("ascii"))


class ScramSHA256(_Machine):
    """SCRAM-SHA-256 server (RFC 5802 §5 and §7, RFC 7677), without channel binding (no -PLUS).

    Flow: client-first (initial response or after an empty challenge) -> NeedScramKeys ->
    Challenge(server-first) -> client-final -> Success(final=server-final) or Failure.
    """

    name = "SCRAM-SHA-256"

    def __init__(self, nonce: Callable[[], str], secret: bytes | None = None) -> None:
        super().__init__()
        self._nonce_source = nonce
        self._secret = secret if secret is not None else b"homing SCRAM fake verifier"
        self._gs2_header = ""
        self._first_bare = ""
        self._client_nonce = ""
        self._authcid = ""
        self._authzid: str | None = None
        self._server_first = ""
        self._nonce = ""
        self._keys: ScramKeys | None = None
        self._known = False

    def _start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self._client_first(initial)

    def _respond(self, data: bytes) -> Step:
        if not self._server_first:
            return self._client_first(data)
        return self._client_final(data)

    def _client_first(self, data: bytes) -> Step:
        text = _utf8(data, "client-first-message")
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise SASLError("malformed", "client-first-message has no GS2 header")
        cbind, authzid_attr, bare = parts
        # RFC 5802 §5.1 / §7 gs2-cbind-flag. "y": the client could bind but thinks we cannot;
        # true, as no -PLUS variant is offered, so it is accepted. "p=": binding is required.
        if cbind.startswith("p="):
            return _scram_failure(
                "client requires channel binding", "channel-binding-not-supported"
            )
        if cbind not in ("n", "y"):
            raise SASLError("malformed", "bad gs2-cbind-flag")
        authzid: str | None = None
        if authzid_attr:
            if not authzid_attr.startswith("a="):
                raise SASLError("malformed", "bad gs2 authzid")
            decoded = _saslname(authzid_attr[2:])
            if decoded is None:
                return _scram_failure("bad authzid encoding", "invalid-username-encoding")
            authzid = saslprep(decoded)
        attrs = _attributes(bare)
        if attrs and attrs[0][0] == "m":
            # RFC 5802 §5.1: a mandatory extension we do not know of fails the exchange.
            return _scram_failure("mandatory extension", "extensions-not-supported")
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise SASLError("malformed", "client-first-message-bare needs n= and r=")
        username = _saslname(attrs[0][1])
        if username is None:
            return _scram_failure("bad username encoding", "invalid-username-encoding")
        try:
            # RFC 5802 §5.1: the server SHOULD prepare the user name with SASLprep.
            username = saslprep(username)
        except SASLError:
            return _scram_failure("username refused by SASLprep", "invalid-username-encoding")
        if not username:
            return _scram_failure("empty username", "invalid-username-encoding")
        if authzid is not None and authzid != username:
            raise SASLError("authzid", "authorization identity differs from username")
        if not _PRINTABLE.fullmatch(attrs[1][1]):
            raise SASLError("malformed", "client nonce is not printable")
        self._gs2_header = f"{cbind},{authzid_attr},"
        self._first_bare = bare
        self._client_nonce = attrs[1][1]
        self._authcid = username
        self._authzid = authzid
        return NeedScramKeys(username)

    def _scram_keys(self, keys: ScramKeys | None) -> Step:
        self._known = keys is not None
        if keys is None:
            keys = self._fake_keys()
        elif keys.iterations < SCRAM_MIN_ITERATIONS:
            return _scram_failure(
                f"stored verifier has {keys.iterations} iterations, below the minimum",
                "other-error",
            )
        server_nonce = self._nonce_source()
        if not _PRINTABLE.fullmatch(server_nonce):
            raise ValueError("the SCRAM nonce source must return printable ASCII without ','")
        self._keys = keys
        self._nonce = self._client_nonce + server_nonce
        salt = base64.b64encode(keys.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={keys.iterations}"
        return Challenge(self._server_first.encode("ascii"))

    def _fake_keys(self) -> ScramKeys:
        """Keys for an unknown user: stable per name (so the salt does not change between probes)
        and unpredictable without `secret`; no proof can match them (RFC 5802 §9)."""
        name = self._authcid.encode("utf-8")
        return ScramKeys(
            salt=_hmac(self._secret, b"salt\0" + name)[:16],
            iterations=SCRAM_MIN_ITERATIONS,
            stored_key=_hmac(self._secret, b"stored\0" + name),
            server_key=_hmac(self._secret, b"server\0" + name),
        )

    def _client_final(self, data: bytes) -> Step:
        text = _utf8(data, "client-final-message")
        attrs = _attributes(text)
        if len(attrs) < 3 or attrs[0][0] != "c" or attrs[1][0] != "r" or attrs[-1][0] != "p":
            raise SASLError("malformed", "client-final-message needs c=, r= and a final p=")
        keys = self._keys
        assert keys is not None
        # RFC 5802 §5.1: c= is the base64 of the GS2 header (no cbind-data without -PLUS).
        if attrs[0][1].encode("ascii", "replace") != base64.b64encode(
            self._gs2_header.encode("utf-8")
        ):
            return _scram_failure("channel binding data differs", "channel-bindings-dont-match")
        if attrs[1][1] != self._nonce:
            return _scram_failure("nonce mismatch", "other-error")
        try:
            proof = decode_response(attrs[-1][1].encode("ascii"))
        except (SASLError, UnicodeEncodeError):
            raise SASLError("malformed", "client proof is not base64") from None
        without_proof = text[: text.rindex(",p=")]
        auth_message = ",".join((self._first_bare, self._server_first, without_proof))
        client_signature = _hmac(keys.stored_key, auth_message.encode("utf-8"))
        if len(proof) != len(client_signature):
            return _scram_failure("proof has the wrong length", "invalid-proof")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        valid = hmac.compare_digest(hashlib.sha256(client_key).digest(), keys.stored_key)
        if not (valid and self._known):
            return _scram_failure("invalid proof", "invalid-proof")
        signature = _hmac(keys.server_key, auth_message.encode("utf-8"))
        return Success(self._authcid, self._authzid, b"v=" + base64.b64encode(signature))


def mechanism(
    name: str, *, nonce: Callable[[], str], secret: bytes | None = None
) -> Mechanism | None:
    """A fresh machine for mechanism `name` (case-insensitive), or None if we do not have it.

    `nonce` returns a fresh unpredictable SCRAM server nonce (printable ASCII without ",",
    e.g. ``secrets.token_urlsafe(18)``). `secret` keys the fake SCRAM verifiers of unknown users;
    pass a per-installation secret so they cannot be told apart from real ones (without it they
    are stable but computable by anyone reading this code).
    """
    upper = name.upper()
    if upper == "PLAIN":
        return Plain()
    if upper == "LOGIN":
        return Login()
    if upper == "SCRAM-SHA-256":
        return ScramSHA256(nonce, secret)
    return None
