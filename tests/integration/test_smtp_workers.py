"""`[smtp] workers`: port 25 served by worker processes beside the main `homing serve`.

Every test runs real processes: the main process and its workers, smtplib and imaplib as the
clients, and (for the queue) a second Homing as the remote MX found through a DNS server on
loopback.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import re
import signal
import smtplib
import ssl
import threading
import time
from collections.abc import Callable

from homing.store import Store
from tests import dnsserver
from tests.dnsserver import DNSServer
from tests.integration.conftest import (
    DOMAIN,
    Server,
    idle_hears,
    inbox_count,
    remote_homing,
    wait_for,
)

make_dns_server = dnsserver.make_dns_server

ALICE = f"alice@{DOMAIN}"
PASSWORD = "alice-password-1"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids(server: Server) -> list[int]:
    info = json.loads((server.data / "run" / "listeners.json").read_text())
    pids: list[int] = info["workers"]
    return pids


def message(n: int, tag: str = "w") -> bytes:
    return (
        f"From: s@remote.example\r\nTo: {ALICE}\r\nMessage-ID: <{tag}-{n}@remote.example>\r\n"
        f"Subject: {tag} {n}\r\n\r\n" + "line of text\r\n" * 50 + "END\r\n"
    ).encode()


def inbox_ids(server: Server) -> dict[str, int]:
    """Message-ID -> how many copies are in Alice's INBOX (each must be whole)."""
    seen: dict[str, int] = {}
    with Store.open(server.data / "homing.db") as store:
        account = store.get_account(ALICE)
        assert account is not None
        inbox = store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        for info in store.list_messages(inbox.id):
            raw = store.read_message(inbox.id, info.uid)
            assert raw is not None and raw.endswith(b"END\r\n"), "half-written message"
            found = re.search(rb"Message-ID: (<[^>]+>)", raw)
            assert found is not None
            mid = found.group(1).decode()
            seen[mid] = seen.get(mid, 0) + 1
    return seen


def smtp_connections(log: str) -> dict[str, int]:
    """Closed port 25 connections in the log, by process ("main", "worker=1", ...)."""
    counts: dict[str, int] = {}
    for line in log.splitlines():
        if "service=smtp" in line and " duration=" in line:
            found = re.search(r" (worker=\d+) conn=", line)
            key = found.group(1) if found else "main"
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_workers_take_port_25_and_deliver_each_message_once(
    make_server: Callable[..., Server],
) -> None:
    server = make_server({"smtp": {"workers": 2}})
    server.add_account(ALICE)
    pids = worker_pids(server)
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    assert server.proc is not None and server.proc.pid not in pids

    errors: list[BaseException] = []

    def send(first: int) -> None:
        try:
            for n in range(first, first + 10):
                with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
                    smtp.sendmail("s@remote.example", [ALICE], message(n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(t * 10,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert inbox_ids(server) == {f"<w-{n}@remote.example>": 1 for n in range(60)}
    server.stop()
    served = smtp_connections(server.log())
    assert "main" not in served, "the main process accepted on port 25"
    assert sum(served.values()) == 60 and set(served) <= {"worker=1", "worker=2"}
    assert not any(alive(pid) for pid in pids), "a worker outlived SIGTERM to the main process"


def test_idle_in_the_main_process_hears_a_worker_delivery_at_once(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(
        {
            "smtp": {"workers": 1},
            "listen": {"imap": ["127.0.0.1:0"]},
            "imap": {"allow_plaintext_loopback": True},
        }
    )
    server.add_account(ALICE, PASSWORD)
    imap = imaplib.IMAP4(*server.address("imap"), timeout=10)
    try:
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        for n in range(3):

            def deliver(n: int = n) -> None:
                with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
                    smtp.sendmail("s@remote.example", [ALICE], message(n))

            idle_hears(imap, deliver, n + 1)
        imap.logout()
    finally:
        with contextlib.suppress(OSError):  # already closed by LOGOUT
            imap.shutdown()


def test_mail_queued_by_a_worker_is_sent_at_once_by_the_main_queue_runner(
    make_dns_server: Callable[..., DNSServer], make_server: Callable[..., Server]
) -> None:
    remote, port, nameserver = remote_homing(make_server, make_dns_server, "127.0.0.17")
    local = make_server(
        {
            "smtp": {"workers": 1},
            "dns": {"nameservers": [nameserver]},
            "outbound": {"port": port},
        },
        name="local",
    )
    local.cli("alias", "add", f"forward@{DOMAIN}", "bob@remote.test")
    with smtplib.SMTP(*local.smtp, timeout=10) as smtp:
        smtp.sendmail("s@elsewhere.example", [f"forward@{DOMAIN}"], message(1, "fwd"))
    # The queue runner looks at the spool by itself only every 60 s.
    wait_for(lambda: inbox_count(remote, "bob@remote.test") == 1, timeout=10, what="arrival")
    assert "worker=1" in local.log() and "status=sent" in local.log()


def _sender(server: Server, n: int, accepted: list[str], stop: threading.Event) -> None:
    i = 0
    while not stop.is_set() and i < 300:
        try:
            with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
                smtp.sendmail("s@remote.example", [ALICE], message(n * 1000 + i, "crash"))
            accepted.append(f"<crash-{n * 1000 + i}@remote.example>")
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)  # the port is closed for a moment; try again until stopped
        i += 1


def test_kill_minus_nine_of_the_main_process_loses_nothing_and_stops_the_workers(
    make_server: Callable[..., Server],
) -> None:
    server = make_server({"smtp": {"workers": 2}})
    server.add_account(ALICE)
    pids = worker_pids(server)
    accepted: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_sender, args=(server, n, accepted, stop)) for n in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: len(accepted) >= 30, what="deliveries under way")
    server.kill()
    # The workers see their link close, stop accepting, finish what they are doing, exit.
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=40, what="workers to exit")
    stop.set()
    for t in threads:
        t.join(30)
    server.start()  # a new main process, new workers, on the same store
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.sendmail("s@remote.example", [ALICE], message(999999, "crash"))
    accepted.append("<crash-999999@remote.example>")
    server.stop()
    seen = inbox_ids(server)
    missing = [mid for mid in accepted if mid not in seen]
    assert missing == [], f"{len(missing)} accepted messages lost"
    doubled = [mid for mid, count in seen.items() if count != 1]
    assert doubled == [], "a message was stored twice"


def test_a_worker_that_dies_is_started_again(make_server: Callable[..., Server]) -> None:
    server = make_server({"smtp": {"workers": 1}})
    server.add_account(ALICE)
    [pid] = worker_pids(server)
    # SIGHUP to the main process reaches the worker, and STARTTLS works there.
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "worker=1 reloaded TLS certificate" in server.log(), what="worker reload")
    context = ssl.create_default_context(cafile=str(server.cert))
    context.check_hostname = False
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.starttls(context=context)
        smtp.sendmail("s@remote.example", [ALICE], message(0))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: server.log().count("started SMTP worker 1 ") == 2, what="a new worker")
    wait_for(lambda: "SMTP worker 1 ready" in server.log().split(f"pid={pid}")[-1])
    with smtplib.SMTP(*server.smtp, timeout=10) as smtp:
        smtp.sendmail("s@remote.example", [ALICE], message(1))
    assert inbox_ids(server) == {"<w-0@remote.example>": 1, "<w-1@remote.example>": 1}
    assert f"SMTP worker 1 pid={pid} exited" in server.log()
    [new] = worker_pids(server)  # run/listeners.json names the new worker
    assert new != pid and alive(new)
    assert server.stop() == 0
