"""Throwaway Homing instances for bench/harness.py's relay, IMAP, memory and scale scenarios.

`create` runs `homing init --dev` in a directory and rewrites the configuration it wrote
(every key is present in it) with the benchmark's settings: only the listeners asked for, on
127.0.0.1 port 0. Accounts and mail go straight into the store through its API (as
bench/pop3_retr.py does), in large batches; `start` runs `homing serve` and reads the real
ports from DATA/run/listeners.json (bench/pop3_retr.py's `start_homing`).

IMAP: Homing refuses LOGIN without TLS by default (RFC 9051 §6.2.3 LOGINDISABLED); the
benchmark sets `[imap] allow_plaintext_loopback` and uses plain TCP for Homing and Dovecot
alike. `IMAP_PLAINTEXT` checks the configuration model for that key, so the same script
still runs (over implicit TLS for both) against an older Homing without it.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from argon2 import PasswordHasher

import pop3_retr
from homing.clock import Clock
from homing.config.model import IMAPConfig
from homing.mail.mime import parse_message
from homing.store import NewMessage, NewQueued, Store, make_credentials

HOMING = pop3_retr.HOMING
#: Homing can be told to accept IMAP passwords in clear text from loopback clients.
IMAP_PLAINTEXT = "allow_plaintext_loopback" in {f.name for f in dataclasses.fields(IMAPConfig)}
#: argon2id at the cost of Homing's app passwords (time_cost 1, 1 MiB), for benchmarks that
#: log many accounts in: the default parameters cost ~0.1 s of CPU per LOGIN, by design.
LIGHT_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
LOOPBACK = '["127.0.0.1:0"]'

Settings = Mapping[str, Mapping[str, str]]


def imap_listener() -> str:
    """The IMAP service the benchmarks use: "imap" (clear text) or "imaps" (implicit TLS)."""
    return "imap" if IMAP_PLAINTEXT else "imaps"


def imap_settings() -> dict[str, dict[str, str]]:
    """The configuration that turns on the benchmark's IMAP listener."""
    settings: dict[str, dict[str, str]] = {"listen": {imap_listener(): LOOPBACK}}
    if IMAP_PLAINTEXT:
        settings["imap"] = {"allow_plaintext_loopback": "true"}
    return settings


def merge(*parts: Settings) -> dict[str, dict[str, str]]:
    merged: dict[str, dict[str, str]] = {}
    for part in parts:
        for section, values in part.items():
            merged.setdefault(section, {}).update(values)
    return merged


def create(base: Path, settings: Settings) -> Path:
    """`homing init --dev` in base/data for domain bench.test, then its configuration with
    `settings` ({section: {key: TOML value}}; [listen] lists only the services to turn on,
    every other one is turned off). Returns the configuration file."""
    data = base / "data"
    subprocess.run(
        [HOMING, "init", "--data", str(data), "--domain", "bench.test",
         "--hostname", "mx.bench.test", "--dev"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    config = data / "homing.toml"
    wanted = {section: dict(values) for section, values in settings.items()}
    listen = wanted.pop("listen", {})
    lines = []
    section = ""
    for line in config.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.strip("[]")
        elif "=" in line and not stripped.startswith("#"):
            key = line.split("=", 1)[0].strip()
            if section == "listen":
                line = f"{key} = {listen.pop(key, '[]')}"
            elif key in wanted.get(section, {}):
                line = f"{key} = {wanted[section].pop(key)}"
        lines.append(line)
    left = {f"[{name}] {key}" for name, values in wanted.items() for key in values}
    left |= {f"[listen] {key}" for key in listen}
    if left:
        raise RuntimeError(f"not in homing.toml: {', '.join(sorted(left))}")
    config.write_text("\n".join(lines) + "\n")
    return config


@contextmanager
def open_store(config: Path, clock: Clock | None = None) -> Iterator[Store]:
    with Store.open(config.parent / "homing.db", create=True, clock=clock) as store:
        yield store


def add_accounts(
    store: Store, addresses: Sequence[str], password: str, *, light: bool = False
) -> list[int]:
    """Accounts (their domain must be local) with `password`; `light`: hashed with
    LIGHT_HASHER. Returns their ids."""
    for domain in {address.rsplit("@", 1)[1] for address in addresses}:
        if not store.has_domain(domain):
            store.add_domain(domain)
    hasher = LIGHT_HASHER if light else None
    credentials = make_credentials(password, hasher=hasher)  # one hash serves them all
    return [store.add_account(address, credentials).id for address in addresses]


def fill(store: Store, mail: Iterable[tuple[int, bytes]], batch: int = 500) -> int:
    """Deliver (account id, message) pairs into the accounts' INBOXes, `batch` messages per
    store transaction. Returns how many."""
    pending: list[NewMessage] = []
    count = 0
    for account_id, body in mail:
        pending.append(NewMessage(account_id, "INBOX", b"", body, parse_message(body)))
        count += 1
        if len(pending) == batch:
            store.deliver(pending).result()
            pending = []
    if pending:
        store.deliver(pending).result()
    return count


def enqueue(store: Store, entries: Iterable[NewQueued], batch: int = 500) -> int:
    """Put entries into the outbound queue, `batch` per store transaction."""
    pending: list[NewQueued] = []
    count = 0
    for entry in entries:
        pending.append(entry)
        count += 1
        if len(pending) == batch:
            store.deliver([], pending).result()
            pending = []
    if pending:
        store.deliver([], pending).result()
    return count
