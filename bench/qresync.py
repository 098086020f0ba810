"""Reconnect cost of a synchronising IMAP client: plain, CONDSTORE and QRESYNC (RFC 7162).

A client that holds a copy of an INBOX (10,000 messages of 10 KiB by default) reconnects after
another session changed the flags of 10 messages, and learns what changed in one of three ways:

- plain: `SELECT INBOX`, `UID FETCH 1:* (FLAGS)`: every message's flags, compared with its copy;
- CONDSTORE: `SELECT INBOX (CONDSTORE)`, `UID FETCH 1:* (FLAGS) (CHANGEDSINCE m)`, m being the
  HIGHESTMODSEQ it was synchronised to (RFC 7162 §3.1.4.1);
- QRESYNC: `ENABLE QRESYNC`, `SELECT INBOX (QRESYNC (uidvalidity m))` (RFC 7162 §3.2.5): the
  changes come with the SELECT; and the same after the other session also expunged 3 messages,
  so that `VANISHED (EARLIER)` is part of the answer (§3.2.5.1: without known UIDs the server
  reports every UID expunged since m).

For each, the bytes received from the server (counted on the socket) and the wall time, both
from the first resync command sent to the last tagged OK. The reconnection before it (connect,
greeting, LOGIN until its OK) is the same for every mode and measured apart, as its own row:
Homing's account has an app-password-strength argon2id hash, the throwaway Dovecot compares
plain text. Every resync is checked: what it reports as changed is exactly the 10 UIDs with
the flags the other session set; with QRESYNC, the expunged UIDs are exactly the VANISHED
ones; with CONDSTORE and QRESYNC, every MODSEQ is above m and at most the HIGHESTMODSEQ
announced. A mismatch stops the run with the server's transcript. The client is a lean one
(one socket, responses read into one buffer until the tagged line, parsed after the clock
stops), over plain TCP on 127.0.0.1.

bench/harness.py imports this as its `qresync` scenario; run alone it measures Homing and, when
run as root with Dovecot installed, a throwaway Dovecot (bench/peers.py) holding the same
messages, interleaved Homing, Dovecot, Homing, Dovecot, and prints a markdown table:

    .venv/bin/python bench/qresync.py [--messages 10000] [--rounds 7] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import homing_server
import peers
import pop3_retr
from homing.store import Store

DOVECOT_USER = "qresync@bench.test"  # this benchmark's mailbox in a (shared) Dovecot
FLAG_CHANGES = 10  # messages whose flags another session changes before each resync
EXPUNGES = 3  # messages it also expunges, in the VANISHED mode
#: the flag sets the other session chooses from (always one the message does not have yet)
FLAG_SETS: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset({"\\Seen"}),
    frozenset({"\\Seen", "\\Flagged"}),
    frozenset({"\\Answered", "\\Seen"}),
    frozenset({"\\Flagged"}),
)
RECENT = "\\Recent"  # session state (IMAP4rev1), not a flag a client synchronises

Figures = dict[str, float]


# --- modes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    """One way to resynchronise: the commands sent (in turn, each after the previous one's
    tagged OK), and how many messages the other session expunges beforehand."""

    key: str
    title: str
    expunges: int = 0

    def commands(self, uidvalidity: int, modseq: int) -> list[bytes]:
        if self.key == "plain":
            return [b"SELECT INBOX", b"UID FETCH 1:* (FLAGS)"]
        if self.key == "condstore":
            return [
                b"SELECT INBOX (CONDSTORE)",
                b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % modseq,
            ]
        # RFC 7162 §3.2.5: SELECT takes the QRESYNC parameter only once QRESYNC is enabled
        return [b"ENABLE QRESYNC", b"SELECT INBOX (QRESYNC (%d %d))" % (uidvalidity, modseq)]

    @property
    def reports_changes_only(self) -> bool:
        return self.key != "plain"

    @property
    def reports_vanished(self) -> bool:
        return self.key in ("qresync", "vanished")


#: the reconnection itself, measured apart (the same for every mode)
LOGIN_TITLE = "connect + LOGIN"

MODES = (
    Mode("plain", "plain: SELECT + UID FETCH 1:* (FLAGS)"),
    Mode("condstore", "CONDSTORE: SELECT (CONDSTORE) + UID FETCH (CHANGEDSINCE)"),
    Mode("qresync", "QRESYNC: ENABLE QRESYNC + SELECT (QRESYNC)"),
    Mode("vanished", f"QRESYNC, {EXPUNGES} expunged: VANISHED (EARLIER)", EXPUNGES),
)


# --- the wire --------------------------------------------------------------------------------


class Wire:
    """One IMAP connection to 127.0.0.1 in clear text. Responses are read into one buffer
    until their tagged line and returned whole; `received` counts every byte read."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.received = 0
        self._tag = 0
        try:
            while not self.buf.endswith(b"\r\n"):
                self._more()
            if not self.buf.startswith(b"* OK"):
                raise RuntimeError(f"greeting: {bytes(self.buf)!r}")
            self.buf.clear()
        except BaseException:
            self.sock.close()
            raise

    def _more(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError(f"server closed the connection after {bytes(self.buf[-300:])!r}")
        self.received += len(chunk)
        self.buf += chunk

    def send(self, command: bytes) -> bytes:
        """Send `command` with a new tag; returns the tag."""
        self._tag += 1
        tag = b"t%d" % self._tag
        self.sock.sendall(tag + b" " + command + b"\r\n")
        return tag

    def response(self, tag: bytes) -> bytes:
        """Every byte up to and including the tagged response of `tag` (a line starting with
        the tag; the answers compared here carry no literals that could hold one)."""
        prefix = tag + b" "
        while True:
            if self.buf.endswith(b"\r\n") and self.buf.startswith(prefix, last_line(self.buf)):
                data = bytes(self.buf)
                self.buf.clear()
                return data
            self._more()

    def command(self, command: bytes) -> bytes:
        """Send, read the whole response, which must end in OK."""
        tag = self.send(command)
        data = self.response(tag)
        if not tagged_ok(data, tag):
            raise RuntimeError(f"{command.decode(errors='replace')}: {data[-500:]!r}")
        return data

    def login(self, user: str, password: str) -> None:
        self.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))

    def close(self) -> None:
        try:
            self.sock.sendall(b"z LOGOUT\r\n")
        except OSError:
            pass
        self.sock.close()


def last_line(data: bytes | bytearray) -> int:
    """Where the last line of `data` (which ends with CRLF) starts."""
    end = data.rfind(b"\r\n", 0, len(data) - 2)
    return end + 2 if end >= 0 else 0


def tagged_ok(data: bytes, tag: bytes) -> bool:
    return data[last_line(data) :].upper().startswith(tag.upper() + b" OK")


# --- what a resync says ----------------------------------------------------------------------

_FETCH = re.compile(rb"^\* \d+ FETCH \((.*)\)$")
_UID = re.compile(rb"(?:^| )UID (\d+)")
_FLAGS = re.compile(rb"(?:^| )FLAGS \(([^)]*)\)")
_MODSEQ = re.compile(rb"(?:^| )MODSEQ \((\d+)\)")
_VANISHED = re.compile(rb"^\* VANISHED \(EARLIER\) ([0-9:,]+)$")
_HIGHESTMODSEQ = re.compile(rb"\[HIGHESTMODSEQ (\d+)\]")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS$")


def uid_set(uids: Iterable[int]) -> bytes:
    """A compact UID set (RFC 9051 §9 sequence-set): 1:3,7,9:10."""
    ordered = sorted(set(uids))
    runs: list[list[int]] = []
    for uid in ordered:
        if runs and runs[-1][1] == uid - 1:
            runs[-1][1] = uid
        else:
            runs.append([uid, uid])
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in runs)


def parse_uid_set(text: bytes) -> set[int]:
    found: set[int] = set()
    for part in text.split(b","):
        low, _, high = part.partition(b":")
        a, b = int(low), int(high or low)
        found.update(range(min(a, b), max(a, b) + 1))
    return found


@dataclass
class Answer:
    """The untagged data of one resync that matters to a synchronising client."""

    fetched: dict[int, tuple[frozenset[str], int | None]] = field(default_factory=dict)
    vanished: set[int] = field(default_factory=set)
    highest_modseq: int | None = None
    uidvalidity: int | None = None
    exists: int | None = None

    @classmethod
    def parse(cls, data: bytes) -> Answer:
        answer = cls()
        for line in data.split(b"\r\n"):
            if fetch := _FETCH.match(line):
                items = fetch.group(1)
                uid, flags = _UID.search(items), _FLAGS.search(items)
                if uid is None or flags is None:
                    raise RuntimeError(f"FETCH without UID or FLAGS: {line!r}")
                modseq = _MODSEQ.search(items)
                names = frozenset(flags.group(1).decode().split()) - {RECENT}
                answer.fetched[int(uid.group(1))] = (
                    names,
                    int(modseq.group(1)) if modseq else None,
                )
            elif vanished := _VANISHED.match(line):
                answer.vanished |= parse_uid_set(vanished.group(1))
            elif exists := _EXISTS.match(line):
                answer.exists = int(exists.group(1))
            elif highest := _HIGHESTMODSEQ.search(line):
                answer.highest_modseq = int(highest.group(1))
            elif validity := _UIDVALIDITY.search(line):
                answer.uidvalidity = int(validity.group(1))
        return answer


@dataclass(frozen=True)
class Changes:
    """What the other session did: the HIGHESTMODSEQ before it, the new flags of each message
    it changed, the UIDs it expunged."""

    modseq: int
    flags: dict[int, frozenset[str]]
    expunged: frozenset[int]


class ResyncMismatch(RuntimeError):
    """A resync reported something else than what changed: a server bug, with its transcript."""


# --- one server's mailbox, as the synchronising client knows it ------------------------------


@dataclass
class Mailbox:
    """The client's copy of one server's INBOX (UID → flags) and the means to change it from
    another session and to resynchronise it. `name` is the server's, for messages."""

    name: str
    port: Callable[[], int]
    user: str
    password: str
    seed: int = 7162
    uidvalidity: int = 0
    flags: dict[int, frozenset[str]] = field(default_factory=dict)
    _random: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def _session(self) -> Wire:
        wire = Wire(self.port())
        try:
            wire.login(self.user, self.password)
        except BaseException:
            wire.close()
            raise
        return wire

    def load(self, expected: int) -> None:
        """A first full synchronisation (untimed): the UIDVALIDITY and every message's flags.
        SELECT (CONDSTORE) switches the mailbox to CONDSTORE mode for good where that matters
        (Dovecot starts keeping MODSEQs per message then)."""
        wire = self._session()
        try:
            answer = Answer.parse(wire.command(b"SELECT INBOX (CONDSTORE)"))
            answer.fetched = Answer.parse(wire.command(b"UID FETCH 1:* (FLAGS)")).fetched
        finally:
            wire.close()
        if answer.uidvalidity is None or {answer.exists, len(answer.fetched)} != {expected}:
            raise RuntimeError(
                f"{self.name}: INBOX holds {answer.exists} messages ({len(answer.fetched)} "
                f"fetched), expected {expected}"
            )
        self.uidvalidity = answer.uidvalidity
        self.flags = {uid: flags for uid, (flags, _) in answer.fetched.items()}

    def change(self, expunges: int = 0) -> Changes:
        """Another session changes the flags of FLAG_CHANGES messages (each to a set it did not
        have) and expunges `expunges` others, picked at random."""
        picked = self._random.sample(sorted(self.flags), FLAG_CHANGES + expunges)
        changed = {
            uid: self._random.choice([s for s in FLAG_SETS if s != self.flags[uid]])
            for uid in picked[:FLAG_CHANGES]
        }
        expunged = frozenset(picked[FLAG_CHANGES:])
        wire = self._session()
        try:
            answer = Answer.parse(wire.command(b"SELECT INBOX (CONDSTORE)"))
            if answer.highest_modseq is None or answer.uidvalidity != self.uidvalidity:
                raise RuntimeError(f"{self.name}: SELECT (CONDSTORE) said {answer}")
            for uid, flags in changed.items():
                wire.command(b"UID STORE %d FLAGS.SILENT (%s)" % (uid, " ".join(flags).encode()))
            if expunged:
                uids = uid_set(expunged)
                wire.command(b"UID STORE %s +FLAGS.SILENT (\\Deleted)" % uids)
                wire.command(b"UID EXPUNGE %s" % uids)  # RFC 4315 §2.1
        finally:
            wire.close()
        return Changes(answer.highest_modseq, changed, expunged)

    def resync(self, mode: Mode, changes: Changes) -> tuple[int, float]:
        """Reconnect, log in, and resynchronise as `mode` does: (bytes received, seconds),
        both from the first resync command to the last tagged OK. The answer is checked, then
        the client's copy brought up to date."""
        wire = self._session()
        try:
            responses: list[bytes] = []
            received = wire.received
            started = time.perf_counter()
            for command in mode.commands(self.uidvalidity, changes.modseq):
                responses.append(wire.response(wire.send(command)))  # checked below
            elapsed = time.perf_counter() - started
            received = wire.received - received
        finally:
            wire.close()
        self.check(mode, changes, b"".join(responses))
        for uid in changes.expunged:
            del self.flags[uid]
        self.flags.update(changes.flags)
        return received, elapsed

    def check(self, mode: Mode, changes: Changes, data: bytes) -> None:
        """Raise ResyncMismatch unless `data` (the server's answers to `mode`'s commands)
        reports exactly `changes` against the client's copy."""
        problems: list[str] = []
        commands = mode.commands(self.uidvalidity, changes.modseq)
        tags = re.findall(rb"(?m)^(t\d+) ", data)
        if len(tags) != len(commands) or not all(
            re.search(rb"(?m)^" + tag + rb" OK", data) for tag in tags
        ):
            problems.append("not every command was answered OK")
        answer = Answer.parse(data)
        live = set(self.flags) - changes.expunged
        if answer.exists != len(live):
            problems.append(f"EXISTS {answer.exists}, expected {len(live)}")
        if answer.uidvalidity != self.uidvalidity:
            problems.append(f"UIDVALIDITY {answer.uidvalidity}, expected {self.uidvalidity}")
        fetched = {uid: flags for uid, (flags, _) in answer.fetched.items()}
        if mode.reports_changes_only:
            reported = fetched
        else:  # every message: the client compares with its copy
            if set(fetched) != live:
                missing, extra = sorted(live - set(fetched)), sorted(set(fetched) - live)
                problems.append(f"FETCH missed UIDs {missing[:10]}, added {extra[:10]}")
            reported = {uid: f for uid, f in fetched.items() if self.flags.get(uid) != f}
        if reported != changes.flags:
            problems.append(f"reported changes {_show(reported)}, expected {_show(changes.flags)}")
        expected_vanished = changes.expunged if mode.reports_vanished else frozenset()
        if answer.vanished != expected_vanished:
            problems.append(
                f"VANISHED (EARLIER) {uid_set(answer.vanished).decode() or 'none'}, expected "
                f"{uid_set(expected_vanished).decode() or 'none'}"
            )
        if mode.reports_changes_only:
            highest = answer.highest_modseq
            modseqs = [modseq for _, modseq in answer.fetched.values()]
            if highest is None or highest <= changes.modseq:
                problems.append(f"HIGHESTMODSEQ {highest} not above {changes.modseq}")
            elif any(m is None or not changes.modseq < m <= highest for m in modseqs):
                problems.append(f"MODSEQs {modseqs} not all in ({changes.modseq}, {highest}]")
        if problems:
            shown = data.decode(errors="replace")
            if len(shown) > 4000:
                shown = f"{shown[:1500]}\n[... {len(shown) - 3000} characters ...]\n{shown[-1500:]}"
            raise ResyncMismatch(
                f"{self.name}, {mode.title}, after the other session's changes since MODSEQ "
                f"{changes.modseq}: {'; '.join(problems)}. Commands: "
                f"{[c.decode() for c in commands]}. Transcript:\n{shown}"
            )

    def run_login(self, repeats: int, seconds: float) -> Figures:
        """What every reconnection costs before its resync: connect, greeting, LOGIN until its
        tagged OK, `repeats` times. Median bytes received and milliseconds."""
        deadline = time.monotonic() + seconds
        sizes: list[int] = []
        times: list[float] = []
        for _ in range(repeats):
            started = time.perf_counter()
            wire = self._session()
            times.append(time.perf_counter() - started)
            sizes.append(wire.received)
            wire.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}, {LOGIN_TITLE}: over {seconds:.0f}s")
        return {"bytes": statistics.median(sizes), "ms": 1000 * statistics.median(times)}

    def run(self, mode: Mode, repeats: int, seconds: float) -> Figures:
        """`repeats` times: the other session's changes, then a timed resync. Median bytes
        received and milliseconds; raises once `seconds` have gone by."""
        deadline = time.monotonic() + seconds
        sizes: list[int] = []
        times: list[float] = []
        for _ in range(repeats):
            received, elapsed = self.resync(mode, self.change(mode.expunges))
            sizes.append(received)
            times.append(elapsed)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}, {mode.title}: over {seconds:.0f}s")
        return {"bytes": statistics.median(sizes), "ms": 1000 * statistics.median(times)}


def _show(flags: dict[int, frozenset[str]]) -> str:
    return ", ".join(f"{uid}: ({' '.join(sorted(f))})" for uid, f in sorted(flags.items())[:12])


# --- setup -----------------------------------------------------------------------------------


def fill_homing(store: Store, count: int, size: int) -> None:
    """USER with `count` messages in INBOX. Its password hash is argon2id at the cost of
    Homing's app passwords (homing_server.LIGHT_HASHER): a syncing client logs in with one,
    and the default parameters would make every LOGIN cost ~0.1 s of CPU, by design."""
    [account] = homing_server.add_accounts(store, [peers.USER], peers.PASSWORD, light=True)
    homing_server.fill(store, ((account, pop3_retr.make_message(n, size)) for n in range(count)))


def fill_dovecot(dovecot: peers.Dovecot, count: int, size: int) -> None:
    """DOVECOT_USER with the same `count` messages in its INBOX (a Maildir)."""
    dovecot.add_users([DOVECOT_USER])
    dovecot.fill_inbox((pop3_retr.make_message(n, size) for n in range(count)), DOVECOT_USER)


def dovecot_available() -> bool:
    return os.geteuid() == 0 and peers.debian_installed("dovecot-imapd")


# --- standalone ------------------------------------------------------------------------------


Step = tuple[str, str, Callable[[Mailbox], Figures]]


def steps(repeats: int, seconds: float) -> list[Step]:
    """(key, title, one round against a server) for the login and for each mode."""
    login: Step = ("login", LOGIN_TITLE, lambda side: side.run_login(repeats, seconds))
    return [login] + [
        (mode.key, mode.title, lambda side, mode=mode: side.run(mode, repeats, seconds))
        for mode in MODES
    ]


def spread(values: Sequence[float]) -> str:
    def number(value: float) -> str:
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"

    return f"{number(statistics.median(values))} ({number(min(values))}–{number(max(values))})"


def table(results: dict[str, dict[str, list[Figures]]], peer: bool) -> str:
    """Markdown: per row (the login, then each mode), each side's median (min–max) and the
    paired ratios Homing/Dovecot."""
    head = "| Step | Homing bytes | Homing ms |"
    rule = "|---|---|---|"
    if peer:
        head += " Dovecot bytes | Dovecot ms | bytes Homing/Dovecot | ms Homing/Dovecot |"
        rule += "---|---|---|---|"
    out = [head, rule]
    for key, title, _ in steps(1, 1):
        homing = results[key]["homing"]
        row = f"| {title} | {spread([f['bytes'] for f in homing])} "
        row += f"| {spread([f['ms'] for f in homing])} |"
        if peer:
            dovecot = results[key]["dovecot"]
            row += (
                f" {spread([f['bytes'] for f in dovecot])} | {spread([f['ms'] for f in dovecot])} |"
            )
            for metric in ("bytes", "ms"):
                ratios = [h[metric] / d[metric] for h, d in zip(homing, dovecot, strict=True)]
                row += f" **{spread(ratios)}** |"
        out.append(row)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="INBOX size")
    parser.add_argument("--size", type=int, default=10 * 1024, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=7, help="per mode and side")
    parser.add_argument("--repeats", type=int, default=5, help="resyncs per round (median)")
    parser.add_argument("--max-seconds", type=float, default=300, help="limit for one round")
    parser.add_argument("--no-dovecot", action="store_true", help="measure Homing alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if not homing_server.IMAP_PLAINTEXT:
        raise SystemExit("this Homing has no [imap] allow_plaintext_loopback: IMAP needs TLS")
    with_dovecot = not args.no_dovecot and dovecot_available()
    base = Path(tempfile.mkdtemp(prefix="homing-qresync-"))
    base.chmod(0o755)  # Dovecot's processes run as dovecot and nobody
    try:
        with ExitStack() as stack:
            (base / "homing").mkdir()
            config = homing_server.create(base / "homing", homing_server.imap_settings())
            started = time.monotonic()
            with homing_server.open_store(config) as store:
                fill_homing(store, args.messages, args.size)
            process, ports = pop3_retr.start_homing(config, base / "homing" / "serve.log")
            stack.callback(_stop, process)
            sides = {"homing": Mailbox("Homing", lambda: ports["imap"], peers.USER, peers.PASSWORD)}
            if with_dovecot:
                dovecot = peers.Dovecot.start(base / "dovecot", ["imap"])
                stack.callback(dovecot.stop)
                fill_dovecot(dovecot, args.messages, args.size)
                sides["dovecot"] = Mailbox(
                    "Dovecot", lambda: dovecot.ports["imap"], DOVECOT_USER, peers.PASSWORD
                )
            for side in sides.values():
                side.load(args.messages)
            print(f"filled and loaded in {time.monotonic() - started:.0f}s", flush=True)
            results: dict[str, dict[str, list[Figures]]] = {}
            warm_up = {key: run for key, _, run in steps(1, args.max_seconds)}
            for step, _, run in steps(args.repeats, args.max_seconds):
                results[step] = {key: [] for key in sides}
                for side in sides.values():  # caches, page cache, Dovecot's index
                    warm_up[step](side)
                for n in range(1, args.rounds + 1):
                    for key, side in sides.items():  # Homing, Dovecot, Homing, Dovecot, ...
                        results[step][key].append(run(side))
                    shown = "  ".join(
                        f"{key} {figures[-1]['bytes']:,.0f} B {figures[-1]['ms']:.2f} ms"
                        for key, figures in results[step].items()
                    )
                    print(f"{step} round {n}/{args.rounds}: {shown}", flush=True)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"\nResync of an INBOX of {args.messages:,} messages of {args.size:,} bytes after "
        f"{FLAG_CHANGES} flag changes by another session; median (min–max) of {args.rounds} "
        f"round(s), each the median of {args.repeats} run(s); the login is not part of the "
        f"resync rows; plain TCP on 127.0.0.1; "
        f"{os.cpu_count()} CPUs.\n"
    )
    print(table(results, with_dovecot))
    if not with_dovecot:
        print("\n(Dovecot not measured: it needs root and the dovecot-imapd package.)")
    return 0


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
