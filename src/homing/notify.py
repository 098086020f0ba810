"""Telling a running `homing serve` what another process committed to the store.

Each process's store publishes its own commits to its own subscribers (IMAP sessions in
IDLE, the queue runner). A commit made by another process, such as an SMTP worker
(homing.workers) or the command line (`homing sendmail`, `homing queue retry`,
`homing mailbox ...`), would otherwise be noticed only when the server next polls: every
30 s in IDLE, every 60 s for the queue. So the other process sends a small message after
each commit, and the main process hands it to its subscribers as if it had committed it
(`Store.publish_external`, `Spool.notify_external`).

Messages are JSON, one per datagram:

- `{"c": [[kind, account_id, mailbox_id, [uid, ...]], ...]}`: the store's `Change`s;
- `{"q": 1}`: mail was queued or made due;
- `{"lost": 1}`: messages were lost; anything may have changed;
- `{"ready": 1}`: a worker accepts connections (workers only).

The messages are hints, never data: a lost one costs a delay until the next poll, never
mail. Workers send them over their link (a socket pair). Other processes send them to
`DATA_DIR/run/notify.sock`, a UNIX datagram socket the main process binds while it runs.
The socket's mode is 0660, so the server's user and group may send. A process that cannot
send, because no server runs or it has no permission, carries on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from homing.store import Store
from homing.store.model import Change

log = logging.getLogger("homing.notify")

#: Largest message sent; a bigger list of changes goes in several.
MAX_MESSAGE = 60 * 1024
#: The socket's name in the run directory.
SOCKET_NAME = "notify.sock"

_KINDS = frozenset({"new", "flags", "expunge", "mailbox", "unknown"})


# --------------------------------------------------------------------------------- messages


def encode_changes(changes: Sequence[Change]) -> list[bytes]:
    """The messages that carry `changes` (several if they are many)."""
    messages: list[bytes] = []
    items: list[str] = []
    size = 0
    for change in changes:
        item = json.dumps(
            [change.kind, change.account_id, change.mailbox_id, list(change.uids)],
            separators=(",", ":"),
        )
        if len(item) > MAX_MESSAGE - 16:  # the subscribers need the mailbox, not every UID
            item = json.dumps([change.kind, change.account_id, change.mailbox_id, []])
        if items and size + len(item) + 16 > MAX_MESSAGE:
            messages.append(('{"c":[' + ",".join(items) + "]}").encode())
            items, size = [], 0
        items.append(item)
        size += len(item) + 1
    if items:
        messages.append(('{"c":[' + ",".join(items) + "]}").encode())
    return messages


QUEUED = b'{"q":1}'


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded message."""

    ready: bool = False
    changes: tuple[Change, ...] = ()
    queued: bool = False
    lost: bool = False


def decode(data: bytes) -> Message:
    """A message; ValueError or TypeError if it is not one."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    changes = []
    for item in doc.get("c", ()):
        kind, account_id, mailbox_id, uids = item
        if (
            kind not in _KINDS
            or not isinstance(account_id, int)
            or not isinstance(mailbox_id, int)
            or not all(isinstance(uid, int) for uid in uids)
        ):
            raise ValueError(f"bad change {item!r}")
        changes.append(Change(kind, account_id, mailbox_id, tuple(uids)))
    return Message(
        ready=bool(doc.get("ready")),
        changes=tuple(changes),
        queued=bool(doc.get("q")),
        lost=bool(doc.get("lost")),
    )


def deliver_message(message: Message, store: Store) -> None:
    """Hand what `message` tells to this process's subscribers of `store`."""
    if message.lost:
        store.publish_external([Change("unknown", 0, 0, ())])
    if message.changes:
        store.publish_external(list(message.changes))
    if message.queued or message.lost:
        store.spool.notify_external()


# --------------------------------------------------------------------------------- senders


class Notifier:
    """Sends a store's commits to the `homing serve` listening at `path`, if any. Attach it
    with `attach(store)`; it never blocks and never fails the commit."""

    def __init__(self, path: Path) -> None:
        self._path = os.fspath(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sent = 0

    def attach(self, store: Store) -> None:
        store.subscribe(self.committed)
        store.spool.subscribe(self.queued)

    def committed(self, changes: list[Change]) -> None:
        for data in encode_changes(changes):
            self._send(data)

    def queued(self) -> None:
        self._send(QUEUED)

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, socket.MSG_DONTWAIT, self._path)
        except OSError:  # no server, no permission, or it is far behind: it will poll
            return
        self.sent += 1

    def close(self) -> None:
        self._sock.close()


# --------------------------------------------------------------------------------- receiver


class NotifyListener:
    """The main process's end: `run/notify.sock`, read on the event loop."""

    def __init__(self, path: Path, store: Store) -> None:
        self._path = path
        self._store = store
        self._sock: socket.socket | None = None

    def start(self) -> bool:
        """Bind the socket (replacing a stale one) and read it on the running loop; False,
        with a warning, if it cannot be bound (other processes then go unheard until the
        next poll)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            sock.bind(os.fspath(self._path))
            os.chmod(self._path, 0o660)
        except OSError as exc:
            sock.close()
            log.warning(
                "cannot listen on %s (%s): changes by other processes are polled", self._path, exc
            )
            return False
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        return True

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(256):  # then let the loop breathe; the rest comes next time
            try:
                data = sock.recv(MAX_MESSAGE + 1024)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("%s: %s", self._path, exc)
                return
            try:
                message = decode(data)
            except (ValueError, TypeError, RecursionError):
                log.warning("%s: ignored a message that is not one", self._path)
                continue
            deliver_message(message, self._store)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            self._path.unlink()


def notify_path(run_dir: Path) -> Path:
    return run_dir / SOCKET_NAME


def notifier_for(run_dir: Path) -> Notifier | None:
    """A Notifier if a server's socket is there (else None: nobody to tell)."""
    path = notify_path(run_dir)
    return Notifier(path) if path.exists() else None
