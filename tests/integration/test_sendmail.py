"""`homing sendmail` used the way cron, mailx and scripts use sendmail."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from tests.integration.conftest import DOMAIN, HOMING, Server

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def sendmail(server: Server, *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*HOMING, "--config", str(server.config), "sendmail", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={"USER": "cron", "PATH": "/usr/bin:/bin"},
    )


def test_cron_style_without_a_running_server(make_server: Callable[..., Server]) -> None:
    server = make_server(start=False)
    server.add_account(ALICE)
    out = sendmail(server, ALICE, stdin=b"Subject: cron job\n\nall good\n")
    assert out.returncode == 0, out.stderr
    raw = server.message(ALICE, 1)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"Return-Path: <cron@mx.local.test>" in head
    assert b"\r\nFrom: <cron@mx.local.test>\r\n" in head
    assert b"\r\nDate: " in head and b"\r\nMessage-ID: <" in head
    assert b"with local id" in head
    assert raw.endswith(b"\r\n\r\nall good\r\n")


def test_mailx_style_t_i_with_bcc(server: Server) -> None:
    message = (
        f"From: Reports <{ALICE}>\nTo: {ALICE}\nBcc: {BOB}\nSubject: report\n\n"
        ".\nline after a dot\n"
    ).encode()
    out = sendmail(server, "-t", "-i", "-f", ALICE, stdin=message)
    assert out.returncode == 0, out.stderr
    for who in (ALICE, BOB):
        raw = server.message(who, 1)
        assert b"Bcc:" not in raw
        assert raw.endswith(b"\r\n.\r\nline after a dot\r\n")
        assert raw.startswith(f"Return-Path: <{ALICE}>".encode())


def test_lone_dot_ends_input_without_i(server: Server) -> None:
    out = sendmail(server, ALICE, stdin=b"Subject: dot\n\nbefore\n.\nafter\n")
    assert out.returncode == 0, out.stderr
    assert server.message(ALICE, 1).endswith(b"before\r\n")


def test_unknown_recipient_exit_code(server: Server) -> None:
    out = sendmail(server, f"nobody@{DOMAIN}", ALICE, stdin=b"Subject: x\n\ny\n")
    assert out.returncode == 67
    assert b"nobody@local.test" in out.stderr
    assert server.mailbox_count(ALICE) == 1  # the good recipient still gets it


def test_usage_errors(server: Server) -> None:
    assert sendmail(server, stdin=b"Subject: x\n\ny\n").returncode == 64
    assert sendmail(server, "-Q", ALICE, stdin=b"x").returncode == 64
