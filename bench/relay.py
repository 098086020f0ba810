"""Outbound relay benchmark: messages per second the queue runner hands to Postfix's smtp-sink.

What is measured: N messages are queued (one recipient each, `--size` bytes) for `--domains`
remote domains, then a queue runner (the real one: store, route planner, asyncio attempt
driver, sans-I/O SMTP client, group-committed per-recipient records) delivers them all to
smtp-sink on 127.0.0.1, one connection per domain reused for every message of the domain
(`--batch` messages per attempt). The clock stops when the last record is fsync'd and the
queue is empty. For comparison, the same number of messages of the same size is sent by
Postfix's C load generator `smtp-source` to the same smtp-sink over the same number of
reused connections (no queue, no disk): the ceiling of the SMTP exchange itself.

    .venv/bin/python bench/relay.py [--messages 5000] [--domains 1,10] [--size 2048]

Needs smtp-sink and smtp-source (Debian package postfix; the daemon is never started).
DNS is a FakeResolver (MX -> 127.0.0.1): one lookup per domain and attempt, not the point.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from homing.app import loop_factory
from homing.clock import SystemClock
from homing.config import parse_config
from homing.dns import FakeResolver
from homing.mail import trace
from homing.queue.runner import build_runner
from homing.router import Router
from homing.store import NewQueued, QueueRecipient, Store


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        sys.exit(f"{name} is not installed (Debian package postfix)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def start_sink(port: int) -> subprocess.Popen[bytes]:
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        [tool("smtp-sink"), *user, "-m", "512", f"127.0.0.1:{port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("smtp-sink did not start")


def message(n: int, size: int) -> bytes:
    head = (
        f"From: sender@bench.test\r\nTo: rcpt@remote{n}.test\r\nSubject: bench {n}\r\n"
        f"Message-ID: <{n}.{time.time_ns()}@bench.test>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def fill(store: Store, count: int, domains: int, size: int) -> float:
    """Queue `count` messages round-robin over `domains`; returns messages/s queued."""
    start = time.perf_counter()
    futures = []
    for n in range(count):
        domain = f"remote{n % domains}.test"
        entry = NewQueued(
            queue_id=trace.new_queue_id(),
            mail_from="sender@bench.test",
            recipients=(QueueRecipient(f"rcpt{n}@{domain}"),),
            domain=domain,
            body=message(n, size),
        )
        futures.append(store.deliver([], [entry]))
    for f in futures:
        f.result()
    return count / (time.perf_counter() - start)


async def relay(
    store: Store, router: Router, config_doc: dict[str, Any], port: int, batch: int
) -> float:
    config = parse_config(config_doc, base_dir=Path(config_doc["data_dir"]))
    domains = {e.domain for e in store.spool.entries()}
    zones: dict[str, dict[str, list[Any]]] = {d: {"MX": [(10, "sink.bench.test")]} for d in domains}
    zones["sink.bench.test"] = {"A": ["127.0.0.1"]}
    runner = build_runner(store, config, SystemClock(), router, resolver=FakeResolver(zones))
    runner.settings = replace(runner.settings, batch=batch, concurrency=len(domains))
    total = store.spool.count()
    start = time.perf_counter()
    await runner.run_due()
    elapsed = time.perf_counter() - start
    left = store.spool.count()
    if left:
        sys.exit(f"{left} entries were not delivered")
    return total / elapsed


def smtp_source(port: int, count: int, sessions: int, size: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            tool("smtp-source"),
            "-d",  # reuse the connection
            "-s",
            str(sessions),
            "-m",
            str(count),
            "-l",
            str(size),
            "-f",
            "sender@bench.test",
            "-t",
            "rcpt@remote.test",
            "-M",
            "mx.bench.test",
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return count / (time.perf_counter() - start)


def run(args: argparse.Namespace, domains: int, batch: int) -> tuple[float, float]:
    port = free_port()
    sink = start_sink(port)
    base = Path(tempfile.mkdtemp(prefix="homing-bench-relay-"))
    try:
        doc = {
            "hostname": "mx.bench.test",
            "domains": ["bench.test"],
            "data_dir": str(base),
            "outbound": {"port": port},
            "queue": {"concurrency": domains},
        }
        config = parse_config(doc, base_dir=base)
        with Store.open(config.db_path, create=True) as store:
            router = Router(store, config, SystemClock())
            queued = fill(store, args.messages, domains, args.size)
            factory = loop_factory()
            with asyncio.Runner(loop_factory=factory) as runner:
                relayed = runner.run(relay(store, router, doc, port, batch))
        return queued, relayed
    finally:
        sink.kill()
        sink.wait()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--domains", default="1,10")
    parser.add_argument("--batch", type=int, default=100, help="messages per connection")
    args = parser.parse_args()
    print(f"{args.messages} messages of ~{args.size} bytes, one recipient each, to smtp-sink")
    print(f"{'case':<44}{'queued/s':>10}{'relayed/s':>11}")
    for domains in (int(d) for d in args.domains.split(",")):
        for batch in (args.batch, 1):
            queued, relayed = run(args, domains, batch)
            case = f"homing: {domains} domain(s), {batch} msg/connection"
            print(f"{case:<44}{queued:>10.0f}{relayed:>11.0f}", flush=True)
        port = free_port()
        sink = start_sink(port)
        try:
            rate = smtp_source(port, args.messages, domains, args.size)
        finally:
            sink.kill()
            sink.wait()
        case = f"smtp-source (C, no queue): {domains} session(s)"
        print(f"{case:<44}{'-':>10}{rate:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
