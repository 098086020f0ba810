"""Submission on 587 (STARTTLS) and 465 (TLS): smtplib, swaks, msmtp against `homing serve`."""

from __future__ import annotations

import base64
import signal
import smtplib
import ssl
import subprocess
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.integration.conftest import DOMAIN, Server, require_tool

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
PASSWORD = "alice-secret-password"
SUBMISSION = {"listen": {"submission": ["127.0.0.1:0"], "submissions": ["127.0.0.1:0"]}}


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
def msa(make_server: Callable[..., Server]) -> Server:
    server = make_server(SUBMISSION)
    server.add_account(ALICE, PASSWORD)
    server.add_account(BOB)
    server.cli("alias", "add", f"sales@{DOMAIN}", ALICE)
    return server


def message(frm: str = ALICE, to: str = BOB, subject: str = "hi", **extra: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    for k, v in extra.items():
        msg[k.replace("_", "-")] = v
    msg.set_content("Hello from submission.\n")
    return msg


def submit(server: Server) -> smtplib.SMTP:
    smtp = smtplib.SMTP(*server.address("submission"), local_hostname="laptop.example", timeout=10)
    smtp.starttls(context=tls_context())
    smtp.login(ALICE, PASSWORD)
    return smtp


def test_starttls_login_and_local_delivery_with_fixups(msa: Server) -> None:
    with submit(msa) as smtp:
        smtp.send_message(message(), ALICE, [BOB])
    raw = msa.message(BOB, 1)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPSA id" in head
    assert b"Received: from laptop.example ([127.0.0.1])" in head
    assert b"\r\nMessage-ID: <" in head  # RFC 6409 §8.3: added when missing
    assert b"\r\nDate: " in head  # §8.2


def test_implicit_tls_on_465(msa: Server) -> None:
    host, port = msa.address("submissions")
    with smtplib.SMTP_SSL(host, port, context=tls_context(), timeout=10) as smtp:
        smtp.login(ALICE, PASSWORD)
        smtp.send_message(message(subject="465"), ALICE, [BOB])
    assert b"Subject: 465" in msa.message(BOB, 1)


def test_auth_before_tls_is_refused_unchecked(msa: Server) -> None:
    with smtplib.SMTP(*msa.address("submission"), timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        cred = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        code, text = smtp.docmd("AUTH", f"PLAIN {cred}")
        assert (code, text[:6]) == (538, b"5.7.11")
        code, text = smtp.docmd("MAIL", f"FROM:<{ALICE}>")
        assert (code, text[:5]) == (530, b"5.7.0")


def test_wrong_password_and_unknown_user_look_the_same(msa: Server) -> None:
    replies = []
    for user in (ALICE, f"nobody@{DOMAIN}"):
        with smtplib.SMTP(*msa.address("submission"), timeout=10) as smtp:
            smtp.starttls(context=tls_context())
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                smtp.login(user, "wrong-password")
            replies.append((err.value.smtp_code, err.value.smtp_error))
    assert replies[0] == replies[1] == (535, b"5.7.8 Authentication credentials invalid")


def test_sender_must_be_owned(msa: Server) -> None:
    with submit(msa) as smtp:
        smtp.ehlo()
        assert smtp.mail(BOB)[0] == 553
        smtp.rset()
        assert smtp.mail(f"alice+lists@{DOMAIN}")[0] == 250  # plus-address of her own
        smtp.rset()
        assert smtp.mail(f"sales@{DOMAIN}")[0] == 250  # alias pointing at her
        smtp.rset()
        assert smtp.mail("")[0] == 250  # the null sender


@pytest.mark.parametrize(
    "frm",
    [
        f"alice@{DOMAIN} <{BOB}>",
        f'"alice@{DOMAIN}" <{BOB}>',
        f"{BOB}, {ALICE}",
        f"=?utf-8?q?alice=40{DOMAIN}?= <{BOB}>",
    ],
)
def test_from_header_confusions_are_refused(msa: Server, frm: str) -> None:
    raw = f"From: {frm}\r\nTo: {BOB}\r\nSubject: spoof\r\n\r\nhi\r\n".encode()
    with submit(msa) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as err:
            smtp.sendmail(ALICE, [BOB], raw)
        assert (err.value.smtp_code, err.value.smtp_error[:5]) == (550, b"5.7.1")
    assert msa.mailbox_count(BOB) == 0


def test_two_from_headers_are_refused(msa: Server) -> None:
    raw = f"From: {ALICE}\r\nFrom: {BOB}\r\nSubject: two\r\n\r\nhi\r\n".encode()
    with submit(msa) as smtp, pytest.raises(smtplib.SMTPDataError):
        smtp.sendmail(ALICE, [BOB], raw)


def test_remote_recipients_are_not_accepted_without_a_queue_or_are_relayed(msa: Server) -> None:
    with submit(msa) as smtp:
        smtp.ehlo()
        smtp.mail(ALICE)
        code, _ = smtp.rcpt("friend@elsewhere.example")
        assert code in (250, 451)


def test_swaks_auth_plain_and_login(msa: Server) -> None:
    swaks = require_tool("swaks")
    host, port = msa.address("submission")
    for mech in ("PLAIN", "LOGIN"):
        out = subprocess.run(
            [swaks, "--server", host, "--port", str(port), "--tls", "--auth", mech,
             "--auth-user", ALICE, "--auth-password", PASSWORD, "--from", ALICE, "--to", BOB,
             "--header", f"From: {ALICE}", "--header", f"Subject: swaks {mech}", "--timeout", "10"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "235 2.7.0" in out.stdout
    assert msa.mailbox_count(BOB) == 2


@pytest.mark.parametrize("mech", ["scram-sha-256", "plain"])
def test_msmtp_submits_over_tls(msa: Server, tmp_path: Path, mech: str) -> None:
    msmtp = require_tool("msmtp")
    host, port = msa.address("submission")
    rc = tmp_path / "msmtprc"
    rc.write_text(
        f"account default\nhost {host}\nport {port}\nfrom {ALICE}\nauth {mech}\n"
        f"user {ALICE}\npassword {PASSWORD}\ntls on\ntls_starttls on\ntls_certcheck off\n"
    )
    rc.chmod(0o600)
    raw = f"From: {ALICE}\nTo: {BOB}\nSubject: msmtp {mech}\n\nhello from msmtp\n"
    out = subprocess.run(
        [msmtp, "-C", str(rc), BOB], input=raw, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"msmtp {mech}".encode() in msa.message(BOB, 1)


def test_brute_force_lockout_is_per_ip(make_server: Callable[..., Server]) -> None:
    server = make_server(
        {**SUBMISSION, "auth": {"failures_per_ip": 4, "failure_delay": "200ms", "lockout": "30s"}}
    )
    server.add_account(ALICE, PASSWORD)
    host, port = server.address("submission")

    def attempt(password: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
        smtp = smtplib.SMTP(host, port, timeout=15, source_address=(source, 0))
        try:
            smtp.starttls(context=tls_context())
            smtp.ehlo()
            cred = base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode()
            try:
                return smtp.docmd("AUTH", f"PLAIN {cred}")  # one mechanism, one attempt
            except smtplib.SMTPServerDisconnected:
                return 421, b"disconnected"
        finally:
            smtp.close()

    timings = []
    for _ in range(4):
        start = time.monotonic()
        assert attempt("wrong")[0] == 535
        timings.append(time.monotonic() - start)
    # The fourth failure is answered only after the slowdown (a lower bound: load only adds).
    assert timings[3] >= 0.2
    # Locked out now: even the right password is refused, unchecked.
    assert attempt(PASSWORD)[0] in (421, 454)
    # Another client address is not locked out.
    assert attempt(PASSWORD, source="127.0.0.2")[0] == 235


def test_homing_send_composes_mime_and_submits(msa: Server, tmp_path: Path) -> None:
    import email
    import email.policy

    from tests.integration.conftest import HOMING

    report = tmp_path / "Résumé 2026.pdf"
    report.write_bytes(b"%PDF-1.4 fake\x00\xff")
    out = subprocess.run(
        [*HOMING, "--config", str(msa.config), "send", "--from", ALICE, "--to", BOB,
         "--subject", "Grüße aus Köln", "--attach", str(report)],
        input="Hallo Bob,\nanbei der Bericht.\n", capture_output=True, text=True, timeout=60,
        env={"HOMING_PASSWORD": PASSWORD, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    queue_id = out.stdout.strip()
    raw = msa.message(BOB, 1)
    assert f"id {queue_id}".encode() in raw  # the id printed is the one in the Received header
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Grüße aus Köln"
    assert b"Subject: =?utf-8?" in raw  # RFC 2047 on the wire
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["Résumé 2026.pdf"]
    assert parts[0].get_content_type() == "application/pdf"
    assert parts[0].get_content() == b"%PDF-1.4 fake\x00\xff"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and "anbei der Bericht" in body.get_content()


def test_homing_send_wrong_password_fails_cleanly(msa: Server) -> None:
    from tests.integration.conftest import HOMING

    out = subprocess.run(
        [*HOMING, "--config", str(msa.config), "send", "--from", ALICE, "--to", BOB],
        input="x\n", capture_output=True, text=True, timeout=60,
        env={"HOMING_PASSWORD": "wrong", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 1
    assert "535" in out.stderr and "Traceback" not in out.stderr


def test_config_grants_and_hidden_client(make_server: Callable[..., Server]) -> None:
    server = make_server(
        {
            **SUBMISSION,
            "submission": {"grants": [f"{ALICE} *@{DOMAIN}"], "hide_client": True},
        }
    )
    server.add_account(ALICE, PASSWORD)
    server.add_account(BOB)
    with submit(server) as smtp:
        # Granted "*@local.test": Alice may send as noreply@ (envelope and From).
        raw = f"From: noreply@{DOMAIN}\r\nTo: {BOB}\r\nSubject: granted\r\n\r\nhi\r\n"
        smtp.sendmail(f"noreply@{DOMAIN}", [BOB], raw.encode())
        assert smtp.mail("someone@elsewhere.example")[0] == 553
    head = server.message(BOB, 1).split(b"\r\n\r\n", 1)[0]
    assert b"Received: by mx.local.test (Homing) with ESMTPSA id" in head
    assert b"127.0.0.1" not in head and b"laptop.example" not in head


def test_sigterm_reaches_a_session_busy_in_a_password_check(
    make_server: Callable[..., Server],
) -> None:
    """A session that is not waiting for a command when the drain begins (here: held by the
    brute-force slowdown after its fourth wrong password) is told 421 4.3.2 as soon as it
    next waits for one, not after its command timeout."""
    server = make_server(
        {**SUBMISSION, "auth": {"failures_per_ip": 100, "failure_delay": "2s", "lockout": "30s"}}
    )
    server.add_account(ALICE, PASSWORD)
    smtp = smtplib.SMTP(*server.address("submission"), timeout=15)
    try:
        smtp.starttls(context=tls_context())
        smtp.ehlo()
        wrong = base64.b64encode(f"\0{ALICE}\0wrong".encode()).decode()
        for _ in range(3):
            assert smtp.docmd("AUTH", f"PLAIN {wrong}")[0] == 535
        smtp.send(f"AUTH PLAIN {wrong}\r\n".encode())  # answered only after the slowdown
        time.sleep(0.5)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert smtp.getreply()[0] == 535
        code, text = smtp.getreply()
        assert (code, text[:5]) == (421, b"4.3.2")
        assert time.monotonic() - start < 5.0  # the slowdown, not the 5-minute timeout
    finally:
        smtp.close()
    assert server.stop() == 0
