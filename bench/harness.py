"""Side-by-side benchmarks: Homing against Postfix and Dovecot, on this machine, in one run.

`bench/run` (see bench/README.md) calls this. Theory of operation:

- A *scenario* is one function decorated with `@scenario(key, title, peer, needs)`. It is a
  generator: it gets (or starts) the servers it needs from the `Context`, then yields a list of
  `Case`s and returns; the servers stay up until the whole run ends. Its docstring is printed
  in the results as the description of what it measures. Adding a scenario is adding one such
  function.
- A *case* is a pair of callables, one run against Homing and one against the peer, each
  returning its figures (`{"rate": 812.0, ...}`) for the case's `Metric`s. The runner calls
  them interleaved, Homing, peer, Homing, peer, for `--rounds` rounds, so a machine that
  drifts (other tenants, thermal, page cache) drifts under both. Ratios Homing/peer are
  computed per round (paired) and reported as median and min-max, beside each side's
  median and min-max.
- Everything listens on 127.0.0.1 only; every run is bounded by a message count and a time
  limit; peers run from a temporary directory and are stopped by PID at the end, also on
  Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import math
import os
import platform
import resource
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TypeVar

import homing_server
import imap_clients
import peers
import pop3_retr
import qresync
import relay
import smtp_accept
from homing.clock import Clock, FakeClock
from homing.store import Store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SENDER = "bench@remote.example"
# the account bench/smtp_accept.py and bench/pop3_retr.py create, which the peers get too
assert (peers.USER, peers.PASSWORD) == (pop3_retr.USER, pop3_retr.PASSWORD)
T = TypeVar("T")

# --- what a scenario declares ----------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool


Figures = dict[str, float]


@dataclass(frozen=True)
class Case:
    """One comparison: `homing()` and `peer()` each run once per round and return figures."""

    name: str
    metrics: tuple[Metric, ...]
    homing: Callable[[], Figures]
    peer: Callable[[], Figures]
    #: the project's goal per metric key, as a ratio Homing/peer (">= 1.0" or "<= 1.0"
    #: depending on the metric's direction)
    targets: dict[str, float] = field(default_factory=dict)
    #: one untimed run of each side first (caches, indexes, page cache)
    warmup: bool = False
    #: the project's goal per metric key for Homing's own median: an upper bound where
    #: lower is better, a lower bound otherwise (an absolute figure, not a ratio)
    limits: dict[str, float] = field(default_factory=dict)
    #: run once before the case's first run (fill a store to the case's size)
    prepare: Callable[[], None] | None = None
    #: rounds for this case, when not the run's `--rounds`
    rounds: int | None = None
    #: the peer's name, when not the scenario's (a scenario may compare with more than one)
    peer_name: str | None = None


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    peer: str
    needs: tuple[str, ...]  # Debian packages
    setup: Callable[[Context], AbstractContextManager[list[Case]]]
    description: str


SCENARIOS: dict[str, Scenario] = {}


ScenarioFunction = Callable[["Context"], Iterator[list[Case]]]


def scenario(
    key: str, title: str, peer: str, needs: tuple[str, ...], notes: Callable[[], str] = str
) -> Callable[[ScenarioFunction], ScenarioFunction]:
    """Register a scenario: a generator that yields its cases once its servers are up. Its
    description is its docstring, and then what `notes()` says (facts known only when the
    harness runs)."""

    def register(function: ScenarioFunction) -> ScenarioFunction:
        doc = " ".join(f"{function.__doc__ or ''} {notes()}".split())
        SCENARIOS[key] = Scenario(key, title, peer, needs, contextmanager(function), doc)
        return function

    return register


@dataclass(frozen=True)
class Options:
    quick: bool
    rounds: int
    smtp_messages: int  # per concurrency level, per side, per round
    smtp_levels: tuple[int, ...]
    smtp_workers: int  # Homing's [smtp] workers in the acceptance and latency scenarios
    latency_transactions: int
    latency_concurrency: int
    pop3_messages: int
    message_size: int
    pop3_window: int
    relay_messages: int  # per side, per round
    relay_domains: tuple[int, ...]
    imap_messages: int
    idle_sessions: int
    idle_rounds: int
    scale_levels: tuple[int, ...]
    scale_smtp_messages: int  # per side, per round, per level
    qresync_messages: int
    qresync_repeats: int  # resyncs per side per round (their median is the round's figure)
    max_seconds: float  # one run of one side


# --- the servers -----------------------------------------------------------------------------


@dataclass
class Homing:
    """A `homing serve` process started by bench/smtp_accept.py's or bench/pop3_retr.py's
    setup, or from a `config` (bench/homing_server.py), which can then be restarted."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path
    config: Path | None = None

    @classmethod
    def start(cls, config: Path) -> Homing:
        log = config.parent.parent / "serve.log"
        process, ports = pop3_retr.start_homing(config, log)
        return cls(process, ports, log, config)

    def restart(self) -> None:
        """Stop it and start it again from its configuration (its ports change)."""
        assert self.config is not None
        self.stop()
        self.process, self.ports = pop3_retr.start_homing(self.config, self.log)

    def cpu_seconds(self) -> float:
        if self.process.poll() is not None:
            raise RuntimeError(f"homing serve exited; its log:\n{peers.tail(self.log)}")
        return peers.tree_cpu_seconds(self.process.pid)

    def memory(self) -> peers.Memory:
        if self.process.poll() is not None:
            raise RuntimeError(f"homing serve exited; its log:\n{peers.tail(self.log)}")
        return peers.tree_memory(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class Context:
    """The run's options and temporary directory, and the servers, started on first use and
    shared by the scenarios that need the same one (all stopped when the run ends)."""

    def __init__(self, options: Options, base: Path, stack: ExitStack) -> None:
        self.options = options
        self.base = base
        self._stack = stack
        self._servers: dict[str, object] = {}

    def _once(self, name: str, start: Callable[[], T], stop: Callable[[T], None]) -> T:
        if name not in self._servers:
            print(f"  starting {name}", flush=True)
            server = start()
            self._stack.callback(stop, server)
            self._servers[name] = server
        return self._servers[name]  # type: ignore[return-value]

    def homing_smtp(self) -> Homing:
        """Homing with only its port-25 service, on 127.0.0.1, one account USER."""

        def start() -> Homing:
            base = self.base / "homing-smtp"
            base.mkdir()
            process, (_, port) = smtp_accept.start_homing(base, self.options.smtp_workers)
            return Homing(process, {"smtp": port}, base / "serve.log")

        return self._once("homing (smtp)", start, Homing.stop)

    def homing_pop3(self, messages: int) -> Homing:
        """Homing with POP3 on 127.0.0.1 and USER's INBOX filled through the store API."""

        def start() -> Homing:
            base = self.base / "homing-pop3"
            base.mkdir()
            config = pop3_retr.set_up(base, messages, self.options.message_size)
            process, ports = pop3_retr.start_homing(config, base / "serve.log")
            return Homing(process, ports, base / "serve.log")

        return self._once("homing (pop3)", start, Homing.stop)

    def homing(
        self, name: str, settings: homing_server.Settings, clock: Clock | None = None
    ) -> tuple[Homing, Store]:
        """A Homing instance of its own, `homing serve` running with `settings`
        (bench/homing_server.py's `create`), and its store opened here too, with `clock`,
        for filling it (store writes from two processes are safe: SQLite locks them)."""

        def start() -> tuple[Homing, Store]:
            base = self.base / f"homing-{name}"
            base.mkdir()
            config = homing_server.create(base, settings)
            store = self._stack.enter_context(homing_server.open_store(config, clock))
            return Homing.start(config), store

        return self._once(f"homing ({name})", start, lambda pair: pair[0].stop())

    def postfix(self) -> peers.Postfix:
        """Postfix delivering USER's mail and SCALE_USER's (the scale scenario's) into two
        Maildirs."""
        return self._once(
            "postfix",
            lambda: peers.Postfix.start(self.base / "postfix", mailboxes=(peers.USER, SCALE_USER)),
            peers.Postfix.stop,
        )

    def postfix_relay(self, port: int) -> peers.Postfix:
        """A second Postfix that holds what its smtpd accepts for other domains, and relays
        it to 127.0.0.1:`port` once released."""
        return self._once(
            "postfix (relay)",
            lambda: peers.Postfix.start(self.base / "postfix-relay", relay_port=port),
            peers.Postfix.stop,
        )

    def smtp_sink(self) -> peers.SmtpSink:
        return self._once("smtp-sink", peers.SmtpSink, peers.SmtpSink.stop)

    def dovecot(self) -> peers.Dovecot:
        """Dovecot serving every protocol installed (the scenarios' packages are), in clear
        text and over implicit TLS."""
        packages = (("pop3", "dovecot-pop3d"), ("imap", "dovecot-imapd"))
        protocols = [name for name, package in packages if peers.debian_installed(package)]
        return self._once(
            "dovecot",
            lambda: peers.Dovecot.start(self.base / "dovecot", protocols, tls=True),
            peers.Dovecot.stop,
        )


# --- clients ---------------------------------------------------------------------------------


def smtp_source_path() -> str | None:
    return shutil.which("smtp-source") or (
        "/usr/sbin/smtp-source" if Path("/usr/sbin/smtp-source").exists() else None
    )


def smtp_source(
    port: int,
    count: int,
    concurrency: int,
    size: int,
    timeout: float,
    *,
    recipient: str = peers.USER,
) -> float:
    """Postfix's own load generator: `count` messages of `size` bytes to `recipient`, one
    per connection, `concurrency` sessions in parallel. Returns the wall-clock seconds."""
    source = smtp_source_path()
    if source is None:
        raise SystemExit("smtp-source not found (Debian package postfix)")
    started = time.perf_counter()
    done = subprocess.run(
        [source, "-s", str(concurrency), "-m", str(count), "-l", str(size), "-f", SENDER,
         "-t", recipient, "-M", "bench.client", f"127.0.0.1:{port}"],
        capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {done.stderr.decode(errors='replace')}")
    return time.perf_counter() - started


async def _reply(reader: asyncio.StreamReader, code: bytes) -> bytes:
    """One whole (possibly multi-line, RFC 5321 §4.2.1) reply, which must have `code`."""
    text = b""
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionError(f"connection closed after {text!r}")
        text += line
        if line[3:4] != b"-":
            break
    if not text.startswith(code):
        raise RuntimeError(f"expected {code.decode()}, got {text!r}")
    return text


async def smtp_transaction(port: int, message: bytes) -> float:
    """One SMTP transaction on a new connection; seconds from connect() to the 250 after
    the message data. MAIL, RCPT and DATA go in one write when PIPELINING is offered
    (RFC 2920 §3.1: DATA ends the group)."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader, b"220")
        writer.write(b"EHLO bench.client\r\n")
        pipelining = b"PIPELINING" in (await _reply(reader, b"250")).upper()
        commands = (f"MAIL FROM:<{SENDER}>\r\n".encode(), f"RCPT TO:<{peers.USER}>\r\n".encode())
        if pipelining:
            writer.write(b"".join(commands) + b"DATA\r\n")
            await _reply(reader, b"250")
            await _reply(reader, b"250")
        else:
            for command in commands:
                writer.write(command)
                await _reply(reader, b"250")
            writer.write(b"DATA\r\n")
        await _reply(reader, b"354")
        writer.write(message + b".\r\n")
        await _reply(reader, b"250")
        elapsed = time.perf_counter() - started
        writer.write(b"QUIT\r\n")
        await _reply(reader, b"221")
        return elapsed
    finally:
        writer.close()


async def _latencies(port: int, count: int, concurrency: int, seconds: float) -> list[float]:
    message = smtp_accept.MESSAGE
    deadline = time.monotonic() + seconds
    results: list[float] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            results.append(await asyncio.wait_for(smtp_transaction(port, message), 60))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if len(results) < count:
        raise RuntimeError(f"only {len(results)} of {count} transactions in {seconds:.0f}s")
    return results


def latencies(port: int, count: int, concurrency: int, seconds: float) -> list[float]:
    """Seconds per transaction, `count` of them at `concurrency` (uvloop when installed,
    so the client takes as little of the shared CPU as it can)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_latencies(port, count, concurrency, seconds))


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (the smallest value with at least p% of values at or below)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def pop3_retr_all(
    port: int, messages: int, window: int, seconds: float, cpu_seconds: Callable[[], float]
) -> Figures:
    """Log in as USER, LIST, then RETR every message, `window` RETRs in flight, with
    bench/pop3_retr.py's lean client; each message checked against its LIST size. Returns
    the RETR phase's messages/s and server CPU per 1,000 messages (login excluded: Homing
    hashes passwords with argon2id, the throwaway Dovecot compares plain text)."""
    client = pop3_retr.Client(port, tls=False)
    try:
        assert client.command(b"USER " + peers.USER.encode()).startswith(b"+OK")
        answer = client.command(b"PASS " + peers.PASSWORD.encode())
        assert answer.startswith(b"+OK"), answer
        assert client.command(b"LIST").startswith(b"+OK")
        start = client.pos
        client.multiline()
        listing = bytes(client.buf[start : client.pos - 3]).split(b"\r\n")
        sizes = [int(line.split()[1]) for line in listing if line]
        if len(sizes) != messages:
            raise RuntimeError(f"INBOX holds {len(sizes)} messages, expected {messages}")
        deadline = time.monotonic() + seconds
        cpu = cpu_seconds()
        started = time.perf_counter()
        sent = done = 0
        while done < messages:
            if sent - done <= window // 2 and sent < messages:
                batch = range(sent + 1, min(messages, done + window) + 1)
                client.sock.sendall(b"".join(b"RETR %d\r\n" % n for n in batch))
                sent = batch[-1]
            status = client.line()
            assert status.startswith(b"+OK"), status
            got = client.multiline(sizes[done])
            assert got >= sizes[done], (done, got, sizes[done])  # dot-stuffing may add bytes
            done += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"RETR of {messages} messages took over {seconds:.0f}s")
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds() - cpu
        assert client.command(b"QUIT").startswith(b"+OK")
        return {"rate": messages / elapsed, "cpu": 1000 * cpu / messages}
    finally:
        client.sock.close()


# --- scenarios -------------------------------------------------------------------------------

RATE = Metric("rate", "messages/s", higher_is_better=True)
CPU = Metric("cpu", "server CPU s per 1,000 messages", higher_is_better=False)


@scenario("smtp", "SMTP acceptance, durable", "Postfix", needs=("postfix",))
def smtp_acceptance(ctx: Context) -> Iterator[list[Case]]:
    """Postfix's `smtp-source` sends messages of 10 KiB, one per connection, one recipient,
    at concurrency 1, 10 and 50, to Homing's port-25 service and to a throwaway Postfix smtpd
    (default durability: the queue file is fsync'd before the 250; delivery by virtual(8) to
    a Maildir). Homing answers 250 once the message is committed to its store, that is
    already delivered to the mailbox. Messages/s is the rate smtp-source sees. Server CPU is
    the `homing serve` process tree, and for Postfix its master and every daemon (smtpd,
    cleanup, trivial-rewrite, qmgr, virtual, ...) read from /proc, sampled after the run once
    Postfix has delivered every message, so both include the work up to the mailbox."""
    options = ctx.options
    homing, postfix = ctx.homing_smtp(), ctx.postfix()
    count, size = options.smtp_messages, options.message_size

    def on_homing(level: int) -> Figures:
        cpu = homing.cpu_seconds()
        seconds = smtp_source(homing.ports["smtp"], count, level, size, options.max_seconds)
        cpu = homing.cpu_seconds() - cpu
        return {"rate": count / seconds, "cpu": 1000 * cpu / count}

    def on_postfix(level: int) -> Figures:
        delivered, cpu = postfix.delivered(), postfix.cpu_seconds()
        seconds = smtp_source(postfix.port, count, level, size, options.max_seconds)
        postfix.wait_delivered(delivered + count, options.max_seconds)
        cpu = postfix.cpu_seconds() - cpu
        return {"rate": count / seconds, "cpu": 1000 * cpu / count}

    yield [
        Case(
            f"concurrency {level}",
            (RATE, CPU),
            partial(on_homing, level),
            partial(on_postfix, level),
            targets={"rate": 1.0} if level >= 10 else {},
            warmup=n == 0,  # the first case warms both servers up for all
        )
        for n, level in enumerate(options.smtp_levels)
    ]


@scenario("latency", "SMTP transaction latency", "Postfix", needs=("postfix",))
def smtp_latency(ctx: Context) -> Iterator[list[Case]]:
    """A small asyncio client (uvloop) runs complete SMTP transactions, each on a new
    connection (EHLO, pipelined MAIL/RCPT/DATA, a 10 KiB message, QUIT), at concurrency 10;
    the latency of one transaction is from connect() to the 250 after the message data. The
    same Homing and Postfix instances as the acceptance scenario. The client shares the two
    cores with the server."""
    options = ctx.options
    homing, postfix = ctx.homing_smtp(), ctx.postfix()
    count, level = options.latency_transactions, options.latency_concurrency

    def measure(port: int) -> Figures:
        values = latencies(port, count, level, options.max_seconds)
        return {"p50": 1000 * percentile(values, 50), "p99": 1000 * percentile(values, 99)}

    def on_postfix() -> Figures:
        delivered = postfix.delivered()
        figures = measure(postfix.port)
        postfix.wait_delivered(delivered + count, options.max_seconds)  # a quiet machine next
        return figures

    yield [
        Case(
            f"concurrency {level}",
            (Metric("p50", "p50 ms", False), Metric("p99", "p99 ms", False)),
            lambda: measure(homing.ports["smtp"]),
            on_postfix,
            targets={"p99": 1.0},
        )
    ]


IMAP_USER = "imap@bench.test"  # the IMAP scenario's mailbox in the shared Dovecot
SCALE_USER = "scale@bench.test"  # the scale scenario's, in the shared Postfix and Dovecot
IDLE_MESSAGES = 20  # in each INBOX of the memory scenario
IDLE_MESSAGE_SIZE = 2048


def smtp_source_to(port: int, recipients: dict[str, int], sessions: int, seconds: float) -> None:
    """`smtp-source` runs in parallel, one per recipient with its count of 10 KiB messages,
    each over `sessions` connections that send message after message (-d)."""
    source = smtp_source_path()
    assert source is not None

    def command(recipient: str, count: int) -> list[str]:
        return [source, "-d", "-s", str(sessions), "-m", str(count), "-l", "10240", "-f",
                SENDER, "-t", recipient, "-M", "bench.client", f"127.0.0.1:{port}"]  # fmt: skip

    runs = [
        subprocess.Popen(
            command(recipient, count), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for recipient, count in recipients.items()
        if count
    ]
    try:
        failed = [run for run in runs if run.wait(timeout=seconds) != 0]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait(timeout=10)
    if failed:
        assert failed[0].stderr is not None
        raise RuntimeError(
            f"smtp-source failed: {failed[0].stderr.read().decode(errors='replace')}"
        )


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {seconds:.0f}s")
        time.sleep(0.02)


@scenario("relay", "Relay to smtp-sink", "Postfix", needs=("postfix",))
def relay_to_sink(ctx: Context) -> Iterator[list[Case]]:
    """Queued messages of about 10 KiB, one recipient each, for 1 and for 10 remote domains,
    are delivered to Postfix's `smtp-sink` on 127.0.0.1, which counts them and throws them
    away. Each side's queue is filled first and then released, and the clock runs from the
    release to the sink's count of the last message. Homing: entries queued through its store
    API (bench/relay.py's `fill`) with a next attempt a day ahead, then `homing queue retry
    --all` done in-process (every entry due now, SIGUSR1 to `homing serve`); its queue
    runner relays them through `[outbound] smarthost` = 127.0.0.1:the sink's port without
    TLS, up to 5 SMTP sessions per destination domain at once (`[queue]
    destination_concurrency`), up to 100 messages per session.
    Postfix: a second instance whose smtpd puts what it accepts on hold (access(5) HOLD),
    filled by `smtp-source`; released with `postsuper -H ALL` and `postqueue -f`; its own
    smtp(8) client relays to `relayhost = [127.0.0.1]:port` with its default concurrency
    (up to 20 sessions per destination, connection reuse). Server CPU is counted from the
    release until each queue is empty again."""
    options = ctx.options
    sink = ctx.smtp_sink()
    outbound = {
        "smarthost": '"127.0.0.1"',
        "smarthost_port": str(sink.port),
        "smarthost_tls": '"none"',
        "smarthost_tls_verify": "false",
    }
    # SMTP on, though unused: `homing serve` reports its PID and ports once listening. The
    # store as this process opens it queues entries due a day from now (until released).
    settings = {"listen": {"smtp": homing_server.LOOPBACK}, "outbound": outbound}
    homing, store = ctx.homing("relay", settings, FakeClock(time.time() + 86400))
    postfix = ctx.postfix_relay(sink.port)
    count, size, limit = options.relay_messages, options.message_size, options.max_seconds

    def on_homing(domains: int) -> Figures:
        relay.fill(store, count, domains, size)
        received, cpu = sink.received(), homing.cpu_seconds()
        started = time.perf_counter()
        store.spool.retry(None, time.time())
        homing.process.send_signal(signal.SIGUSR1)  # as `homing queue retry --all` does
        sink.wait_received(received + count, limit)
        elapsed = time.perf_counter() - started
        wait_until(lambda: store.spool.count() == 0, limit, "Homing's queue empties")
        cpu = homing.cpu_seconds() - cpu
        return {"rate": count / elapsed, "cpu": 1000 * cpu / count}

    def on_postfix(domains: int) -> Figures:
        recipients = {
            f"rcpt@remote{k}.test": count // domains + (k < count % domains) for k in range(domains)
        }
        smtp_source_to(postfix.port, recipients, 2, limit)
        postfix.wait_queued(count, limit, ("hold",))
        received, cpu = sink.received(), postfix.cpu_seconds()
        started = time.perf_counter()
        postfix.release()
        sink.wait_received(received + count, limit)
        elapsed = time.perf_counter() - started
        postfix.wait_queued(0, limit)
        cpu = postfix.cpu_seconds() - cpu
        return {"rate": count / elapsed, "cpu": 1000 * cpu / count}

    yield [
        Case(
            f"{domains} domain{'s' if domains > 1 else ''}",
            (RATE, CPU),
            partial(on_homing, domains),
            partial(on_postfix, domains),
            warmup=n == 0,
        )
        for n, domains in enumerate(options.relay_domains)
    ]


@scenario("pop3", "POP3 RETR of a whole INBOX", "Dovecot", needs=("dovecot-pop3d",))
def pop3_retr_inbox(ctx: Context) -> Iterator[list[Case]]:
    """One POP3 session (clear text on 127.0.0.1) logs in, LISTs, and RETRs every message of
    an INBOX of 10 KiB messages, 64 RETRs pipelined, with bench/pop3_retr.py's lean client.
    The same messages in both: Homing's store is filled through its API, Dovecot's INBOX is
    a Maildir written directly (as Dovecot's own delivery writes it, sizes in file names).
    One untimed pass first, so Dovecot has built its index and both have a warm page cache.
    Figures are for the RETRs only (not login or LIST); server CPU is `homing serve`, and
    for Dovecot all its processes (master, login, auth, pop3, ...)."""
    options = ctx.options
    count = options.pop3_messages
    homing = ctx.homing_pop3(count)
    dovecot = ctx.dovecot()
    dovecot.fill_inbox(pop3_retr.make_message(n, options.message_size) for n in range(count))

    def run(port: int, cpu_seconds: Callable[[], float]) -> Figures:
        return pop3_retr_all(port, count, options.pop3_window, options.max_seconds, cpu_seconds)

    yield [
        Case(
            f"{count:,} messages",
            (RATE, CPU),
            lambda: run(homing.ports["pop3"], homing.cpu_seconds),
            lambda: run(dovecot.ports["pop3"], dovecot.cpu_seconds),
            targets={"rate": 1.0},
            warmup=True,
        )
    ]


def imap_reader(port: int, user: str) -> imap_clients.MailboxReader:
    return imap_clients.MailboxReader(
        port, tls=not homing_server.IMAP_PLAINTEXT, user=user, password=peers.PASSWORD
    )


def dovecot_imap_port(dovecot: peers.Dovecot) -> int:
    return dovecot.ports["imap" if homing_server.IMAP_PLAINTEXT else "imaps"]


def imap_transport() -> str:
    """The scenario note on how the IMAP clients connect (see bench/homing_server.py)."""
    if homing_server.IMAP_PLAINTEXT:
        return "IMAP over plain TCP on 127.0.0.1 for both (no TLS; `--imap-tls` for TLS)."
    return (
        "IMAP over implicit TLS on 127.0.0.1 for both (TLS 1.3, AES-256-GCM; `--imap-tls`, or "
        "a Homing without `[imap] allow_plaintext_loopback`)."
    )


@scenario(
    "imap",
    "IMAP reads of a whole mailbox",
    "Dovecot",
    needs=("dovecot-imapd",),
    notes=imap_transport,
)
def imap_mailbox(ctx: Context) -> Iterator[list[Case]]:
    """Python's imaplib (as the issue's reference figures for Dovecot were measured) logs in
    and, timed one by one, SELECTs an INBOX of 10 KiB messages and FETCHes `1:* (UID FLAGS
    RFC822.SIZE ENVELOPE)`, then `FETCH 1:* BODY.PEEK[]`, then `SEARCH TEXT "needle"` (a
    word in the body of one message in 50, nowhere else). Every answer is checked: one per
    message, full-size bodies, every needle found. The same messages in both: Homing's store
    filled through its API, Dovecot's INBOX a Maildir written as its delivery would (sizes in
    the file names). One untimed pass first: Dovecot builds its index and cache, both warm
    the page cache. Dovecot searches without a full-text index (none is configured by
    default), Homing with none either."""
    options = ctx.options
    count, size = options.imap_messages, options.message_size
    settings = homing_server.imap_settings()
    homing, store = ctx.homing("imap", settings)
    if store.get_account(peers.USER) is None:
        [account] = homing_server.add_accounts(store, [peers.USER], peers.PASSWORD)
        homing_server.fill(store, ((account, imap_clients.message(n, size)) for n in range(count)))
    dovecot = ctx.dovecot()
    dovecot.add_users([IMAP_USER])
    dovecot.fill_inbox((imap_clients.message(n, size) for n in range(count)), IMAP_USER)
    needles = imap_clients.needles(count)

    ciphers: set[str] = set()

    def run(port: int, user: str) -> Figures:
        reader = imap_reader(port, user)
        ciphers.add(reader.cipher())
        if len(ciphers) > 1:  # the transports must be alike for the figures to compare
            raise RuntimeError(f"Homing and Dovecot negotiated {' and '.join(sorted(ciphers))}")
        try:
            select_fetch = imap_clients.timed(lambda: reader.select_and_fetch_envelopes(count))
            bodies = imap_clients.timed(lambda: reader.fetch_bodies(count, size))
            search = imap_clients.timed(lambda: reader.search_text(imap_clients.NEEDLE, needles))
        finally:
            reader.close()
        return {"envelope": select_fetch, "body": bodies, "search": search}

    yield [
        Case(
            f"{count:,} messages",
            (
                Metric("envelope", "s, SELECT + FETCH ENVELOPE", False),
                Metric("body", "s, FETCH BODY.PEEK[]", False),
                Metric("search", 's, SEARCH TEXT "needle"', False),
            ),
            lambda: run(homing.ports[homing_server.imap_listener()], peers.USER),
            lambda: run(dovecot_imap_port(dovecot), IMAP_USER),
            targets={"envelope": 1.0, "body": 1.0},
            warmup=True,
        )
    ]


def raise_open_files(needed: int) -> None:
    """The soft limit on open files up to the hard one (servers started later inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"{needed} open files needed, the hard limit is {hard}: ulimit -Hn")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@scenario(
    "memory",
    "Memory of idle IMAP sessions",
    "Dovecot",
    needs=("dovecot-imapd",),
    notes=lambda: "Both cases for both servers on 127.0.0.1: plain TCP, and implicit TLS.",
)
def idle_memory(ctx: Context) -> Iterator[list[Case]]:
    """1,000 IMAP sessions (`--quick`: 100), one per account, each logged in with INBOX (20
    messages of 2 KiB) selected and in IDLE (RFC 2177), opened 25 at a time by a small asyncio
    client, in clear text and again over implicit TLS (TLS 1.3, as mail clients connect),
    then held while the servers' memory is read from /proc: for Homing the `homing
    serve` process, for Dovecot all its processes (master, log, config, anvil, auth,
    imap-login, and one imap process per session, Dovecot's design). Each round starts
    both servers afresh; the figure per session is the growth over the freshly started
    server divided by the sessions. RSS counts the pages shared between Dovecot's
    processes (libraries) once per process; PSS divides them among the processes sharing
    them. Dovecot's login processes run in its high-performance mode (service_count = 0),
    its limits raised to the session count; its IDLE hibernation is off, as by default.
    Homing's accounts have argon2id password hashes of light cost (its app-password
    parameters), so 1,000 logins take seconds (LOGIN costs are not what is measured)."""
    options = ctx.options
    sessions = options.idle_sessions
    raise_open_files(2 * sessions + 200)
    users = [f"idle{n}@bench.test" for n in range(sessions)]
    mail = [imap_clients.message(n, IDLE_MESSAGE_SIZE) for n in range(IDLE_MESSAGES)]
    base = ctx.base / "homing-idle"
    base.mkdir()
    settings = homing_server.merge(
        homing_server.imap_settings(),
        {
            "listen": {"imaps": homing_server.LOOPBACK},  # the TLS case; beside clear text
            "limits": {
                "connections_per_ip": str(sessions + 100),
                "connections": str(2 * sessions + 100),
            },
        },
    )
    config = homing_server.create(base, settings)
    with homing_server.open_store(config) as store:
        accounts = homing_server.add_accounts(store, users, peers.PASSWORD, light=True)
        homing_server.fill(store, ((account, body) for account in accounts for body in mail))
    login = {
        "service_count": "0",  # high-performance mode: few login processes, many clients each
        "process_min_avail": str(os.cpu_count() or 1),
        "client_limit": str(sessions + 100),
        "vsz_limit": "1G",
    }
    extra = (
        f"default_client_limit = {4 * sessions + 1000}\n"
        f"service imap {{\n  process_limit = {sessions + 100}\n}}\n"
        f"protocol imap {{\n  mail_max_userip_connections = {sessions + 10}\n}}\n"
    )
    dovecot = peers.Dovecot.configure(
        ctx.base / "dovecot-idle",
        ["imap"],
        tls=True,
        login=login,
        extra=extra,
    )
    dovecot.add_users(users)
    for user in users:
        dovecot.fill_inbox(mail, user)

    def measure(port: int, memory: Callable[[], peers.Memory], tls: bool) -> Figures:
        before = memory()
        run = imap_clients.IdleRun(port, tls, users, peers.PASSWORD, seconds=options.max_seconds)

        def settled() -> peers.Memory:
            time.sleep(1.0)  # the last sessions' processes finish setting up
            return memory()

        after = imap_clients.hold_idle(run, settled)
        return {
            "rss": (after.rss - before.rss) / sessions,
            "pss": (after.pss - before.pss) / sessions,
            "total": after.rss / 1024,
        }

    def on_homing(tls: bool) -> Figures:
        server = Homing.start(config)
        try:
            return measure(server.ports["imaps" if tls else "imap"], server.memory, tls)
        finally:
            server.stop()

    def on_dovecot(tls: bool) -> Figures:
        dovecot.run()
        try:
            return measure(dovecot.ports["imaps" if tls else "imap"], dovecot.memory, tls)
        finally:
            dovecot.stop()

    # Clear text (when this Homing allows it on loopback) and TLS, as mail clients connect.
    transports = [False, True] if homing_server.IMAP_PLAINTEXT else [True]
    yield [
        Case(
            f"{sessions:,} sessions in IDLE" + (" over TLS" if tls else ""),
            (
                Metric("rss", "KiB RSS per session", False),
                Metric("pss", "KiB PSS per session", False),
                Metric("total", "MiB RSS in all", False),
            ),
            partial(on_homing, tls),
            partial(on_dovecot, tls),
            limits={"rss": 50.0},
            warmup=n == 0,  # Dovecot writes its index files at the first login
            rounds=options.idle_rounds,
        )
        for n, tls in enumerate(transports)
    ]


@scenario(
    "scale",
    "Scale with stored messages",
    "Postfix and Dovecot",
    needs=("postfix", "dovecot-imapd"),
    notes=imap_transport,
)
def scale(ctx: Context) -> Iterator[list[Case]]:
    """The SMTP acceptance (`smtp-source`, 10 KiB messages, concurrency 10) and the IMAP
    `SELECT` + `FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)` figures with 1,000, 10,000 and
    100,000 messages (`--quick`: 1,000 and 5,000) of 10 KiB already in the mailbox, to show
    how the cost grows. Homing: one instance, its INBOX filled through the store API
    (`homing serve` stopped meanwhile) up to each size in turn. Postfix: the acceptance
    scenario's instance, delivering to a second Maildir filled up to the same sizes. Dovecot:
    the IMAP scenario's instance, a second user's INBOX filled the same way. SMTP rounds
    deliver into the counted mailbox, and what they delivered is removed after each round
    (Homing: an expunge through the store API; Postfix: the new files), so every round
    starts at the stated size. The FETCH runs as in the IMAP scenario (imaplib, one untimed
    pass at each size first)."""
    options = ctx.options
    size, count, limit = options.message_size, options.scale_smtp_messages, options.max_seconds
    settings = homing_server.merge(
        homing_server.imap_settings(),
        {
            "listen": {"smtp": homing_server.LOOPBACK},
            "limits": {"connections_per_ip": "1000"},
            "smtp": {"workers": str(options.smtp_workers)},
        },
    )
    homing, store = ctx.homing("scale", settings)
    [account] = homing_server.add_accounts(store, [peers.USER], peers.PASSWORD)
    inbox = store.get_mailbox(account, "INBOX")
    assert inbox is not None
    postfix = ctx.postfix()
    dovecot = ctx.dovecot()
    dovecot.add_users([SCALE_USER])
    stored = {"homing": 0, "postfix": 0, "dovecot": 0}
    first_new_uid = [1]  # Homing's UIDs from here on came by SMTP

    def fill_to(level: int) -> None:
        started = time.monotonic()
        homing.stop()
        mail = ((account, pop3_retr.make_message(n, size)) for n in range(stored["homing"], level))
        stored["homing"] += homing_server.fill(store, mail)
        homing.restart()
        info = store.get_mailbox(account, "INBOX")
        assert info is not None and info.messages == level, info
        first_new_uid[0] = info.uidnext
        more = range(stored["postfix"], level)
        stored["postfix"] += postfix.fill_maildir(
            SCALE_USER, (pop3_retr.make_message(n, size) for n in more)
        )
        more = range(stored["dovecot"], level)
        stored["dovecot"] += dovecot.fill_inbox(
            (pop3_retr.make_message(n, size) for n in more), SCALE_USER
        )
        print(
            f"  filled every mailbox to {level:,} in {time.monotonic() - started:.0f}s", flush=True
        )

    def trim_homing() -> None:
        info = store.get_mailbox(account, "INBOX")
        assert info is not None
        store.expunge(inbox.id, range(first_new_uid[0], info.uidnext), force=True).result()

    def smtp_homing() -> Figures:
        cpu = homing.cpu_seconds()
        seconds = smtp_source(homing.ports["smtp"], count, 10, size, limit)
        cpu = homing.cpu_seconds() - cpu
        trim_homing()
        return {"rate": count / seconds, "cpu": 1000 * cpu / count}

    def smtp_postfix() -> Figures:
        delivered, cpu = postfix.delivered(SCALE_USER), postfix.cpu_seconds()
        seconds = smtp_source(postfix.port, count, 10, size, limit, recipient=SCALE_USER)
        postfix.wait_delivered(delivered + count, limit, SCALE_USER)
        cpu = postfix.cpu_seconds() - cpu
        postfix.trim_maildir(SCALE_USER)
        return {"rate": count / seconds, "cpu": 1000 * cpu / count}

    def fetch(port: Callable[[], int], user: str, level: int) -> Figures:
        reader = imap_reader(port(), user)
        try:
            seconds = imap_clients.timed(lambda: reader.select_and_fetch_envelopes(level))
        finally:
            reader.close()
        return {"envelope": seconds}

    cases = []
    for level in options.scale_levels:
        cases += [
            Case(
                f"{level:,} stored: SELECT + FETCH ENVELOPE",
                (Metric("envelope", "seconds", False),),
                partial(
                    fetch, lambda: homing.ports[homing_server.imap_listener()], peers.USER, level
                ),
                partial(fetch, lambda: dovecot_imap_port(dovecot), SCALE_USER, level),
                targets={"envelope": 1.0},
                warmup=True,
                prepare=partial(fill_to, level),
                peer_name="Dovecot",
            ),
            Case(
                f"{level:,} stored: SMTP concurrency 10",
                (RATE, CPU),
                smtp_homing,
                smtp_postfix,
                targets={"rate": 1.0},
                peer_name="Postfix",
            ),
        ]
    yield cases


@scenario(
    "qresync",
    "IMAP resync after 10 flag changes",
    "Dovecot",
    needs=("dovecot-imapd",),
    notes=imap_transport,
)
def imap_resync(ctx: Context) -> Iterator[list[Case]]:
    """A synchronising client reconnects to an INBOX of 10,000 messages of 10 KiB (`--quick`:
    1,000) after another IMAP session changed the flags of 10 of them, and learns what
    changed: plain (`SELECT INBOX`, `UID FETCH 1:* (FLAGS)`, compared with its copy),
    CONDSTORE (`SELECT INBOX (CONDSTORE)`, `UID FETCH 1:* (FLAGS) (CHANGEDSINCE m)`) or
    QRESYNC (`ENABLE QRESYNC`, `SELECT INBOX (QRESYNC (uidvalidity m))`, RFC 7162), the last
    also after the other session expunged 3 more messages, so the answer carries `VANISHED
    (EARLIER)`. Bytes received (counted on the socket) and milliseconds run from the first
    resync command to the last tagged OK, with bench/qresync.py's lean client; each round's
    figure is the median of 5 resyncs (`--quick`: 3), each after its own changes. The
    reconnection before it (connect, greeting, LOGIN until its OK) is measured apart, as its
    own case; Homing's account has an argon2id hash of its app passwords' cost, Dovecot's
    passwd-file plain text. Every answer is checked: exactly the 10 changed UIDs with
    their new flags, exactly the expunged UIDs as VANISHED, MODSEQs above m. The same messages
    in both: Homing's store filled through its API, Dovecot's INBOX a Maildir (the IMAP
    scenario's Dovecot, a user of its own)."""
    if not homing_server.IMAP_PLAINTEXT:
        raise SystemExit("the qresync scenario needs Homing's [imap] allow_plaintext_loopback")
    options = ctx.options
    count, size, repeats = options.qresync_messages, options.message_size, options.qresync_repeats
    homing, store = ctx.homing("qresync", homing_server.imap_settings())
    if store.get_account(peers.USER) is None:
        qresync.fill_homing(store, count, size)
    dovecot = ctx.dovecot()
    qresync.fill_dovecot(dovecot, count, size)
    listener = homing_server.imap_listener()
    on_homing = qresync.Mailbox(
        "Homing", lambda: homing.ports[listener], peers.USER, peers.PASSWORD
    )
    on_dovecot = qresync.Mailbox(
        "Dovecot", lambda: dovecot_imap_port(dovecot), qresync.DOVECOT_USER, peers.PASSWORD
    )
    for side in (on_homing, on_dovecot):
        side.load(count)
    metrics = (Metric("bytes", "bytes received", False), Metric("ms", "ms", False))
    login = Case(
        qresync.LOGIN_TITLE,
        metrics,
        partial(on_homing.run_login, repeats, options.max_seconds),
        partial(on_dovecot.run_login, repeats, options.max_seconds),
        warmup=True,
    )
    yield [login] + [
        Case(
            mode.title,
            metrics,
            partial(on_homing.run, mode, repeats, options.max_seconds),
            partial(on_dovecot.run, mode, repeats, options.max_seconds),
            # a synchronising client should reconnect to Homing at least as cheaply
            targets={"bytes": 1.0, "ms": 1.0} if mode.reports_vanished else {},
            warmup=True,
        )
        for mode in qresync.MODES
    ]


# --- running ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: Scenario
    case: Case
    homing: list[Figures]
    peer: list[Figures]

    @property
    def peer_name(self) -> str:
        return self.case.peer_name or self.scenario.peer


@dataclass(frozen=True)
class Summary:
    """Median and range of one metric for both sides, and of the paired ratios."""

    homing: tuple[float, float, float]
    peer: tuple[float, float, float]
    ratio: tuple[float, float, float]


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    items = list(values)
    return statistics.median(items), min(items), max(items)


def summarise(outcome: Outcome, metric: Metric) -> Summary:
    homing = [figures[metric.key] for figures in outcome.homing]
    peer = [figures[metric.key] for figures in outcome.peer]
    ratios = [h / p if p else math.inf for h, p in zip(homing, peer, strict=True)]
    return Summary(spread(homing), spread(peer), spread(ratios))


def homing_better(metric: Metric, ratio: float) -> bool:
    return ratio > 1 if metric.higher_is_better else ratio < 1


def target_met(metric: Metric, ratio: float, target: float) -> bool:
    return ratio >= target if metric.higher_is_better else ratio <= target


def run_case(sc: Scenario, case: Case, rounds: int, started: float) -> Outcome:
    outcome = Outcome(sc, case, [], [])
    rounds = case.rounds or rounds
    if case.prepare is not None:
        case.prepare()
    if case.warmup:
        print(f"  {sc.key} {case.name}: warm-up pass of each", flush=True)
        case.homing()
        case.peer()
    for n in range(1, rounds + 1):
        outcome.homing.append(case.homing())
        outcome.peer.append(case.peer())
        shown = "  ".join(
            f"{m.label}: Homing {number(outcome.homing[-1][m.key])}"
            f" / {outcome.peer_name} {number(outcome.peer[-1][m.key])}"
            for m in case.metrics
        )
        elapsed = time.monotonic() - started
        print(f"[{elapsed:5.0f}s] {sc.key} {case.name} round {n}/{rounds}: {shown}", flush=True)
    return outcome


def run(options: Options, selected: list[Scenario], base: Path) -> list[Outcome]:
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with ExitStack() as stack:
        ctx = Context(options, base, stack)
        for sc in selected:
            print(f"{sc.title} (Homing vs {sc.peer})", flush=True)
            with sc.setup(ctx) as cases:
                outcomes.extend(run_case(sc, case, options.rounds, started) for case in cases)
    return outcomes


# --- reporting -------------------------------------------------------------------------------


def number(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(values: tuple[float, float, float]) -> str:
    median, low, high = values
    return f"{number(median)} ({number(low)}–{number(high)})"


def machine(
    selected: list[Scenario], base: Path, load_before: tuple[float, float, float]
) -> list[tuple[str, str]]:
    def run_text(*command: str) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.machine(),
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    memory = int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 / 1024
    os_name = "unknown"
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    debian = Path("/etc/debian_version")
    if debian.exists():
        os_name += f" ({debian.read_text().strip()})"
    commit = run_text("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD") or "unknown"
    if run_text("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"):
        commit += " with uncommitted changes"
    try:
        loop = f"uvloop {importlib.metadata.version('uvloop')}"
    except importlib.metadata.PackageNotFoundError:
        loop = "asyncio (no uvloop)"
    rows = [
        ("CPU", f"{model}, {os.cpu_count()} logical CPUs"),
        ("Memory", f"{memory:.1f} GiB"),
        ("OS", f"{os_name}, Linux {platform.release()}"),
        ("Python", f"{platform.python_version()}, {loop}"),
        ("Homing", f"commit {commit}"),
    ]
    peers_used = " ".join(sc.peer for sc in selected)
    if "Postfix" in peers_used:
        rows.append(("Postfix", peers.postfix_version()))
    if "Dovecot" in peers_used:
        rows.append(("Dovecot", peers.dovecot_version()))
    filesystem = run_text("df", "--output=fstype", str(base)).split()[-1:] or ["unknown"]
    rows.append(("Data directories", f"{base.parent} ({filesystem[0]})"))
    load_after = os.getloadavg()
    rows.append(
        (
            "Load average (1, 5 min)",
            f"{load_before[0]:.2f}, {load_before[1]:.2f} before the run; "
            f"{load_after[0]:.2f}, {load_after[1]:.2f} after it (the benchmark's own servers "
            "and clients count too; far above the CPU count means other work shared the "
            "machine)",
        )
    )
    return rows


def markdown(
    outcomes: list[Outcome], options: Options, rows: list[tuple[str, str]], seconds: float
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if options.quick:
        kind = "quick smoke run (`bench/run --quick`): small counts, not for comparison"
    else:
        kind = "full run (`bench/run`)"
    fewer = sorted(
        {f"{o.scenario.key} {len(o.homing)}" for o in outcomes if len(o.homing) != options.rounds}
    )
    exceptions = f" (but {', '.join(fewer)})" if fewer else ""
    out = [
        "# Homing side by side with Postfix and Dovecot",
        "",
        f"{now}, {kind}; {options.rounds} rounds per case{exceptions}, run interleaved "
        f"(Homing, peer, Homing, peer, ...); {seconds / 60:.1f} minutes in all.",
        "",
        "Each cell: median (min–max) over the rounds. **Homing/peer** is the ratio of each "
        "round's pair, median (min–max): above 1 is more for Homing, so better for "
        "messages/s and worse for CPU, seconds, milliseconds or memory (the *Better* column "
        "says which). *Target* is the project's goal for that ratio, or (*Homing ≤ x*) for "
        "Homing's own median.",
        "",
        "| Scenario | Case | Metric | Better | Homing | Peer | Homing/peer | Target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts: list[str] = []
    for outcome in outcomes:
        sc, case, peer = outcome.scenario, outcome.case, outcome.peer_name
        for metric in case.metrics:
            summary = summarise(outcome, metric)
            sign = "≥" if metric.higher_is_better else "≤"
            goals = []
            target = case.targets.get(metric.key)
            if target is not None:
                met = target_met(metric, summary.ratio[0], target)
                goals.append(f"{sign} {target:.1f}: {'met' if met else '**not met**'}")
                verdicts.append(
                    f"- {sc.title}, {case.name}, {metric.label}: Homing/{peer} "
                    f"{number(summary.ratio[0])} against a target of {sign} {target:.1f}: "
                    f"{'met' if met else 'not met'}."
                )
            limit = case.limits.get(metric.key)
            if limit is not None:
                met = target_met(metric, summary.homing[0], limit)
                goals.append(f"Homing {sign} {number(limit)}: {'met' if met else '**not met**'}")
                verdicts.append(
                    f"- {sc.title}, {case.name}, {metric.label}: Homing "
                    f"{number(summary.homing[0])} against a target of {sign} {number(limit)}: "
                    f"{'met' if met else 'not met'}."
                )
            better = "higher" if metric.higher_is_better else "lower"
            out.append(
                f"| {sc.title} (vs {peer}) | {case.name} | {metric.label} | {better} "
                f"| {cell(summary.homing)} | {cell(summary.peer)} | **{cell(summary.ratio)}** "
                f"| {'; '.join(goals)} |"
            )
    out += ["", "## Where Homing stands", "", *verdicts, ""]
    out += [
        "Homing runs asyncio on uvloop, with SQLite in WAL mode and a group-committing "
        "writer thread. One process runs on one core at a time. In the SMTP acceptance and "
        f"latency scenarios, port 25 is served by {options.smtp_workers} worker processes "
        "(`[smtp] workers`; 0 means the main process serves it). Every other scenario runs "
        "in one process. Postfix and Dovecot spread over many C processes. On this machine "
        "the load generator runs on the same cores as the server under test, for both sides "
        "alike.",
        "",
        "## What each scenario measures",
        "",
    ]
    seen: set[str] = set()
    for outcome in outcomes:
        if outcome.scenario.key not in seen:
            seen.add(outcome.scenario.key)
            out += [f"**{outcome.scenario.title}** (`--only {outcome.scenario.key}`). "
                    f"{outcome.scenario.description}", ""]  # fmt: skip
    out += [
        f"Counts: SMTP acceptance {options.smtp_messages:,} messages per concurrency level per "
        f"side per round; latency {options.latency_transactions:,} transactions per side per "
        f"round; relay {options.relay_messages:,} messages per side per round; POP3 INBOX of "
        f"{options.pop3_messages:,} messages; IMAP INBOX of {options.imap_messages:,} "
        f"messages; {options.idle_sessions:,} idle IMAP sessions; scale "
        f"{', '.join(f'{level:,}' for level in options.scale_levels)} stored messages, "
        f"{options.scale_smtp_messages:,} SMTP messages per side per round; resync INBOX of "
        f"{options.qresync_messages:,} messages, {options.qresync_repeats} resyncs per side "
        f"per round; messages of {options.message_size:,} bytes.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in rows),
        "",
        "<details><summary>Every round</summary>",
        "",
        "| Scenario | Case | Metric | Round | Homing | Peer |",
        "|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        for metric in outcome.case.metrics:
            for n, (h, p) in enumerate(zip(outcome.homing, outcome.peer, strict=True), 1):
                out.append(
                    f"| {outcome.scenario.key} | {outcome.case.name} | {metric.label} | {n} "
                    f"| {number(h[metric.key])} | {number(p[metric.key])} |"
                )
    out += ["", "</details>", ""]
    return "\n".join(out)


def chart(outcomes: list[Outcome], path: Path, options: Options) -> None:
    """One horizontal bar per metric, drawn from 1.0 to the median ratio Homing/peer on a
    log scale, with the min-max of the paired rounds as whiskers; green where Homing does
    better, red where the peer does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    rows: list[tuple[str, tuple[float, float, float], str]] = []
    for outcome in outcomes:
        for metric in outcome.case.metrics:
            ratio = summarise(outcome, metric).ratio
            direction = "higher" if metric.higher_is_better else "lower"
            label = (
                f"{outcome.scenario.title}, {outcome.case.name}\n"
                f"{metric.label} ({direction} is better), vs {outcome.peer_name}"
            )
            colour = "#2e8b57" if homing_better(metric, ratio[0]) else "#c0392b"
            rows.append((label, ratio, colour))
    finite = [v for _, r, _ in rows for v in r if 0 < v < math.inf] or [1.0]
    # room beyond the longest bars for their labels (a ratio can be 0.01: memory)
    low, high = min([*finite, 0.5]) / 3, max([*finite, 2.0]) * 3
    clip = [(min(max(m, low), high), min(max(a, low), high), min(max(b, low), high))
            for _, (m, a, b), _ in rows]  # fmt: skip
    figure, axes = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.5))
    positions = list(range(len(rows)))[::-1]
    for y, (_, ratio, colour), (m, a, b) in zip(positions, rows, clip, strict=True):
        axes.barh(y, m - 1.0, left=1.0, height=0.6, color=colour)
        axes.errorbar(m, y, xerr=[[m - a], [b - m]], color="black", capsize=3, linewidth=1)
        right = m >= 1.0
        axes.annotate(
            f"{number(ratio[0])}×",
            (b if right else a, y),
            xytext=(5 if right else -5, 0),
            textcoords="offset points",
            ha="left" if right else "right",
            va="center",
            fontsize=8,
        )
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xscale("log")
    axes.set_xlim(low, high)
    steps = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
    ticks = [t for t in steps if low <= t <= high]
    axes.xaxis.set_major_locator(FixedLocator(ticks))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
    axes.set_yticks(positions, [label for label, _, _ in rows], fontsize=8)
    axes.set_xlabel("Homing / peer: median of the paired rounds (whiskers: min–max)")
    kind = "quick smoke run, not for comparison" if options.quick else f"{options.rounds} rounds"
    axes.set_title(
        f"Homing vs Postfix and Dovecot ({kind})\ngreen: Homing better, red: the peer better",
        fontsize=10,
    )
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- command line ----------------------------------------------------------------------------


def ensure_chart_library(install: bool) -> None:
    """matplotlib from the `bench` extra of pyproject.toml, installed into this Python when
    absent (the pins live there only)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not install:
            raise SystemExit(
                "matplotlib missing: pip install -e '.[bench]', or --no-chart"
            ) from None
        extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        requirements = extra["optional-dependencies"]["bench"]
        print(f"installing {' '.join(requirements)}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", *requirements], check=True, timeout=900
        )


def options_from(args: argparse.Namespace) -> Options:
    quick = bool(args.quick)
    rounds = args.rounds or (2 if quick else 7)
    default_levels = "1000,5000" if quick else "1000,10000,100000"
    return Options(
        quick=quick,
        rounds=rounds,
        smtp_messages=args.smtp_messages or (150 if quick else 2000),
        smtp_levels=tuple(int(level) for level in args.concurrency.split(",")),
        smtp_workers=args.smtp_workers,
        latency_transactions=args.latency_transactions or (200 if quick else 2000),
        latency_concurrency=10,
        pop3_messages=args.pop3_messages or (1000 if quick else 10_000),
        message_size=10 * 1024,
        pop3_window=64,
        relay_messages=args.relay_messages or (200 if quick else 2000),
        relay_domains=(1, 10),
        imap_messages=args.imap_messages or (1000 if quick else 10_000),
        idle_sessions=args.idle_sessions or (100 if quick else 1000),
        idle_rounds=min(rounds, 3),  # memory figures hardly vary; each round is costly
        scale_levels=tuple(int(n) for n in (args.scale_levels or default_levels).split(",")),
        scale_smtp_messages=args.scale_smtp_messages or (150 if quick else 1000),
        qresync_messages=args.qresync_messages or (1000 if quick else 10_000),
        qresync_repeats=3 if quick else 5,
        max_seconds=args.max_seconds,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="Benchmark Homing side by side with Postfix and Dovecot on this machine.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke check: small counts, 2 rounds")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios ({', '.join(SCENARIOS)})"
    )
    parser.add_argument("--rounds", type=int, default=0, help="rounds per case (7; quick: 2)")
    parser.add_argument("--smtp-messages", type=int, default=0, help="per level (2000; quick 150)")
    parser.add_argument("--concurrency", default="1,10,50", help="SMTP acceptance levels")
    parser.add_argument(
        "--smtp-workers", type=int, default=2, help="Homing's [smtp] workers (2; 0: in-process)"
    )
    parser.add_argument("--latency-transactions", type=int, default=0, help="(2000; quick 200)")
    parser.add_argument("--pop3-messages", type=int, default=0, help="INBOX size (10000; 1000)")
    parser.add_argument("--relay-messages", type=int, default=0, help="per round (2000; 200)")
    parser.add_argument("--imap-messages", type=int, default=0, help="INBOX size (10000; 1000)")
    parser.add_argument("--idle-sessions", type=int, default=0, help="IMAP IDLE (1000; 100)")
    parser.add_argument(
        "--scale-levels", default="", help="stored messages (1000,10000,100000; 1000,5000)"
    )
    parser.add_argument(
        "--scale-smtp-messages", type=int, default=0, help="per round and level (1000; 150)"
    )
    parser.add_argument(
        "--imap-tls",
        action="store_true",
        help="IMAP over implicit TLS in the imap and memory scenarios (default: plain TCP)",
    )
    parser.add_argument("--qresync-messages", type=int, default=0, help="INBOX size (10000; 1000)")
    parser.add_argument("--max-seconds", type=float, default=300, help="limit for one run")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="markdown file; the chart goes beside it as .png "
        "(default bench/results/latest.md; --quick: bench/results/quick.md)",
    )
    parser.add_argument("--no-chart", action="store_true", help="write the table only")
    parser.add_argument(
        "--no-install", action="store_true", help="fail instead of installing what is missing"
    )
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the servers keep data")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack: servers stop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = options_from(args)
    if args.imap_tls:
        homing_server.IMAP_PLAINTEXT = False  # the imap and memory scenarios over TLS
    keys = [key.strip() for key in args.only.split(",") if key.strip()] or list(SCENARIOS)
    unknown = [key for key in keys if key not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    selected = [SCENARIOS[key] for key in keys]
    out: Path = args.out or RESULTS / ("quick.md" if options.quick else "latest.md")
    if os.geteuid() != 0:
        raise SystemExit("bench/run must run as root: Postfix's master and Dovecot need it")
    peers.ensure_debian({p for sc in selected for p in sc.needs}, install=not args.no_install)
    if smtp_source_path() is None:
        raise SystemExit("smtp-source not found (Debian package postfix)")
    if not args.no_chart:
        ensure_chart_library(install=not args.no_install)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="homing-bench-", dir=args.tmpdir))
    base.chmod(0o755)  # the peers' daemons run as postfix, dovecot, nobody
    closed = [p for p in base.parents if not p.stat().st_mode & stat.S_IXOTH]
    if closed:
        base.rmdir()
        raise SystemExit(
            f"{closed[0]} is not searchable by other users; the peers' daemons "
            f"(postfix, dovecot, nobody) must reach {base.parent}: see --tmpdir"
        )
    try:
        outcomes = run(options, selected, base)
        rows = machine(selected, base, load_before)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(outcomes, options, rows, time.monotonic() - started))
    print(f"wrote {out}")
    if not args.no_chart:
        chart(outcomes, out.with_suffix(".png"), options)
        print(f"wrote {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
