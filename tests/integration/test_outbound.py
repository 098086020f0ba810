"""Outbound relay on real sockets: a DNS server on loopback (tests/dnsserver.py), Postfix's
smtp-sink and Homing's own SMTP server as the remote mail exchangers on 127.0.0.x, and the
queue runner either in this process (with a fake clock, so retry schedules take no time) or
inside `homing serve` (restart with a full queue, submission end to end, `homing queue`)."""

from __future__ import annotations

import contextlib
import email
import email.policy
import itertools
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from homing.clock import FakeClock
from homing.config import parse_config
from homing.mail import trace
from homing.proto.smtp import codes
from homing.proto.smtp.grammar import MailArgs, RcptArgs, parse_mail_arg, parse_rcpt_arg
from homing.queue.runner import QueueRunner, build_runner
from homing.router import Envelope, Resolution, Router
from homing.store import Store, make_credentials
from tests import dnsserver
from tests.dnsserver import DNSServer
from tests.integration.conftest import DOMAIN, Server, remote_homing, require_tool, wait_for

make_dns_server = dnsserver.make_dns_server

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
ALICE = f"alice@{DOMAIN}"


def free_port() -> int:
    """A port number to give every "remote" MX (each listens on its own 127.0.0.x)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------- smtp-sink


@dataclass
class Sink:
    """One smtp-sink process; every transaction it takes is dumped to a file."""

    host: str
    port: int
    dump: Path
    proc: subprocess.Popen[bytes]

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dump.iterdir())]

    def subjects(self) -> list[str]:
        out = []
        for data in self.messages():
            msg = email.message_from_bytes(data, policy=email.policy.default)
            out.append(str(msg["Subject"]))
        return sorted(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def sinks() -> Iterator[Callable[..., Sink]]:
    """Start smtp-sink on host:port with extra options (fault injection)."""
    binary = require_tool("smtp-sink")
    started: list[Sink] = []
    dirs: list[str] = []

    def start(host: str, port: int, *options: str) -> Sink:
        dump = Path(tempfile.mkdtemp(prefix="homing-sink-"))
        dirs.append(str(dump))
        dump.chmod(0o777)  # smtp-sink run by root must drop to an unprivileged user
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        proc = subprocess.Popen(
            [binary, *user, "-d", f"{dump}/msg.", *options, f"{host}:{port}", "64"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sink = Sink(host, port, dump, proc)
        started.append(sink)

        def listening() -> bool:
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                return True
            return False

        wait_for(listening, 5, f"smtp-sink on {host}:{port}")
        return sink

    yield start
    for sink in started:
        sink.stop()
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- in-process sender


@dataclass
class Sender:
    """A Homing store + router + queue runner in this process, with a fake clock."""

    store: Store
    router: Router
    runner: QueueRunner
    clock: FakeClock
    sent: int = 0
    queue_ids: list[str] = field(default_factory=list)

    def send(
        self,
        *rcpts: str,
        sender: str = ALICE,
        subject: str = "hello",
        mail: MailArgs | None = None,
        rcpt_args: list[RcptArgs] | None = None,
    ) -> str:
        self.sent += 1
        queue_id = trace.new_queue_id()
        message = (
            f"From: {sender or 'MAILER-DAEMON@local.test'}\r\nTo: {rcpts[0]}\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{queue_id}@local.test>\r\n\r\nHello.\r\n"
        ).encode()
        envelope = Envelope(
            mail_from=sender,
            rcpts=[(r, Resolution(codes.RECIPIENT_OK, remote=(r,))) for r in rcpts],
            mail=mail,
            rcpt_args=rcpt_args or [],
        )
        info = trace.TraceInfo("client.test", "127.0.0.1", "mx.local.test", queue_id, "ESMTP")
        self.router.deliver(message, envelope, info).result()
        self.queue_ids.append(queue_id)
        return queue_id

    async def run(self) -> int:
        return await self.runner.run_due()

    async def run_until_empty(self, limit: int = 200) -> list[float]:
        """Attempt whenever due until the queue is empty; the times of the attempts."""
        start = self.clock.now()
        times = []
        for _ in range(limit):
            entries = self.store.spool.entries()
            if not entries:
                return times
            self.clock.advance(max(min(e.next_attempt for e in entries) - self.clock.now(), 0))
            times.append(self.clock.now() - start)
            await self.run()
        raise AssertionError("the queue never emptied")

    def inbox(self, address: str = ALICE) -> list[bytes]:
        account = self.store.get_account(address)
        assert account is not None
        box = self.store.get_mailbox(account.id, "INBOX")
        assert box is not None
        return [
            self.store.read_message(box.id, m.uid) or b"" for m in self.store.list_messages(box.id)
        ]


@pytest.fixture
def make_sender(tmp_path: Path) -> Iterator[Callable[..., Sender]]:
    stores: list[Store] = []

    def make(dns_server: DNSServer, port: int, /, **sections: dict[str, Any]) -> Sender:
        data = tmp_path / f"sender{len(stores)}"
        data.mkdir()
        host, dns_port = dns_server.address
        doc: dict[str, Any] = {
            "hostname": "mx.local.test",
            "domains": [DOMAIN],
            "data_dir": str(data),
            "dns": {"nameservers": [f"{host}:{dns_port}"], "timeout": "2s"},
            "outbound": {"port": port, "connect_timeout": "3s"},
            "queue": {"first_retry": "1m", "max_interval": "5m", "warn_after": "10m"}
            | {"give_up_after": "30m"},
        }
        for name, values in sections.items():
            doc.setdefault(name, {}).update(values)
        config = parse_config(doc, base_dir=data)
        clock = FakeClock(start=time.time())
        store = Store.open(config.db_path, create=True, clock=clock)
        stores.append(store)
        store.add_domain(DOMAIN)
        store.add_account(ALICE, make_credentials("pw", hasher=FAST, scram_iterations=4096))
        router = Router(store, config, clock)
        runner = build_runner(store, config, clock, router)
        runner.attempt_settings = replace(runner.attempt_settings, timeout_cap=10.0)
        return Sender(store, router, runner, clock)

    yield make
    for store in stores:
        assert store.integrity_check() == []
        store.close()


def dsn_fields(message: bytes) -> dict[str, str]:
    """The fields of a DSN's message/delivery-status part (the first of each name, as
    sent, unfolded), plus its Subject."""
    msg = email.message_from_bytes(message, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    raw = message.decode().split("Content-Type: message/delivery-status", 1)[1]
    block = raw.split("\r\n\r\n", 1)[1].split("\r\n--", 1)[0].replace("\r\n ", " ")
    fields: dict[str, str] = {"Subject": str(msg["Subject"])}
    for line in block.split("\r\n"):
        key, sep, value = line.partition(": ")
        if sep and key not in fields:
            fields[key] = value
    return fields


def zone(mx: list[tuple[int, str]], hosts: dict[str, str], **extra: Any) -> dict[str, Any]:
    zones: dict[str, Any] = {"remote.test": {"MX": mx}}
    zones |= {name: {"A": [address]} for name, address in hosts.items()}
    return zones | extra


@contextlib.contextmanager
def _store_of(server: Server) -> Iterator[Store]:
    """The server's store, opened beside the running server (WAL: readers never block),
    for polling without a CLI process each time."""
    from homing.config import load_config

    with Store.open(load_config(server.config).db_path) as store:
        yield store


def _inbox(store: Store, address: str) -> list[bytes]:
    account = store.get_account(address)
    assert account is not None
    box = store.get_mailbox(account.id, "INBOX")
    assert box is not None
    return [store.read_message(box.id, m.uid) or b"" for m in store.list_messages(box.id)]


def _inbox_count(store: Store, address: str) -> int:
    account = store.get_account(address)
    assert account is not None
    box = store.get_mailbox(account.id, "INBOX")
    return 0 if box is None else box.messages


# --------------------------------------------------------------------------- scenarios


async def test_preference_order_and_fallback(
    make_dns_server: Callable[..., DNSServer],
    sinks: Callable[..., Sink],
    make_sender: Callable[..., Sender],
) -> None:
    port = free_port()
    dns = make_dns_server(
        zone(
            [(30, "mx3.remote.test"), (10, "mx1.remote.test"), (20, "mx2.remote.test")],
            {
                "mx1.remote.test": "127.0.0.2",  # nothing listens: connection refused
                "mx2.remote.test": "127.0.0.3",
                "mx3.remote.test": "127.0.0.4",
            },
        )
    )
    second, third = sinks("127.0.0.3", port), sinks("127.0.0.4", port)
    sender = make_sender(dns, port)
    sender.send("bob@remote.test", "carol@remote.test", subject="fallback")
    await sender.run()
    assert sender.store.spool.count() == 0
    (dump,) = second.messages()
    assert b"X-Rcpt-Args: <bob@remote.test>" in dump
    assert b"X-Rcpt-Args: <carol@remote.test>" in dump
    assert b"X-Mail-Args: <alice@local.test>" in dump
    assert b"Received: from client.test" in dump  # our hop's trace header went along
    assert third.messages() == []
    assert sender.inbox() == []


async def test_deferred_then_delivered_on_retry(
    make_dns_server: Callable[..., DNSServer],
    sinks: Callable[..., Sink],
    make_sender: Callable[..., Sender],
) -> None:
    port = free_port()
    dns = make_dns_server(zone([(10, "mx.remote.test")], {"mx.remote.test": "127.0.0.5"}))
    busy = sinks("127.0.0.5", port, "-r", "RCPT")  # every RCPT: 450 4.3.0
    sender = make_sender(dns, port)
    sender.send("bob@remote.test")
    await sender.run()
    (entry,) = sender.store.spool.entries()
    (bob,) = entry.recipients
    assert bob.state == "deferred" and bob.reply is not None and bob.reply.code == 450
    assert bob.remote_mta == "mx.remote.test"
    assert entry.next_attempt == pytest.approx(sender.clock.now() + 60, abs=7)
    busy.stop()
    ready = sinks("127.0.0.5", port)
    await sender.run()  # not due yet: nothing happens
    assert ready.messages() == []
    sender.clock.advance(entry.next_attempt - sender.clock.now())
    await sender.run()
    assert len(ready.messages()) == 1
    assert sender.store.spool.count() == 0 and sender.inbox() == []


async def test_mixed_recipients_against_homing_as_the_remote_mx(
    make_dns_server: Callable[..., DNSServer],
    make_server: Callable[..., Server],
    make_sender: Callable[..., Sender],
) -> None:
    port = free_port()
    remote = make_server(
        {"hostname": "mx.remote.test", "listen": {"smtp": [f"127.0.0.6:{port}"]}}, name="remote"
    )
    remote.cli("domain", "add", "remote.test")
    remote.add_account("bob@remote.test")
    dns = make_dns_server(zone([(10, "mx.remote.test")], {"mx.remote.test": "127.0.0.6"}))
    sender = make_sender(dns, port)
    sender.send("bob@remote.test", "nobody@remote.test", subject="mixed")
    await sender.run()
    assert sender.store.spool.count() == 0
    with _store_of(remote) as store:
        (stored,) = _inbox(store, "bob@remote.test")
    assert b"Subject: mixed" in stored and b"by mx.local.test (Homing)" in stored
    assert b"with ESMTPS" in stored  # opportunistic STARTTLS to the remote's self-signed cert
    (dsn,) = sender.inbox()  # exactly one DSN, for the one unknown recipient
    fields = dsn_fields(dsn)
    assert fields["Final-Recipient"] == "rfc822;nobody@remote.test"
    assert fields["Action"] == "failed" and fields["Status"] == "5.1.1"
    assert fields["Remote-MTA"] == "dns;mx.remote.test"
    assert fields["Diagnostic-Code"].startswith("smtp;550 5.1.1")
    assert b"bob@remote.test" not in dsn.split(b"message/delivery-status")[1].split(b"--")[0]


async def test_permanent_failure_gives_exactly_one_correct_dsn(
    make_dns_server: Callable[..., DNSServer],
    sinks: Callable[..., Sink],
    make_sender: Callable[..., Sender],
) -> None:
    port = free_port()
    dns = make_dns_server(zone([(10, "mx.remote.test")], {"mx.remote.test": "127.0.0.7"}))
    sinks("127.0.0.7", port, "-f", "RCPT")  # every RCPT: 500 5.3.0
    sender = make_sender(dns, port)
    sender.send("bob@remote.test", subject="doomed")
    await sender.run()
    await sender.run()
    (dsn,) = sender.inbox()
    assert dsn.startswith(b"Return-Path: <>\r\n")  # from the null sender
    fields = dsn_fields(dsn)
    assert fields["Subject"] == "Undelivered Mail Returned to Sender"
    assert fields["Reporting-MTA"] == "dns;mx.local.test"
    assert fields["Final-Recipient"] == "rfc822;bob@remote.test"
    assert fields["Action"] == "failed" and fields["Status"] == "5.3.0"
    assert b"Subject: doomed" in dsn  # the original comes back (RET=FULL by default)
    assert sender.store.spool.count() == 0


async def test_remote_down_past_give_up_after(
    make_dns_server: Callable[..., DNSServer], make_sender: Callable[..., Sender]
) -> None:
    port = free_port()  # nobody listens on 127.0.0.8 at all
    dns = make_dns_server(zone([(10, "mx.remote.test")], {"mx.remote.test": "127.0.0.8"}))
    sender = make_sender(dns, port)
    sender.send("bob@remote.test", subject="never")
    times = await sender.run_until_empty()
    assert 30 * 60 <= times[-1] < 31 * 60  # give-up time, or one first_retry after the last
    assert all(60 - 1e-6 <= b - a <= 300 + 1e-6 for a, b in itertools.pairwise(times))
    delayed, failed = sender.inbox()
    d, f = dsn_fields(delayed), dsn_fields(failed)
    assert d["Action"] == "delayed" and d["Status"] == "4.4.1"
    assert d["Subject"].startswith("Delayed Mail")
    assert "Will-Retry-Until" in d
    assert f["Action"] == "failed" and f["Status"] == "4.4.1"
    assert "No answer from mx.remote.test[127.0.0.8]" in f["Diagnostic-Code"]


async def test_dsn_parameters_travel_and_success_is_reported_only_without_dsn(
    make_dns_server: Callable[..., DNSServer],
    sinks: Callable[..., Sink],
    make_sender: Callable[..., Sender],
) -> None:
    port = free_port()
    dns = make_dns_server(
        {
            "remote.test": {"MX": [(10, "mx1.remote.test")]},
            "plain.test": {"MX": [(10, "mx2.remote.test")]},
            "mx1.remote.test": {"A": ["127.0.0.16"]},
            "mx2.remote.test": {"A": ["127.0.0.17"]},
        }
    )
    dsn_capable = sinks("127.0.0.16", port)
    no_dsn = sinks("127.0.0.17", port, "-N")  # does not announce DSN
    sender = make_sender(dns, port)
    ext = frozenset({"DSN", "8BITMIME", "SMTPUTF8", "SIZE"})
    mail = parse_mail_arg("FROM:<alice@local.test> RET=HDRS ENVID=env+2B1", extensions=ext)
    for domain in ("remote.test", "plain.test"):
        rcpt = parse_rcpt_arg(
            f"TO:<bob@{domain}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;first@{domain}",
            extensions=ext,
            utf8=False,
        )
        sender.send(f"bob@{domain}", mail=mail, rcpt_args=[rcpt], subject=domain)
    await sender.run()
    (passed_on,) = dsn_capable.messages()
    assert b"X-Mail-Args: <alice@local.test> RET=HDRS ENVID=env+2B1" in passed_on
    assert (
        b"X-Rcpt-Args: <bob@remote.test> NOTIFY=FAILURE,SUCCESS ORCPT=rfc822;first@remote.test"
        in passed_on
    )
    (plain,) = no_dsn.messages()
    assert b"X-Mail-Args: <alice@local.test>\n" in plain.replace(b"\r\n", b"\n")
    (report,) = sender.inbox()  # only for the hop that could not carry NOTIFY=SUCCESS
    fields = dsn_fields(report)
    assert fields["Action"] == "relayed" and fields["Status"] == "2.0.0"
    assert fields["Final-Recipient"] == "rfc822;bob@plain.test"
    assert fields["Original-Recipient"] == "rfc822;first@plain.test"
    assert fields["Original-Envelope-Id"] == "env+1"
    assert fields["Subject"] == "Successful Mail Delivery Report"


async def test_null_mx_fails_at_once(
    make_dns_server: Callable[..., DNSServer],
    sinks: Callable[..., Sink],
    make_sender: Callable[..., Sender],
) -> None:
    port = free_port()
    dns = make_dns_server({"remote.test": {"MX": [(0, ".")], "A": ["127.0.0.9"]}})
    sink = sinks("127.0.0.9", port)
    sender = make_sender(dns, port)
    sender.send("bob@remote.test")
    await sender.run()
    assert sender.store.spool.count() == 0 and sink.messages() == []
    (dsn,) = sender.inbox()
    assert dsn_fields(dsn)["Status"] == "5.1.10"


async def test_servfail_and_timeout_defer_and_never_use_the_a_record(
    make_dns_server: Callable[..., DNSServer],
    sinks: Callable[..., Sink],
    make_sender: Callable[..., Sender],
) -> None:
    port = free_port()
    dns = make_dns_server(
        {
            "remote.test": {"A": ["127.0.0.10"]},
            "slow.test": {"A": ["127.0.0.10"]},
        },
        servfail={("remote.test", "MX")},
        timeout={("slow.test", "MX")},
    )
    sink = sinks("127.0.0.10", port)
    sender = make_sender(dns, port, dns={"timeout": "300ms"})
    sender.send("bob@remote.test")
    sender.send("bob@slow.test")
    await sender.run()
    entries = sender.store.spool.entries()
    assert [e.recipients[0].state for e in entries] == ["deferred", "deferred"]
    assert all("4.4.3" in str(e.recipients[0].reply) for e in entries)
    assert sink.messages() == [] and sender.inbox() == []
    asked = {(name, qtype) for _, name, qtype in dns.queries}
    assert ("remote.test", "A") not in asked and ("slow.test", "A") not in asked


async def test_421_greeting_next_mx_but_not_after_a_lost_final_dot(
    make_dns_server: Callable[..., DNSServer],
    sinks: Callable[..., Sink],
    make_sender: Callable[..., Sender],
) -> None:
    port = free_port()
    dns = make_dns_server(
        {
            "remote.test": {"MX": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
            "other.test": {"MX": [(10, "mx3.remote.test"), (20, "mx2.remote.test")]},
            "mx1.remote.test": {"A": ["127.0.0.11"]},
            "mx2.remote.test": {"A": ["127.0.0.12"]},
            "mx3.remote.test": {"A": ["127.0.0.13"]},
        }
    )
    sinks("127.0.0.11", port, "-Q", "CONNECT")  # 421 greeting
    good = sinks("127.0.0.12", port)
    sinks("127.0.0.13", port, "-q", ".")  # hangs up after the final dot, no reply
    sender = make_sender(dns, port)
    sender.send("bob@remote.test", subject="via mx2")
    sender.send("bob@other.test", subject="lost dot")
    await sender.run()
    assert good.subjects() == ["via mx2"]  # the other one was not sent to mx2 as well
    (entry,) = sender.store.spool.entries()
    assert entry.domain == "other.test"
    reply = entry.recipients[0].reply
    assert reply is not None and reply.code == 451 and "may have been delivered" in reply.text


async def test_smarthost_with_tls_and_auth(
    make_dns_server: Callable[..., DNSServer],
    make_server: Callable[..., Server],
    make_sender: Callable[..., Sender],
    tmp_path: Path,
) -> None:
    """All mail goes to a smarthost (here another Homing's submission service, on 587 with
    STARTTLS and on 465 with implicit TLS) with AUTH PLAIN, whatever the MX records say."""
    relay = make_server(
        {"listen": {"submission": ["127.0.0.1:0"], "submissions": ["127.0.0.1:0"]}},
        name="relay",
    )
    relay.add_account(ALICE, "relay-password-1")
    relay.cli("domain", "add", "remote.test")
    relay.add_account("bob@remote.test")
    (tmp_path / "relay.pw").write_text("relay-password-1\n")
    dns = make_dns_server({"remote.test": {"MX": [(0, ".")]}})  # never asked
    for mode, service in (("starttls", "submission"), ("implicit", "submissions")):
        host, port = relay.address(service)
        outbound = {
            "smarthost": host,
            "smarthost_port": port,
            "smarthost_tls": mode,
            "smarthost_tls_verify": False,  # the relay's certificate is self-signed
            "smarthost_username": ALICE,
            "smarthost_password_file": str(tmp_path / "relay.pw"),
        }
        sender = make_sender(dns, 25, outbound=outbound)
        sender.send("bob@remote.test", subject=f"via the smarthost, {mode}")
        await sender.run()
        assert sender.store.spool.entries() == [] and sender.inbox() == []
    with _store_of(relay) as store:
        received = _inbox(store, "bob@remote.test")
    assert len(received) == 2
    assert all(b"with ESMTPSA" in m for m in received)  # authenticated, over TLS
    assert dns.queries == []


# --------------------------------------------------------------------------- homing serve


def _inject(server: Server, rcpts: list[str], count: int) -> None:
    """Queue messages straight into a stopped server's store (as `homing sendmail` does)."""
    from homing.config import load_config

    config = load_config(server.config)
    with Store.open(config.db_path) as store:
        router = Router(store, config, FakeClock(start=time.time()))
        for n in range(count):
            queue_id = trace.new_queue_id()
            message = (
                f"From: {ALICE}\r\nTo: {rcpts[0]}\r\nSubject: message {n:02d}\r\n"
                f"Message-ID: <{queue_id}@local.test>\r\n\r\nbody {n}\r\n"
            ).encode()
            envelope = Envelope(
                mail_from=ALICE,
                rcpts=[(r, Resolution(codes.RECIPIENT_OK, remote=(r,))) for r in rcpts],
            )
            info = trace.TraceInfo("local", "127.0.0.1", "mx.local.test", queue_id, "local")
            router.deliver(message, envelope, info).result()


def _queue(server: Server) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(server.cli("queue", "list", "--json").stdout)
    return entries


def test_restart_with_a_full_queue_delivers_everything_once_and_the_queue_cli(
    make_dns_server: Callable[..., DNSServer],
    sinks: Callable[..., Sink],
    make_server: Callable[..., Server],
) -> None:
    port = free_port()
    dns = make_dns_server(zone([(10, "mx.remote.test")], {"mx.remote.test": "127.0.0.14"}))
    host, dns_port = dns.address
    server = make_server(
        {
            "dns": {"nameservers": [f"{host}:{dns_port}"]},
            "outbound": {"port": port, "connect_timeout": "2s"},
            "queue": {"first_retry": "1s", "max_interval": "1s"},
        },
        start=False,
    )
    _inject(server, ["bob@remote.test", "carol@remote.test"], 20)
    entries = _queue(server)
    assert len(entries) == 20 and {e["state"] for e in entries} == {"new"}
    held = entries[0]["id"]
    shown = json.loads(server.cli("queue", "show", held, "--json").stdout)
    assert [r["address"] for r in shown[0]["recipients"]] == [
        "bob@remote.test",
        "carol@remote.test",
    ]
    assert "Held 1 entry" in server.cli("queue", "hold", held).stdout
    dropped = entries[1]["id"]
    assert "Dropped 1 entry" in server.cli("queue", "drop", dropped).stdout
    assert server.cli("queue", "show", "nonexistent", check=False).returncode == 1

    with _store_of(server) as store:
        server.start()  # the MX is down: every entry is tried and deferred
        wait_for(lambda: all(e.attempts for e in store.spool.entries() if not e.held))
        server.kill()  # kill -9 with a full queue
        sink = sinks("127.0.0.14", port)
        server.start()
        wait_for(lambda: store.spool.count() == 1, what="all but the held entry delivered")
        assert [e.id for e in store.spool.entries()] == [held]
        assert "Released 1 entry" in server.cli("queue", "release", held).stdout
        wait_for(lambda: not store.spool.count(), what="the released entry delivered")
    subjects = sink.subjects()
    assert subjects == sorted(f"message {n:02d}" for n in range(20) if n != 1)  # each once
    assert all(b"X-Rcpt-Args: <carol@remote.test>" in m for m in sink.messages())
    assert "status=sent" in server.log() and server.proc is not None
    server.stop(signal.SIGTERM)


def test_end_to_end_submission_to_another_homing_found_by_mx(
    make_dns_server: Callable[..., DNSServer], make_server: Callable[..., Server]
) -> None:
    remote, port, nameserver = remote_homing(make_server, make_dns_server, "127.0.0.15")
    local = make_server(
        {
            "listen": {"submission": ["127.0.0.1:0"]},
            "dns": {"nameservers": [nameserver]},
            "outbound": {"port": port},
        },
        name="local",
    )
    local.add_account(ALICE, "alice-password-1")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(*local.address("submission"), timeout=10) as smtp:
        smtp.starttls(context=context)
        smtp.login(ALICE, "alice-password-1")
        smtp.sendmail(
            ALICE,
            ["bob@remote.test"],
            f"From: {ALICE}\r\nTo: bob@remote.test\r\nSubject: across\r\n\r\nHi Bob!\r\n",
        )
    with _store_of(remote) as store:
        wait_for(lambda: _inbox_count(store, "bob@remote.test") == 1, what="arrival at remote")
    message = remote.message("bob@remote.test", 1)
    assert b"Subject: across" in message and b"Hi Bob!" in message
    assert message.count(b"Received: ") >= 2  # the submission hop and the relay hop
    assert b"by mx.remote.test (Homing) with ESMTPS" in message  # STARTTLS under uvloop too
    assert b"Return-Path: <alice@local.test>" in message
    with _store_of(local) as store:
        wait_for(lambda: not store.spool.count(), what="the queue to empty")


def test_many_messages_for_one_domain_go_over_several_connections_each_once(
    make_dns_server: Callable[..., DNSServer], make_server: Callable[..., Server]
) -> None:
    """40 queued messages for one domain: split over 4 connections of 10 (at most
    `destination_concurrency` at once), each message delivered once."""
    remote, port, nameserver = remote_homing(make_server, make_dns_server, "127.0.0.18")
    local = make_server(
        {"dns": {"nameservers": [nameserver]}, "outbound": {"port": port}},
        name="local",
        start=False,
    )
    _inject(local, ["bob@remote.test"], 40)
    local.start()
    with _store_of(remote) as store:
        wait_for(lambda: _inbox_count(store, "bob@remote.test") == 40, what="all 40 to arrive")
        subjects = sorted(
            m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
            for m in _inbox(store, "bob@remote.test")
        )
    assert subjects == [b"message %02d" % n for n in range(40)]
    with _store_of(local) as store:
        wait_for(lambda: not store.spool.count(), what="the queue to empty")
    connections = [
        line for line in remote.log().splitlines() if "service=smtp" in line and "duration=" in line
    ]
    assert len(connections) == 4, connections
