"""POP3 retrieval benchmark: how fast `homing serve` hands a large INBOX to a client.

Fills one INBOX with --messages messages of --size bytes (10,000 of 10 KiB by default) through
the store API directly, starts `homing serve` with POP3 on 127.0.0.1, then for plain POP3
(clear text allowed on loopback for this run) and POP3S (TLS 1.3) measures, with a lean client
(one socket, RETRs pipelined --window deep, responses parsed in place; not poplib):

- login: USER/PASS until "+OK" (argon2 check plus the maildrop snapshot of every message);
- UIDL: the whole unique-id listing;
- RETR: every message, in messages/s and MB/s of message data (each checked against its
  LIST size), and server CPU ms per message.

    .venv/bin/python bench/pop3_retr.py [--messages 10000] [--size 10240] [--window 64]

Only 127.0.0.1 is used; every run ends after one pass over the INBOX per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from homing.mail.mime import parse_message
from homing.store import NewMessage, Store, make_credentials

HOMING = str(Path(sys.executable).with_name("homing"))
TICK = os.sysconf("SC_CLK_TCK")
USER = "bench@bench.test"
PASSWORD = "bench-password-123"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def make_message(n: int, size: int) -> bytes:
    head = (
        f"From: sender{n}@remote.example\r\nTo: {USER}\r\nSubject: bench message {n}\r\n"
        f"Message-ID: <bench{n}@remote.example>\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head) - 2)]
    if body.endswith(b"\r"):
        body = body[:-1] + b"x"
    return head + body + b"\r\n"


def set_up(base: Path, messages: int, size: int) -> Path:
    """`homing init`, POP3 listeners only, one account with a full INBOX. Returns the config."""
    data = base / "data"
    subprocess.run(
        [HOMING, "init", "--data", str(data), "--domain", "bench.test", "--dev"],
        check=True,
        capture_output=True,
    )
    config = data / "homing.toml"
    lines = []
    section = ""
    for line in config.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        key = line.split("=", 1)[0].strip()
        if section == "[listen]" and "=" in line and not stripped.startswith("#"):
            line = f'{key} = ["127.0.0.1:0"]' if key in ("pop3", "pop3s") else f"{key} = []"
        if section == "[pop3]" and key == "allow_plaintext_loopback":
            line = "allow_plaintext_loopback = true"
        lines.append(line)
    config.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    with Store.open(data / "homing.db", create=True) as store:
        if not store.has_domain("bench.test"):
            store.add_domain("bench.test")
        account = store.add_account(USER, make_credentials(PASSWORD))
        batch: list[NewMessage] = []
        for n in range(messages):
            body = make_message(n, size)
            batch.append(NewMessage(account.id, "INBOX", b"", body, parse_message(body)))
            if len(batch) == 500 or n == messages - 1:
                store.deliver(batch).result()
                batch = []
    print(f"filled INBOX: {messages} x {size} bytes in {time.perf_counter() - started:.1f}s")
    return config


def start_homing(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    run_file = config.parent / "run" / "listeners.json"
    with log.open("wb") as out:
        proc = subprocess.Popen([HOMING, "--config", str(config), "serve"], stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"homing serve exited:\n{log.read_text()}")
        try:
            info = json.loads(run_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
            continue
        if info.get("pid") == proc.pid:
            return proc, {k: v[0][1] for k, v in info["listeners"].items()}
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("homing serve did not start")


class Client:
    """Blocking POP3 over one socket, parsing responses straight out of one buffer."""

    def __init__(self, port: int, tls: bool) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock)
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.received = 0
        assert self.line().startswith(b"+OK")

    def _more(self) -> None:
        if self.pos > 1 << 20:
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.received += len(chunk)
        self.buf += chunk

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n", self.pos)) < 0:
            self._more()
        line = bytes(self.buf[self.pos : end])
        self.pos = end + 2
        return line

    def multiline(self, at_least: int = 0) -> int:
        """Skip a multi-line body; its length up to (not including) the final ".\\r\\n".
        `at_least` is a length the body cannot be shorter than (where to start looking)."""
        if self.buf.startswith(b".\r\n", self.pos):
            self.pos += 3
            return 0
        skip = max(0, at_least - 2)  # offsets from self.pos, which _more() may move
        while (end := self.buf.find(b"\r\n.\r\n", self.pos + skip)) < 0:
            skip = max(0, len(self.buf) - self.pos - 4)
            self._more()
        length = end + 2 - self.pos
        self.pos = end + 5
        return length

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.line()


def measure(port: int, tls: bool, messages: int, window: int, pid: int) -> dict[str, float]:
    started = time.perf_counter()
    client = Client(port, tls)
    connect = time.perf_counter() - started
    started = time.perf_counter()
    assert client.command(b"USER " + USER.encode()).startswith(b"+OK")
    answer = client.command(b"PASS " + PASSWORD.encode())
    login = time.perf_counter() - started
    assert answer.startswith(b"+OK Logged in, %d messages" % messages), answer
    started = time.perf_counter()
    assert client.command(b"UIDL").startswith(b"+OK")
    client.multiline()
    uidl = time.perf_counter() - started
    assert client.command(b"LIST").startswith(b"+OK")
    listing_start = client.pos
    client.multiline()
    sizes = [
        int(line.split()[1])
        for line in bytes(client.buf[listing_start : client.pos - 3]).split(b"\r\n")
        if line
    ]
    cpu_before = cpu_seconds(pid)
    received_before = client.received
    started = time.perf_counter()
    sent = 0
    done = 0
    data = 0
    while done < messages:
        if sent - done <= window // 2 and sent < messages:
            batch = range(sent + 1, min(messages, sent + window - (sent - done)) + 1)
            client.sock.sendall(b"".join(b"RETR %d\r\n" % n for n in batch))
            sent = batch[-1]
        status = client.line()
        assert status.startswith(b"+OK "), status
        octets = int(status.split()[1])
        got = client.multiline(octets)
        assert got >= octets == sizes[done], (done, got, octets)  # stuffing may add bytes
        data += octets
        done += 1
    retr = time.perf_counter() - started
    wire = client.received - received_before
    cpu = cpu_seconds(pid) - cpu_before
    assert client.command(b"QUIT").startswith(b"+OK")
    client.sock.close()
    return {
        "connect_ms": connect * 1000,
        "login_ms": login * 1000,
        "uidl_ms": uidl * 1000,
        "msgs_per_s": messages / retr,
        "mb_per_s": data / retr / 1e6,
        "wire_mb": wire / 1e6,
        "cpu_ms_per_msg": cpu * 1000 / messages,
        "retr_s": retr,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    ap.add_argument("--window", type=int, default=64, help="RETRs in flight")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="homing-pop3-bench-"))
    config = set_up(base, args.messages, args.size)
    proc, ports = start_homing(config, base / "serve.log")
    results = {}
    try:
        for mode, port, tls in (("plain", ports["pop3"], False), ("pop3s", ports["pop3s"], True)):
            results[mode] = measure(port, tls, args.messages, args.window, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if not args.keep:
            subprocess.run(["rm", "-rf", str(base)], check=False)
    print(
        f"\nPOP3 RETR of a {args.messages}-message INBOX, {args.size} bytes each, "
        f"window {args.window}, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'mode':<7}{'login ms':>10}{'UIDL ms':>9}{'RETR msg/s':>12}{'MB/s':>8}"
        f"{'srv CPU ms/msg':>16}"
    )
    print(header)
    print("-" * len(header))
    for mode, r in results.items():
        print(
            f"{mode:<7}{r['login_ms']:>10.1f}{r['uidl_ms']:>9.1f}{r['msgs_per_s']:>12.0f}"
            f"{r['mb_per_s']:>8.1f}{r['cpu_ms_per_msg']:>16.3f}"
        )


if __name__ == "__main__":
    main()
