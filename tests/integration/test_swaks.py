"""Debian's swaks as an independent SMTP client against a real `homing serve`."""

from __future__ import annotations

import subprocess

from tests.integration.conftest import DOMAIN, Server, require_tool

ALICE = f"alice@{DOMAIN}"


def swaks(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    host, port = server.smtp
    return subprocess.run(
        [
            require_tool("swaks"),
            "--server",
            host,
            "--port",
            str(port),
            "--helo",
            "client.example",
            "--from",
            "sender@remote.example",
            "--timeout",
            "10",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_swaks_plain_and_pipelined(server: Server) -> None:
    plain = swaks(server, "--to", ALICE, "--header", "Subject: swaks plain")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    piped = swaks(server, "--to", ALICE, "--pipeline", "--header", "Subject: swaks piped")
    assert piped.returncode == 0, piped.stdout + piped.stderr
    assert server.mailbox_count(ALICE) == 2
    assert b"Subject: swaks piped" in server.message(ALICE, 2)


def test_swaks_starttls(server: Server) -> None:
    out = swaks(server, "--to", ALICE, "--tls", "--header", "Subject: swaks tls")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "TLS started" in out.stdout or "STARTTLS" in out.stdout
    assert b"with ESMTPS" in server.message(ALICE, 1)


def test_swaks_relay_attempt_is_refused(server: Server) -> None:
    out = swaks(server, "--to", "victim@elsewhere.example")
    assert out.returncode != 0
    assert "554 5.7.1" in out.stdout
    assert server.mailbox_count(ALICE) == 0


def test_swaks_bare_lf_smuggling_is_refused(server: Server) -> None:
    body = (
        "Subject: smuggle\n\nhello\n.\n"
        "MAIL FROM:<evil@x.example>\nRCPT TO:<alice@local.test>\nDATA\nfake\n\r\n.\r\n"
    )
    out = swaks(server, "--to", ALICE, "--data", body, "--no-data-fixup")
    assert "554 5.5.2" in out.stdout, out.stdout
    assert server.mailbox_count(ALICE) == 0
