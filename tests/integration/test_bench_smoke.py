"""The side-by-side benchmark harness (bench/run, bench/harness.py).

The smoke test runs `bench/run --quick --only smtp`: Homing and a throwaway Postfix end to
end; it checks that the table is written with every figure and that no server is left behind.
No timing is asserted (figures depend on the machine). The heavier scenarios (relay, IMAP,
memory, scale) are not run here; their building blocks are: the Homing configuration
rewrite, smtp-sink's message counter, the planted search words. The resync scenario is small
enough to run whole on a small mailbox (`--only qresync`, with Dovecot, as root) and
bench/qresync.py alone against Homing; its answer checker is tested on fixed transcripts. The
other tests check the arithmetic of the report: percentiles, per-round paired ratios, which
direction meets a target, absolute targets and per-case peers in the table."""

from __future__ import annotations

import importlib
import itertools
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
SMTP_SOURCE = shutil.which("smtp-source") or (
    "/usr/sbin/smtp-source" if Path("/usr/sbin/smtp-source").exists() else None
)

SMTP_SINK = shutil.which("smtp-sink") or (
    "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
)

needs_dovecot = pytest.mark.skipif(
    shutil.which("dovecot", path="/usr/sbin:/usr/bin") is None or os.geteuid() != 0,
    reason="needs Dovecot (dovecot-imapd), and root to start a throwaway one",
)

needs_postfix = pytest.mark.skipif(
    SMTP_SOURCE is None or os.geteuid() != 0,
    reason="needs Postfix's smtp-source, and root for a throwaway Postfix master",
)

FIGURE = r"([\d,.]+) \(([\d,.]+)–([\d,.]+)\)"  # median (min–max)


def run_bench(command: list[str]) -> None:
    """Run bench/run with this interpreter; fail with its output's tail if it fails."""
    done = subprocess.run(
        command,
        env={**os.environ, "HOMING_BENCH_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def processes_inside(directory: Path) -> list[int]:
    """PIDs whose working directory is under `directory` (Postfix daemons chdir to their
    queue directory; a leftover one would still be there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(directory)):
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def harness() -> Iterator[ModuleType]:
    """bench/harness.py as a module (bench/ is a folder of scripts, not a package)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        yield importlib.import_module("harness")
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_percentile_is_nearest_rank(harness: ModuleType) -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unordered
    assert harness.percentile(values, 50) == 50.0
    assert harness.percentile(values, 99) == 99.0
    assert harness.percentile(values, 100) == 100.0
    assert harness.percentile([7.0], 99) == 7.0


def test_ratios_are_paired_per_round_and_targets_follow_the_metric_direction(
    harness: ModuleType,
) -> None:
    rate = harness.Metric("rate", "messages/s", higher_is_better=True)
    latency = harness.Metric("p99", "p99 ms", higher_is_better=False)
    case = harness.Case("c", (rate, latency), dict, dict)
    scenario = harness.SCENARIOS["smtp"]
    outcome = harness.Outcome(
        scenario,
        case,
        homing=[{"rate": 100.0, "p99": 10.0}, {"rate": 300.0, "p99": 30.0}],
        peer=[{"rate": 200.0, "p99": 20.0}, {"rate": 150.0, "p99": 10.0}],
    )
    summary = harness.summarise(outcome, rate)
    assert summary.homing == (200.0, 100.0, 300.0)
    assert summary.peer == (175.0, 150.0, 200.0)
    assert summary.ratio == (1.25, 0.5, 2.0)  # per round: 0.5 and 2.0
    assert harness.target_met(rate, 1.25, 1.0)
    assert not harness.target_met(latency, harness.summarise(outcome, latency).ratio[0], 1.0)
    assert harness.homing_better(latency, 0.8) and not harness.homing_better(rate, 0.8)


def test_every_scenario_is_registered_with_a_description(harness: ModuleType) -> None:
    keys = {"smtp", "latency", "relay", "pop3", "imap", "memory", "scale", "qresync"}
    assert keys <= set(harness.SCENARIOS)
    for scenario in harness.SCENARIOS.values():
        assert scenario.description
        assert scenario.peer in ("Postfix", "Dovecot", "Postfix and Dovecot")
    # the IMAP scenarios say how their clients connect (clear text or TLS)
    assert "plain TCP, and implicit TLS" in harness.SCENARIOS["memory"].description
    assert "IMAP over plain TCP" in harness.SCENARIOS["qresync"].description


@given(st.sets(st.integers(min_value=1, max_value=400), min_size=1))
def test_uid_sets_round_trip(harness: ModuleType, uids: set[int]) -> None:
    """Invariant: a UID set parses back to the UIDs it was made of, with no two ranges that
    touch (the compact form)."""
    qresync = sys.modules["qresync"]
    text = qresync.uid_set(uids)
    assert qresync.parse_uid_set(text) == uids
    bounds = [[int(n) for n in part.split(b":")] for part in text.split(b",")]
    assert all(later[0] > earlier[-1] + 1 for earlier, later in itertools.pairwise(bounds))


# What a server answers to ENABLE QRESYNC and SELECT INBOX (QRESYNC (7 10)) after another
# session set \Flagged on UID 2 and expunged UID 4 of UIDs 1-5 (HIGHESTMODSEQ 10 before).
QRESYNC_ANSWER = (
    b"* ENABLED QRESYNC\r\nt1 OK ENABLE completed\r\n"
    b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* 4 EXISTS\r\n"
    b"* OK [UIDVALIDITY 7] UIDs valid\r\n* OK [HIGHESTMODSEQ 13] Highest\r\n"
    b"* VANISHED (EARLIER) 4\r\n* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (11))\r\n"
    b"t2 OK [READ-WRITE] Select completed\r\n"
)


# (what is changed in QRESYNC_ANSWER, into what, the fault the checker must name)
RESYNC_FAULTS = [
    (b"(EARLIER) 4", b"(EARLIER) 3:4", r"VANISHED \(EARLIER\) 3:4, expected 4"),
    (b"MODSEQ (11)", b"MODSEQ (9)", r"MODSEQs \[9\] not all in \(10, 13\]"),
    (b"[HIGHESTMODSEQ 13]", b"[HIGHESTMODSEQ 10]", r"HIGHESTMODSEQ 10 not above 10"),
    (b"* 4 EXISTS", b"* 5 EXISTS", r"EXISTS 5, expected 4"),
    (b"FLAGS (\\Flagged \\Recent)", b"FLAGS (\\Seen)", r"reported changes 2: \(\\Seen\)"),
    (b"t2 OK", b"t2 NO", r"not every command was answered OK"),
]


def test_resync_checker_takes_the_exact_answer_and_names_each_fault(harness: ModuleType) -> None:
    qresync = sys.modules["qresync"]

    def mailbox() -> Any:
        box = qresync.Mailbox("Test", int, "user", "password")
        box.uidvalidity = 7
        box.flags = {uid: frozenset() for uid in range(1, 6)}
        return box

    vanished = next(mode for mode in qresync.MODES if mode.expunges)
    changes = qresync.Changes(10, {2: frozenset({"\\Flagged"})}, frozenset({4}))
    mailbox().check(vanished, changes, QRESYNC_ANSWER)  # \Recent is session state, ignored
    for old, new, fault in RESYNC_FAULTS:
        assert old in QRESYNC_ANSWER
        with pytest.raises(qresync.ResyncMismatch, match=fault):
            mailbox().check(vanished, changes, QRESYNC_ANSWER.replace(old, new))
    # Plain resync: every message's flags; the client finds the change by comparing.
    plain = next(mode for mode in qresync.MODES if mode.key == "plain")
    listing = b"".join(
        b"* %d FETCH (UID %d FLAGS (%s))\r\n" % (n, n, b"\\Flagged" if n == 2 else b"")
        for n in range(1, 6)
    )
    answer = b"* 5 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\nt1 OK done\r\n" + listing + b"t2 OK done\r\n"
    flags_only = qresync.Changes(10, {2: frozenset({"\\Flagged"})}, frozenset())
    mailbox().check(plain, flags_only, answer)
    with pytest.raises(qresync.ResyncMismatch, match=r"FETCH missed UIDs \[5\]"):
        mailbox().check(plain, flags_only, answer.replace(b"* 5 FETCH (UID 5 FLAGS ())\r\n", b""))


def test_qresync_alone_against_homing(work: Path) -> None:
    """bench/qresync.py end to end on a small INBOX, Homing only: every resync checked."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "qresync.py"), "--messages", "150",
         "--rounds", "1", "--repeats", "1", "--no-dovecot"],
        env={**os.environ, "TMPDIR": str(work)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [
        line
        for line in done.stdout.splitlines()
        if re.match(r"\| (connect|plain|CONDSTORE|QRES)", line)
    ]
    assert len(rows) == 5, done.stdout  # the login, then 4 ways to resync
    for row in rows:
        assert len(re.findall(FIGURE, row)) == 2, row  # bytes and ms
    assert list(work.iterdir()) == []


def test_table_shows_absolute_targets_and_each_case_s_peer(harness: ModuleType) -> None:
    options = harness.options_from(harness.parse_args(["--quick"]))
    memory = harness.Metric("rss", "KiB RSS per session", higher_is_better=False)
    rate = harness.Metric("rate", "messages/s", higher_is_better=True)
    outcomes = [
        harness.Outcome(
            harness.SCENARIOS["memory"],
            harness.Case("100 sessions", (memory,), dict, dict, limits={"rss": 50.0}, rounds=1),
            homing=[{"rss": 80.0}],
            peer=[{"rss": 800.0}],
        ),
        harness.Outcome(
            harness.SCENARIOS["scale"],
            harness.Case(
                "1,000 stored", (rate,), dict, dict, targets={"rate": 1.0}, peer_name="Postfix"
            ),
            homing=[{"rate": 600.0}, {"rate": 500.0}],
            peer=[{"rate": 500.0}, {"rate": 500.0}],
        ),
    ]
    text = harness.markdown(outcomes, options, [("CPU", "test")], 60.0)
    memory_row = next(line for line in text.splitlines() if line.startswith("| Memory"))
    assert "(vs Dovecot)" in memory_row
    assert "Homing ≤ 50.0: **not met**" in memory_row
    assert "**0.100 (0.100–0.100)**" in memory_row  # 80 / 800
    scale_row = next(line for line in text.splitlines() if line.startswith("| Scale"))
    assert "(vs Postfix)" in scale_row and "≥ 1.0: met" in scale_row
    assert "2 rounds per case (but memory 1)" in text
    assert "Homing/Postfix 1.10 against a target of ≥ 1.0: met." in text


def test_needles_are_planted_where_counted(harness: ModuleType) -> None:
    clients = sys.modules["imap_clients"]
    messages = [clients.message(n, 2048) for n in range(120)]
    with_needle = [n for n, m in enumerate(messages) if clients.NEEDLE.encode() in m]
    assert len(with_needle) == clients.needles(120) == 3
    for n in with_needle:  # in the body, as a word, the size unchanged
        head, body = messages[n].split(b"\r\n\r\n", 1)
        assert body.startswith(clients.NEEDLE.encode() + b" ")
        assert clients.NEEDLE.encode() not in head
        assert len(messages[n]) == len(sys.modules["pop3_retr"].make_message(n, 2048))


def test_homing_configuration_keeps_only_the_asked_listeners(harness: ModuleType) -> None:
    setup = sys.modules["homing_server"]
    base = Path(tempfile.mkdtemp(prefix="homing-bench-test-"))
    try:
        config = setup.create(
            base, {"listen": {"smtp": setup.LOOPBACK}, "limits": {"connections_per_ip": "777"}}
        )
        loaded = tomllib.loads(config.read_text())
        assert loaded["listen"]["smtp"] == ["127.0.0.1:0"]
        assert all(v == [] for k, v in loaded["listen"].items() if k != "smtp")
        assert loaded["limits"]["connections_per_ip"] == 777
        with pytest.raises(RuntimeError, match=r"\[limits\] no_such_key"):
            setup.create(base / "again", {"limits": {"no_such_key": "1"}})
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(SMTP_SINK is None, reason="needs Postfix's smtp-sink")
def test_smtp_sink_counts_the_messages_it_receives(harness: ModuleType) -> None:
    peers = sys.modules["peers"]
    sink = peers.SmtpSink()
    try:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            for n in range(3):
                client.sendmail("a@bench.test", [f"r{n}@remote.test"], b"Subject: x\r\n\r\nhi\r\n")
        sink.wait_received(3, 10)
        assert sink.received() == 3
    finally:
        sink.stop()
    assert sink.process.returncode is not None


@pytest.fixture
def work() -> Iterator[Path]:
    """A directory the peers' unprivileged daemons can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="homing-bench-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@needs_postfix
def test_quick_smtp_run_writes_table_and_stops_its_servers(tmp_path: Path, work: Path) -> None:
    out = tmp_path / "results" / "latest.md"
    command = [str(ROOT / "bench" / "run"), "--quick", "--only", "smtp", "--no-install",
               "--out", str(out), "--tmpdir", str(work)]  # fmt: skip
    chart = has_matplotlib()  # the harness would pip-install it; a test must not
    if not chart:
        command.append("--no-chart")
    run_bench(command)

    text = out.read_text()
    assert "| Scenario | Case | Metric | Better | Homing | Peer | Homing/peer | Target |" in text
    rows = [line for line in text.splitlines() if line.startswith("| SMTP acceptance")]
    cases = {(row.split(" | ")[1], row.split(" | ")[2]) for row in rows}
    assert cases == {
        (f"concurrency {level}", metric)
        for level in (1, 10, 50)
        for metric in ("messages/s", "server CPU s per 1,000 messages")
    }
    for row in rows:
        figures = re.findall(FIGURE, row)
        assert len(figures) == 3, row  # Homing, Postfix, ratio
        for median, low, high in figures:
            low_, median_, high_ = (float(v.replace(",", "")) for v in (low, median, high))
            assert 0 <= low_ <= median_ <= high_, row
        assert float(figures[0][0].replace(",", "")) > 0, row
    assert "## Machine" in text
    assert re.search(r"\| Postfix \| \d+\.\d+", text)
    assert "quick smoke run" in text
    if chart:
        assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    assert list(work.iterdir()) == []  # the temporary directory is gone
    assert processes_inside(work) == []


@needs_dovecot
def test_quick_qresync_scenario_against_dovecot(tmp_path: Path, work: Path) -> None:
    """The harness's `qresync` scenario end to end on a small INBOX, Homing and Dovecot."""
    out = tmp_path / "qresync.md"
    command = [str(ROOT / "bench" / "run"), "--quick", "--only", "qresync", "--no-install",
               "--no-chart", "--rounds", "1", "--qresync-messages", "200", "--out", str(out),
               "--tmpdir", str(work)]  # fmt: skip
    run_bench(command)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| IMAP resync")]
    assert len(rows) == 10, rows  # the login and 4 ways to resync, bytes and ms each
    for row in rows:
        assert "(vs Dovecot)" in row
        assert len(re.findall(FIGURE, row)) == 3, row  # Homing, Dovecot, ratio
    assert list(work.iterdir()) == []
    assert processes_inside(work) == []
