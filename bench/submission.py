"""Submission benchmark: messages per second over STARTTLS + AUTH PLAIN on port 587.

Three cases, 10 KiB messages to a local recipient, concurrency 10 by default:
  fresh/app-password  each message on a new connection (TLS handshake + AUTH every time),
                      logging in with an app password (light argon2id, what phones use)
  fresh/password      the same with the account password (full argon2id, ~0.1-0.2 s of CPU
                      each by design: this is the brute-force cost, not protocol overhead)
  reused              one login per connection, then many messages on it

    .venv/bin/python bench/submission.py [--messages 500] [--concurrency 10]

Only 127.0.0.1 is used; every loop is bounded by --messages and --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HOMING = str(Path(sys.executable).with_name("homing"))
PASSWORD = "bench-password-123"
MESSAGE = (
    b"From: bench@bench.test\r\nTo: rcpt@bench.test\r\nSubject: bench\r\n\r\n"
    + (b"x" * 76 + b"\r\n") * 130
)


def start(base: Path) -> tuple[subprocess.Popen[bytes], tuple[str, int], str, str]:
    data = base / "data"
    subprocess.run(
        [HOMING, "init", "--data", str(data), "--domain", "bench.test",
         "--hostname", "mx.bench.test", "--dev"],
        check=True, capture_output=True,
    )  # fmt: skip
    config = data / "homing.toml"
    text = config.read_text()
    listen = tomllib.loads(text)["listen"]
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in listen and "=" in line:
            line = f'{key} = ["127.0.0.1:0"]' if key == "submission" else f"{key} = []"
        if key == "connections_per_ip":
            line = "connections_per_ip = 1000"
        if key == "failures_per_ip":
            line = "failures_per_ip = 100000"
        lines.append(line)
    config.write_text("\n".join(lines) + "\n")
    cli = [HOMING, "--config", str(config)]
    for who in ("bench@bench.test", "rcpt@bench.test"):
        subprocess.run([*cli, "account", "add", who, "--password-stdin"],
                       input=f"{PASSWORD}\n".encode(), check=True, capture_output=True)  # fmt: skip
    out = subprocess.run([*cli, "account", "app-password", "add", "bench@bench.test", "bench"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    app_password = out.strip().rsplit(" ", 1)[-1]
    log = (base / "serve.log").open("wb")
    proc = subprocess.Popen([*cli, "serve"], stdout=log, stderr=log)
    run_file = data / "run" / "listeners.json"
    for _ in range(400):
        if run_file.exists():
            info = json.loads(run_file.read_text())
            if info["pid"] == proc.pid:
                host, port = info["listeners"]["submission"][0]
                return proc, (host, port), PASSWORD, app_password
        time.sleep(0.05)
    raise RuntimeError("homing did not start")


async def reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if line[3:4] != b"-":
            return line


class Client:
    def __init__(self, addr: tuple[str, int], password: str) -> None:
        self.addr = addr
        self.cred = base64.b64encode(f"\0bench@bench.test\0{password}".encode())
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(*self.addr)
        await reply(reader)
        writer.write(b"EHLO bench\r\n")
        await reply(reader)
        writer.write(b"STARTTLS\r\n")
        await reply(reader)
        await writer.start_tls(self.ctx)
        writer.write(b"EHLO bench\r\n")
        await reply(reader)
        writer.write(b"AUTH PLAIN " + self.cred + b"\r\n")
        line = await reply(reader)
        if not line.startswith(b"235"):
            raise RuntimeError(line)
        return reader, writer

    @staticmethod
    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"MAIL FROM:<bench@bench.test>\r\nRCPT TO:<rcpt@bench.test>\r\nDATA\r\n")
        for _ in range(3):
            await reply(reader)
        writer.write(MESSAGE + b".\r\n")
        return (await reply(reader)).startswith(b"250")


async def run(client: Client, count: int, concurrency: int, reuse: bool, max_seconds: float) -> int:
    done = 0
    deadline = time.monotonic() + max_seconds

    async def worker(n: int) -> None:
        nonlocal done
        conn = await client.connect() if reuse else None
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            reader, writer = conn or await client.connect()
            if await client.send(reader, writer):
                done += 1
            if conn is None:
                writer.close()
        if conn is not None:
            conn[1].close()

    share = [
        count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)
    ]
    await asyncio.gather(*(worker(n) for n in share))
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=120)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="homing-bench-") as tmp:
        proc, addr, password, app_password = start(Path(tmp))
        try:
            print(
                f"{args.messages} messages of 10 KiB, concurrency {args.concurrency},"
                " STARTTLS + AUTH PLAIN"
            )
            print(f"{'case':<22} {'msgs/s':>8} {'seconds':>8}")
            cases = [
                ("fresh/app-password", app_password, False, args.messages),
                ("fresh/password", password, False, max(args.messages // 10, args.concurrency)),
                ("reused", app_password, True, args.messages),
            ]
            for name, secret, reuse, count in cases:
                t0 = time.monotonic()
                done = asyncio.run(
                    run(Client(addr, secret), count, args.concurrency, reuse, args.max_seconds)
                )
                wall = time.monotonic() - t0
                print(f"{name:<22} {done / wall:>8.0f} {wall:>8.1f}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
