"""SMTP AUTH (RFC 4954) in the sans-I/O server core: transcripts for every edge case."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field

import pytest

from homing.proto import sasl
from homing.proto.smtp import codes
from homing.proto.smtp import server as core

PASSWORD = "correct horse battery"
SALT = b"0123456789abcdef"
KEYS = sasl.scram_derive(PASSWORD, SALT, 4096)
MECHS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@dataclass
class AuthDriver:
    tls: bool = True
    auth_required: bool = True
    conn: core.ServerConnection = field(init=False)
    checked: list[core.AuthPassword] = field(default_factory=list)
    results: list[core.AuthResult] = field(default_factory=list)
    locked: bool = False

    def __post_init__(self) -> None:
        settings = core.Settings(
            hostname="mx.test",
            tls_active=self.tls,
            starttls=not self.tls,
            auth_mechanisms=MECHS,
            auth_required=self.auth_required,
        )
        self.conn = core.ServerConnection(settings, nonce=lambda: "servernonce", scram_secret=b"k")
        self.conn.start()
        self.conn.data_to_send()

    def send(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        while True:
            ev = self.conn.next_event()
            if ev is core.NEED_DATA or isinstance(ev, core.Closed):
                break
            if isinstance(ev, core.AuthPassword):
                self.checked.append(ev)
                ok = ev.user == "alice@x.test" and ev.password == PASSWORD
                self.conn.auth_verdict(ok, locked_out=self.locked)
            elif isinstance(ev, core.AuthScramKeys):
                self.conn.scram_keys(
                    KEYS if ev.user == "alice@x.test" else None, locked_out=self.locked
                )
            elif isinstance(ev, core.AuthResult):
                self.results.append(ev)
            elif isinstance(ev, core.MailFrom | core.RcptTo):
                self.conn.respond(codes.OK)
            elif isinstance(ev, core.StartTLS):
                self.conn.tls_established()
        return self.conn.data_to_send()


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return b64(f"{authzid}\0{user}\0{password}".encode())


def test_auth_is_advertised_only_under_tls() -> None:
    clear = AuthDriver(tls=False)
    assert b"AUTH" not in clear.send(b"EHLO c\r\n")
    secure = AuthDriver(tls=True)
    assert b"250 AUTH SCRAM-SHA-256 PLAIN LOGIN\r\n" in secure.send(b"EHLO c\r\n")


def test_auth_before_tls_is_538_and_unchecked() -> None:
    d = AuthDriver(tls=False)
    d.send(b"EHLO c\r\n")
    out = d.send(b"AUTH PLAIN " + plain("alice@x.test", PASSWORD) + b"\r\n")
    assert out.startswith(b"538 5.7.11")
    assert d.checked == []
    assert d.send(b"STARTTLS\r\n").startswith(b"220")
    d.send(b"EHLO c\r\n")
    assert d.send(b"AUTH PLAIN " + plain("alice@x.test", PASSWORD) + b"\r\n").startswith(
        b"235 2.7.0"
    )


def test_mail_before_auth_is_530() -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    assert d.send(b"MAIL FROM:<alice@x.test>\r\n").startswith(b"530 5.7.0")
    d.send(b"AUTH PLAIN " + plain("alice@x.test", PASSWORD) + b"\r\n")
    assert d.conn.user == "alice@x.test"
    assert d.send(b"MAIL FROM:<alice@x.test>\r\n").startswith(b"250")


def test_plain_without_initial_response() -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    assert d.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert d.send(plain("alice@x.test", PASSWORD) + b"\r\n").startswith(b"235")


def test_wrong_password_and_unknown_user_get_the_same_reply() -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    wrong = d.send(b"AUTH PLAIN " + plain("alice@x.test", "nope") + b"\r\n")
    unknown = d.send(b"AUTH PLAIN " + plain("nobody@x.test", "nope") + b"\r\n")
    assert wrong == unknown == b"535 5.7.8 Authentication credentials invalid\r\n"


def test_plain_authzid_other_than_authcid_is_535() -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    out = d.send(b"AUTH PLAIN " + plain("alice@x.test", PASSWORD, authzid="bob@x.test") + b"\r\n")
    assert out.startswith(b"535 5.7.8")
    assert d.conn.user is None


@pytest.mark.parametrize("response", [b"!!!notbase64", b"YWJj=ZGVm"])
def test_malformed_base64_is_501(response: bytes) -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    d.send(b"AUTH LOGIN\r\n")
    assert d.send(response + b"\r\n").startswith(b"501 5.5.2")


def test_star_cancels() -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    d.send(b"AUTH LOGIN\r\n")
    assert d.send(b"*\r\n").startswith(b"501")
    assert d.send(b"NOOP\r\n").startswith(b"250")


def test_overlong_response_is_500_5_5_6() -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    d.send(b"AUTH PLAIN\r\n")
    out = d.send(b"A" * 13000 + b"\r\nNOOP\r\n")
    assert out.startswith(b"500 5.5.6")
    assert out.endswith(b"250 2.0.0 OK\r\n")


def test_auth_inside_transaction_or_twice_is_503() -> None:
    d = AuthDriver(auth_required=False)
    d.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n")
    assert d.send(b"AUTH PLAIN " + plain("alice@x.test", PASSWORD) + b"\r\n").startswith(
        b"503 5.5.1"
    )
    d.send(b"RSET\r\n")
    assert d.send(b"AUTH PLAIN " + plain("alice@x.test", PASSWORD) + b"\r\n").startswith(b"235")
    assert d.send(b"AUTH PLAIN " + plain("alice@x.test", PASSWORD) + b"\r\n").startswith(
        b"503 5.5.1"
    )


def test_unknown_mechanism_is_504() -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    assert d.send(b"AUTH CRAM-MD5\r\n").startswith(b"504 5.5.4")


def test_login_flow() -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    assert d.send(b"AUTH LOGIN\r\n") == b"334 " + b64(b"Username:") + b"\r\n"
    assert d.send(b64(b"alice@x.test") + b"\r\n") == b"334 " + b64(b"Password:") + b"\r\n"
    assert d.send(b64(PASSWORD.encode()) + b"\r\n").startswith(b"235")


def test_lockout_ends_the_session_unchecked() -> None:
    d = AuthDriver()
    d.locked = True
    d.send(b"EHLO c\r\n")
    out = d.send(b"AUTH PLAIN " + plain("alice@x.test", PASSWORD) + b"\r\n")
    assert out.startswith(b"421 4.7.0")
    assert d.conn.closed


def _scram_client(d: AuthDriver, user: str, password: str) -> bytes:
    """A SCRAM-SHA-256 client (RFC 5802 §3), driven through the server core."""
    first_bare = f"n={user},r=clientnonce".encode()
    out = d.send(b"AUTH SCRAM-SHA-256 " + b64(b"n,," + first_bare) + b"\r\n")
    assert out.startswith(b"334 ")
    server_first = base64.b64decode(out[4:].strip())
    attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
    salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored = hashlib.sha256(client_key).digest()
    final_bare = f"c=biws,r={attrs['r']}".encode()
    auth_message = first_bare + b"," + server_first + b"," + final_bare
    signature = hmac.digest(stored, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    out = d.send(b64(final_bare + b",p=" + b64(proof)) + b"\r\n")
    if out.startswith(b"334 "):
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        expected = b"v=" + b64(hmac.digest(server_key, auth_message, "sha256"))
        assert base64.b64decode(out[4:].strip()) == expected
        out = d.send(b"\r\n")
    return out


def test_scram_success_and_failure() -> None:
    d = AuthDriver()
    d.send(b"EHLO c\r\n")
    assert _scram_client(d, "alice@x.test", PASSWORD).startswith(b"235 2.7.0")
    assert d.results == [core.AuthResult("alice@x.test", True, "SCRAM-SHA-256")]
    e = AuthDriver()
    e.send(b"EHLO c\r\n")
    assert _scram_client(e, "alice@x.test", "wrong").startswith(b"535 5.7.8")
    f = AuthDriver()
    f.send(b"EHLO c\r\n")
    assert _scram_client(f, "ghost@x.test", "wrong").startswith(b"535 5.7.8")
    assert [r.ok for r in e.results + f.results] == [False, False]


def test_port_25_has_no_auth() -> None:
    conn = core.ServerConnection(core.Settings(hostname="mx", tls_active=True))
    conn.start()
    conn.data_to_send()
    conn.receive_data(b"EHLO c\r\nAUTH PLAIN AGZvbwBiYXI=\r\n")
    while conn.next_event() is not core.NEED_DATA:
        pass
    out = conn.data_to_send()
    assert b"AUTH" not in out.split(b"\r\n250 2.0.0")[0].split(b"502")[0]
    assert b"502 5.5.1" in out
