"""TLS contexts for every listener (and, later, the outbound client), and self-signed certs.

`TLSContexts` loads the certificate chain and key once, checks them with `cryptography`
first so a bad setup is reported naming the file at fault, and builds one server
`SSLContext` that every new connection uses; `reload()` (SIGHUP) swaps it atomically
and keeps the old one when the new files are broken.

`generate_self_signed` makes the certificate `homing init` installs before a real one
(ACME or otherwise) is available. It uses ECDSA P-256 rather than RSA 2048: the key is
generated in about a millisecond instead of tens to hundreds, handshakes are smaller and
signing is cheaper, and every TLS 1.2+ stack (the only ones our server context accepts)
supports ECDSA certificates.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homing.net.stream import SNI_ATTRIBUTE

#: TLS 1.2 suites, strongest first: forward secret AEAD only (Mozilla "intermediate"
#: without finite-field DHE, which needs parameters we do not ship). TLS 1.3 suites are
#: OpenSSL's defaults, all of them AEAD.
TLS12_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    )
)

_LOCAL_NAMES: Final = frozenset({"localhost", "localhost.localdomain"})


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    context: ssl.SSLContext
    fingerprint: str
    not_valid_after: datetime.datetime
    subject: str


class TLSContexts:
    """The server context every TLS listener uses, reloadable; client contexts on demand."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert_path = cert
        self.key_path = key
        self._loaded = _load(cert, key)

    def server_context(self) -> ssl.SSLContext:
        """The current server context (a new one after each successful `reload`)."""
        return self._loaded.context

    def reload(self) -> None:
        """Load the files again; new connections get the new context.

        On error the current context stays in use and TLSConfigError is raised.
        Connections already established keep the certificate they were given.
        """
        self._loaded = _load(self.cert_path, self.key_path)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf certificate (DER), lower-case hex, for logs."""
        return self._loaded.fingerprint

    @property
    def not_valid_after(self) -> datetime.datetime:
        """Expiry of the leaf certificate (UTC), so the caller can warn before it happens."""
        return self._loaded.not_valid_after

    @property
    def subject(self) -> str:
        """The leaf certificate's subject (RFC 4514 string), for logs."""
        return self._loaded.subject

    def client_context(self, verify: bool, *, cafile: Path | None = None) -> ssl.SSLContext:
        """A context for outbound SMTP.

        `verify=True` checks the chain (system roots, or only `cafile` when given) and
        the host name, as for a smarthost or MTA-STS/DANE-less "secure" policy.
        `verify=False` is opportunistic TLS (RFC 7435, RFC 3207 §4.1: most MX hosts have
        certificates that would not verify): encrypted, unauthenticated, and still better
        than plaintext. Both require TLS 1.2+.
        """
        return client_context(verify, cafile=cafile)


def client_context(verify: bool, *, cafile: Path | None = None) -> ssl.SSLContext:
    """See `TLSContexts.client_context` (usable without a server certificate)."""
    if verify:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile else None
        )
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def _remember_sni(
    obj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, context: ssl.SSLContext
) -> None:
    """SNI callback: keep the name the client asked for where `TLSInfo` will find it."""
    setattr(obj, SNI_ATTRIBUTE, server_name)


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= (
        ssl.OP_NO_COMPRESSION  # CRIME
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation is a DoS lever
        | ssl.OP_SINGLE_ECDH_USE
    )
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(str(cert), str(key))
    context.sni_callback = _remember_sni
    return context


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"cannot read TLS {what} {path}: {exc.strerror or exc}") from exc


def _load(cert_path: Path, key_path: Path) -> _Loaded:
    """Check the files with `cryptography` (for errors that name the file), then load."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise TLSConfigError(f"{cert_path}: not a PEM certificate chain ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise TLSConfigError(f"{key_path}: not an unencrypted PEM private key ({exc})") from exc
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TLSConfigError(
            f"the key {key_path} does not belong to the certificate {cert_path} "
            "(the first certificate in the file must be the server's own)"
        )
    try:
        context = _server_context(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"cannot use {cert_path} with {key_path}: {exc}") from exc
    return _Loaded(
        context=context,
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        not_valid_after=leaf.not_valid_after_utc,
        subject=leaf.subject.rfc4514_string(),
    )


def _is_local(hostname: str) -> bool:
    name = hostname.lower().rstrip(".")
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _subject_alt_names(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    except ValueError:
        # RFC 5280 §4.2.1.6: dNSName in the preferred name syntax, so A-labels (IDNA).
        names.append(x509.DNSName(hostname.rstrip(".").encode("idna").decode("ascii")))
    if _is_local(hostname):
        for extra in (
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
            x509.IPAddress(ipaddress.IPv6Address("::1")),
        ):
            if extra not in names:
                names.append(extra)
    return names


def generate_self_signed(
    hostname: str, cert_path: Path, key_path: Path, *, days: int = 3650
) -> None:
    """Write a self-signed ECDSA P-256 certificate for `hostname` and its key.

    SAN is `hostname` (a DNS name, or an IP address when it is one), plus "localhost",
    127.0.0.1 and ::1 when the host name is local. The key file is created mode 0600,
    the certificate 0644; each file is written to a temporary name, fsync'd and renamed,
    so a crash leaves the old file or the new one, never a torn one.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname.rstrip(".")[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file in the same directory (created 0600), fsync, rename."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
