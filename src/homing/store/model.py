"""The values the store hands out and takes in: frozen dataclasses, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from homing.mail.mime import ParsedMessage


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str
    """The address as it was given when the account was created (compare by `address_key`)."""
    domain: str
    disabled: bool
    created: float


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    """One mailbox and its IMAP status (RFC 9051 §7.3.1 / RFC 7162 §3.1.2)."""

    id: int
    account_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool
    messages: int
    unseen: int
    size: int
    """Sum of the RFC822.SIZE of its messages (STATUS SIZE, RFC 8438)."""


class MessageInfo(NamedTuple):
    """One message's metadata. A named tuple, not a dataclass: SELECT of a big mailbox builds
    one per message, and a tuple is made three times faster."""

    id: int
    mailbox_id: int
    uid: int
    modseq: int
    flags: frozenset[str]
    internaldate: float
    size: int


MetaRow = tuple[int, int, frozenset[str], float, int, bytes, bytes, bytes, bytes]
"""`Store.read_fetch_meta`: (uid, modseq, flags, internaldate, size, envelope, bodystructure,
body_nx, partmap)."""


class FetchRow(NamedTuple):
    """What `Store.read_fetch_data` returns for one message: the parse results computed at
    delivery and/or the stored bytes, as asked for (a named tuple: one is made per message
    of a FETCH 1:*).

    `envelope`, `bodystructure`, `body_nx` (BODY without extension data) and `partmap` are
    b"" unless parse results were asked for; `prefix` (this copy's trace headers) and `body`
    (the message as received; the part map's offsets are relative to it) are None unless the
    bytes were asked for. The message as stored is `prefix + body`.
    """

    uid: int
    envelope: bytes = b""
    bodystructure: bytes = b""
    body_nx: bytes = b""
    partmap: bytes = b""
    prefix: bytes | None = None
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One copy to deliver or append: `prefix + body` is the message as stored.

    `prefix` holds this recipient's trace headers (Return-Path, Delivered-To, Received);
    `body` is the message as received, shared by every copy in one `Store.deliver` call that
    has the same bytes. `parsed` is `parse_message(body)`, computed by the caller so the
    writer thread does no parsing.
    """

    account_id: int
    mailbox: str
    prefix: bytes
    body: bytes
    parsed: ParsedMessage
    flags: frozenset[str] = frozenset()
    internaldate: float | None = None
    """Seconds since the epoch; None means now."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """Where a delivered copy landed (APPENDUID, RFC 4315 §3, needs uidvalidity and uid)."""

    account_id: int
    mailbox_id: int
    mailbox: str
    uid: int
    uidvalidity: int
    modseq: int
    size: int


@dataclass(frozen=True, slots=True)
class Change:
    """A committed change, published to `Store.subscribe` callbacks.

    kind "new": messages with `uids` arrived; "flags": their flags changed; "expunge": they
    were removed; "mailbox": the mailbox was created, deleted, renamed or (un)subscribed
    (`uids` is empty); "unknown": another process changed something and what was lost
    (`Store.publish_external`; ids are 0): anything may have changed.
    """

    kind: Literal["new", "flags", "expunge", "mailbox", "unknown"]
    account_id: int
    mailbox_id: int
    uids: tuple[int, ...]


class FlagChanges(list[tuple[int, int, frozenset[str]]]):
    """The result of `Store.store_flags`: (uid, modseq, flags) of each message whose flags
    changed, in UID order. `modified` holds the UIDs left alone because their MODSEQ was
    above UNCHANGEDSINCE (the MODIFIED response code, RFC 7162 §3.1.3)."""

    modified: tuple[int, ...] = ()


@dataclass(slots=True)
class StoreStats:
    """Counters kept by the writer thread (read them from any thread, for tests and metrics)."""

    commits: int = 0
    """Transactions committed (each is one WAL fsync)."""
    jobs: int = 0
    """Jobs run, successful or not."""
    failed_jobs: int = 0
    largest_batch: int = 0
    retried_batches: int = 0
    """Batches re-run because a job's error made SQLite roll back the whole transaction."""
    vacuums: int = 0
