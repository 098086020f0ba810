"""TLSContexts (loading, errors naming the file, context settings) and generate_self_signed."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing.net import TLSConfigError, TLSContexts, client_context, generate_self_signed


def sans(cert_path: Path) -> list[object]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return list(ext.value)


def test_generate_self_signed_files_and_key(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    generate_self_signed("mail.example.org", cert_path, key_path, days=30)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert sorted(p.name for p in cert_path.parent.iterdir()) == ["cert.pem", "key.pem"]
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=mail.example.org"
    assert sans(cert_path) == [x509.DNSName("mail.example.org")]
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=29) < lifetime <= datetime.timedelta(days=30)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False


def test_generate_self_signed_local_names(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    generate_self_signed("localhost", cert, key)
    assert sans(cert) == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    generate_self_signed("192.0.2.5", cert, key)
    assert sans(cert) == [x509.IPAddress(ipaddress.ip_address("192.0.2.5"))]
    generate_self_signed("bücher.example", cert, key)
    assert sans(cert) == [x509.DNSName("xn--bcher-kva.example")]


def test_generate_self_signed_overwrites(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    generate_self_signed("a.example", cert, key)
    first = TLSContexts(cert, key).fingerprint
    generate_self_signed("a.example", cert, key)
    assert TLSContexts(cert, key).fingerprint != first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed("mx.example.net", cert, key)
    return cert, key


def test_contexts_load_and_describe(pair: tuple[Path, Path]) -> None:
    tls = TLSContexts(*pair)
    assert len(tls.fingerprint) == 64
    assert tls.subject == "CN=mx.example.net"
    assert tls.not_valid_after > datetime.datetime.now(datetime.UTC)
    context = tls.server_context()
    assert context is tls.server_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_CIPHER_SERVER_PREFERENCE, ssl.OP_NO_RENEGOTIATION):
        assert context.options & option
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(name.startswith("ECDHE-") for name in tls12)
    assert all("GCM" in name or "CHACHA20" in name for name in tls12)


def test_reload_makes_a_new_context(pair: tuple[Path, Path]) -> None:
    tls = TLSContexts(*pair)
    before = tls.server_context()
    tls.reload()
    assert tls.server_context() is not before


def test_missing_files_are_named(pair: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pair
    missing = tmp_path / "nope.pem"
    with pytest.raises(TLSConfigError, match=f"certificate {missing}"):
        TLSContexts(missing, key)
    with pytest.raises(TLSConfigError, match=f"key {missing}"):
        TLSContexts(cert, missing)


def test_garbage_files_are_named(pair: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pair
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(TLSConfigError, match=f"{junk}: not a PEM certificate"):
        TLSContexts(junk, key)
    with pytest.raises(TLSConfigError, match=f"{junk}: not an unencrypted PEM private key"):
        TLSContexts(cert, junk)


def test_encrypted_key_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = pair
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSConfigError, match=str(encrypted)):
        TLSContexts(cert, encrypted)


def test_mismatched_key_names_both_files(pair: tuple[Path, Path], tmp_path: Path) -> None:
    cert, _ = pair
    other_cert, other_key = tmp_path / "o.pem", tmp_path / "ok.pem"
    generate_self_signed("other.example", other_cert, other_key)
    with pytest.raises(TLSConfigError, match="does not belong") as info:
        TLSContexts(cert, other_key)
    assert str(cert) in str(info.value) and str(other_key) in str(info.value)


def test_reload_failure_keeps_the_old_context(pair: tuple[Path, Path]) -> None:
    cert, key = pair
    tls = TLSContexts(cert, key)
    context, fingerprint = tls.server_context(), tls.fingerprint
    key.write_text("broken")
    with pytest.raises(TLSConfigError, match=str(key)):
        tls.reload()
    assert tls.server_context() is context
    assert tls.fingerprint == fingerprint


def test_client_contexts(pair: tuple[Path, Path]) -> None:
    strict = TLSContexts(*pair).client_context(True)
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_2
    pinned = client_context(True, cafile=pair[0])
    assert pinned.cert_store_stats()["x509"] == 1
    opportunistic = client_context(False)
    assert opportunistic.verify_mode == ssl.CERT_NONE and not opportunistic.check_hostname
    assert opportunistic.minimum_version == ssl.TLSVersion.TLSv1_2
