"""Sans-I/O IMAP server session: IMAP4rev2 (RFC 9051) and IMAP4rev1 (RFC 3501).

Theory of operation
-------------------
`ServerConnection` is fed bytes with `receive_data()` and asked for events with `next_event()`;
what it wants sent accumulates in an output buffer read with `data_to_send()`. It never awaits,
reads a clock or touches a socket or the store (ARCHITECTURE.md rule 1). Framing and parsing
are `grammar.CommandReader` and `grammar.parse_command`; this module decides what a command
means in the current state, keeps the client's view of the selected mailbox, and writes every
response. Commands that need the store come out as events; the adapter (`homing.imapd`) does
the store work and answers with one of the result methods. While an event is outstanding the
core parses nothing further, so pipelined commands keep their order.

States (RFC 9051 §3) and the commands each accepts are the table `_STATES_BY_NAME` at the end
of the module; a command outside its states gets BAD and changes nothing:

    NOT_AUTHENTICATED --LOGIN / AUTHENTICATE, then logged_in()--> AUTHENTICATED
    NOT_AUTHENTICATED --STARTTLS--> (handshake) --tls_established()--> NOT_AUTHENTICATED
    AUTHENTICATED --SELECT / EXAMINE, then mailbox_selected()--> SELECTED
    SELECTED --CLOSE / UNSELECT / a failed SELECT--> AUTHENTICATED
    any --LOGOUT / EOF / timeout / too many errors / shutdown--> LOGOUT (Closed event)

Adapter contract (`imapd/session.py`)
-------------------------------------
Every event but `Closed` is answered by exactly one call before `next_event()` is called
again. `failed(response)` answers any of the store events with a NO (a store error, a missing
mailbox: the response says which).

* `StartTLS`            -> flush, handshake, `tls_established()` (or close on failure).
* `CheckPassword`       -> verify; `logged_in()` or `login_failed(...)`.
* `NeedScramKeys`       -> `scram_keys(keys or None)`.
* `Authenticated`       -> SCRAM proved the user: `logged_in()` or `login_failed(...)`.
* `SelectMailbox`       -> `mailbox_selected(snapshot)`.
* `CreateMailbox`, `DeleteMailbox`, `RenameMailbox`, `SetSubscribed` -> `done()`.
* `ListMailboxes`       -> `mailboxes_listed(entries)` with every mailbox of the account.
* `GetStatus`           -> `status(entry)`.
* `AppendMessages`      -> `appended(uidvalidity, uids)`.
* `FetchMessages`       -> set \\Seen on `set_seen` first if given; then `fetch_messages(views)`
                           (or `fetch_message(view)`) for the messages that still exist, in
                           any order and as many calls as suit, then `fetch_done()`.
* `SearchMessages`      -> run `search.evaluate` with its arguments over one `SearchView` per
                           message of `messages` that still exists, then `searched(numbers)`.
* `StoreFlags`          -> `flags_stored(changes)`: (uid, new flags) of the messages changed.
* `CopyMessages`        -> `copied(uidvalidity, pairs)`; for a MOVE the originals are gone.
* `ExpungeMessages`     -> `expunged(uids)`.
* `Poll`                -> NOOP, CHECK or IDLE in SELECTED: sync the mailbox, then `polled()`.
* `Idle`                -> nothing to answer: while `idling`, wait for input and for store
                           changes, passing them on with `mailbox_changes` (they go out at
                           once); the core reads DONE itself. `keepalive()` now and then.

The selected mailbox
--------------------
The core holds the client's view: the UID of each message sequence number and the flags the
client was last told. The adapter reports what the store says has changed with
`mailbox_changes(messages, expunged)` (idempotent: reporting a change twice is harmless) at
any time; the core turns them into untagged EXPUNGE, EXISTS and FETCH FLAGS responses only
where RFC 9051 §5.5 and §7.5.1 allow them: just before a tagged response, or at once during
IDLE, and never an EXPUNGE while answering FETCH, STORE or SEARCH by sequence number (the
UID forms may hear of them). Until an expunge is announced, the message keeps its sequence
number; a FETCH that names it gets what still exists and NO [EXPUNGEISSUED] (RFC 2180
§4.1.3, RFC 5530). New messages are always announced with one EXISTS.

Timers are the adapter's: `progress` moves whenever a command completes, so an idle timer
can be re-armed; `timed_out()`, `keepalive()` (during IDLE) and `shutdown()` are its inputs.
"""

from __future__ import annotations

import bisect
import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast, get_args

from homing.proto import sasl
from homing.proto.imap import responses as r
from homing.proto.imap import types as t
from homing.proto.imap.fetch import (
    Chunk,
    FetchError,
    MessageView,
    compile_fetch,
    compile_fetch_chunks,
    format_flags,
    needs_data,
    needs_parse,
    sets_seen,
)
from homing.proto.imap.grammar import NEED_DATA as _READER_NEED_DATA
from homing.proto.imap.grammar import (
    CommandReader,
    ContinuationRequest,
    IMAPParseError,
    Limits,
    RawCommand,
    is_idle_done,
    parse_command,
)
from homing.proto.imap.responses import Response
from homing.proto.imap.search import format_search, has_modseq, saved_result

__all__ = [
    "NEED_DATA",
    "AppendMessages",
    "Authenticated",
    "CheckPassword",
    "Closed",
    "CopyMessages",
    "CreateMailbox",
    "DeleteMailbox",
    "Event",
    "ExpungeMessages",
    "FetchMessages",
    "GetStatus",
    "Idle",
    "ListMailboxes",
    "MailboxEntry",
    "MailboxSnapshot",
    "NeedScramKeys",
    "Poll",
    "RenameMailbox",
    "SearchMessages",
    "SelectMailbox",
    "ServerConnection",
    "SetSubscribed",
    "Settings",
    "StartTLS",
    "State",
    "StoreFlags",
    "check_mailbox_name",
    "match_pattern",
]

#: Hierarchy separator (RFC 9051 §5.1.1); the store uses the same one.
SEPARATOR = "/"
#: Longest hierarchy component accepted, in UTF-8 octets (as Dovecot's default).
MAX_COMPONENT = 255
#: Longest mailbox name accepted, in UTF-8 octets (the store's limit).
MAX_NAME = 1000
#: The flags a client may set (RFC 9051 §2.3.2); keywords are any atom.
SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})
RECENT = "\\Recent"
#: What ENABLE turns on (RFC 5161; RFC 9051 §6.3.1; RFC 7162 §3.1, §3.2.3), as the parser
#: gives the names (upper case), with the spelling ENABLED answers with.
ENABLEABLE = {
    "IMAP4REV2": "IMAP4rev2",
    "CONDSTORE": "CONDSTORE",
    "QRESYNC": "QRESYNC",
    "UTF8=ACCEPT": "UTF8=ACCEPT",
}
#: The largest UID (RFC 9051 §2.3.1.1): "*" in the UID set of a VANISHED request.
MAX_UID = 4294967295
#: Output gathered by FETCH above which the adapter should flush before loading more.
FLUSH_AT = 256 * 1024


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"  # RFC 9051 §3.1
    AUTHENTICATED = "authenticated"  # §3.2
    SELECTED = "selected"  # §3.3
    LOGOUT = "logout"  # §3.4


@dataclass(frozen=True, slots=True)
class Settings:
    """What one IMAP listener offers and enforces. Built by the session layer from Config."""

    tls_active: bool = False
    """The connection is already encrypted (port 993, implicit TLS, RFC 8314)."""
    allow_plaintext_auth: bool = False
    """Accept LOGIN and AUTHENTICATE without TLS (a loopback client, with [imap]
    allow_plaintext_loopback). Otherwise passwords are taken only under TLS (RFC 9051 §6.2.3)."""
    starttls: bool = False
    """Offer STARTTLS (RFC 9051 §6.2.1) while the session is not yet encrypted."""
    mechanisms: tuple[str, ...] = sasl.MECHANISMS
    """SASL mechanisms for AUTHENTICATE, offered only under TLS (names from sasl.MECHANISMS)."""
    limits: Limits = field(default_factory=Limits)
    """Command, line and literal limits (the literal limit is APPENDLIMIT, RFC 7889)."""
    max_bad_before_login: int = 3
    """BAD commands before login that end the session with BYE (as Dovecot's imap-login)."""
    max_bad_after_login: int = 20
    """BAD commands after login that end the session with BYE (as Dovecot's imap)."""
    max_login_failures: int = 3
    """Failed LOGIN / AUTHENTICATE attempts in one session before BYE."""
    greeting: str = "Homing IMAP server ready"
    """Text of the greeting line."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.mechanisms if m not in sasl.MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported SASL mechanisms: {', '.join(unknown)}")


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class MailboxEntry:
    """One mailbox with its status (RFC 9051 §7.2.2 LIST, §7.2.4 STATUS)."""

    name: str
    uidvalidity: int = 1
    uidnext: int = 1
    messages: int = 0
    unseen: int = 0
    size: int = 0
    highestmodseq: int = 1
    special_use: str | None = None
    subscribed: bool = False
    deleted: int | None = None
    """Messages flagged \\Deleted; None when not counted (only STATUS DELETED needs it)."""
    recent: int = 0
    """Messages \\Recent (IMAP4rev1 only)."""


@dataclass(frozen=True, slots=True)
class MailboxSnapshot:
    """The selected mailbox as SELECT / EXAMINE found it."""

    name: str
    """The name as stored (RFC 9051 §6.3.2: the LIST response of SELECT carries it)."""
    uidvalidity: int
    uidnext: int
    messages: Sequence[tuple[int, frozenset[str]]]
    """(uid, flags) of every message, in UID order."""
    special_use: str | None = None
    recent: frozenset[int] = frozenset()
    """UIDs that are \\Recent for this session (IMAP4rev1 only; RFC 3501 §2.3.2)."""
    highestmodseq: int = 1
    """The mailbox's HIGHESTMODSEQ (RFC 7162 §3.1.2.1), sent with every SELECT / EXAMINE."""
    vanished: Sequence[int] = ()
    """SELECT (QRESYNC ...): UIDs expunged since the client's MODSEQ, among the UIDs it named
    (RFC 7162 §3.2.5.1). Empty when the UIDVALIDITY it gave is not the mailbox's."""
    changed: Sequence[tuple[int, frozenset[str], int]] = ()
    """SELECT (QRESYNC ...): (uid, flags, modseq) of the messages changed since the client's
    MODSEQ, among the UIDs it named, in UID order."""


# ------------------------------------------------------------------------------------ events


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class StartTLS:
    """The OK to STARTTLS is queued: flush it, handshake, then `tls_established()`."""


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """LOGIN, or AUTHENTICATE PLAIN/LOGIN: verify the password; `logged_in` / `login_failed`."""

    user: str
    password: str = field(repr=False)
    mechanism: str
    """"LOGIN" for the LOGIN command, else the SASL mechanism name."""


@dataclass(frozen=True, slots=True)
class NeedScramKeys:
    """Look up the SCRAM-SHA-256 verifier of `user`; answer with `scram_keys(keys or None)`."""

    user: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """SCRAM proved the user's identity: `logged_in()` or `login_failed(...)`."""

    user: str
    mechanism: str


@dataclass(frozen=True, slots=True)
class SelectMailbox:
    """SELECT / EXAMINE. With `qresync` (RFC 7162 §3.2.5), when its UIDVALIDITY is the
    mailbox's, fill in the snapshot's `vanished` and `changed`."""

    tag: str
    mailbox: str
    readonly: bool
    qresync: t.QResync | None = None


@dataclass(frozen=True, slots=True)
class CreateMailbox:
    tag: str
    mailbox: str
    special_use: str | None


@dataclass(frozen=True, slots=True)
class DeleteMailbox:
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class RenameMailbox:
    tag: str
    mailbox: str
    new_name: str


@dataclass(frozen=True, slots=True)
class SetSubscribed:
    tag: str
    mailbox: str
    subscribed: bool


@dataclass(frozen=True, slots=True)
class ListMailboxes:
    """LIST or LSUB: give every mailbox of the account (the core matches the patterns).
    `count_deleted`: LIST-STATUS asked for DELETED, so count \\Deleted messages too."""

    tag: str
    count_deleted: bool = False


@dataclass(frozen=True, slots=True)
class GetStatus:
    tag: str
    mailbox: str
    count_deleted: bool


@dataclass(frozen=True, slots=True)
class AppendMessages:
    tag: str
    mailbox: str
    messages: tuple[t.AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class FetchMessages:
    """FETCH / UID FETCH. Load `messages` ((seq, uid) pairs, ascending): the stored bytes if
    `needs_data`, the parse results if `needs_parse`. First set \\Seen on the UIDs of
    `set_seen` (RFC 9051 §6.4.5) and give the views the resulting flags.

    `changed_since` (RFC 7162 §3.1.4.1): only messages with a greater MODSEQ are wanted (the
    core skips the others; the adapter may leave them out). `vanished` (UID FETCH ...
    (CHANGEDSINCE n VANISHED), §3.2.6): UID ranges; before any message, call
    `vanished(uids)` with the UIDs in them expunged with a MODSEQ above `changed_since`."""

    tag: str
    messages: list[tuple[int, int]]
    needs_data: bool
    needs_parse: bool
    set_seen: list[int]
    changed_since: int | None = None
    vanished: list[tuple[int, int]] | None = None


@dataclass(frozen=True, slots=True)
class SearchMessages:
    """SEARCH / UID SEARCH: `search.evaluate(key, views, max_seq=..., max_uid=..., saved=...,
    charset=...)` over a `SearchView` per (seq, uid) of `messages` (every message the client
    knows, in order). `recent` UIDs get \\Recent in their view's flags (IMAP4rev1 RECENT,
    NEW, OLD). `needs_text`: some key reads the message (run it off the event loop)."""

    tag: str
    key: t.SearchKey
    messages: list[tuple[int, int]]
    max_seq: int
    max_uid: int
    saved: frozenset[int]
    charset: str
    recent: frozenset[int]
    needs_text: bool
    with_modseq: bool = False
    """The key uses MODSEQ: pass `searched` the highest MODSEQ of the matches (RFC 7162
    §3.1.5)."""


@dataclass(frozen=True, slots=True)
class StoreFlags:
    """STORE: change the flags of `uids`; with `unchanged_since` (RFC 7162 §3.1.3) only of
    those whose MODSEQ is not above it (the others are `modified`)."""

    tag: str
    uids: list[int]
    flags: frozenset[str]
    mode: t.StoreMode
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class CopyMessages:
    tag: str
    uids: list[int]
    mailbox: str
    move: bool


@dataclass(frozen=True, slots=True)
class ExpungeMessages:
    """EXPUNGE (`uids` None), UID EXPUNGE, or CLOSE (`close`: nothing is announced)."""

    tag: str
    uids: list[int] | None
    close: bool = False


@dataclass(frozen=True, slots=True)
class Poll:
    """NOOP or CHECK in SELECTED (or IDLE starting): sync the mailbox, then `polled()`."""

    tag: str


@dataclass(frozen=True, slots=True)
class Idle:
    """The client is idling (RFC 2177): report store changes with `mailbox_changes` as they
    come (they go out at once); the core reads DONE itself."""

    tag: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over: flush what is queued and close. `reason` is for the log."""

    reason: str


_StoreEvent = (
    SelectMailbox
    | CreateMailbox
    | DeleteMailbox
    | RenameMailbox
    | SetSubscribed
    | ListMailboxes
    | GetStatus
    | AppendMessages
    | FetchMessages
    | SearchMessages
    | StoreFlags
    | CopyMessages
    | ExpungeMessages
    | Poll
)
Event = (
    StartTLS
    | CheckPassword
    | NeedScramKeys
    | Authenticated
    | _StoreEvent
    | Idle
    | Closed
    | _NeedData
)
_Verdict = CheckPassword | NeedScramKeys | Authenticated | _StoreEvent


# ------------------------------------------------------------------------------------ names


def check_mailbox_name(name: str, *, create: bool = False) -> str | None:
    """`name` as the store should see it, or None if it must be refused (NO [CANNOT]).

    Mailbox names are data in the store and never touch the file system, but names that look
    like paths or are unusable by clients are refused all the same (as Dovecot does): empty
    names and components ("", "/a", "a//b"), "." and ".." components, a leading "~", control
    characters, the LIST wildcards, components over `MAX_COMPONENT` octets. CREATE may end
    with the separator (RFC 9051 §6.3.4: "foo/" creates "foo").
    """
    if create and name.endswith(SEPARATOR):
        name = name[: -len(SEPARATOR)]
    if not name or name.startswith("~") or len(name.encode("utf-8", "replace")) > MAX_NAME:
        return None
    if _BAD_NAME_CHARS.search(name) is not None:
        return None
    parts = name.split(SEPARATOR)
    for part in parts:
        if part in ("", ".", "..") or len(part.encode("utf-8", "replace")) > MAX_COMPONENT:
            return None
    if parts[0].upper() == "INBOX":
        parts[0] = "INBOX"
    return SEPARATOR.join(parts)


# C0, DEL, C1 controls; the LIST wildcards; lone surrogates and non-characters.
_BAD_NAME_CHARS = re.compile("[\x00-\x1f\x7f-\x9f*%\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")


def match_pattern(pattern: str) -> Callable[[str], bool]:
    """A matcher for a LIST pattern (RFC 9051 §6.3.9): "*" matches anything, "%" anything but
    the separator; everything else is literal, except that INBOX is case-insensitive."""
    if pattern[:5].upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in "/*%"):
        pattern = "INBOX" + pattern[5:]
    regex = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    compiled = re.compile(regex, re.DOTALL)
    return lambda name: compiled.fullmatch(name) is not None


# ------------------------------------------------------------------------------------ the view


class _View:
    """The selected mailbox as the client knows it, and what it has not been told yet."""

    __slots__ = (
        "expunge_floor",
        "flags",
        "keywords",
        "max_uid",
        "modseqs",
        "name",
        "new",
        "new_keywords",
        "readonly",
        "recent",
        "saved",
        "stale_expunged",
        "stale_flags",
        "told",
        "uids",
        "uidvalidity",
    )

    def __init__(self, snapshot: MailboxSnapshot, readonly: bool) -> None:
        self.name = snapshot.name
        self.readonly = readonly
        self.uidvalidity = snapshot.uidvalidity
        self.uids: list[int] = [uid for uid, _ in snapshot.messages]
        """Sequence number n is uids[n - 1]: what the client knows, expunges not yet told
        included."""
        self.flags: dict[int, frozenset[str]] = dict(snapshot.messages)
        """Latest known flags of every message in `uids` and `new`."""
        self.max_uid = max(self.uids, default=0)
        self.new: list[int] = []
        """UIDs that arrived and were not announced with EXISTS yet (ascending)."""
        self.stale_expunged: set[int] = set()
        """UIDs in `uids` that the store has expunged; not announced yet."""
        self.stale_flags: set[int] = set()
        """UIDs in `uids` whose flags changed since the client was last told."""
        self.told: dict[int, frozenset[str]] = {}
        """For the UIDs in `stale_flags`: the flags the client was last told (`flags` holds
        the latest known), which a STORE's answer is measured against."""
        self.recent = set(snapshot.recent)
        self.keywords = {f for flags in self.flags.values() for f in flags if f[0] != "\\"}
        self.new_keywords = False
        self.saved: frozenset[int] = frozenset()
        """The SEARCHRES saved result as UIDs; empty after SELECT (RFC 5182 §2.1)."""
        self.modseqs: dict[int, int] = {}
        """MODSEQ of the messages in `stale_flags` (for their unsolicited FETCH, RFC 7162)."""
        self.expunge_floor: int | None = None
        """A MODSEQ below that of every expunge in `stale_expunged` (see `_announce`)."""

    def seq(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def is_new(self, uid: int) -> bool:
        """Whether `uid` arrived but was not announced yet: new UIDs are always above every
        UID the client knows (UIDs only grow, RFC 9051 §2.3.1.1)."""
        return bool(self.new) and uid >= self.new[0]

    def merge(
        self,
        messages: Iterable[tuple[int, frozenset[str]]],
        expunged: Iterable[int],
        modseqs: Mapping[int, int],
        since: int | None,
    ) -> None:
        """Take in what the store reports (see the module docstring: idempotent)."""
        for uid in expunged:
            if uid not in self.flags:
                continue
            if self.is_new(uid):  # never announced: it simply never existed for the client
                self.new.remove(uid)
                del self.flags[uid]
                self.recent.discard(uid)
            else:
                if since is not None and uid not in self.stale_expunged:
                    floor = self.expunge_floor
                    self.expunge_floor = since if floor is None else min(floor, since)
                self.stale_expunged.add(uid)
                self.stale_flags.discard(uid)
        for uid, flags in messages:
            old = self.flags.get(uid)
            if old is None:
                if uid <= self.max_uid:
                    continue  # a stale row of a message already expunged
                self.new.append(uid)  # callers report in UID order; keep it sorted anyway
                if len(self.new) > 1 and self.new[-2] > uid:
                    self.new.sort()
                self.max_uid = uid
                self.flags[uid] = flags
                self.note_keywords(flags)
            elif uid not in self.stale_expunged:
                if old != flags:
                    self.flags[uid] = flags
                    self.note_keywords(flags)
                    if not self.is_new(uid) and uid not in self.stale_flags:
                        self.told[uid] = old
                        self.stale_flags.add(uid)
                if uid in self.stale_flags and uid in modseqs:
                    self.modseqs[uid] = modseqs[uid]

    def note_keywords(self, flags: frozenset[str]) -> None:
        for flag in flags:
            if flag[0] != "\\" and flag not in self.keywords:
                self.keywords.add(flag)
                self.new_keywords = True

    def forget(self, uids: Iterable[int]) -> list[int]:
        """Remove messages from the view; the EXPUNGE sequence numbers to send, in order
        (each counted after the ones before it are gone, RFC 9051 §7.5.1)."""
        known = self.uids
        positions = sorted(
            i
            for uid in set(uids)
            if (i := bisect.bisect_left(known, uid)) < len(known) and known[i] == uid
        )
        if not positions:
            return []
        gone = {known[i] for i in positions}
        if len(positions) < 64:
            for i in reversed(positions):
                del known[i]
        else:
            self.uids = [uid for uid in known if uid not in gone]
        for uid in gone:
            self.flags.pop(uid, None)
            self.stale_expunged.discard(uid)
            self.stale_flags.discard(uid)
            self.told.pop(uid, None)
            self.modseqs.pop(uid, None)
            self.recent.discard(uid)
        if not self.stale_expunged:
            self.expunge_floor = None
        if self.saved:
            self.saved = self.saved - gone
        return [i + 1 - k for k, i in enumerate(positions)]

    def display_flags(self, uid: int, flags: frozenset[str], rev1: bool) -> frozenset[str]:
        return flags | {RECENT} if rev1 and uid in self.recent else flags


# ------------------------------------------------------------------------------------ the core


@dataclass(slots=True)
class _Exchange:
    """An AUTHENTICATE exchange in progress."""

    tag: str
    name: str
    machine: sasl.Mechanism
    success: sasl.Success | None = None
    """Set once the final challenge (SCRAM's server signature) is sent: the client's empty
    response completes the exchange (IMAP has no additional data with success)."""


@dataclass(slots=True)
class _Fetch:
    """A FETCH being answered."""

    tag: str
    uid: bool
    render: Callable[[MessageView], bytes] | None
    render_chunks: Callable[[MessageView], list[Chunk]] | None
    wanted: set[int]
    with_flags: bool
    changed_since: int | None = None
    error: Response | None = None
    """Set when rendering failed: the tagged answer; the remaining messages are skipped."""


class _Refused(Exception):
    """A command is answered with `response` (BAD ones are counted as errors)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.text)
        self.response = response


class ServerConnection:
    """One IMAP server session, bytes in and bytes out (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        nonce: Callable[[], str],
        scram_secret: bytes | None = None,
    ) -> None:
        """`nonce` and `scram_secret` are passed to `sasl.mechanism` (SCRAM server nonces, and
        the key for unknown users' fake verifiers)."""
        self.settings = settings
        self.state = State.NOT_AUTHENTICATED
        self.tls = settings.tls_active
        self.user: str | None = None
        self.rev2 = False
        """ENABLE IMAP4rev2 was accepted (RFC 9051 §6.3.1): UTF-8 names, ESEARCH, no \\Recent."""
        self.utf8 = False
        """UTF-8 in quoted strings and mailbox names: IMAP4rev2 or UTF8=ACCEPT (RFC 6855 §3)."""
        self.condstore = False
        """A CONDSTORE enabling command was seen (RFC 7162 §3.1): every untagged FETCH with
        FLAGS carries MODSEQ (and UID, when unsolicited) from now on."""
        self.qresync = False
        """ENABLE QRESYNC was accepted (RFC 7162 §3.2.3): VANISHED replaces EXPUNGE."""
        self.bad = 0
        self.login_failures = 0
        self.progress = 0
        """Moves on every completed command (the adapter re-arms its idle timer)."""
        self.idling = False
        self._nonce = nonce
        self._secret = scram_secret
        self._reader = CommandReader(settings.limits)
        self._out: list[Chunk] = []
        self._out_size = 0
        self._awaiting: _Verdict | None = None
        self._queued: Event | None = None
        self._sasl: _Exchange | None = None
        self._tls_pending = False
        self._idle_tag: str | None = None
        self._view: _View | None = None
        self._fetch: _Fetch | None = None
        self._search: t.Search | None = None
        self._store: t.Store | None = None
        self._list: t.List | t.Lsub | None = None
        self._status: t.Status | None = None
        self._copy: t.Copy | t.Move | None = None
        self._close_reason: str | None = None
        self._closed_emitted = False
        self._started = False
        self._tag: str | None = None
        """The tag of the command being handled (for a refusal)."""
        self._login_tag = "*"
        self._poll_name = "NOOP"
        self._by_uid = False

    # ---------------------------------------------------------------------------- adapter API

    def start(self, *, shutting_down: bool = False) -> None:
        """Queue the greeting (RFC 9051 §7.1.1), with the capabilities (saves a round trip)."""
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        if shutting_down:
            self._fail(r.SHUTTING_DOWN_GREETING, "shutting down")
            return
        greeting = r.GREETING.with_text(self.settings.greeting)
        self._line(greeting.with_code(self._capability_code()).line(None))

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client. b"" means the client closed its side."""
        if self.state is State.LOGOUT:
            return
        if not data:
            self._close("peer closed the connection")
            return
        if self._tls_pending:
            return  # RFC 9051 §6.2.1 / CVE-2011-0411: nothing before the handshake counts
        self._reader.feed(data)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return out

    def chunks_to_send(self) -> list[Chunk]:
        """What `data_to_send()` would return, unjoined: message data stays the zero-copy
        slices FETCH made of the stored bytes (keep them alive until written)."""
        out, self._out = self._out, []
        self._out_size = 0
        return out

    @property
    def pending_output(self) -> int:
        """Octets queued for the client (the adapter flushes above `FLUSH_AT`)."""
        return self._out_size

    @property
    def closed(self) -> bool:
        return self.state is State.LOGOUT

    @property
    def selected(self) -> str | None:
        """The name of the selected mailbox (as selected), or None."""
        return self._view.name if self._view is not None else None

    @property
    def readonly(self) -> bool:
        return self._view is not None and self._view.readonly

    def view_uids(self) -> list[int]:
        """The UIDs the client knows, by sequence number (for consistency checks)."""
        return list(self._view.uids) if self._view is not None else []

    def next_event(self) -> Event:
        while True:
            if self._queued is not None:
                queued, self._queued = self._queued, None
                return queued
            if self.state is State.LOGOUT:
                if self._closed_emitted:
                    return NEED_DATA
                self._closed_emitted = True
                return Closed(self._close_reason or "closed")
            if self._awaiting is not None:
                raise RuntimeError(f"answer {self._awaiting!r} first")
            if self._tls_pending or not self._started:
                return NEED_DATA
            try:
                event = self._step()
            except IMAPParseError as err:
                self._parse_error(err)
                continue
            except _Refused as refused:
                self._refuse(refused.response, self._tag)
                continue
            if event is NEED_DATA:
                return NEED_DATA
            if event is not None:
                return event

    def tls_established(self) -> None:
        """The STARTTLS handshake succeeded (RFC 9051 §6.2.1: capabilities may change)."""
        if not self._tls_pending:
            raise RuntimeError("tls_established() outside STARTTLS")
        self._tls_pending = False
        self.tls = True
        self._reader.reset()

    # -- logins

    def logged_in(self) -> None:
        """The user is authenticated (RFC 9051 §6.2.2/§6.2.3): OK [CAPABILITY ...]."""
        event = self._take(CheckPassword, Authenticated)
        if event is None:
            return
        assert isinstance(event, CheckPassword | Authenticated)
        tag = self._login_tag
        if isinstance(event, CheckPassword) and self._sasl is not None:
            step = self._sasl.machine.password_checked(True)
            if not isinstance(step, sasl.Success) or step.final is not None:
                raise RuntimeError(f"{self._sasl.name}: unexpected step {step!r}")
        self._sasl = None
        self.user = event.user
        self.state = State.AUTHENTICATED
        self.bad = 0
        self._done(tag, r.LOGGED_IN.with_code(self._capability_code()))

    def login_failed(self, *, temporary: bool = False) -> None:
        """Credentials refused (NO [AUTHENTICATIONFAILED]) or our own trouble, or a locked
        out client (`temporary`: NO [UNAVAILABLE])."""
        event = self._take(CheckPassword, Authenticated)
        if event is None:
            return
        if isinstance(event, CheckPassword) and self._sasl is not None:
            self._sasl.machine.password_checked(False)
        self._sasl = None
        self._login_failure(self._login_tag, temporary=temporary)

    def scram_keys(self, keys: sasl.ScramKeys | None) -> None:
        """The SCRAM verifier asked for by `NeedScramKeys` (None: no such user)."""
        if self._take(NeedScramKeys) is None:
            return
        assert self._sasl is not None
        self._queued = self._sasl_step(self._sasl.machine.scram_keys(keys))

    # -- results of store events

    def failed(self, response: Response) -> None:
        """Any store event failed: answer its command with `response` (a NO)."""
        event = self._take_store()
        if event is None:
            return
        if isinstance(event, SelectMailbox):
            self._view = None  # RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected
            self.state = State.AUTHENTICATED
        self._idle_tag = None
        self._fetch = None
        self._search = None
        self._store = None
        self._list = None
        self._status = None
        self._copy = None
        by_number = isinstance(event, FetchMessages | SearchMessages | StoreFlags)
        self._done(event.tag, response, expunge_ok=not by_number or self._by_uid)

    def mailbox_selected(self, snapshot: MailboxSnapshot) -> None:
        """SELECT / EXAMINE found the mailbox (RFC 9051 §6.3.2, RFC 3501 §6.3.1)."""
        event = self._take_store(SelectMailbox)
        if event is None:
            return
        assert isinstance(event, SelectMailbox)
        view = _View(snapshot, event.readonly)
        self._view = view
        self.state = State.SELECTED
        system = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"
        keywords = " ".join(sorted(view.keywords, key=str.lower))
        self._line(b"* FLAGS (%s)\r\n" % (system + (" " + keywords if keywords else "")).encode())
        self._line(b"* %d EXISTS\r\n" % len(view.uids))
        if not self.rev2:
            self._line(b"* %d RECENT\r\n" % len(view.recent))  # RFC 3501 §6.3.1
            unseen = next(
                (i for i, uid in enumerate(view.uids, 1) if "\\Seen" not in view.flags[uid]), None
            )
            if unseen is not None:
                self._line(r.UNSEEN.with_code(f"UNSEEN {unseen}").line(None))
        else:  # RFC 9051 §6.3.2: the LIST response of the mailbox is required
            self._line(self._list_line(b"LIST", snapshot.name, self._special(snapshot), ()))
        self._line(r.UIDVALIDITY.with_code(f"UIDVALIDITY {view.uidvalidity}").line(None))
        self._line(r.UIDNEXT.with_code(f"UIDNEXT {snapshot.uidnext}").line(None))
        if event.readonly:
            self._line(r.NO_PERMANENT_FLAGS.line(None))
        else:
            self._line(r.PERMANENT_FLAGS.with_code(f"PERMANENTFLAGS ({system} \\*)").line(None))
        # RFC 7162 §3.1.2.1: with every successful SELECT / EXAMINE, CONDSTORE or not.
        self._line(r.HIGHESTMODSEQ.with_code(f"HIGHESTMODSEQ {snapshot.highestmodseq}").line(None))
        if event.qresync is not None:  # RFC 7162 §3.2.5.1: what changed, before the tagged OK
            gone = [uid for uid in snapshot.vanished if uid not in view.flags]
            if gone:
                self._line(b"* VANISHED (EARLIER) %s\r\n" % r.sequence_set(gone).encode())
            for uid, flags, modseq in snapshot.changed:
                seq = view.seq(uid)
                if seq is None:
                    continue
                shown = format_flags(view.display_flags(uid, flags, not self.rev2))
                self._line(
                    b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, shown, modseq)
                )
        self._done(event.tag, r.SELECTED_RO if event.readonly else r.SELECTED_RW)

    def done(self, *, selected_gone: bool = False) -> None:
        """CREATE, DELETE, RENAME, SUBSCRIBE or UNSUBSCRIBE succeeded. `selected_gone`: the
        mailbox DELETE removed was the selected one (it is closed: OK [CLOSED])."""
        event = self._take_store(CreateMailbox, DeleteMailbox, RenameMailbox, SetSubscribed)
        if event is None:
            return
        if selected_gone and self._view is not None:
            self._view = None
            self.state = State.AUTHENTICATED
            self._line(r.CLOSED.line(None))
        self._done(event.tag, r.COMPLETED.format(command=_NAMES[type(event)]))

    def mailboxes_listed(self, entries: Sequence[MailboxEntry]) -> None:
        """Every mailbox of the account, for the LIST or LSUB being answered."""
        event = self._take_store(ListMailboxes)
        if event is None:
            return
        command, self._list = self._list, None
        assert command is not None
        if isinstance(command, t.Lsub):
            self._lsub(command, entries)
        else:
            self._list_mailboxes(command, entries)
        self._done(event.tag, r.COMPLETED.format(command=_NAMES[type(command)]))

    def status(self, entry: MailboxEntry) -> None:
        """The mailbox of the STATUS being answered (RFC 9051 §6.3.11)."""
        event = self._take_store(GetStatus)
        if event is None:
            return
        command, self._status = self._status, None
        assert command is not None
        self._line(self._status_line(entry, command.items))
        self._done(event.tag, r.COMPLETED.format(command="STATUS"))

    def appended(self, uidvalidity: int, uids: Sequence[int]) -> None:
        """The APPEND was committed (RFC 4315 §3: OK [APPENDUID uidvalidity uids])."""
        event = self._take_store(AppendMessages)
        if event is None:
            return
        uid_set = r.sequence_set(sorted(uids))
        self._done(event.tag, r.APPENDED.with_code(f"APPENDUID {uidvalidity} {uid_set}"))

    def fetch_message(self, view: MessageView) -> None:
        """One message of the FETCH being answered (see `fetch_messages`)."""
        self.fetch_messages((view,))

    def fetch_messages(self, views: Iterable[MessageView]) -> None:
        """Messages of the FETCH being answered, each with the `seq` the event gave it and
        the store's flags (the core adds \\Recent for IMAP4rev1). One call per chunk: this
        loop runs once per message of a `FETCH 1:*`, so it keeps to local names."""
        fetch = self._fetch
        if self.closed:
            return
        if fetch is None or self._view is None:
            raise RuntimeError("fetch_messages() without a FETCH in progress")
        mailbox = self._view
        uids = mailbox.uids
        count = len(uids)
        wanted = fetch.wanted
        since = fetch.changed_since
        learn = fetch.with_flags
        known = mailbox.flags
        stale_expunged = mailbox.stale_expunged
        recent = mailbox.recent if not self.rev2 else ()
        render = fetch.render
        if (
            render is not None
            and since is None
            and not recent
            and fetch.error is None
            and isinstance(views, list)
            and self._fetch_listed(views, fetch, mailbox, render)
        ):
            return
        render_chunks = fetch.render_chunks
        out = self._out
        size = 0
        try:
            for given in views:
                if fetch.error is not None:
                    break
                view = given
                uid = view.uid
                seq = view.seq  # the adapter's, from the event; numbers do not move meanwhile
                if not (0 < seq <= count and uids[seq - 1] == uid):
                    found = mailbox.seq(uid)
                    if found is None:
                        continue
                    seq = found
                if uid not in wanted:
                    continue
                wanted.discard(uid)
                if since is not None and view.modseq <= since:
                    continue  # RFC 7162 §3.1.4.1: not changed since; nothing to say
                flags = view.flags
                if learn and uid not in stale_expunged:
                    known[uid] = flags  # the client learns them from this response
                    if mailbox.stale_flags:
                        mailbox.stale_flags.discard(uid)
                        mailbox.told.pop(uid, None)
                    if flags:
                        mailbox.note_keywords(flags)
                shown = flags | {RECENT} if uid in recent else flags
                if seq != view.seq or shown is not flags:
                    view = view._replace(seq=seq, flags=shown)
                try:
                    if render is not None:
                        line = render(view)
                        out.append(line)
                        size += len(line)
                    else:
                        assert render_chunks is not None
                        for chunk in render_chunks(view):
                            out.append(chunk)
                            size += len(chunk)
                except FetchError as err:  # BINARY of an unknown encoding (RFC 3516 §4.2)
                    fetch.error = Response("BAD" if err.bad else "NO", err.text, err.code)
        finally:
            self._out_size += size

    def _fetch_listed(
        self,
        views: list[MessageView],
        fetch: _Fetch,
        mailbox: _View,
        render: Callable[[MessageView], bytes],
    ) -> bool:
        """`fetch_messages` for the usual FETCH of metadata (no CHANGEDSINCE, nothing
        \\Recent, every view numbered as the client knows it and asked for): the loop's work
        done a list at a time, for the FETCH 1:* (FLAGS) of a client resynchronising without
        CONDSTORE. False, having changed nothing, if a view is not like that."""
        if not views:
            return True
        uids = mailbox.uids
        wanted = fetch.wanted
        listed = [view.uid for view in views]
        if views[0].seq < 1 or not wanted.issuperset(listed):
            return False
        try:
            if [uids[view.seq - 1] for view in views] != listed:
                return False
        except IndexError:
            return False
        wanted.difference_update(listed)
        if fetch.with_flags:  # the client learns the flags from these responses
            stale = mailbox.stale_expunged
            pairs = [(view.uid, view.flags) for view in views if view.uid not in stale]
            mailbox.flags.update(pairs)
            if mailbox.stale_flags:
                for uid, _ in pairs:
                    mailbox.stale_flags.discard(uid)
                    mailbox.told.pop(uid, None)
            for flags in {flags for _, flags in pairs}:
                if flags:
                    mailbox.note_keywords(flags)
        lines = list(map(render, views))
        self._out.extend(lines)
        self._out_size += sum(map(len, lines))
        return True

    def fetch_done(self) -> None:
        """Every message of the FETCH that still exists was given to `fetch_message`."""
        fetch, self._fetch = self._fetch, None
        event = self._take_store(FetchMessages)
        if event is None or fetch is None:
            return
        if fetch.error is not None:
            response = fetch.error
        elif fetch.wanted and not fetch.uid:
            response = r.EXPUNGE_ISSUED
        else:
            response = r.COMPLETED.format(command="FETCH")
        self._done(event.tag, response, expunge_ok=fetch.uid)

    def vanished(self, uids: Iterable[int]) -> None:
        """For a FETCH with `vanished` ranges, before its messages: the UIDs in them expunged
        since its CHANGEDSINCE (RFC 7162 §3.2.6). Those the client still has a sequence
        number for are left to the VANISHED that announces their expunge."""
        if self._fetch is None or self._view is None:
            if self.closed:
                return
            raise RuntimeError("vanished() without a FETCH in progress")
        known = self._view.flags
        gone = sorted({uid for uid in uids if uid not in known})
        if gone:
            self._line(b"* VANISHED (EARLIER) %s\r\n" % r.sequence_set(gone).encode())

    def searched(self, numbers: Sequence[int], *, modseqs: Mapping[int, int] | None = None) -> None:
        """The sequence numbers `search.evaluate` matched, for the SEARCH being answered;
        `modseqs`: the MODSEQ of each (by sequence number), when the event asked
        `with_modseq`."""
        event = self._take_store(SearchMessages)
        command, self._search = self._search, None
        if event is None or command is None:
            return
        self._answer_search(event.tag, command, numbers, modseqs)

    def flags_stored(
        self,
        changes: Sequence[tuple[int, frozenset[str]]],
        *,
        modseqs: Mapping[int, int] | None = None,
        modified: Sequence[int] = (),
    ) -> None:
        """The STORE was committed: (uid, flags) of every message whose flags changed;
        `modseqs`: the MODSEQ of every message of the event now (needed once CONDSTORE is
        enabled); `modified`: UIDs that failed the UNCHANGEDSINCE test (RFC 7162 §3.1.3)."""
        event = self._take_store(StoreFlags)
        command, self._store = self._store, None
        if event is None or command is None:
            return
        assert isinstance(event, StoreFlags) and self._view is not None
        self._stored(event, command, dict(changes), modseqs or {}, set(modified))

    def copied(self, uidvalidity: int, pairs: Sequence[tuple[int, int]]) -> None:
        """COPY or MOVE committed: (source UID, new UID) pairs, ascending (RFC 4315 §3)."""
        event = self._take_store(CopyMessages)
        command, self._copy = self._copy, None
        if event is None or command is None:
            return
        assert isinstance(event, CopyMessages)
        pairs = sorted(pairs)
        code = None
        if pairs:
            source = r.sequence_set([a for a, _ in pairs])
            dest = r.sequence_set([b for _, b in pairs])
            code = f"COPYUID {uidvalidity} {source} {dest}"
        if not event.move:
            response = r.COPIED.with_code(code) if code else r.NO_MESSAGES
            self._done(event.tag, response)
            return
        # RFC 6851 §4.3: the COPYUID goes in an untagged OK before the EXPUNGE responses.
        if code is not None:
            self._line(r.MOVED_UIDS.with_code(code).line(None))
        self._announce_expunges([a for a, _ in pairs])
        self._done(event.tag, r.COMPLETED.format(command="MOVE"))

    def expunged(self, uids: Sequence[int]) -> None:
        """EXPUNGE, UID EXPUNGE or CLOSE removed `uids` from the selected mailbox."""
        event = self._take_store(ExpungeMessages)
        if event is None:
            return
        assert isinstance(event, ExpungeMessages)
        if event.close:
            self._unselect()
            self._done(event.tag, r.COMPLETED.format(command="CLOSE"))
            return
        self._announce_expunges(uids)
        self._done(event.tag, r.COMPLETED.format(command="EXPUNGE"))

    def polled(self) -> None:
        """The `Poll` sync is done (its changes were given to `mailbox_changes`)."""
        event = self._take_store(Poll)
        if event is None:
            return
        if self._idle_tag is not None:
            self._start_idle()
            return
        self._done(event.tag, r.COMPLETED.format(command=self._poll_name))

    # -- the selected mailbox changing under us

    def mailbox_changes(
        self,
        messages: Iterable[tuple[int, frozenset[str]]] = (),
        expunged: Iterable[int] = (),
        *,
        recent: Iterable[int] = (),
        modseqs: Mapping[int, int] | None = None,
        since: int | None = None,
    ) -> None:
        """What the store says changed in the selected mailbox since the last report: (uid,
        flags) of new or changed messages, and expunged UIDs. `recent`: new UIDs this
        session is the first to see (IMAP4rev1 \\Recent). During IDLE they go out at once.

        `modseqs` gives the changed messages' MODSEQs (for CONDSTORE sessions); `since` is a
        MODSEQ all of these changes are above (the HIGHESTMODSEQ the previous report was
        complete to), which bounds what a client may be told while an expunge waits."""
        view = self._view
        if view is None:
            return
        view.merge(messages, expunged, modseqs or {}, since)
        view.recent.update(uid for uid in recent if uid in view.flags)
        if self.idling:
            self._announce(expunge_ok=True)

    def mailbox_gone(self) -> None:
        """The selected mailbox was deleted by another session: BYE (as Dovecot)."""
        if self._view is not None and self.state is State.SELECTED:
            self._fail(r.MAILBOX_DELETED, "selected mailbox deleted")

    # -- timers

    def timed_out(self) -> None:
        """The autologout timer expired (RFC 9051 §5.4)."""
        self._fail(r.AUTOLOGOUT, "timeout")

    def keepalive(self) -> None:
        """During IDLE: say we are still here (keeps NAT bindings alive)."""
        if self.idling and not self.closed:
            self._line(r.IDLING.line(None))

    def shutdown(self) -> None:
        """The server is stopping."""
        self._fail(r.SHUTTING_DOWN, "shutdown")

    def capabilities(self) -> list[str]:
        """The CAPABILITY list for the current state (RFC 9051 §7.2.2)."""
        caps = ["IMAP4rev2", "IMAP4rev1"]
        if self.state is State.NOT_AUTHENTICATED:
            if not self.tls and self.settings.starttls:
                caps.append("STARTTLS")
            if not self._secure:
                caps.append("LOGINDISABLED")  # RFC 9051 §6.2.3: no LOGIN in clear
            else:
                caps += [f"AUTH={m}" for m in self.settings.mechanisms]
        caps += [
            "SASL-IR",  # RFC 4959
            "LITERAL+",  # RFC 7888
            "ENABLE",  # RFC 5161
            "IDLE",  # RFC 2177
            "NAMESPACE",  # RFC 2342
            "ID",  # RFC 2971
            "UNSELECT",  # RFC 3691
            "CHILDREN",  # RFC 3348
            "SPECIAL-USE",  # RFC 6154
            "UIDPLUS",  # RFC 4315
            "MOVE",  # RFC 6851
            "ESEARCH",  # RFC 4731
            "CONDSTORE",  # RFC 7162 §3.1
            "QRESYNC",  # RFC 7162 §3.2
            "SEARCHRES",  # RFC 5182
            "WITHIN",  # RFC 5032
            "LIST-EXTENDED",  # RFC 5258
            "LIST-STATUS",  # RFC 5819
            "CREATE-SPECIAL-USE",  # RFC 6154 §3
            "STATUS=SIZE",  # RFC 8438
            "MULTIAPPEND",  # RFC 3502
            "BINARY",  # RFC 3516
            "UTF8=ACCEPT",  # RFC 6855
            f"APPENDLIMIT={self.settings.limits.max_literal}",  # RFC 7889
        ]
        return caps

    @property
    def _secure(self) -> bool:
        """Passwords may be sent: under TLS, or from a trusted loopback client."""
        return self.tls or self.settings.allow_plaintext_auth

    # ---------------------------------------------------------------------------- reading

    def _step(self) -> Event | _NeedData | None:
        """Read and handle one unit of input: an AUTHENTICATE line, DONE, or a command."""
        reader = self._reader
        if self._sasl is not None:
            line = reader.next_line()
            if line is _READER_NEED_DATA:
                return NEED_DATA
            assert isinstance(line, bytes)
            return self._sasl_response(line)
        if self.idling:
            line = reader.next_line()
            if line is _READER_NEED_DATA:
                return NEED_DATA
            assert isinstance(line, bytes)
            self._end_idle(line)
            return None
        event = reader.next_event()
        if event is _READER_NEED_DATA:
            return NEED_DATA
        if isinstance(event, ContinuationRequest):
            self._continuation(event)
            return None
        assert isinstance(event, RawCommand)
        self._tag = event.tag
        command = parse_command(event, utf8=self.utf8)
        return self._dispatch(command)

    def _continuation(self, request: ContinuationRequest) -> None:
        """A synchronising literal was announced: "+" if the command may run now, else refuse
        it before the client sends the octets (RFC 9051 §7.5)."""
        name = request.command.removeprefix("UID ")
        states = _STATES_BY_NAME.get(name)
        refusal: Response | None = None
        if states is not None and self.state not in states:
            refusal = self._wrong_state()
        elif name == "LOGIN" and not self._secure:
            refusal = r.PRIVACY_REQUIRED
        if refusal is None:
            self._line(b"+ Ready for literal data\r\n")
            return
        self._reader.refuse_literal()
        self._refuse(refusal, request.tag)

    def _parse_error(self, err: IMAPParseError) -> None:
        if err.fatal:
            self._line(err.to_bytes())
            self._close("fatal protocol error")
            return
        if self._sasl is not None:  # an over-long AUTHENTICATE response ends the exchange
            tag, self._sasl = self._sasl.tag, None
            self._line(r.AUTH_LINE_TOO_LONG.line(tag))
            self._count_bad()
            return
        if self.idling:
            self._end_idle(b"")
            return
        if err.text == _BAD_MUTF7_TEXT:  # a name, not the syntax: NO, as for other bad names
            self._done(err.tag or "*", r.BAD_MUTF7)
            return
        self._line(err.to_bytes())
        self._count_bad()

    def _refuse(self, response: Response, tag: str | None) -> None:
        if response.status == "BAD":
            self._line(response.line(tag))
            self._count_bad()
        else:
            self._done(tag or "*", response)

    def _count_bad(self) -> None:
        self.bad += 1
        self.progress += 1
        limit = (
            self.settings.max_bad_before_login
            if self.state is State.NOT_AUTHENTICATED
            else self.settings.max_bad_after_login
        )
        if self.bad >= limit:
            self._fail(r.TOO_MANY_ERRORS, "too many errors")

    def _wrong_state(self) -> Response:
        if self.state is State.NOT_AUTHENTICATED:
            return r.NOT_AUTHENTICATED
        if self.state is State.AUTHENTICATED:
            return r.NOT_SELECTED
        return r.WRONG_STATE

    def _dispatch(self, command: t.Command) -> Event | None:
        name, handler = _HANDLERS[type(command)]
        states = _STATES_BY_NAME[name]
        if self.state not in states:
            if name in _PRE_AUTH_ONLY and self.state is not State.NOT_AUTHENTICATED:
                raise _Refused(r.ALREADY_AUTHENTICATED)
            raise _Refused(self._wrong_state())
        return handler(self, command)

    # ---------------------------------------------------------------------------- any state

    def _cmd_capability(self, cmd: t.Command) -> Event | None:
        self._line(("* CAPABILITY " + " ".join(self.capabilities()) + "\r\n").encode())
        return self._ok(cmd.tag, "CAPABILITY")

    def _cmd_noop(self, cmd: t.Command) -> Event | None:
        if self.state is State.SELECTED:
            self._poll_name = "CHECK" if isinstance(cmd, t.Check) else "NOOP"
            return self._await(Poll(cmd.tag))
        return self._ok(cmd.tag, "NOOP")

    def _cmd_logout(self, cmd: t.Command) -> Event | None:
        self._line(r.LOGOUT.line(None))
        self._line(r.COMPLETED.format(command="LOGOUT").line(cmd.tag))
        self._close("logout")
        return None

    def _cmd_id(self, cmd: t.Command) -> Event | None:
        # RFC 2971 §3.1: any state; the server's own parameters, nothing about the client's.
        self._line(b'* ID ("name" "Homing")\r\n')
        return self._ok(cmd.tag, "ID")

    # ---------------------------------------------------------------------------- not authenticated

    def _cmd_starttls(self, cmd: t.Command) -> Event | None:
        if self.tls:
            raise _Refused(r.TLS_ACTIVE)
        if not self.settings.starttls:
            raise _Refused(r.TLS_UNAVAILABLE)
        self._line(r.BEGIN_TLS.line(cmd.tag))
        # RFC 9051 §6.2.1 / CVE-2011-0411: anything pipelined after STARTTLS is discarded.
        self._reader.reset()
        self._tls_pending = True
        self.progress += 1
        return StartTLS()

    def _cmd_login(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Login)
        if not self._secure:
            raise _Refused(r.PRIVACY_REQUIRED)  # RFC 9051 §6.2.3 LOGINDISABLED
        try:
            user = sasl.saslprep(cmd.userid)
            password = cmd.password.decode("utf-8")
        except (sasl.SASLError, UnicodeDecodeError):
            self._login_failure(cmd.tag, temporary=False)
            return None
        if not user or not password:
            self._login_failure(cmd.tag, temporary=False)
            return None
        self._login_tag = cmd.tag
        return self._await(CheckPassword(user, password, "LOGIN"))

    def _cmd_authenticate(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Authenticate)
        if not self._secure:
            raise _Refused(r.PRIVACY_REQUIRED)
        name = cmd.mechanism.upper()
        if name not in self.settings.mechanisms:
            raise _Refused(r.NO_MECHANISM)
        machine = sasl.mechanism(name, nonce=self._nonce, secret=self._secret)
        assert machine is not None  # Settings only holds names sasl knows
        self._login_tag = cmd.tag
        self._sasl = _Exchange(cmd.tag, name, machine)
        try:
            initial = cmd.initial_response
            if initial is not None and len(initial) > sasl.MAX_RESPONSE:
                raise sasl.SASLError("too_long")
            step = machine.start(initial)  # RFC 4959: SASL-IR ("=" is an empty response)
        except sasl.SASLError as err:
            self._sasl = None
            raise _Refused(_SASL_REFUSALS[err.kind]) from None
        return self._sasl_step(step)

    def _sasl_response(self, line: bytes) -> Event | None:
        exchange = self._sasl
        assert exchange is not None
        self._tag = exchange.tag
        try:
            data = sasl.decode_response(line)
            if exchange.success is not None:
                if data:
                    raise sasl.SASLError("malformed", "expected an empty response")
                self._sasl = None
                success = exchange.success
                return self._await(Authenticated(success.authcid, exchange.name))
            step = exchange.machine.respond(data)
        except sasl.SASLError as err:
            self._sasl = None
            # RFC 9051 §6.2.2: "*" and invalid base64 are answered BAD.
            raise _Refused(_SASL_REFUSALS[err.kind]) from None
        return self._sasl_step(step)

    def _sasl_step(self, step: sasl.Step) -> Event | None:
        exchange = self._sasl
        assert exchange is not None
        if isinstance(step, sasl.Challenge):
            self._line(b"+ " + sasl.encode_challenge(step.data) + b"\r\n")
            return None
        if isinstance(step, sasl.CheckPassword):
            return self._await(CheckPassword(step.authcid, step.password, exchange.name))
        if isinstance(step, sasl.NeedScramKeys):
            return self._await(NeedScramKeys(step.authcid))
        if isinstance(step, sasl.Success):
            if step.final is not None:
                # IMAP carries no additional data with success: it goes out as one more
                # challenge, answered by an empty response (RFC 4422 §3.6).
                exchange.success = step
                self._line(b"+ " + sasl.encode_challenge(step.final) + b"\r\n")
                return None
            self._sasl = None
            return self._await(Authenticated(step.authcid, exchange.name))
        self._sasl = None
        self._login_failure(exchange.tag, temporary=False)
        return None

    def _login_failure(self, tag: str, *, temporary: bool) -> None:
        self.progress += 1
        if temporary:
            self._line(r.AUTH_UNAVAILABLE.line(tag))
            return
        self.login_failures += 1
        self._line(r.AUTH_FAILED.line(tag))
        if self.login_failures >= self.settings.max_login_failures:
            self._fail(r.TOO_MANY_AUTH_FAILURES, "too many failed logins")

    # ---------------------------------------------------------------------------- authenticated

    def _cmd_enable(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Enable)
        enabled = []
        for capability in cmd.capabilities:  # upper-cased by the parser; others are ignored
            name = ENABLEABLE.get(capability)
            if name is None or name in enabled:
                continue
            if capability == "IMAP4REV2" and not self.rev2:
                self.rev2 = self.utf8 = True
            elif capability == "UTF8=ACCEPT" and not self.utf8:
                self.utf8 = True
            elif capability == "CONDSTORE" and not self.condstore:
                self.condstore = True
            elif capability == "QRESYNC" and not self.qresync:
                self.qresync = self.condstore = True  # RFC 7162 §3.2.3: implies CONDSTORE
            else:
                continue  # already enabled: RFC 5161 §3.2 lists only what this one enabled
            enabled.append(name)
        self._line(("* ENABLED" + "".join(" " + c for c in enabled) + "\r\n").encode())
        return self._ok(cmd.tag, "ENABLE")

    def _cmd_select(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Select)
        if cmd.qresync is not None and not self.qresync:
            raise _Refused(r.QRESYNC_NOT_ENABLED)  # RFC 7162 §3.2.5: BAD
        if cmd.condstore:
            self.condstore = True  # RFC 7162 §3.1.8
        if self._view is not None:
            # RFC 9051 §6.3.2: selecting closes the current mailbox (no expunge) first.
            self._view = None
            self.state = State.AUTHENTICATED
            self._line(r.CLOSED.line(None))
        name = self._name(cmd.mailbox)
        return self._await(SelectMailbox(cmd.tag, name, cmd.readonly, cmd.qresync))

    def _cmd_create(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Create)
        name = self._name(cmd.mailbox, create=True)
        if name == "INBOX":
            raise _Refused(r.ALREADY_EXISTS)
        use = None
        if cmd.special_use:
            if len(cmd.special_use) > 1 or cmd.special_use[0] not in _SPECIAL_USES:
                raise _Refused(r.BAD_USE)  # RFC 6154 §3: one attribute per mailbox here
            use = cmd.special_use[0]
        return self._await(CreateMailbox(cmd.tag, name, use))

    def _cmd_delete(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Delete)
        name = self._name(cmd.mailbox)
        if name == "INBOX":
            raise _Refused(r.INBOX_UNDELETABLE)  # RFC 9051 §6.3.5
        return self._await(DeleteMailbox(cmd.tag, name))

    def _cmd_rename(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Rename)
        old, new = self._name(cmd.mailbox), self._name(cmd.new_name, create=True)
        if new in ("INBOX", old):
            raise _Refused(r.ALREADY_EXISTS)
        if old != "INBOX" and new.startswith(old + SEPARATOR):
            raise _Refused(r.BAD_NAME)  # a mailbox cannot become its own inferior
        return self._await(RenameMailbox(cmd.tag, old, new))

    def _cmd_subscribe(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Subscribe | t.Unsubscribe)
        name = self._name(cmd.mailbox)
        return self._await(SetSubscribed(cmd.tag, name, isinstance(cmd, t.Subscribe)))

    def _cmd_list(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.List | t.Lsub)
        items = cmd.status_items if isinstance(cmd, t.List) else ()
        if "MAILBOXID" in items:
            raise _Refused(r.UNSUPPORTED_ITEM)
        patterns = cmd.patterns if isinstance(cmd, t.List) else (cmd.pattern,)
        if isinstance(cmd, t.List) and patterns == ("",) and not cmd.extended:
            # RFC 9051 §6.3.9: an empty pattern asks for the separator and the root.
            self._line(b'* LIST (\\Noselect) "/" ""\r\n')
            return self._ok(cmd.tag, "LIST")
        self._list = cmd
        return self._await(ListMailboxes(cmd.tag, count_deleted="DELETED" in items))

    def _cmd_namespace(self, cmd: t.Command) -> Event | None:
        # RFC 2342 / RFC 9051 §6.3.10: one personal namespace, no prefix, "/" separator.
        self._line(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        return self._ok(cmd.tag, "NAMESPACE")

    def _cmd_status(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Status)
        if "MAILBOXID" in cmd.items:
            raise _Refused(r.UNSUPPORTED_ITEM)  # RFC 8474 OBJECTID is not offered
        name = self._name(cmd.mailbox)
        if "HIGHESTMODSEQ" in cmd.items:
            self.condstore = True  # RFC 7162 §3.1: a CONDSTORE enabling command
        self._status = cmd
        return self._await(GetStatus(cmd.tag, name, "DELETED" in cmd.items))

    def _cmd_append(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Append)
        name = self._name(cmd.mailbox)
        for message in cmd.messages:
            _check_flags(message.flags)
            if not message.data:
                raise _Refused(r.EMPTY_MESSAGE)
            if message.utf8 and not self.utf8:
                raise _Refused(r.UTF8_NOT_ENABLED)  # RFC 6855 §4: after ENABLE UTF8=ACCEPT
        return self._await(AppendMessages(cmd.tag, name, cmd.messages))

    def _cmd_idle(self, cmd: t.Command) -> Event | None:
        self._idle_tag = cmd.tag
        if self.state is State.SELECTED:
            self._poll_name = "IDLE"
            return self._await(Poll(cmd.tag))  # sync first, so the client starts up to date
        self._start_idle()
        return self._queued_idle()

    def _start_idle(self) -> None:
        self._line(b"+ idling\r\n")
        self.idling = True
        self._announce(expunge_ok=True)
        assert self._idle_tag is not None
        self._queued = Idle(self._idle_tag)

    def _queued_idle(self) -> Event | None:
        queued, self._queued = self._queued, None
        return queued

    def _end_idle(self, line: bytes) -> None:
        tag = self._idle_tag or "*"
        self.idling = False
        self._idle_tag = None
        if is_idle_done(line):
            self._done(tag, r.COMPLETED.format(command="IDLE"))
        else:  # RFC 2177 §3: anything but DONE ends the IDLE with BAD
            self._line(r.INVALID_ARGUMENT.with_text("Expected DONE").line(tag))
            self._count_bad()

    # ---------------------------------------------------------------------------- selected

    def _cmd_close(self, cmd: t.Command) -> Event | None:
        view = self._view
        assert view is not None
        if view.readonly:  # RFC 9051 §6.4.1: no expunge, no error, when read-only
            self._unselect()
            return self._ok(cmd.tag, "CLOSE")
        return self._await(ExpungeMessages(cmd.tag, None, close=True))

    def _cmd_unselect(self, cmd: t.Command) -> Event | None:
        self._unselect()
        return self._ok(cmd.tag, "UNSELECT")

    def _unselect(self) -> None:
        self._view = None
        self.state = State.AUTHENTICATED

    def _cmd_expunge(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Expunge) and self._view is not None
        if self._view.readonly:
            raise _Refused(r.READ_ONLY)
        uids = None if cmd.uids is None else self._resolve(cmd.uids, uid=True)
        if uids is not None and not uids:
            self._announce(expunge_ok=True)
            return self._ok(cmd.tag, "EXPUNGE")
        return self._await(ExpungeMessages(cmd.tag, uids))

    def _cmd_fetch(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Fetch) and self._view is not None
        if cmd.vanished and not self.qresync:
            raise _Refused(r.QRESYNC_NOT_ENABLED)  # RFC 7162 §3.2.6
        view = self._view
        messages = self._messages(cmd.sequence, uid=cmd.uid)
        atts = list(cmd.attributes)
        set_seen = sets_seen(atts) and not view.readonly
        with_flags = any(a.name == "FLAGS" for a in atts)
        if set_seen and not with_flags:
            atts.append(t.FetchAtt("FLAGS"))  # RFC 9051 §6.4.5: changed flags are included
            with_flags = True
        with_modseq = any(a.name == "MODSEQ" for a in atts)
        if with_modseq or cmd.changed_since is not None:
            self.condstore = True  # RFC 7162 §3.1: a CONDSTORE enabling command
        if not with_modseq and (cmd.changed_since is not None or (self.condstore and with_flags)):
            # RFC 7162 §3.1.4.1 (CHANGEDSINCE implies MODSEQ) and §3.1: once enabled, FETCH
            # responses with flags carry the MODSEQ.
            atts.append(t.FetchAtt("MODSEQ"))
        try:
            render = render_chunks = None
            if needs_data(atts):
                render_chunks = compile_fetch_chunks(atts, uid=cmd.uid, rev2=self.rev2)
            else:
                render = compile_fetch(atts, uid=cmd.uid, rev2=self.rev2)
        except FetchError as err:
            raise _Refused(Response("BAD" if err.bad else "NO", err.text, err.code)) from None
        vanished = None
        if cmd.vanished:
            vanished = cmd.sequence.resolve(MAX_UID)
        if not messages and vanished is None:
            return self._finish_empty(cmd.tag, "FETCH", uid=cmd.uid)
        uids = [u for _, u in messages]
        seen = [u for u in uids if "\\Seen" not in view.flags.get(u, ())] if set_seen else []
        self._fetch = _Fetch(
            cmd.tag, cmd.uid, render, render_chunks, set(uids), with_flags, cmd.changed_since
        )
        self._by_uid = cmd.uid
        return self._await(
            FetchMessages(
                cmd.tag,
                messages,
                needs_data(atts),
                needs_parse(atts),
                seen,
                changed_since=cmd.changed_since,
                vanished=vanished,
            )
        )

    def _cmd_search(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Search) and self._view is not None
        charset = cmd.charset or "UTF-8"
        if charset.upper() in ("US-ASCII", "ASCII"):
            charset = "UTF-8"  # a superset: 8-bit in a US-ASCII search string is not rejected
        view = self._view
        key = cmd.criteria[0] if len(cmd.criteria) == 1 else t.SearchGroup(cmd.criteria)
        with_modseq = has_modseq(key)
        if with_modseq:
            self.condstore = True  # RFC 7162 §3.1: a CONDSTORE enabling command
        uids = view.uids
        self._search = cmd
        self._by_uid = cmd.uid
        return self._await(
            SearchMessages(
                cmd.tag,
                key,
                list(enumerate(uids, 1)),
                max_seq=len(uids),
                max_uid=uids[-1] if uids else 0,
                saved=view.saved,
                charset=charset,
                recent=frozenset(view.recent) if not self.rev2 else frozenset(),
                needs_text=_needs_text(cmd.criteria),
                with_modseq=with_modseq,
            )
        )

    def _cmd_store(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Store) and self._view is not None
        if self._view.readonly:
            raise _Refused(r.READ_ONLY)
        if cmd.unchanged_since is not None:
            self.condstore = True  # RFC 7162 §3.1: a CONDSTORE enabling command
        _check_flags(cmd.flags)
        uids = self._resolve(cmd.sequence, uid=cmd.uid)
        if not uids:
            return self._finish_empty(cmd.tag, "STORE", uid=cmd.uid)
        self._store = cmd
        self._by_uid = cmd.uid
        flags = frozenset(cmd.flags)
        return self._await(StoreFlags(cmd.tag, uids, flags, cmd.mode, cmd.unchanged_since))

    def _cmd_copy(self, cmd: t.Command) -> Event | None:
        assert isinstance(cmd, t.Copy | t.Move) and self._view is not None
        move = isinstance(cmd, t.Move)
        if move and self._view.readonly:
            raise _Refused(r.READ_ONLY)
        name = self._name(cmd.mailbox)
        uids = self._resolve(cmd.sequence, uid=cmd.uid)
        uids = [uid for uid in uids if uid not in self._view.stale_expunged]
        self._copy = cmd
        return self._await(CopyMessages(cmd.tag, uids, name, move))

    # ---------------------------------------------------------------------------- helpers

    def _name(self, mailbox: str, *, create: bool = False) -> str:
        name = check_mailbox_name(mailbox, create=create)
        if name is None:
            raise _Refused(r.BAD_NAME)
        return name

    def _resolve(self, sequence: t.SequenceSet, *, uid: bool) -> list[int]:
        """The UIDs a sequence set names, ascending (see `_messages`)."""
        return [u for _, u in self._messages(sequence, uid=uid)]

    def _messages(self, sequence: t.SequenceSet, *, uid: bool) -> list[tuple[int, int]]:
        """The (sequence number, UID) pairs a sequence set names (RFC 9051 §9), ascending.

        Message numbers above the mailbox size are BAD (RFC 9051 §9 seq-number note); UIDs
        that do not exist are ignored. The cost is that of the messages named, never that of
        the range written ("UID FETCH 1:4294967295")."""
        view = self._view
        assert view is not None
        uids = view.uids
        out: list[tuple[int, int]] = []
        if sequence.saved:  # RFC 5182 §2.1 "$"
            found = ((view.seq(u), u) for u in view.saved)
            return sorted((n, u) for n, u in found if n is not None)
        if uid:
            largest = uids[-1] if uids else 0
            for lo, hi in sequence.resolve(largest):
                start = bisect.bisect_left(uids, lo)
                end = bisect.bisect_right(uids, hi)
                out.extend(zip(range(start + 1, end + 1), uids[start:end], strict=True))
            return out
        count = len(uids)
        if count == 0 and sequence.has_star and all(t.STAR in pair for pair in sequence.ranges):
            return []  # "1:*" in an empty mailbox names nothing (as Dovecot)
        ranges = sequence.resolve(count)
        if ranges and ranges[-1][1] > count:
            raise _Refused(r.INVALID_SEQUENCE)
        for lo, hi in ranges:
            out.extend(zip(range(lo, hi + 1), uids[lo - 1 : hi], strict=True))
        return out

    def _finish_empty(self, tag: str, command: str, *, uid: bool) -> Event | None:
        """FETCH or STORE of no message at all: nothing for the adapter to do."""
        self._done(tag, r.COMPLETED.format(command=command), expunge_ok=uid)
        return None

    def _ok(self, tag: str, command: str) -> Event | None:
        """Answer a command the core completes alone; no event for the adapter."""
        self._done(tag, r.COMPLETED.format(command=command))
        return None

    def _done(self, tag: str, response: Response, *, expunge_ok: bool = True) -> None:
        """The tagged response of a command, after the updates the client may hear now.

        `expunge_ok` is False for FETCH, STORE and SEARCH by sequence number: RFC 9051
        §7.5.1 forbids EXPUNGE responses while answering them."""
        if self.state is State.LOGOUT:
            return
        if self._view is not None:
            self._announce(expunge_ok=expunge_ok)
        self._line(response.line(tag))
        self.progress += 1

    def _announce(self, *, expunge_ok: bool) -> None:
        """Tell the client what changed (see the module docstring for when)."""
        view = self._view
        if view is None:
            return
        if expunge_ok and view.stale_expunged:
            self._expunge_lines(view, view.stale_expunged)
        if view.new_keywords:
            view.new_keywords = False
            keywords = " ".join(sorted(view.keywords, key=str.lower))
            system = "\\Answered \\Flagged \\Deleted \\Seen \\Draft"
            self._line(b"* FLAGS (%s)\r\n" % (system + " " + keywords).encode())
        if view.new:
            view.uids.extend(view.new)
            view.new.clear()
            self._line(b"* %d EXISTS\r\n" % len(view.uids))
            if not self.rev2:  # RFC 3501 §7.3.2
                self._line(b"* %d RECENT\r\n" % len(view.recent))
        if view.stale_flags:
            for uid in sorted(view.stale_flags):
                seq = view.seq(uid)
                if seq is None:
                    continue
                flags = format_flags(view.display_flags(uid, view.flags[uid], not self.rev2))
                modseq = view.modseqs.get(uid)
                if self.condstore and modseq is not None:  # RFC 7162 §3.1: UID and MODSEQ too
                    self._line(
                        b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, flags, modseq)
                    )
                else:
                    self._line(b"* %d FETCH (FLAGS %s)\r\n" % (seq, flags))
            view.stale_flags.clear()
            view.told.clear()
            view.modseqs.clear()
        if self.qresync and view.expunge_floor is not None:
            # RFC 7162 §3.2: MODSEQs told while an expunge waits (FETCH, STORE or SEARCH by
            # number) must not let a client that drops the connection skip it on resync.
            self._line(r.HIGHESTMODSEQ.with_code(f"HIGHESTMODSEQ {view.expunge_floor}").line(None))

    def _announce_expunges(self, uids: Iterable[int]) -> None:
        """Our own EXPUNGE or MOVE removed `uids`: announce them with any others pending."""
        view = self._view
        if view is None:
            return
        self._expunge_lines(view, set(uids) | view.stale_expunged)

    def _expunge_lines(self, view: _View, uids: Iterable[int]) -> None:
        """Remove `uids` from the view with EXPUNGE responses, or one VANISHED once QRESYNC
        is enabled (RFC 7162 §3.2.10: the same rules for when it may be sent)."""
        ordered = sorted(uids)
        if not self.qresync:
            for number in view.forget(ordered):
                self._line(b"* %d EXPUNGE\r\n" % number)
            return
        known = [uid for uid in ordered if view.seq(uid) is not None]
        view.forget(known)
        if known:
            self._line(b"* VANISHED %s\r\n" % r.sequence_set(known).encode())

    def _stored(
        self,
        event: StoreFlags,
        command: t.Store,
        changed: dict[int, frozenset[str]],
        modseqs: Mapping[int, int],
        modified: set[int],
    ) -> None:
        """The untagged FETCH responses of a STORE (RFC 9051 §6.4.6) and its tagged OK.

        `changed` holds the latest flags of the messages the STORE changed (with `modseqs`,
        their MODSEQs, as the adapter knows them after syncing). What the client should now
        believe is what it was last told with the STORE applied; wherever the latest flags
        differ from that (another session changed them too), .SILENT or not, the client hears
        the latest (RFC 9051 §6.4.6: flag changes by others are reported even with .SILENT).

        Once CONDSTORE is enabled (RFC 7162 §3.1.3) they carry UID and MODSEQ, and even
        .SILENT reports the new MODSEQ of each message the STORE changed; messages that
        failed UNCHANGEDSINCE get no FETCH here and are listed in OK [MODIFIED ...]."""
        view = self._view
        assert view is not None
        condstore = self.condstore
        failed: list[int] = []
        for uid in event.uids:
            if uid in view.stale_expunged or uid not in view.flags:
                continue
            seq = view.seq(uid)
            if uid in modified:
                if seq is not None:
                    failed.append(uid if command.uid else seq)
                continue
            latest = view.flags[uid]
            expected = _apply(view.told.get(uid, latest), event.flags, event.mode)
            actual = changed.get(uid, latest)
            modseq = modseqs.get(uid)
            if command.silent:
                # The client knows what it asked for; anything else changed meanwhile is news.
                view.flags[uid] = actual
                if actual != expected:
                    view.told[uid] = expected
                    view.stale_flags.add(uid)
                    if modseq is not None:
                        view.modseqs[uid] = modseq
                    continue
                view.stale_flags.discard(uid)  # a sync may have seen our own change first
                view.told.pop(uid, None)
                view.modseqs.pop(uid, None)
                if condstore and uid in changed and modseq is not None and seq is not None:
                    self._line(b"* %d FETCH (UID %d MODSEQ (%d))\r\n" % (seq, uid, modseq))
                continue
            view.flags[uid] = actual
            view.stale_flags.discard(uid)
            view.told.pop(uid, None)
            view.modseqs.pop(uid, None)
            view.note_keywords(actual)
            if seq is None:
                continue
            shown = format_flags(view.display_flags(uid, actual, not self.rev2))
            if condstore and modseq is not None:
                self._line(
                    b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, shown, modseq)
                )
            elif command.uid:  # RFC 9051 §6.4.9: UID STORE responses carry the UID
                self._line(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, shown))
            else:
                self._line(b"* %d FETCH (FLAGS %s)\r\n" % (seq, shown))
        if failed:
            code = "MODIFIED " + r.sequence_set(sorted(failed))
            response = r.CONDITIONAL_STORE_FAILED.with_code(code)
        else:
            response = r.COMPLETED.format(command="STORE")
        self._done(event.tag, response, expunge_ok=command.uid)

    def _answer_search(
        self,
        tag: str,
        command: t.Search,
        numbers: Sequence[int],
        modseqs: Mapping[int, int] | None,
    ) -> None:
        """SEARCH results: "* SEARCH" for IMAP4rev1 without RETURN, else ESEARCH (RFC 4731,
        RFC 9051 §7.3.4); RETURN (SAVE) keeps the result for "$" (RFC 5182).

        With MODSEQ in the key, the result carries the highest MODSEQ of the messages it
        reports: all matches, or only those returned when RETURN asks for MIN and/or MAX
        alone (RFC 7162 §3.1.5, RFC 4731 §3.2)."""
        view = self._view
        assert view is not None
        uids = [view.uids[n - 1] for n in numbers if 0 < n <= len(view.uids)]
        options = command.return_options
        modseq = None
        if modseqs and numbers:
            opts = {o.upper() for o in options or ()}
            reported: Iterable[int] = numbers
            if opts & {"MIN", "MAX"} and not opts & {"ALL", "COUNT"}:
                reported = [f(numbers) for f, o in ((min, "MIN"), (max, "MAX")) if o in opts]
            modseq = max(modseqs.get(n, 0) for n in reported)
        if options is not None and "SAVE" in options:
            view.saved = saved_result(uids, options)
        results = uids if command.uid else list(numbers)
        esearch: tuple[str, ...] | None = options
        if esearch is None and self.rev2:
            esearch = ()  # IMAP4rev2 has no SEARCH response: ESEARCH (ALL)
        self._line(format_search(results, esearch=esearch, tag=tag, uid=command.uid, modseq=modseq))
        self._done(tag, r.COMPLETED.format(command="SEARCH"), expunge_ok=command.uid)

    # -- LIST / LSUB / STATUS

    def _special(self, entry: MailboxEntry | MailboxSnapshot) -> tuple[str, ...]:
        return (entry.special_use,) if entry.special_use else ()

    def _list_line(
        self, kind: bytes, name: str, attributes: Iterable[str], extra: Iterable[bytes]
    ) -> bytes:
        attrs = " ".join(attributes).encode("ascii")
        line = b'* %s (%s) "/" %s' % (kind, attrs, r.mailbox_name(name, utf8=self.utf8))
        for item in extra:
            line += b" " + item
        return line + b"\r\n"

    def _list_mailboxes(self, cmd: t.List, entries: Sequence[MailboxEntry]) -> None:
        """LIST (RFC 9051 §6.3.9, RFC 5258 LIST-EXTENDED, RFC 6154, RFC 5819 LIST-STATUS).

        Attributes: \\HasChildren / \\HasNoChildren always (RFC 3348), special-use always
        (RFC 6154 §2), \\Subscribed when asked for. A hierarchy level that is no mailbox is
        listed only for a pattern ending in "%" (\\Noselect, or \\NonExistent in IMAP4rev2),
        or with RECURSIVEMATCH when a subscribed inferior did not match (CHILDINFO).
        """
        by_name = {e.name: e for e in entries}
        levels = {level for name in by_name for level in _superiors(name)}
        selection = set(cmd.selection or ())
        subscribed_only = "SUBSCRIBED" in selection
        special_only = "SPECIAL-USE" in selection
        recursive = "RECURSIVEMATCH" in selection and subscribed_only
        show_subscribed = subscribed_only or "SUBSCRIBED" in (cmd.return_options or ())
        patterns = [(match_pattern(cmd.reference + p), p.endswith("%")) for p in cmd.patterns]

        def matches(name: str) -> bool:
            return any(match(name) for match, _ in patterns)

        def selected(entry: MailboxEntry) -> bool:
            return (entry.subscribed or not subscribed_only) and (
                entry.special_use is not None or not special_only
            )

        for name in sorted(by_name.keys() | levels, key=_list_order):
            entry = by_name.get(name)
            if not matches(name):
                continue
            childinfo = recursive and any(
                selected(e) and not matches(e.name)
                for e in entries
                if e.name.startswith(name + SEPARATOR)
            )
            if entry is None:
                level = not selection and any(m(name) and pct for m, pct in patterns)
                if not (level or childinfo):
                    continue
            elif not selected(entry) and not childinfo:
                continue
            attrs: list[str] = []
            if entry is None:
                attrs.append("\\NonExistent" if self.rev2 else "\\Noselect")
            attrs.append("\\HasChildren" if name in levels else "\\HasNoChildren")
            if entry is not None:
                if show_subscribed and entry.subscribed:
                    attrs.append("\\Subscribed")
                attrs.extend(self._special(entry))
            extra = [b'("CHILDINFO" ("SUBSCRIBED"))'] if childinfo else []
            self._line(self._list_line(b"LIST", name, attrs, extra))
            if entry is not None and cmd.status_items:  # RFC 5819 §2
                self._line(self._status_line(entry, cmd.status_items))

    def _lsub(self, cmd: t.Lsub, entries: Sequence[MailboxEntry]) -> None:
        """LSUB (RFC 3501 §6.3.9): subscribed mailboxes matching the pattern; for "%", a
        hierarchy level with subscribed inferiors is shown \\Noselect."""
        match = match_pattern(cmd.reference + cmd.pattern)
        subscribed = {e.name: e for e in entries if e.subscribed}
        shown: dict[str, bool] = {}
        for name in sorted(subscribed, key=_list_order):
            if match(name):
                shown[name] = True
            elif cmd.pattern.endswith("%"):
                parts = name.split(SEPARATOR)
                for i in range(1, len(parts)):
                    level = SEPARATOR.join(parts[:i])
                    if match(level) and level not in subscribed:
                        shown.setdefault(level, False)
        for name, real in sorted(shown.items(), key=lambda kv: _list_order(kv[0])):
            attrs = [] if real else ["\\Noselect"]
            if real:
                attrs.extend(self._special(subscribed[name]))
            self._line(self._list_line(b"LSUB", name, attrs, ()))

    def _status_line(self, entry: MailboxEntry, items: Sequence[str]) -> bytes:
        values: list[str] = []
        for item in items:
            if item == "MESSAGES":
                values.append(f"MESSAGES {entry.messages}")
            elif item == "UIDNEXT":
                values.append(f"UIDNEXT {entry.uidnext}")
            elif item == "UIDVALIDITY":
                values.append(f"UIDVALIDITY {entry.uidvalidity}")
            elif item == "UNSEEN":
                values.append(f"UNSEEN {entry.unseen}")
            elif item == "DELETED":
                values.append(f"DELETED {entry.deleted or 0}")
            elif item == "SIZE":
                values.append(f"SIZE {entry.size}")
            elif item == "RECENT":
                values.append(f"RECENT {entry.recent}")
            elif item == "HIGHESTMODSEQ":
                values.append(f"HIGHESTMODSEQ {entry.highestmodseq}")
            elif item == "APPENDLIMIT":
                values.append(f"APPENDLIMIT {self.settings.limits.max_literal}")
        name = r.mailbox_name(entry.name, utf8=self.utf8)
        return b"* STATUS %s (%s)\r\n" % (name, " ".join(values).encode("ascii"))

    # -- plumbing

    def _capability_code(self) -> str:
        return "CAPABILITY " + " ".join(self.capabilities())

    def _await(self, event: _Verdict) -> _Verdict:
        self._awaiting = event
        return event

    def _take(self, *kinds: type) -> _Verdict | None:
        """The outstanding event a result answers (None once the session has closed)."""
        event = self._awaiting
        if self.state is State.LOGOUT:
            self._awaiting = None
            return None
        if not isinstance(event, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise RuntimeError(f"no outstanding {names} (awaiting {event!r})")
        self._awaiting = None
        return event

    def _take_store(self, *kinds: type) -> _StoreEvent | None:
        """`_take` for the store events (which all carry the command's tag)."""
        return cast("_StoreEvent | None", self._take(*(kinds or _STORE_EVENTS)))

    def _line(self, data: bytes) -> None:
        if self.state is not State.LOGOUT:
            self._out.append(data)
            self._out_size += len(data)

    def _fail(self, response: Response, reason: str) -> None:
        self._line(response.line(None))
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.state is not State.LOGOUT:
            self._close_reason = reason
            self.state = State.LOGOUT
            self._sasl = None
            self._queued = None
            self.idling = False


_BAD_MUTF7_TEXT = "Mailbox name is not valid modified UTF-7"

_SPECIAL_USES = frozenset(
    {"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash", "\\Important"}
)
_SASL_REFUSALS: dict[sasl.ErrorKind, Response] = {
    "cancelled": r.AUTH_CANCELLED,
    "malformed": r.AUTH_BAD_DATA,
    "authzid": r.AUTHZ_FAILED,
    "too_long": r.AUTH_LINE_TOO_LONG,
}
_STORE_EVENTS: tuple[type, ...] = get_args(_StoreEvent)
_NAMES: dict[type, str] = {
    CreateMailbox: "CREATE",
    DeleteMailbox: "DELETE",
    RenameMailbox: "RENAME",
    SetSubscribed: "SUBSCRIBE",
    t.List: "LIST",
    t.Lsub: "LSUB",
}


def _list_order(name: str) -> tuple[bool, str]:
    return (name != "INBOX", name)


def _superiors(name: str) -> list[str]:
    """The hierarchy levels above `name` ("a/b/c" -> ["a", "a/b"])."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def _check_flags(flags: Iterable[str]) -> None:
    """Flags a client may store: the system flags but \\Recent, and keywords (RFC 9051 §2.3.2)."""
    for flag in flags:
        if flag.startswith("\\") and flag not in SYSTEM_FLAGS:
            raise _Refused(r.INVALID_FLAGS)


def _apply(old: frozenset[str], flags: frozenset[str], mode: t.StoreMode) -> frozenset[str]:
    """The flags STORE leaves, comparing keywords case-insensitively as the store does."""
    if mode == "replace":
        return flags
    lower = {f.lower() for f in flags}
    if mode == "add":
        have = {f.lower() for f in old}
        return old | {f for f in flags if f.lower() not in have}
    return frozenset(f for f in old if f.lower() not in lower)


def _needs_text(keys: Iterable[t.SearchKey]) -> bool:
    """Whether a key reads the message (header or body text, the Date: field)."""
    stack = list(keys)
    while stack:
        key = stack.pop()
        if isinstance(key, t.SearchString | t.SearchHeader):
            return True
        if isinstance(key, t.SearchDate) and key.key.startswith("SENT"):
            return True
        if isinstance(key, t.SearchNot):
            stack.append(key.key)
        elif isinstance(key, t.SearchOr):
            stack += (key.left, key.right)
        elif isinstance(key, t.SearchGroup):
            stack.extend(key.keys)
    return False


_Handler = Callable[[ServerConnection, t.Command], Event | None]
_ANY = frozenset(State) - {State.LOGOUT}
_NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})
_PRE_AUTH_ONLY = frozenset({"STARTTLS", "LOGIN", "AUTHENTICATE"})

# The state table (RFC 9051 §6): the states each command is valid in. ENABLE is valid only
# before a mailbox is selected (RFC 5161 §3.1).
_STATES_BY_NAME: dict[str, frozenset[State]] = {
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,
    "STARTTLS": _NOT_AUTH,
    "AUTHENTICATE": _NOT_AUTH,
    "LOGIN": _NOT_AUTH,
    "ENABLE": frozenset({State.AUTHENTICATED}),
    "SELECT": _AUTH,
    "EXAMINE": _AUTH,
    "CREATE": _AUTH,
    "DELETE": _AUTH,
    "RENAME": _AUTH,
    "SUBSCRIBE": _AUTH,
    "UNSUBSCRIBE": _AUTH,
    "LIST": _AUTH,
    "LSUB": _AUTH,
    "NAMESPACE": _AUTH,
    "STATUS": _AUTH,
    "APPEND": _AUTH,
    "IDLE": _AUTH,
    "CHECK": _SELECTED,
    "CLOSE": _SELECTED,
    "UNSELECT": _SELECTED,
    "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED,
    "FETCH": _SELECTED,
    "STORE": _SELECTED,
    "COPY": _SELECTED,
    "MOVE": _SELECTED,
}

_HANDLERS: dict[type, tuple[str, _Handler]] = {
    t.Capability: ("CAPABILITY", ServerConnection._cmd_capability),
    t.Noop: ("NOOP", ServerConnection._cmd_noop),
    t.Logout: ("LOGOUT", ServerConnection._cmd_logout),
    t.Id: ("ID", ServerConnection._cmd_id),
    t.StartTLS: ("STARTTLS", ServerConnection._cmd_starttls),
    t.Authenticate: ("AUTHENTICATE", ServerConnection._cmd_authenticate),
    t.Login: ("LOGIN", ServerConnection._cmd_login),
    t.Enable: ("ENABLE", ServerConnection._cmd_enable),
    t.Select: ("SELECT", ServerConnection._cmd_select),
    t.Create: ("CREATE", ServerConnection._cmd_create),
    t.Delete: ("DELETE", ServerConnection._cmd_delete),
    t.Rename: ("RENAME", ServerConnection._cmd_rename),
    t.Subscribe: ("SUBSCRIBE", ServerConnection._cmd_subscribe),
    t.Unsubscribe: ("UNSUBSCRIBE", ServerConnection._cmd_subscribe),
    t.List: ("LIST", ServerConnection._cmd_list),
    t.Lsub: ("LSUB", ServerConnection._cmd_list),
    t.Namespace: ("NAMESPACE", ServerConnection._cmd_namespace),
    t.Status: ("STATUS", ServerConnection._cmd_status),
    t.Append: ("APPEND", ServerConnection._cmd_append),
    t.Idle: ("IDLE", ServerConnection._cmd_idle),
    t.Check: ("CHECK", ServerConnection._cmd_noop),
    t.Close: ("CLOSE", ServerConnection._cmd_close),
    t.Unselect: ("UNSELECT", ServerConnection._cmd_unselect),
    t.Expunge: ("EXPUNGE", ServerConnection._cmd_expunge),
    t.Search: ("SEARCH", ServerConnection._cmd_search),
    t.Fetch: ("FETCH", ServerConnection._cmd_fetch),
    t.Store: ("STORE", ServerConnection._cmd_store),
    t.Copy: ("COPY", ServerConnection._cmd_copy),
    t.Move: ("MOVE", ServerConnection._cmd_copy),
}
