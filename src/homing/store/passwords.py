"""Password credentials: argon2id for PLAIN/LOGIN, SCRAM-SHA-256 keys for SCRAM.

The password itself is never stored. `make_credentials` prepares it with SASLprep
(RFC 4013, the profile SCRAM requires in RFC 5802 §2.2, "stored strings" rules: unassigned
code points are refused) and derives both:

- an argon2id PHC string (argon2-cffi's default RFC 9106 parameters), checked by
  `verify_password` for mechanisms that send the password (PLAIN, LOGIN, POP3 USER/PASS);
- the SCRAM-SHA-256 verifier of RFC 5802 §3 / RFC 7677: salt, iteration count,
  StoredKey = H(HMAC(SaltedPassword, "Client Key")) and
  ServerKey = HMAC(SaltedPassword, "Server Key"), with SaltedPassword = PBKDF2-HMAC-SHA-256.

A password that SASLprep refuses (control characters, for example) cannot be used with
SCRAM, so `make_credentials` refuses it too (ValueError); `verify_password` returns False.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from homing.proto import sasl

#: RFC 7677 §4: the iteration count SHOULD be at least 4096.
DEFAULT_SCRAM_ITERATIONS = sasl.SCRAM_MIN_ITERATIONS
SCRAM_SALT_BYTES = 16

_HASHER = PasswordHasher()


@dataclass(frozen=True, slots=True)
class Credentials:
    """What is stored for a password; never the password itself."""

    password_hash: str
    """argon2id PHC string (`$argon2id$v=19$m=...`)."""
    scram_salt: bytes
    scram_iterations: int
    scram_stored_key: bytes
    """RFC 5802 §3 StoredKey for SCRAM-SHA-256 (32 bytes)."""
    scram_server_key: bytes
    """RFC 5802 §3 ServerKey for SCRAM-SHA-256 (32 bytes)."""

    def __repr__(self) -> str:
        # Keep verifiers out of logs and tracebacks.
        return f"Credentials(scram_iterations={self.scram_iterations}, ...)"


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep for stored strings (proto.sasl's); ValueError when prohibited."""
    try:
        return sasl.saslprep(text, stored=True)
    except sasl.SASLError as err:
        raise ValueError(str(err)) from None


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) for SCRAM-SHA-256 (RFC 5802 §3) of a SASLprep'd password."""
    try:
        keys = sasl.scram_derive(password, salt, iterations)
    except sasl.SASLError as err:
        raise ValueError(str(err)) from None
    return keys.stored_key, keys.server_key


def make_credentials(
    password: str,
    *,
    scram_iterations: int = DEFAULT_SCRAM_ITERATIONS,
    hasher: PasswordHasher | None = None,
) -> Credentials:
    """Derive the stored credentials for `password` (ValueError if empty or prohibited)."""
    prepared = saslprep(password)
    if not prepared:
        raise ValueError("empty password")
    if scram_iterations < sasl.SCRAM_MIN_ITERATIONS:
        raise ValueError(f"scram_iterations must be at least {sasl.SCRAM_MIN_ITERATIONS}")
    salt = secrets.token_bytes(SCRAM_SALT_BYTES)
    stored_key, server_key = scram_keys(password, salt, scram_iterations)
    return Credentials(
        password_hash=(hasher or _HASHER).hash(prepared),
        scram_salt=salt,
        scram_iterations=scram_iterations,
        scram_stored_key=stored_key,
        scram_server_key=server_key,
    )


def verify_password(cred: Credentials, password: str) -> bool:
    """True if `password` matches; argon2's verification compares in constant time."""
    try:
        prepared = saslprep(password)
    except ValueError:
        return False
    try:
        return _HASHER.verify(cred.password_hash, prepared)
    except (VerificationError, InvalidHashError):
        return False
