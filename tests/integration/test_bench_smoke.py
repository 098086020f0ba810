"""The side-by-side benchmark harness (bench/run, bench/harness.py).

The smoke test runs `bench/run --quick --only smtp`: Homing and a throwaway Postfix end to
end; it checks that the table is written with every figure and that no server is left behind.
No timing is asserted (figures depend on the machine). The other tests check the arithmetic
of the report: percentiles, per-round paired ratios, which direction meets a target."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMTP_SOURCE = shutil.which("smtp-source") or (
    "/usr/sbin/smtp-source" if Path("/usr/sbin/smtp-source").exists() else None
)

needs_postfix = pytest.mark.skipif(
    SMTP_SOURCE is None or os.geteuid() != 0,
    reason="needs Postfix's smtp-source, and root for a throwaway Postfix master",
)

FIGURE = r"([\d,.]+) \(([\d,.]+)–([\d,.]+)\)"  # median (min–max)


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
    assert {"smtp", "latency", "pop3"} <= set(harness.SCENARIOS)
    for scenario in harness.SCENARIOS.values():
        assert scenario.description and scenario.peer in ("Postfix", "Dovecot")


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
    done = subprocess.run(
        command,
        env={**os.environ, "HOMING_BENCH_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

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
