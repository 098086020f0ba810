"""A running `homing serve` hears at once of what the command line commits (homing.notify):
`homing sendmail` to a local user reaches an IMAP client in IDLE, and to a remote one leaves
through the queue, without waiting for the server's polls (30 s in IDLE, 60 s for the queue).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import socket
import stat
import subprocess
from collections.abc import Callable

from tests import dnsserver
from tests.dnsserver import DNSServer
from tests.integration.conftest import (
    DOMAIN,
    HOMING,
    Server,
    idle_hears,
    inbox_count,
    remote_homing,
    wait_for,
)

make_dns_server = dnsserver.make_dns_server

ALICE = f"alice@{DOMAIN}"
PASSWORD = "alice-password-1"


def sendmail(server: Server, *args: str, stdin: bytes) -> None:
    subprocess.run(
        [*HOMING, "--config", str(server.config), "sendmail", *args],
        input=stdin,
        check=True,
        capture_output=True,
        timeout=60,
    )


def imap_server(make_server: Callable[..., Server]) -> Server:
    server = make_server(
        {"listen": {"imap": ["127.0.0.1:0"]}, "imap": {"allow_plaintext_loopback": True}}
    )
    server.add_account(ALICE, PASSWORD)
    return server


def test_sendmail_to_a_local_user_reaches_idle_at_once(
    make_server: Callable[..., Server],
) -> None:
    server = imap_server(make_server)
    sock_path = server.data / "run" / "notify.sock"
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
    imap = imaplib.IMAP4(*server.address("imap"), timeout=10)
    try:
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        # Garbage on the socket is logged and ignored; the server carries on.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            for junk in (b"not json", b"[]", b'{"c": [["new", "x", 1, []]]}', b"\xff" * 100):
                s.sendto(junk, str(sock_path))
        for n in range(2):
            message = b"Subject: cron %d\n\nall good\n" % n
            idle_hears(imap, lambda: sendmail(server, ALICE, stdin=message), n + 1)  # noqa: B023
        imap.logout()
    finally:
        with contextlib.suppress(OSError):
            imap.shutdown()
    assert "ignored a message that is not one" in server.log()
    server.stop()
    assert not sock_path.exists()


def test_sendmail_to_a_remote_address_leaves_at_once(
    make_dns_server: Callable[..., DNSServer], make_server: Callable[..., Server]
) -> None:
    remote, port, nameserver = remote_homing(make_server, make_dns_server, "127.0.0.19")
    local = make_server(
        {"dns": {"nameservers": [nameserver]}, "outbound": {"port": port}}, name="local"
    )
    sendmail(local, "-f", ALICE, "bob@remote.test", stdin=b"Subject: report\n\nnightly\n")
    # The queue looks at the spool by itself only every 60 s.
    wait_for(lambda: inbox_count(remote, "bob@remote.test") == 1, timeout=10, what="arrival")
