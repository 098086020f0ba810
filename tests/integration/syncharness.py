"""What the sync-tool tests (test_imap_sync_tools.py) share: a varied corpus, the server's
mailboxes read back over IMAP (imaplib), a Maildir read back from disk and edited the way a
local mail reader edits it, and the expected state both must converge to.

Everything is keyed by Message-ID, which every test message carries and no sync tool
rewrites: `Model` maps a mailbox name to {Message-ID: Msg}. A sync is judged by turning the
server and the Maildir into Models and comparing both with the expected one, after checking
that no Message-ID occurs twice in a mailbox (a duplicate is the classic sync failure).
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import os
import random
import re
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: Maildir info letters and the IMAP system flags they stand for (the Maildir spec,
#: cr.yp.to/proto/maildir.html; "P" (passed) has no IMAP flag and is not used here).
LETTER_FLAG = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTER = {flag: letter for letter, flag in LETTER_FLAG.items()}

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)
_TUID = re.compile(rb"^X-TUID: [^\r\n]*\r?\n", re.MULTILINE)
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_FETCH_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_FILE_UID = re.compile(r",U=(\d+)")
_LIST_NAME = re.compile(rb'^\(([^)]*)\) (?:"[^"]*"|NIL) (?:"((?:[^"\\]|\\.)*)"|(\S+))$')


@dataclass(frozen=True)
class Msg:
    """A message as the tests compare it: IMAP flags, and the bytes as IMAP carries them
    (CRLF line ends) without X-TUID."""

    flags: frozenset[str]
    body: bytes


Model = dict[str, dict[str, Msg]]


def message_id(data: bytes) -> str:
    found = _MESSAGE_ID.search(header_of(data))
    assert found is not None, data[:300]
    return found.group(1).decode()


def header_of(data: bytes) -> bytes:
    """The header section, with the line end of its last field (not the empty line)."""
    ends = [data.find(sep) + len(sep) // 2 for sep in (b"\n\n", b"\r\n\r\n") if sep in data]
    return data[: min(ends)] if ends else data


def without_tuid(data: bytes) -> bytes:
    """Without the X-TUID header mbsync adds to the messages it copies (isync sync.c: the
    "transaction UID" by which it finds an APPENDed message again)."""
    header = header_of(data)
    return _TUID.sub(b"", header) + data[len(header) :]


def from_maildir(data: bytes) -> bytes:
    """A Maildir file as it reads over IMAP: both tools store LF line ends locally and turn
    them into CRLF when they APPEND (RFC 9051 §2.3.4: IMAP lines end in CRLF)."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", without_tuid(data))


# ---------------------------------------------------------------------------------- corpus


def corpus(tag: str, count: int, *, seed: int = 7) -> list[bytes]:
    """`count` messages, Message-ID <tag-N@sync.test>: plain ASCII, 8-bit UTF-8 (body and an
    unencoded header), multipart/alternative, and multipart/mixed with a base64 attachment
    (every tenth one about 200 KB, number 43 about 2 MB: literals of many reads)."""
    rng = random.Random(f"{seed}-{tag}")
    return [_message(tag, n, rng) for n in range(count)]


def _message(tag: str, n: int, rng: random.Random) -> bytes:
    head = (
        f"From: Sender {n} <sender{n}@remote.example>\r\nTo: user@local.test\r\n"
        f"Date: Mon, 1 Jan 2024 10:{n % 60:02d}:00 +0000\r\nMessage-ID: <{tag}-{n}@sync.test>\r\n"
    )
    kind = n % 4
    if kind == 0:
        return (head + f"Subject: plain {tag} {n}\r\n\r\nbody {n}\r\n.\r\nnot the end\r\n").encode()
    if kind == 1:
        text = f"Grüße aus Köln, Nachricht {n} — ☃ ✓ ñ\r\n" * (1 + n % 5)
        return (
            head + f"Subject: 8-bit {tag} {n} über\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + text
        ).encode()
    if kind == 2:
        return (
            head + f"Subject: alternative {tag} {n}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/alternative; boundary="alt-b"\r\n\r\n'
            "--alt-b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"text part {n}\r\n--alt-b\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n"
            f"<p>html part {n}</p>\r\n--alt-b--\r\n"
        ).encode()
    size = 1_500_000 if n == 43 else 150_000 if n % 10 == 3 else 300 + rng.randrange(3000)
    payload = base64.encodebytes(rng.randbytes(size)).replace(b"\n", b"\r\n")
    head += (
        f"Subject: attachment {tag} {n}\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="mix-b"\r\n\r\n'
        "preamble\r\n--mix-b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"see attached {n}\r\n--mix-b\r\nContent-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="f{n}.bin"\r\n\r\n'
    )
    return head.encode() + payload + b"--mix-b--\r\n"


def initial_flags(n: int) -> frozenset[str]:
    flags = {
        "\\Seen": n % 3 == 0,
        "\\Flagged": n % 7 == 0,
        "\\Answered": n % 11 == 0,
        "\\Draft": n % 13 == 0,
    }
    return frozenset(flag for flag, on in flags.items() if on)


# ------------------------------------------------------------------------------ model check


def check_model(actual: Model, expected: Model, where: str) -> None:
    """`actual` holds what `expected` holds: same non-empty mailboxes, same Message-IDs,
    flags and bytes. A precise message first, so a failure says what went wrong."""
    want = {name: box for name, box in expected.items() if box}
    have = {name: box for name, box in actual.items() if box}
    assert sorted(have) == sorted(want), f"{where}: mailboxes with messages differ"
    for name, box in want.items():
        got = have[name]
        missing, extra = sorted(box.keys() - got.keys()), sorted(got.keys() - box.keys())
        assert not missing and not extra, f"{where} {name}: missing {missing}, unexpected {extra}"
        for mid, msg in box.items():
            assert got[mid].flags == msg.flags, f"{where} {name} {mid}: flags"
            assert got[mid].body == msg.body, f"{where} {name} {mid}: bytes differ"


def no_duplicates(ids: list[str], where: str) -> None:
    twice = sorted(mid for mid, n in Counter(ids).items() if n > 1)
    assert not twice, f"{where}: duplicated {twice}"


# ---------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class ServerMessage:
    uid: int
    mid: str
    msg: Msg
    internaldate: int  # seconds since the epoch


@dataclass(frozen=True)
class ServerBox:
    uidvalidity: int
    uidnext: int
    messages: tuple[ServerMessage, ...]


class ImapSide:
    """The account as an IMAP client (imaplib over implicit TLS, trusting the server's own
    certificate) sees it; used to read the server's state and to change it between syncs."""

    def __init__(self, port: int, cert: Path, user: str, password: str) -> None:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # connected by address; the sync tools check the name
        self.conn = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=30)
        self.conn.login(user, password)

    def close(self) -> None:
        self.conn.logout()

    def __enter__(self) -> ImapSide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ok(self, response: tuple[str, Sequence[Any]]) -> list[Any]:
        typ, data = response
        assert typ == "OK", (typ, data)
        return list(data)

    def mailboxes(self) -> list[str]:
        names = []
        for line in self.ok(self.conn.list('""', "*")):
            assert isinstance(line, bytes), line
            found = _LIST_NAME.match(line)
            assert found is not None, line
            if b"\\Noselect" not in found.group(1):
                quoted, atom = found.group(2), found.group(3)
                raw = atom if quoted is None else re.sub(rb"\\(.)", rb"\1", quoted)
                names.append(raw.decode())
        return sorted(names)

    def select(self, mailbox: str) -> int:
        return int(self.ok(self.conn.select(_quote(mailbox)))[0])

    def snapshot(self) -> dict[str, ServerBox]:
        """Every mailbox: UIDVALIDITY, UIDNEXT and each message's UID, flags and bytes."""
        return {name: self.box(name) for name in self.mailboxes()}

    def box(self, mailbox: str) -> ServerBox:
        status = self.ok(self.conn.status(_quote(mailbox), "(UIDVALIDITY UIDNEXT)"))[0]
        assert isinstance(status, bytes)
        validity, uidnext = (_status_item(status, key) for key in (b"UIDVALIDITY", b"UIDNEXT"))
        messages: list[ServerMessage] = []
        if self.select(mailbox):
            data = self.ok(self.conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])"))
            messages = _fetched(data)
        self.conn.unselect()
        return ServerBox(validity, uidnext, tuple(sorted(messages, key=lambda m: m.uid)))

    def uid_of(self, mailbox: str, mid: str) -> int:
        self.select(mailbox)
        data = self.ok(self.conn.uid("SEARCH", "HEADER", "Message-ID", f'"{mid}"'))
        uids = [int(u) for u in data[0].split()]
        assert len(uids) == 1, (mailbox, mid, uids)
        return uids[0]

    def store(self, mailbox: str, mid: str, op: str, flags: frozenset[str]) -> None:
        uid = self.uid_of(mailbox, mid)
        self.ok(self.conn.uid("STORE", str(uid), op, "(" + " ".join(sorted(flags)) + ")"))

    def move(self, mailbox: str, mids: list[str], target: str) -> None:
        uids = ",".join(str(self.uid_of(mailbox, mid)) for mid in mids)
        self.ok(self.conn.uid("MOVE", uids, _quote(target)))

    def expunge(self, mailbox: str) -> None:
        self.select(mailbox)
        self.ok(self.conn.expunge())

    def append(self, mailbox: str, data: bytes, flags: frozenset[str]) -> None:
        flag_list = "(" + " ".join(sorted(flags)) + ")"
        self.ok(self.conn.append(_quote(mailbox), flag_list, None, data))

    def create(self, mailbox: str) -> None:
        self.ok(self.conn.create(_quote(mailbox)))


def _status_item(status: bytes, key: bytes) -> int:
    found = re.search(rb"\b" + key + rb" (\d+)", status)
    assert found is not None, status
    return int(found.group(1))


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fetched(data: list[object]) -> list[ServerMessage]:
    """imaplib's FETCH answer: (head with the literal's size, literal) then the rest of the
    line; UID and FLAGS may sit before or after BODY[]."""
    messages = []
    for i, item in enumerate(data):
        if not isinstance(item, tuple):
            continue
        head, body = item
        tail = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
        line = head + b" " + tail
        uid, flags = _FETCH_UID.search(line), _FETCH_FLAGS.search(line)
        date = _FETCH_DATE.search(line)
        assert uid is not None and flags is not None and date is not None, line
        names = frozenset(f.decode() for f in flags.group(1).split()) - {"\\Recent"}
        # RFC 9051 §9 date-time: "dd-Mon-yyyy hh:mm:ss +zzzz" (day may be space-padded)
        when = datetime.strptime(date.group(1).decode().strip(), "%d-%b-%Y %H:%M:%S %z")
        messages.append(
            ServerMessage(
                int(uid.group(1)),
                message_id(body),
                Msg(names, without_tuid(body)),  # byte for byte, line ends and all
                int(when.timestamp()),
            )
        )
    return messages


def server_model(snapshot: dict[str, ServerBox]) -> Model:
    model: Model = {}
    for name, box in snapshot.items():
        no_duplicates([m.mid for m in box.messages], f"server {name}")
        model[name] = {m.mid: m.msg for m in box.messages}
    return model


# ----------------------------------------------------------------------------- local side


@dataclass(frozen=True)
class LocalMessage:
    path: Path
    uid: int | None  # the ",U=" in the file name (whose UID that is depends on the tool)
    mid: str
    msg: Msg
    mtime: int


_unique = itertools.count()


class Maildir:
    """A tree of Maildir folders, read and edited as a mail reader does: flags live in the
    ":2," info of the file name, a message read or flagged moves from new/ to cur/, a deleted
    message's file is unlinked, a new message is written to tmp/ and renamed into new/."""

    def __init__(self, root: Path, separator: str) -> None:
        self.root = root
        self.separator = separator  # between hierarchy levels in a folder's path under root

    def folder_path(self, mailbox: str) -> Path:
        return self.root / mailbox.replace("/", self.separator)

    def folders(self) -> dict[str, Path]:
        found = {}
        for cur in self.root.rglob("cur"):
            folder = cur.parent
            if (folder / "new").is_dir() and (folder / "tmp").is_dir():
                name = folder.relative_to(self.root).as_posix().replace(self.separator, "/")
                found[name] = folder
        return found

    def messages(self, mailbox: str) -> list[LocalMessage]:
        folder = self.folder_path(mailbox)
        found = []
        for sub in ("new", "cur"):
            for path in sorted((folder / sub).iterdir()):
                name, _, info = path.name.partition(":2,")
                flags = frozenset(LETTER_FLAG[c] for c in info if c in LETTER_FLAG)
                uid = _FILE_UID.search(name)
                data = path.read_bytes()
                msg = Msg(flags, from_maildir(data))
                number = int(uid.group(1)) if uid else None
                mtime = int(path.stat().st_mtime)
                found.append(LocalMessage(path, number, message_id(data), msg, mtime))
        return found

    def snapshot(self) -> dict[str, list[LocalMessage]]:
        return {name: self.messages(name) for name in sorted(self.folders())}

    def find(self, mailbox: str, mid: str) -> Path:
        """The one file holding Message-ID `mid` (reading headers only: the corpus puts
        Message-ID in the first few hundred bytes)."""
        folder = self.folder_path(mailbox)
        hits = []
        for path in itertools.chain((folder / "new").iterdir(), (folder / "cur").iterdir()):
            with path.open("rb") as f:
                if message_id(f.read(4096)) == mid:
                    hits.append(path)
        assert len(hits) == 1, (mailbox, mid, hits)
        return hits[0]

    def set_flags(self, mailbox: str, mid: str, flags: frozenset[str]) -> None:
        old = self.find(mailbox, mid)
        base = old.name.partition(":2,")[0]
        letters = "".join(sorted(FLAG_LETTER[f] for f in flags))
        old.rename(self.folder_path(mailbox) / "cur" / f"{base}:2,{letters}")

    def delete(self, mailbox: str, mid: str) -> None:
        self.find(mailbox, mid).unlink()

    def add(self, mailbox: str, data: bytes, flags: frozenset[str] = frozenset()) -> None:
        """Deliver as a local program would: LF line ends, tmp/ then rename."""
        folder = self.folder_path(mailbox)
        for sub in ("cur", "new", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        name = f"{int(time.time())}.M{next(_unique)}P{os.getpid()}.localhost"
        tmp = folder / "tmp" / name
        tmp.write_bytes(data.replace(b"\r\n", b"\n"))
        if flags:
            letters = "".join(sorted(FLAG_LETTER[f] for f in flags))
            tmp.rename(folder / "cur" / f"{name}:2,{letters}")
        else:
            tmp.rename(folder / "new" / name)


def local_model(snapshot: dict[str, list[LocalMessage]]) -> Model:
    model: Model = {}
    for name, messages in snapshot.items():
        no_duplicates([m.mid for m in messages], f"local {name}")
        model[name] = {m.mid: m.msg for m in messages}
    return model


def local_listing(snapshot: dict[str, list[LocalMessage]]) -> dict[str, list[tuple[str, bytes]]]:
    """File names and contents, to show a sync changed nothing at all."""
    return {
        name: sorted((str(m.path.relative_to(m.path.parents[1])), m.path.read_bytes()) for m in ms)
        for name, ms in snapshot.items()
    }
