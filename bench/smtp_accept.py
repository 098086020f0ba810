"""SMTP acceptance benchmark: messages per second that `homing serve` accepts durably on port 25.

Drives the server with Postfix's own `smtp-source` (Debian package postfix) when it is installed,
else with a small asyncio client (which then competes with the server for the CPU; the output
says which was used). Every message is a new connection, 10 KiB, one local recipient, and is
fsync'd before its 250 (the server's normal durability). Prints messages/s, server CPU ms per
message and peak RSS for each concurrency level.

    .venv/bin/python bench/smtp_accept.py [--messages 10000] [--concurrency 1,10,50] [--quick]

Only 127.0.0.1 is used. Each run is bounded by --messages and --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HOMING = str(Path(sys.executable).with_name("homing"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def start_homing(base: Path, workers: int = 0) -> tuple[subprocess.Popen[bytes], tuple[str, int]]:
    data = base / "data"
    subprocess.run(
        [
            HOMING,
            "init",
            "--data",
            str(data),
            "--domain",
            "bench.test",
            "--hostname",
            "mx.bench.test",
            "--dev",
        ],
        check=True,
        capture_output=True,
    )
    config = data / "homing.toml"
    text = config.read_text()
    doc = tomllib.loads(text)
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in doc.get("listen", {}) and "=" in line:
            line = f'{key} = ["127.0.0.1:0"]' if key == "smtp" else f"{key} = []"
        if key == "connections_per_ip":
            line = "connections_per_ip = 1000"  # every bench connection comes from 127.0.0.1
        if key == "workers":
            line = f"workers = {workers}"
        lines.append(line)
    config.write_text("\n".join(lines) + "\n")
    subprocess.run(
        [HOMING, "--config", str(config), "account", "add", "bench@bench.test", "--password-stdin"],
        input=b"bench-password-123\n",
        check=True,
        capture_output=True,
    )
    log = (base / "serve.log").open("wb")
    proc = subprocess.Popen([HOMING, "--config", str(config), "serve"], stdout=log, stderr=log)
    run_file = data / "run" / "listeners.json"
    for _ in range(400):
        if run_file.exists():
            info = json.loads(run_file.read_text())
            if info["pid"] == proc.pid:
                host, port = info["listeners"]["smtp"][0]
                return proc, (host, port)
        time.sleep(0.05)
    raise RuntimeError("homing did not start")


MESSAGE = (
    b"From: bench@remote.example\r\nTo: bench@bench.test\r\nSubject: bench\r\n\r\n"
    + (b"x" * 76 + b"\r\n") * 130
)


async def one(host: str, port: int) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await reader.readline()
        writer.write(b"EHLO bench\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        writer.write(b"MAIL FROM:<bench@remote.example>\r\nRCPT TO:<bench@bench.test>\r\nDATA\r\n")
        for _ in range(3):
            await reader.readline()
        writer.write(MESSAGE + b".\r\n")
        ok = (await reader.readline()).startswith(b"250")
        writer.write(b"QUIT\r\n")
        await reader.readline()
        return ok
    finally:
        writer.close()


async def python_client(
    host: str, port: int, count: int, concurrency: int, max_seconds: float
) -> int:
    done = 0
    deadline = time.monotonic() + max_seconds

    async def worker(n: int) -> None:
        nonlocal done
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            if await one(host, port):
                done += 1

    share = [
        count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)
    ]
    await asyncio.gather(*(worker(n) for n in share))
    return done


def run_level(
    addr: tuple[str, int], pid: int, count: int, concurrency: int, max_seconds: float
) -> dict[str, float]:
    host, port = addr
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    source = shutil.which("smtp-source") or (
        "/usr/sbin/smtp-source" if Path("/usr/sbin/smtp-source").exists() else None
    )
    if source:
        subprocess.run(
            [
                source,
                "-s",
                str(concurrency),
                "-m",
                str(count),
                "-l",
                "10240",
                "-f",
                "bench@remote.example",
                "-t",
                "bench@bench.test",
                "-M",
                "bench.client",
                f"{host}:{port}",
            ],
            check=True,
            timeout=max_seconds + 60,
            capture_output=True,
        )
        sent = count
    else:
        sent = asyncio.run(python_client(host, port, count, concurrency, max_seconds))
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    return {
        "messages": sent,
        "seconds": wall,
        "per_second": sent / wall,
        "cpu_ms_per_msg": 1000 * cpu / max(sent, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--concurrency", default="1,10,50")
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--quick", action="store_true", help="1,000 messages per level")
    args = ap.parse_args()
    count = 1000 if args.quick else args.messages
    levels = [int(c) for c in args.concurrency.split(",")]
    client = (
        "smtp-source"
        if shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists()
        else "python asyncio client"
    )
    with tempfile.TemporaryDirectory(prefix="homing-bench-") as tmp:
        proc, addr = start_homing(Path(tmp))
        try:
            print(f"client: {client}; {count} messages of 10 KiB per level, one connection each")
            print(f"{'concurrency':>11} {'msgs/s':>8} {'cpu ms/msg':>10} {'seconds':>8}")
            for level in levels:
                r = run_level(addr, proc.pid, count, level, args.max_seconds)
                print(
                    f"{level:>11} {r['per_second']:>8.0f} "
                    f"{r['cpu_ms_per_msg']:>10.2f} {r['seconds']:>8.1f}"
                )
            print(f"peak RSS of homing serve: {peak_rss_kib(proc.pid) / 1024:.1f} MiB")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
