"""Durability: a process delivering mail is killed with SIGKILL at a random point; every
delivery it had acknowledged (its future resolved, so COMMIT returned) must be there, intact,
and no partial message may exist."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from argon2 import PasswordHasher

import homing
from homing.store import Store, make_credentials

CHILD = textwrap.dedent(
    """
    import random, sys, threading
    from pathlib import Path
    from homing.mail.mime import parse_message
    from homing.store import NewMessage, Store

    def expected(idx):
        rnd = random.Random(idx)
        payload = rnd.randbytes(rnd.randint(100, 60_000)).hex().encode()
        return f"Subject: m{idx}\\r\\n\\r\\n".encode() + payload + b"\\r\\n"

    path, start = Path(sys.argv[1]), int(sys.argv[2])
    store = Store.open(path)
    account = store.get_account("a@example.com").id
    out = threading.Lock()
    counter = iter(range(start, start + 1_000_000))

    def work():
        while True:
            with out:
                idx = next(counter)
            data = expected(idx)
            copies = [
                NewMessage(account, box, f"Delivered-To: {box}\\r\\n".encode(), data,
                           parse_message(data))
                for box in (["INBOX", "Archive"] if idx % 3 == 0 else ["INBOX"])
            ]
            stored = store.deliver(copies).result()
            line = " ".join(str(s.uid) for s in stored)
            with out:
                sys.stdout.write(f"{idx} {line}\\n")
                sys.stdout.flush()

    for _ in range(4):
        threading.Thread(target=work, daemon=True).start()
    threading.Event().wait()
    """
)


def expected(idx: int) -> bytes:
    rnd = random.Random(idx)
    payload = rnd.randbytes(rnd.randint(100, 60_000)).hex().encode()
    return f"Subject: m{idx}\r\n\r\n".encode() + payload + b"\r\n"


def test_sigkill_loses_no_acknowledged_delivery(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store.open(db, create=True) as store:
        store.add_domain("example.com")
        store.add_account("a@example.com", make_credentials("pw", hasher=PasswordHasher(1, 8, 1)))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rnd = random.Random()
    acknowledged: dict[int, list[int]] = {}
    for round_no in range(3):
        target = rnd.randint(1, 120)
        done = run_and_kill(script, db, start=round_no * 1_000_000, lines=target)
        assert len(done) >= target
        for idx, *uids in done:
            acknowledged[idx] = uids
        check_store(db, acknowledged)


def run_and_kill(script: Path, db: Path, start: int, lines: int) -> list[list[int]]:
    """Run the child until it has acknowledged `lines` deliveries, SIGKILL it, and return
    every acknowledgement it printed: [idx, uid, ...] per delivery."""
    env = dict(os.environ)
    src = str(Path(homing.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db), str(start)], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    read: list[bytes] = []
    try:
        while len(read) < lines:
            line = proc.stdout.readline()
            if not line:
                break
            read.append(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == -signal.SIGKILL
    assert len(read) == lines, "the child stopped on its own"
    complete = read + [ln for ln in rest.splitlines(keepends=True) if ln.endswith(b"\n")]
    return [[int(x) for x in ln.split()] for ln in complete]


def check_store(db: Path, acknowledged: dict[int, list[int]]) -> None:
    with Store.open(db) as store:
        assert store.integrity_check() == []
        account = store.get_account("a@example.com")
        assert account is not None
        inbox = store.get_mailbox(account.id, "INBOX")
        archive = store.get_mailbox(account.id, "Archive")
        assert inbox is not None and archive is not None
        for idx, uids in acknowledged.items():
            boxes = [inbox, archive] if idx % 3 == 0 else [inbox]
            assert len(uids) == len(boxes)
            for box, uid in zip(boxes, uids, strict=True):
                got = store.read_message(box.id, uid)
                assert got == f"Delivered-To: {box.name}\r\n".encode() + expected(idx), (idx, uid)
        # Every message present (acknowledged or not) is whole.
        for box in (inbox, archive):
            for info in store.list_messages(box.id):
                data = store.read_message(box.id, info.uid)
                assert data is not None
                prefix, _, rest = data.partition(b"\r\n")
                assert prefix == f"Delivered-To: {box.name}".encode()
                idx = int(rest.split(b"\r\n", 1)[0].removeprefix(b"Subject: m"))
                assert rest == expected(idx)
                assert info.size == len(data)
