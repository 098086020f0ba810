"""Byte transcripts for the sans-I/O IMAP server core (proto.imap.server), against a fake store.

`Driver` plays the adapter: it answers the core's events from an in-memory account (`Fake`)
the way imapd/session.py answers them from the store. Tests are transcripts: what the client
sends, and exactly what the server answers.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homing.mail.mime import encode_partmap, parse_message
from homing.proto import sasl
from homing.proto.imap import responses as r
from homing.proto.imap import server as core
from homing.proto.imap.fetch import MessageView
from homing.proto.imap.grammar import Limits
from homing.proto.imap.search import SearchError, SearchView, evaluate
from tests.unit.test_sasl import ScramClient

PASSWORD = "s3cret pass"
SCRAM_KEYS = sasl.scram_derive(PASSWORD, b"0123456789abcdef", 4096)
TLS = core.Settings(tls_active=True)
WHEN = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC).timestamp()


def message(subject: str, body: str = "Hello\r\n") -> bytes:
    return (
        f"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: {subject}\r\n"
        f"Date: Tue, 2 Jan 2024 03:04:05 +0000\r\nMessage-ID: <{subject}@example.org>\r\n\r\n"
        f"{body}"
    ).encode()


@dataclass
class Box:
    """One mailbox of the fake account."""

    uidvalidity: int
    special_use: str | None = None
    subscribed: bool = True
    uidnext: int = 1
    messages: dict[int, tuple[frozenset[str], bytes]] = field(default_factory=dict)
    expunged: list[int] = field(default_factory=list)

    def add(self, data: bytes, flags: frozenset[str] = frozenset()) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.messages[uid] = (flags, data)
        return uid

    def entry(self, name: str) -> core.MailboxEntry:
        return core.MailboxEntry(
            name=name,
            uidvalidity=self.uidvalidity,
            uidnext=self.uidnext,
            messages=len(self.messages),
            unseen=sum("\\Seen" not in f for f, _ in self.messages.values()),
            size=sum(len(d) for _, d in self.messages.values()),
            special_use=self.special_use,
            subscribed=self.subscribed,
            deleted=sum("\\Deleted" in f for f, _ in self.messages.values()),
        )


@dataclass
class Fake:
    """The account: INBOX with three messages, and the usual special-use mailboxes."""

    boxes: dict[str, Box] = field(default_factory=dict)
    next_validity: int = 1000

    def __post_init__(self) -> None:
        for name, use in (("INBOX", None), ("Sent", "\\Sent"), ("Trash", "\\Trash")):
            self.create(name, use)
        inbox = self.boxes["INBOX"]
        inbox.add(message("one"), frozenset({"\\Seen"}))
        inbox.add(message("two"))
        inbox.add(message("three"), frozenset({"\\Flagged", "$Work"}))

    def create(self, name: str, use: str | None = None) -> Box:
        self.next_validity += 1
        box = Box(self.next_validity, use)
        self.boxes[name] = box
        return box


@dataclass
class Driver:
    settings: core.Settings = field(default_factory=lambda: TLS)
    fake: Fake = field(default_factory=Fake)
    conn: core.ServerConnection = field(init=False)
    events: list[object] = field(default_factory=list)
    selected: str | None = None
    batch: bool = False
    """Hand FETCH results over as one list (the adapter's way, the core's fast path) instead
    of one message at a time."""

    def __post_init__(self) -> None:
        self.conn = core.ServerConnection(
            self.settings, nonce=lambda: "SERVERNONCE", scram_secret=b"k"
        )

    def start(self) -> bytes:
        self.conn.start()
        return self.pump()

    def send(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        return self.pump()

    def login(self) -> None:
        self.start()
        out = self.send(b'L LOGIN alice "s3cret pass"\r\n')
        assert out.endswith(b"L OK [CAPABILITY " + out.split(b"CAPABILITY ", 1)[1]), out

    def select(self, name: str = "INBOX") -> bytes:
        self.login()
        return self.send(b"S SELECT " + name.encode() + b"\r\n")

    def pump(self) -> bytes:
        conn = self.conn
        while True:
            ev = conn.next_event()
            self.events.append(ev)
            if ev is core.NEED_DATA or isinstance(ev, core.Closed):
                break
            self.handle(ev)
        return conn.data_to_send()

    # -- the adapter's part

    def handle(self, ev: object) -> None:
        conn = self.conn
        boxes = self.fake.boxes
        if isinstance(ev, core.StartTLS):
            conn.tls_established()
        elif isinstance(ev, core.CheckPassword):
            if ev.user == "alice" and ev.password == PASSWORD:
                conn.logged_in()
            else:
                conn.login_failed()
        elif isinstance(ev, core.NeedScramKeys):
            conn.scram_keys(SCRAM_KEYS if ev.user == "alice" else None)
        elif isinstance(ev, core.Authenticated):
            conn.logged_in()
        elif isinstance(ev, core.SelectMailbox):
            box = boxes.get(ev.mailbox)
            if box is None:
                conn.failed(r.NONEXISTENT)
                return
            self.selected = ev.mailbox
            conn.mailbox_selected(
                core.MailboxSnapshot(
                    ev.mailbox,
                    box.uidvalidity,
                    box.uidnext,
                    [(uid, f) for uid, (f, _) in sorted(box.messages.items())],
                    box.special_use,
                )
            )
        elif isinstance(ev, core.CreateMailbox):
            if ev.mailbox in boxes:
                conn.failed(r.ALREADY_EXISTS)
            else:
                self.fake.create(ev.mailbox, ev.special_use)
                conn.done()
        elif isinstance(ev, core.DeleteMailbox):
            if boxes.pop(ev.mailbox, None) is None:
                conn.failed(r.NONEXISTENT)
            else:
                conn.done(selected_gone=ev.mailbox == self.selected)
        elif isinstance(ev, core.RenameMailbox):
            if ev.mailbox not in boxes:
                conn.failed(r.NONEXISTENT)
            elif ev.new_name in boxes:
                conn.failed(r.ALREADY_EXISTS)
            else:
                boxes[ev.new_name] = boxes.pop(ev.mailbox)
                conn.done()
        elif isinstance(ev, core.SetSubscribed):
            if ev.mailbox not in boxes:
                conn.failed(r.NONEXISTENT)
            else:
                boxes[ev.mailbox].subscribed = ev.subscribed
                conn.done()
        elif isinstance(ev, core.ListMailboxes):
            conn.mailboxes_listed([b.entry(n) for n, b in boxes.items()])
        elif isinstance(ev, core.GetStatus):
            if ev.mailbox not in boxes:
                conn.failed(r.NONEXISTENT)
            else:
                conn.status(boxes[ev.mailbox].entry(ev.mailbox))
        elif isinstance(ev, core.AppendMessages):
            box = boxes.get(ev.mailbox)
            if box is None:
                conn.failed(r.TRYCREATE)
                return
            uids = [box.add(m.data, frozenset(m.flags)) for m in ev.messages]
            self.sync()
            conn.appended(box.uidvalidity, uids)
        elif isinstance(ev, core.FetchMessages):
            self.fetch(ev)
        elif isinstance(ev, core.SearchMessages):
            self.search(ev)
        elif isinstance(ev, core.StoreFlags):
            box = self.box
            changes = []
            for uid in ev.uids:
                if uid not in box.messages:
                    continue
                old, data = box.messages[uid]
                new = {"replace": ev.flags, "add": old | ev.flags, "remove": old - ev.flags}[
                    ev.mode
                ]
                if new != old:
                    box.messages[uid] = (frozenset(new), data)
                    changes.append((uid, frozenset(new)))
            conn.flags_stored(changes)
        elif isinstance(ev, core.CopyMessages):
            dest = boxes.get(ev.mailbox)
            if dest is None:
                conn.failed(r.TRYCREATE)
                return
            box = self.box
            pairs = []
            for uid in ev.uids:
                if uid in box.messages:
                    flags, data = box.messages[uid]
                    pairs.append((uid, dest.add(data, flags)))
                    if ev.move:
                        del box.messages[uid]
                        box.expunged.append(uid)
            self.sync()
            conn.copied(dest.uidvalidity, pairs)
        elif isinstance(ev, core.ExpungeMessages):
            box = self.box
            gone = [
                uid
                for uid, (flags, _) in sorted(box.messages.items())
                if "\\Deleted" in flags and (ev.uids is None or uid in ev.uids)
            ]
            for uid in gone:
                del box.messages[uid]
                box.expunged.append(uid)
            conn.expunged(gone)
        elif isinstance(ev, core.Poll):
            self.sync()
            conn.polled()
        elif isinstance(ev, core.Idle):
            self.sync()

    @property
    def box(self) -> Box:
        assert self.selected is not None
        return self.fake.boxes[self.selected]

    def sync(self) -> None:
        """Report everything (the core must take repeated reports in its stride)."""
        if self.selected is None or self.selected not in self.fake.boxes:
            return
        box = self.box
        self.conn.mailbox_changes(
            [(uid, f) for uid, (f, _) in sorted(box.messages.items())], box.expunged
        )

    def fetch(self, ev: core.FetchMessages) -> None:
        box = self.box
        for uid in ev.set_seen:
            if uid in box.messages:
                flags, data = box.messages[uid]
                box.messages[uid] = (flags | {"\\Seen"}, data)
        views = []
        for seq, uid in ev.messages:
            if uid not in box.messages:
                continue
            flags, data = box.messages[uid]
            parsed = parse_message(data)
            views.append(
                MessageView(
                    seq=seq,
                    uid=uid,
                    flags=flags,
                    internaldate=WHEN,
                    size=len(data),
                    modseq=1,
                    envelope=parsed.envelope,
                    bodystructure=parsed.bodystructure,
                    body_nx=parsed.body,
                    partmap=encode_partmap(parsed.parts),
                    prefix=b"",
                    body=data,
                )
            )
        if self.batch:
            self.conn.fetch_messages(views)
        else:
            for view in views:
                self.conn.fetch_message(view)
        self.conn.fetch_done()

    def search(self, ev: core.SearchMessages) -> None:
        box = self.box
        views = []
        for seq, uid in ev.messages:
            if uid not in box.messages:
                continue
            flags, data = box.messages[uid]
            if uid in ev.recent:
                flags = flags | {"\\Recent"}
            views.append(SearchView(seq, uid, flags, WHEN, len(data), 1, lambda d=data: d))
        try:
            numbers = evaluate(
                ev.key,
                views,
                max_seq=ev.max_seq,
                max_uid=ev.max_uid,
                saved=ev.saved,
                charset=ev.charset,
            )
        except SearchError as err:
            self.conn.failed(r.Response("BAD" if err.bad else "NO", err.text, err.code))
            return
        self.conn.searched(numbers)


def caps(conn: core.ServerConnection) -> bytes:
    return " ".join(conn.capabilities()).encode()


# ---------------------------------------------------------------------------- greeting, TLS


def test_greeting_and_capability_before_tls() -> None:
    d = Driver(core.Settings(starttls=True))
    greeting = d.start()
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev2 IMAP4rev1 STARTTLS LOGINDISABLED ")
    out = d.send(b"a CAPABILITY\r\n")
    assert out == b"* CAPABILITY " + caps(d.conn) + b"\r\na OK CAPABILITY completed\r\n"
    assert b"AUTH=" not in out
    for word in (b"SASL-IR", b"LITERAL+", b"IDLE", b"UIDPLUS", b"MOVE", b"SPECIAL-USE"):
        assert word in out


def test_login_refused_without_tls() -> None:
    d = Driver(core.Settings(starttls=True))
    d.start()
    out = d.send(b"a LOGIN alice secret\r\n")
    assert out == b"a NO [PRIVACYREQUIRED] Login needs TLS: use STARTTLS first\r\n"
    out = d.send(b"b AUTHENTICATE PLAIN\r\n")
    assert out == b"b NO [PRIVACYREQUIRED] Login needs TLS: use STARTTLS first\r\n"
    # A LOGIN with a literal is refused before the client sends it (no "+").
    out = d.send(b"c LOGIN {5}\r\n")
    assert out == b"c NO [PRIVACYREQUIRED] Login needs TLS: use STARTTLS first\r\n"


def test_starttls_discards_pipelined_commands() -> None:
    d = Driver(core.Settings(starttls=True))
    d.start()
    out = d.send(b"a STARTTLS\r\nb LOGIN alice x\r\n")
    assert out == b"a OK Begin TLS negotiation now\r\n"
    assert isinstance(d.events[-2], core.StartTLS)
    out = d.send(b"c CAPABILITY\r\n")
    assert b"AUTH=PLAIN" in out and b"STARTTLS" not in out and b"LOGINDISABLED" not in out
    assert b"b " not in out
    assert d.send(b"d STARTTLS\r\n") == b"d BAD TLS is already active\r\n"


def test_starttls_unavailable() -> None:
    d = Driver(core.Settings())
    d.start()
    assert d.send(b"a STARTTLS\r\n") == b"a BAD STARTTLS is not available\r\n"


# ---------------------------------------------------------------------------- logins


def test_login_and_capability_code() -> None:
    d = Driver()
    d.start()
    out = d.send(b'a LOGIN alice "s3cret pass"\r\n')
    assert out.startswith(b"a OK [CAPABILITY IMAP4rev2 IMAP4rev1 SASL-IR ")
    assert out.endswith(b"] Logged in\r\n")
    assert d.conn.state is core.State.AUTHENTICATED
    assert d.send(b"b LOGIN alice x\r\n") == b"b BAD Already logged in\r\n"


def test_login_failures_end_the_session() -> None:
    d = Driver()
    d.start()
    assert d.send(b"a LOGIN alice wrong\r\n") == (
        b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    )
    d.send(b"b LOGIN alice wrong\r\n")
    out = d.send(b"c LOGIN bob wrong\r\n")
    assert out == (
        b"c NO [AUTHENTICATIONFAILED] Authentication failed\r\n* BYE Too many failed logins\r\n"
    )
    assert d.conn.closed


def test_authenticate_as_someone_else_is_authorizationfailed() -> None:
    """RFC 5530 §3: an authzid naming another user is AUTHORIZATIONFAILED; the password is
    never checked for it, so the answer says nothing about the password."""
    d = Driver()
    d.start()
    response = base64.b64encode(b"mallory\0alice\0" + PASSWORD.encode())
    out = d.send(b"a AUTHENTICATE PLAIN " + response + b"\r\n")
    assert out == b"a NO [AUTHORIZATIONFAILED] Not authorized to act as that user\r\n"
    assert not any(isinstance(e, core.CheckPassword) for e in d.events)
    assert d.conn.state is core.State.NOT_AUTHENTICATED


def test_authenticate_plain_with_initial_response() -> None:
    d = Driver()
    d.start()
    ir = base64.b64encode(b"\0alice\0" + PASSWORD.encode())
    out = d.send(b"a AUTHENTICATE PLAIN " + ir + b"\r\n")
    assert out.startswith(b"a OK [CAPABILITY ") and out.endswith(b"Logged in\r\n")


def test_authenticate_plain_with_continuation_and_cancel() -> None:
    d = Driver()
    d.start()
    assert d.send(b"a AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert d.send(b"*\r\n") == b"a BAD Authentication cancelled\r\n"
    assert d.send(b"b AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert d.send(b"not base64!\r\n") == b"b BAD Invalid authentication data\r\n"
    assert d.send(b"c AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    out = d.send(base64.b64encode(b"\0alice\0" + PASSWORD.encode()) + b"\r\n")
    assert out.endswith(b"Logged in\r\n")


def test_authenticate_scram_sha_256() -> None:
    d = Driver()
    d.start()
    client = ScramClient("alice", PASSWORD)
    first = base64.b64encode(client.first())
    out = d.send(b"a AUTHENTICATE SCRAM-SHA-256 " + first + b"\r\n")
    assert out.startswith(b"+ ")
    final = client.final(base64.b64decode(out[2:-2]))
    out = d.send(base64.b64encode(final) + b"\r\n")
    assert out.startswith(b"+ ")  # v=... as a last challenge (no data with success in IMAP)
    client.verify(base64.b64decode(out[2:-2]))
    out = d.send(b"\r\n")
    assert out.endswith(b"Logged in\r\n")


def test_unknown_mechanism() -> None:
    d = Driver()
    d.start()
    out = d.send(b"a AUTHENTICATE GSSAPI\r\n")
    assert out == b"a NO [CANNOT] Unsupported authentication mechanism\r\n"


# ---------------------------------------------------------------------------- errors, states


def test_commands_before_login_get_bad_and_three_end_the_session() -> None:
    d = Driver()
    d.start()
    assert d.send(b"a SELECT INBOX\r\n") == b"a BAD Log in first\r\n"
    assert d.send(b"b FETCH 1 FLAGS\r\n") == b"b BAD Log in first\r\n"
    out = d.send(b'c LIST "" *\r\n')
    assert out == b"c BAD Log in first\r\n* BYE Too many invalid commands\r\n"
    assert d.conn.closed
    assert isinstance(d.events[-1], core.Closed)


def test_literal_before_login_is_refused_without_continuation() -> None:
    d = Driver()
    d.start()
    assert d.send(b"a APPEND INBOX {20}\r\n") == b"a BAD Log in first\r\n"
    assert d.send(b"b NOOP\r\n") == b"b OK NOOP completed\r\n"


def test_twenty_bad_commands_after_login() -> None:
    d = Driver()
    d.login()
    for i in range(19):
        assert d.send(b"x%d FROB\r\n" % i) == b"x%d BAD Unknown command\r\n" % i
    assert d.send(b"y FROB\r\n") == b"y BAD Unknown command\r\n* BYE Too many invalid commands\r\n"


def test_selected_state_commands_need_a_mailbox() -> None:
    d = Driver()
    d.login()
    assert d.send(b"a FETCH 1 FLAGS\r\n") == b"a BAD No mailbox selected\r\n"
    assert d.send(b"b CLOSE\r\n") == b"b BAD No mailbox selected\r\n"


def test_logout() -> None:
    d = Driver()
    d.start()
    assert d.send(b"a LOGOUT\r\n") == b"* BYE Logging out\r\na OK LOGOUT completed\r\n"
    assert isinstance(d.events[-1], core.Closed)


def test_untagged_bad_for_garbage_and_toobig_literal() -> None:
    d = Driver(core.Settings(tls_active=True, limits=Limits(max_literal=100, max_command=200)))
    d.login()
    out = d.send(b"a APPEND INBOX {1000}\r\n")
    assert out == b"a BAD [TOOBIG] Literal too large\r\n"  # no "+": the client sends nothing
    out = d.send(b"b APPEND INBOX {1000+}\r\n")
    assert out == b"* BYE [TOOBIG] Literal too large\r\n"
    assert d.conn.closed


@pytest.mark.parametrize(
    "command",
    [b"FETCH 0 FLAGS", b"FETCH 1:-1 FLAGS", b"FETCH 4294967296 FLAGS", b"FETCH 5 FLAGS"],
)
def test_bad_message_numbers(command: bytes) -> None:
    d = Driver()
    d.select()
    out = d.send(b"a " + command + b"\r\n")
    assert out.startswith(b"a BAD ")


def test_deep_nesting_is_bad_not_a_crash() -> None:
    d = Driver()
    d.select()
    out = d.send(b"a SEARCH " + b"(" * 100_000 + b"ALL" + b")" * 100_000 + b"\r\n")
    assert out.startswith(b"a BAD ")
    out = d.send(b"b SEARCH " + b"OR ALL " * 50_000 + b"ALL\r\n")
    assert out.startswith(b"b BAD ")


# ---------------------------------------------------------------------------- mailboxes


def test_select_transcript() -> None:
    d = Driver()
    d.login()
    out = d.send(b"a SELECT inbox\r\n")
    assert out == (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)\r\n"
        b"* 3 EXISTS\r\n"
        b"* 0 RECENT\r\n"
        b"* OK [UNSEEN 2] First unseen\r\n"
        b"* OK [UIDVALIDITY 1001] UIDs valid\r\n"
        b"* OK [UIDNEXT 4] Predicted next UID\r\n"
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
        b"Flags permitted\r\n"
        b"* OK [HIGHESTMODSEQ 1] Highest\r\n"
        b"a OK [READ-WRITE] Select completed\r\n"
    )
    out = d.send(b"b EXAMINE Sent\r\n")
    assert out.startswith(b"* OK [CLOSED] Previous mailbox closed\r\n* FLAGS")
    assert out.endswith(b"b OK [READ-ONLY] Examine completed\r\n")
    assert b"[PERMANENTFLAGS ()]" in out


def test_select_imap4rev2() -> None:
    d = Driver()
    d.login()
    assert d.send(b"e ENABLE IMAP4rev2\r\n") == b"* ENABLED IMAP4rev2\r\ne OK ENABLE completed\r\n"
    assert d.send(b"f ENABLE IMAP4rev2\r\n") == b"* ENABLED\r\nf OK ENABLE completed\r\n"
    out = d.send(b"a SELECT Sent\r\n")
    assert b"RECENT" not in out and b"UNSEEN" not in out
    assert b'* LIST (\\Sent) "/" "Sent"\r\n' in out


def test_select_missing_mailbox() -> None:
    d = Driver()
    d.login()
    assert d.send(b"a SELECT Nope\r\n") == b"a NO [NONEXISTENT] Mailbox does not exist\r\n"
    assert d.conn.state is core.State.AUTHENTICATED


@pytest.mark.parametrize(
    "name",
    [
        b'".."',
        b'"/etc/passwd"',
        b'"~root"',
        b'"a//b"',
        b'"a/../b"',
        b"{3+}\r\na\x01b",
        b'"' + b"x" * 256 + b'"',
    ],
)
def test_mailbox_name_attacks(name: bytes) -> None:
    d = Driver()
    d.login()
    assert d.send(b"a SELECT " + name + b"\r\n").startswith(b"a NO [CANNOT] ")
    assert d.send(b"b CREATE " + name + b"\r\n").startswith(b"b NO [CANNOT] ")
    d.send(b"e ENABLE IMAP4rev2\r\n")  # UTF-8 names: the core's own checks, not mUTF-7's
    assert d.send(b"c SELECT " + name + b"\r\n") == b"c NO [CANNOT] Invalid mailbox name\r\n"
    assert d.send(b"d RENAME INBOX " + name + b"\r\n").startswith(b"d NO [CANNOT] ")


def test_invalid_modified_utf7_is_no() -> None:
    d = Driver()
    d.login()
    out = d.send(b"a CREATE &Jjo!\r\n")
    assert out == b"a NO [CANNOT] Mailbox name is not valid modified UTF-7\r\n"
    assert d.conn.bad == 0


def test_create_delete_rename_subscribe() -> None:
    d = Driver()
    d.login()
    assert d.send(b"a CREATE Projects/\r\n") == b"a OK CREATE completed\r\n"
    assert d.send(b"a2 SELECT Projects/\r\n") == b"a2 NO [CANNOT] Invalid mailbox name\r\n"
    assert "Projects" in d.fake.boxes
    assert d.send(b"b CREATE Projects\r\n") == b"b NO [ALREADYEXISTS] Mailbox already exists\r\n"
    assert d.send(b"c RENAME Projects Old\r\n") == b"c OK RENAME completed\r\n"
    assert d.send(b"d SUBSCRIBE Old\r\n") == b"d OK SUBSCRIBE completed\r\n"
    assert d.send(b"e UNSUBSCRIBE Old\r\n") == b"e OK SUBSCRIBE completed\r\n"
    assert d.send(b"f DELETE Old\r\n") == b"f OK DELETE completed\r\n"
    assert d.send(b"g DELETE INBOX\r\n") == b"g NO [CANNOT] INBOX cannot be deleted\r\n"
    assert d.send(b"h CREATE X (USE (\\Bogus))\r\n") == (
        b"h NO [USEATTR] Unsupported special-use attribute\r\n"
    )
    assert d.send(b"i CREATE Arch (USE (\\Archive))\r\n") == b"i OK CREATE completed\r\n"
    assert d.fake.boxes["Arch"].special_use == "\\Archive"


def test_delete_selected_mailbox_closes_it() -> None:
    d = Driver()
    d.login()
    d.fake.create("Tmp")
    d.send(b"a SELECT Tmp\r\n")
    out = d.send(b"b DELETE Tmp\r\n")
    assert out == b"* OK [CLOSED] Previous mailbox closed\r\nb OK DELETE completed\r\n"
    assert d.conn.state is core.State.AUTHENTICATED


def test_list_with_children_and_special_use() -> None:
    d = Driver()
    d.login()
    d.fake.create("Work/Reports")
    d.fake.create("Caf\u00e9")
    out = d.send(b'a LIST "" *\r\n')
    assert out == (
        b'* LIST (\\HasNoChildren) "/" INBOX\r\n'
        b'* LIST (\\HasNoChildren) "/" "Caf&AOk-"\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n'
        b'* LIST (\\HasNoChildren) "/" "Work/Reports"\r\n'
        b"a OK LIST completed\r\n"
    )
    # "%" at the end lists the hierarchy level that is no mailbox (RFC 9051 §6.3.9).
    out = d.send(b'b LIST "" %\r\n')
    assert b'* LIST (\\Noselect \\HasChildren) "/" "Work"\r\n' in out
    assert b"Work/Reports" not in out
    out = d.send(b'c LIST "" ""\r\n')
    assert out == b'* LIST (\\Noselect) "/" ""\r\nc OK LIST completed\r\n'
    out = d.send(b'd LIST "Work/" %\r\n')
    assert out == b'* LIST (\\HasNoChildren) "/" "Work/Reports"\r\nd OK LIST completed\r\n'


def test_list_extended_and_status() -> None:
    d = Driver()
    d.login()
    d.send(b"e ENABLE IMAP4rev2\r\n")
    d.fake.boxes["Trash"].subscribed = False
    out = d.send(b'a LIST (SUBSCRIBED) "" * RETURN (STATUS (MESSAGES UNSEEN))\r\n')
    assert out == (
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX\r\n'
        b"* STATUS INBOX (MESSAGES 3 UNSEEN 2)\r\n"
        b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" "Sent"\r\n'
        b'* STATUS "Sent" (MESSAGES 0 UNSEEN 0)\r\n'
        b"a OK LIST completed\r\n"
    )
    out = d.send(b'b LIST (SPECIAL-USE) "" *\r\n')
    assert out.count(b"* LIST") == 2


def test_lsub() -> None:
    d = Driver()
    d.login()
    d.fake.boxes["Trash"].subscribed = False
    out = d.send(b'a LSUB "" *\r\n')
    assert out == (b'* LSUB () "/" INBOX\r\n* LSUB (\\Sent) "/" "Sent"\r\na OK LSUB completed\r\n')


def test_status_and_namespace_and_id() -> None:
    d = Driver()
    d.login()
    out = d.send(b"a STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE RECENT)\r\n")
    assert out.startswith(
        b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 1001 UNSEEN 2 DELETED 0 SIZE "
    )
    assert out.endswith(b" RECENT 0)\r\na OK STATUS completed\r\n")
    assert d.send(b"b STATUS Nope (MESSAGES)\r\n") == (
        b"b NO [NONEXISTENT] Mailbox does not exist\r\n"
    )
    assert d.send(b"c NAMESPACE\r\n") == (
        b'* NAMESPACE (("" "/")) NIL NIL\r\nc OK NAMESPACE completed\r\n'
    )
    assert d.send(b"d ID NIL\r\n") == b'* ID ("name" "Homing")\r\nd OK ID completed\r\n'


def test_append_with_appenduid_and_trycreate() -> None:
    d = Driver()
    d.login()
    data = message("four")
    out = d.send(b"a APPEND INBOX (\\Seen) {%d}\r\n" % len(data))
    assert out == b"+ Ready for literal data\r\n"
    out = d.send(data + b"\r\n")
    assert out == b"a OK [APPENDUID 1001 4] Append completed\r\n"
    out = d.send(b"b APPEND Nope {%d+}\r\n" % len(data) + data + b"\r\n")
    assert out == b"b NO [TRYCREATE] Mailbox does not exist\r\n"
    out = d.send(b"c APPEND INBOX {0+}\r\n\r\n")
    assert out == b"c NO [CANNOT] Cannot append an empty message\r\n"
    assert d.send(b"d APPEND INBOX (\\Recent) {1+}\r\nx\r\n") == b"d BAD Invalid flag\r\n"


def test_append_to_selected_mailbox_announces_exists() -> None:
    d = Driver()
    d.select()
    data = message("four")
    out = d.send(b"a APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
    assert out == (b"* 4 EXISTS\r\n* 0 RECENT\r\na OK [APPENDUID 1001 4] Append completed\r\n")


# ---------------------------------------------------------------------------- messages


def test_fetch_metadata() -> None:
    d = Driver()
    d.select()
    out = d.send(b"a FETCH 1:* (UID FLAGS RFC822.SIZE)\r\n")
    sizes = [len(message(s)) for s in ("one", "two", "three")]
    assert out == (
        b"* 1 FETCH (UID 1 FLAGS (\\Seen) RFC822.SIZE %d)\r\n"
        b"* 2 FETCH (UID 2 FLAGS () RFC822.SIZE %d)\r\n"
        b"* 3 FETCH (UID 3 FLAGS (\\Flagged $Work) RFC822.SIZE %d)\r\n"
        b"a OK FETCH completed\r\n" % tuple(sizes)
    )
    out = d.send(b"b UID FETCH 1:4294967295 FLAGS\r\n")
    assert out.count(b"FETCH (UID") == 3


def test_fetch_body_sets_seen_and_peek_does_not() -> None:
    d = Driver()
    d.select()
    out = d.send(b"a FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]\r\n")
    assert out == (
        b"* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {16}\r\nSubject: two\r\n\r\n)\r\n"
        b"a OK FETCH completed\r\n"
    )
    assert "\\Seen" not in d.box.messages[2][0]
    out = d.send(b"b FETCH 2 BODY[TEXT]\r\n")
    assert out == (
        b"* 2 FETCH (BODY[TEXT] {7}\r\nHello\r\n FLAGS (\\Seen))\r\nb OK FETCH completed\r\n"
    )
    assert "\\Seen" in d.box.messages[2][0]


def test_fetch_envelope() -> None:
    d = Driver()
    d.select()
    out = d.send(b"a FETCH 1 ENVELOPE\r\n")
    assert out.startswith(b'* 1 FETCH (ENVELOPE ("Tue, 2 Jan 2024 03:04:05 +0000" "one" ')


def test_store_transcripts() -> None:
    d = Driver()
    d.select()
    out = d.send(b"a STORE 2 +FLAGS (\\Deleted)\r\n")
    assert out == b"* 2 FETCH (FLAGS (\\Deleted))\r\na OK STORE completed\r\n"
    out = d.send(b"b UID STORE 1:3 -FLAGS.SILENT (\\Seen)\r\n")
    assert out == b"b OK STORE completed\r\n"
    out = d.send(b"c UID STORE 3 FLAGS (NewKeyword)\r\n")
    assert out == (
        b"* 3 FETCH (UID 3 FLAGS (NewKeyword))\r\n"
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work NewKeyword)\r\n"
        b"c OK STORE completed\r\n"
    )
    assert d.send(b"d STORE 1 +FLAGS (\\Recent)\r\n") == b"d BAD Invalid flag\r\n"


def test_expunge_and_uid_expunge() -> None:
    d = Driver()
    d.select()
    d.send(b"a STORE 1:2 +FLAGS.SILENT (\\Deleted)\r\n")
    assert d.send(b"b UID EXPUNGE 2\r\n") == b"* 2 EXPUNGE\r\nb OK EXPUNGE completed\r\n"
    assert d.send(b"c EXPUNGE\r\n") == b"* 1 EXPUNGE\r\nc OK EXPUNGE completed\r\n"
    assert d.conn.view_uids() == [3]


def test_expunge_numbers_count_down() -> None:
    d = Driver()
    d.select()
    d.send(b"a STORE 1:3 +FLAGS.SILENT (\\Deleted)\r\n")
    out = d.send(b"b EXPUNGE\r\n")
    assert out == b"* 1 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nb OK EXPUNGE completed\r\n"


def test_close_expunges_silently_and_unselect_does_not() -> None:
    d = Driver()
    d.select()
    d.send(b"a STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
    assert d.send(b"b CLOSE\r\n") == b"b OK CLOSE completed\r\n"
    assert sorted(d.fake.boxes["INBOX"].messages) == [2, 3]
    d.send(b"c SELECT INBOX\r\n")
    d.send(b"d STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
    assert d.send(b"e UNSELECT\r\n") == b"e OK UNSELECT completed\r\n"
    assert sorted(d.fake.boxes["INBOX"].messages) == [2, 3]


def test_read_only_mailbox() -> None:
    d = Driver()
    d.login()
    d.send(b"a EXAMINE INBOX\r\n")
    assert d.send(b"b STORE 1 +FLAGS (\\Seen)\r\n") == b"b NO [READ-ONLY] Mailbox is read-only\r\n"
    assert d.send(b"c EXPUNGE\r\n") == b"c NO [READ-ONLY] Mailbox is read-only\r\n"
    out = d.send(b"d FETCH 2 BODY[TEXT]\r\n")
    assert b"FLAGS" not in out  # no implicit \Seen when read-only
    assert "\\Seen" not in d.box.messages[2][0]


def test_copy_and_move_with_copyuid() -> None:
    d = Driver()
    d.select()
    out = d.send(b"a COPY 1:2 Trash\r\n")
    assert out == b"a OK [COPYUID 1003 1:2 1:2] Copy completed\r\n"
    out = d.send(b"b UID MOVE 3 Trash\r\n")
    assert out == (b"* OK [COPYUID 1003 3 3] Moved UIDs\r\n* 3 EXPUNGE\r\nb OK MOVE completed\r\n")
    assert d.send(b"c COPY 1 Nope\r\n") == b"c NO [TRYCREATE] Mailbox does not exist\r\n"


def test_search_rev1_and_esearch() -> None:
    d = Driver()
    d.select()
    assert d.send(b"a SEARCH UNSEEN\r\n") == b"* SEARCH 2 3\r\na OK SEARCH completed\r\n"
    assert d.send(b"b UID SEARCH SUBJECT three\r\n") == b"* SEARCH 3\r\nb OK SEARCH completed\r\n"
    out = d.send(b"c SEARCH RETURN (MIN COUNT) ALL\r\n")
    assert out == b'* ESEARCH (TAG "c") MIN 1 COUNT 3\r\nc OK SEARCH completed\r\n'
    out = d.send(b"d SEARCH CHARSET KOI8-R ALL\r\n")
    assert out == b"* SEARCH 1 2 3\r\nd OK SEARCH completed\r\n"
    out = d.send(b"e SEARCH CHARSET X-NOPE ALL\r\n")
    assert out.startswith(b"e NO [BADCHARSET")


def test_search_save_and_dollar() -> None:
    d = Driver()
    d.login()
    d.send(b"e ENABLE IMAP4rev2\r\n")
    d.send(b"s SELECT INBOX\r\n")
    assert d.send(b"a SEARCH RETURN (SAVE) FLAGGED\r\n") == b"a OK SEARCH completed\r\n"
    out = d.send(b"b FETCH $ UID\r\n")
    assert out == b"* 3 FETCH (UID 3)\r\nb OK FETCH completed\r\n"
    out = d.send(b"c UID SEARCH UNSEEN\r\n")
    assert out == b'* ESEARCH (TAG "c") UID ALL 2:3\r\nc OK SEARCH completed\r\n'


# ---------------------------------------------------------------------------- concurrency


def test_other_sessions_changes_are_announced_where_allowed() -> None:
    d = Driver()
    d.select()
    box = d.box
    # Another session: message 2 expunged, 1 flagged, one new message.
    del box.messages[2]
    box.expunged.append(2)
    box.messages[1] = (frozenset({"\\Seen", "\\Answered"}), box.messages[1][1])
    box.add(message("four"))
    d.sync()
    # FETCH by number: no EXPUNGE; message 2 keeps its number and is reported missing.
    out = d.send(b"a FETCH 2 FLAGS\r\n")
    assert out == (
        b"* 4 EXISTS\r\n* 0 RECENT\r\n* 1 FETCH (FLAGS (\\Answered \\Seen))\r\n"
        b"a NO [EXPUNGEISSUED] Some of the requested messages no longer exist\r\n"
    )
    assert d.conn.view_uids() == [1, 2, 3, 4]
    # SEARCH and STORE by number: still no EXPUNGE.
    assert d.send(b"b SEARCH ALL\r\n") == b"* SEARCH 1 3 4\r\nb OK SEARCH completed\r\n"
    assert d.send(b"c STORE 4 +FLAGS.SILENT (\\Seen)\r\n") == b"c OK STORE completed\r\n"
    # NOOP may tell.
    assert d.send(b"d NOOP\r\n") == b"* 2 EXPUNGE\r\nd OK NOOP completed\r\n"
    assert d.conn.view_uids() == [1, 3, 4]


def test_uid_fetch_may_hear_expunges() -> None:
    d = Driver()
    d.select()
    box = d.box
    del box.messages[1]
    box.expunged.append(1)
    d.sync()
    out = d.send(b"a UID FETCH 1:* FLAGS\r\n")
    assert out == (
        b"* 2 FETCH (UID 2 FLAGS ())\r\n* 3 FETCH (UID 3 FLAGS (\\Flagged $Work))\r\n"
        b"* 1 EXPUNGE\r\na OK FETCH completed\r\n"
    )


def test_idle_hears_changes_at_once() -> None:
    d = Driver()
    d.select()
    assert d.send(b"a IDLE\r\n") == b"+ idling\r\n"
    assert isinstance(d.events[-2], core.Idle)
    d.box.add(message("four"))
    d.sync()
    assert d.conn.data_to_send() == b"* 4 EXISTS\r\n* 0 RECENT\r\n"
    d.conn.keepalive()
    assert d.conn.data_to_send() == b"* OK Still here\r\n"
    assert d.send(b"DONE\r\n") == b"a OK IDLE completed\r\n"
    assert d.send(b"b IDLE\r\n") == b"+ idling\r\n"
    assert d.send(b"nope\r\n") == b"b BAD Expected DONE\r\n"


def test_timeout_and_shutdown() -> None:
    d = Driver()
    d.login()
    d.conn.timed_out()
    assert d.pump() == b"* BYE Autologout; idle for too long\r\n"
    d = Driver()
    d.start()
    d.conn.shutdown()
    assert d.pump() == b"* BYE [UNAVAILABLE] Server shutting down\r\n"


# ---------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("INBOX", "INBOX"),
        ("inbox/Sub", "INBOX/Sub"),
        ("a/b", "a/b"),
        ("Caf\u00e9", "Caf\u00e9"),
        ("..", None),
        ("a/./b", None),
        ("/etc", None),
        ("~root", None),
        ("a\x7fb", None),
        ("a*", None),
        ("x" * 255, "x" * 255),
        ("x" * 256, None),
    ],
)
def test_check_mailbox_name(name: str, expected: str | None) -> None:
    assert core.check_mailbox_name(name) == expected


def test_match_pattern() -> None:
    assert core.match_pattern("*")("a/b/c")
    assert not core.match_pattern("%")("a/b")
    assert core.match_pattern("a/%")("a/b")
    assert core.match_pattern("inbox")("INBOX")
    assert not core.match_pattern("a.c")("abc")  # "." is literal, not a regex


def test_sequence_set_response_form() -> None:
    assert r.sequence_set([1, 2, 3, 5, 7, 8]) == "1:3,5,7:8"
    assert r.sequence_set([]) == ""


# ---------------------------------------------------------------------------- properties

_TOKENS = [
    b"a", b"b1", b"*", b"SELECT", b"INBOX", b"FETCH", b"1:*", b"(FLAGS UID)", b"BODY[]",
    b"STORE", b"+FLAGS", b"(\\Seen)", b"SEARCH", b"OR", b"NOT", b"(", b")", b"{3}", b"{2+}",
    b"UID", b"EXPUNGE", b"IDLE", b"DONE", b"LIST", b'""', b"%", b"APPEND", b"ENABLE",
    b"IMAP4rev2", b"AUTHENTICATE", b"PLAIN", b"=", b"LOGOUT", b"NOOP", b"0", b"4294967296",
    b"&Jjo!", b"..", b"\x00", b"\xff", b"~root", b"RENAME", b"MOVE", b"COPY", b"Trash",
]  # fmt: skip
_STATUS_LINE = re.compile(rb"(\*|\+|[\x21-\x7e]+ (OK|NO|BAD))( |\r\n)")


def _lines(out: bytes) -> list[bytes]:
    """The response lines of `out`, literals skipped (their content is message data)."""
    lines = []
    pos = 0
    while pos < len(out):
        end = out.find(b"\r\n", pos)
        assert end >= 0, f"unterminated output: {out[pos:]!r}"
        line = out[pos : end + 2]
        lines.append(line)
        pos = end + 2
        while (m := re.search(rb"\{(\d+)\}\r\n$", out[:pos])) is not None and m.end() == pos:
            pos += int(m.group(1))
            end = out.find(b"\r\n", pos)
            assert end >= 0
            pos = end + 2
    return lines


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=12)),
        max_size=40,
    ),
    st.lists(st.sampled_from([b" ", b"\r\n", b"\n", b""]), min_size=40, max_size=40),
    st.booleans(),
)
def test_any_input_gives_only_protocol_responses(
    tokens: list[bytes], separators: list[bytes], logged_in: bool
) -> None:
    """Invariant: whatever the client sends, the core raises nothing and writes only
    untagged responses, continuations and tagged status responses."""
    d = Driver()
    if logged_in:
        d.select()
    else:
        d.start()
    data = b"".join(t + s for t, s in zip(tokens, separators, strict=False)) + b"\r\n"
    out = d.send(data)
    for line in _lines(out):
        assert _STATUS_LINE.match(line), line


_CLIENT_COMMANDS = [
    b"NOOP", b"FETCH 1:* (UID)", b"UID FETCH 1:* (FLAGS)", b"SEARCH ALL", b"UID SEARCH ALL",
    b"STORE 1 +FLAGS (\\Seen)", b"STORE 1:* +FLAGS.SILENT (\\Deleted)", b"EXPUNGE",
    b"UID EXPUNGE 1:3", b"COPY 1 INBOX", b"MOVE 1 Trash", b"CHECK", b"FETCH 2 (UID FLAGS)",
]  # fmt: skip
_OPS = st.one_of(
    st.tuples(st.just("deliver"), st.integers(1, 3)),
    st.tuples(st.just("expunge"), st.integers(0, 50)),
    st.tuples(st.just("flag"), st.integers(0, 50)),
    st.tuples(st.just("idle"), st.integers(0, 0)),
    st.tuples(st.just("cmd"), st.integers(0, len(_CLIENT_COMMANDS) - 1)),
)


class _Model:
    """A client's sequence-number map, kept from the server's responses alone."""

    def __init__(self, uids: list[int]) -> None:
        self.uids = list(uids)

    def apply(self, out: bytes) -> None:
        for line in _lines(out):
            if m := re.match(rb"\* (\d+) EXPUNGE\r\n", line):
                n = int(m.group(1))
                assert 1 <= n <= len(self.uids), (line, self.uids)
                del self.uids[n - 1]
            elif m := re.match(rb"\* (\d+) EXISTS\r\n", line):
                count = int(m.group(1))
                assert count >= len(self.uids), (line, self.uids)
                self.uids += [0] * (count - len(self.uids))
            elif m := re.match(rb"\* (\d+) FETCH \(.*UID (\d+)", line):
                seq, uid = int(m.group(1)), int(m.group(2))
                assert 1 <= seq <= len(self.uids), (line, self.uids)
                if self.uids[seq - 1] == 0:
                    self.uids[seq - 1] = uid
                assert self.uids[seq - 1] == uid, (line, self.uids)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_OPS, max_size=25))
def test_sequence_numbers_stay_consistent(ops: list[tuple[str, int]]) -> None:
    """Invariant: applying the server's EXISTS / EXPUNGE responses in order always gives the
    client a map in which every FETCH response names the right UID, whatever other sessions
    do; and after NOOP the map is exactly the mailbox (RFC 9051 §5.5, §7.5.1)."""
    d = Driver()
    d.select()
    box = d.box
    model = _Model(sorted(box.messages))
    for kind, n in ops:
        if kind == "deliver":
            for i in range(n):
                box.add(message(f"new{i}"))
        elif kind == "expunge" and box.messages:
            uid = sorted(box.messages)[n % len(box.messages)]
            del box.messages[uid]
            box.expunged.append(uid)
        elif kind == "flag" and box.messages:
            uid = sorted(box.messages)[n % len(box.messages)]
            flags, data = box.messages[uid]
            box.messages[uid] = (flags ^ {"\\Flagged"}, data)
        elif kind == "idle":
            model.apply(d.send(b"i IDLE\r\n"))
            box.add(message("during idle"))
            d.sync()
            model.apply(d.conn.data_to_send())
            model.apply(d.send(b"DONE\r\n"))
            continue
        elif kind == "cmd":
            model.apply(d.send(b"c " + _CLIENT_COMMANDS[n] + b"\r\n"))
            continue
        d.sync()  # what the adapter does when the store publishes a change
    model.apply(d.send(b"n NOOP\r\n"))
    model.apply(d.send(b"f FETCH 1:* (UID)\r\n") if model.uids else b"")
    assert model.uids == sorted(box.messages)
    assert d.conn.view_uids() == sorted(box.messages)


# Steps of another session or of the client, for the differential test below.
_OTHERS = {
    "flag 2": lambda d: (
        d.box.messages.update({2: (frozenset({"$Other"}), d.box.messages[2][1])})
        if 2 in d.box.messages
        else None
    ),
    "unflag 1": lambda d: (
        d.box.messages.update({1: (frozenset(), d.box.messages[1][1])})
        if 1 in d.box.messages
        else None
    ),
    "expunge 3": lambda d: (
        (d.box.messages.pop(3), d.box.expunged.append(3)) if 3 in d.box.messages else None
    ),
    "new": lambda d: d.box.add(message("new"), frozenset({"\\Answered"})),
    "sync": lambda d: d.sync(),
}
_COMMANDS = [
    b"FETCH 1:* (UID FLAGS)",
    b"UID FETCH 1:* (FLAGS)",
    b"FETCH 2:* (FLAGS RFC822.SIZE INTERNALDATE)",
    b"FETCH 1 (FLAGS UID)",
    b"UID FETCH 2:3 (FLAGS)",
    b"FETCH 1:* (UID FLAGS MODSEQ)",
    b"STORE 1 +FLAGS (\\Flagged)",
    b"STORE 1:* -FLAGS.SILENT (\\Flagged)",
    b"NOOP",
]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(sorted(_OTHERS)) | st.sampled_from(_COMMANDS),
        min_size=1,
        max_size=12,
    )
)
def test_fetch_of_a_list_answers_exactly_as_one_message_at_a_time(steps: list[str | bytes]) -> None:
    """The core's list-at-a-time FETCH (what the adapter uses) and its message-at-a-time loop
    say the same bytes after any mix of changes by other sessions, syncs, STOREs and FETCHes."""
    drivers = [Driver(batch=False), Driver(batch=True)]
    for d in drivers:
        d.select()
    for n, step in enumerate(steps):
        outputs = []
        for d in drivers:
            if isinstance(step, str):
                _OTHERS[step](d)
                outputs.append(b"")
            else:
                outputs.append(d.send(b"t%d " % n + step + b"\r\n"))
        assert outputs[0] == outputs[1], (step, outputs)
