"""CONDSTORE and QRESYNC (RFC 7162) end to end: byte transcripts over TLS against a real
`homing serve`, with changes made by other sessions and straight in the store.

MODSEQ values are exact: a new mailbox starts at HIGHESTMODSEQ 1, each delivered message takes
the next MODSEQ, and each STORE, EXPUNGE or MOVE that changes something takes one more.
"""

from __future__ import annotations

from collections.abc import Callable

from homing.store import Store
from tests.integration import test_imap as base
from tests.integration.conftest import Server
from tests.integration.test_imap import Raw, deliver, imaps, msg

# The fixtures of test_imap.py: one server for the module, an account per test.
server = base.server
store = base.store
account = base.account
_close_raw_sockets = base._close_raw_sockets


def mailbox_of(store: Store, user: str, name: str = "INBOX") -> tuple[int, int]:
    """(mailbox id, UIDVALIDITY)."""
    acct = store.get_account(user)
    assert acct is not None
    mailbox = store.get_mailbox(acct.id, name)
    assert mailbox is not None
    return mailbox.id, mailbox.uidvalidity


def session(server: Server, user: str, enable: bytes = b"IMAP4rev2 QRESYNC") -> Raw:
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    lines = raw.cmd(b"E", b"ENABLE " + enable)
    assert lines[-1].startswith(b"E OK"), lines
    return raw


def expunge_elsewhere(server: Server, user: str, uid: int) -> None:
    """Another session of the server process flags `uid` \\Deleted and expunges it."""
    other = imaps(server, user)
    other.select("INBOX")
    other.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
    other.expunge()
    other.logout()


def select_lines(validity: int, uidnext: int, highest: int, exists: int) -> list[bytes]:
    """The untagged lines of an IMAP4rev2 SELECT INBOX (no keywords in use)."""
    return [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
        b"* %d EXISTS\r\n" % exists,
        b'* LIST () "/" INBOX\r\n',
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % validity,
        b"* OK [UIDNEXT %d] Predicted next UID\r\n" % uidnext,
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
        b"Flags permitted\r\n",
        b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % highest,
    ]


def test_qresync_transcript(server: Server, store: Store, account: Callable[..., str]) -> None:
    user = account(*(msg(n) for n in range(1, 6)))  # UIDs 1-5, MODSEQs 2-6
    mailbox_id, validity = mailbox_of(store, user)

    # A first sync: nothing changed since MODSEQ 6, so nothing beyond the usual lines.
    raw = session(server, user)
    lines = raw.cmd(b"S", b"SELECT INBOX (QRESYNC (%d 6 1:5))" % validity)
    assert lines == [
        *select_lines(validity, 6, 6, 5),
        b"S OK [READ-WRITE] Select completed\r\n",
    ]
    raw.cmd(b"Z", b"LOGOUT")

    # Offline: \Deleted on UID 4 (MODSEQ 7), its expunge (8), \Flagged on UID 2 (9), and a
    # new message, UID 6 (10).
    store.store_flags(mailbox_id, [4], frozenset({"\\Deleted"}), "add").result(timeout=10)
    assert store.expunge(mailbox_id).result(timeout=10) == [4]
    store.store_flags(mailbox_id, [2], frozenset({"\\Flagged"}), "add").result(timeout=10)
    assert deliver(store, user, msg(6)) == [6]

    raw = session(server, user)
    lines = raw.cmd(b"S", b"SELECT INBOX (QRESYNC (%d 6 1:5))" % validity)
    assert lines == [
        *select_lines(validity, 7, 10, 5),
        b"* VANISHED (EARLIER) 4\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (9))\r\n",
        b"S OK [READ-WRITE] Select completed\r\n",
    ]
    # The same question asked with UID FETCH: UID 6 is new, so it changed too.
    lines = raw.cmd(b"F", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 6 VANISHED)")
    assert lines == [
        b"* VANISHED (EARLIER) 4\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (9))\r\n",
        b"* 5 FETCH (UID 6 FLAGS () MODSEQ (10))\r\n",
        b"F OK FETCH completed\r\n",
    ]
    # Conditional STORE: UID 1 (MODSEQ 2) passes, UID 2 (MODSEQ 9) fails UNCHANGEDSINCE 8.
    lines = raw.cmd(b"U", b"UID STORE 1,2 (UNCHANGEDSINCE 8) +FLAGS.SILENT (\\Seen)")
    assert lines == [
        b"* 1 FETCH (UID 1 MODSEQ (11))\r\n",
        b"U OK [MODIFIED 2] Conditional STORE failed\r\n",
    ]
    lines = raw.cmd(b"U", b"STORE 2 (UNCHANGEDSINCE 9) -FLAGS (\\Flagged)")
    assert lines == [
        b"* 2 FETCH (UID 2 FLAGS () MODSEQ (12))\r\n",
        b"U OK STORE completed\r\n",
    ]
    # Another session expunges UID 3 (\Deleted: 13, expunge: 14): VANISHED, not EXPUNGE.
    expunge_elsewhere(server, user, 3)
    lines = raw.cmd(b"N", b"NOOP")
    assert lines == [b"* VANISHED 3\r\n", b"N OK NOOP completed\r\n"]
    # SEARCH MODSEQ reports the highest MODSEQ among the matches (RFC 7162 §3.1.5).
    lines = raw.cmd(b"R", b"UID SEARCH MODSEQ 10")
    assert lines == [
        b'* ESEARCH (TAG "R") UID ALL 1:2,6 MODSEQ 12\r\n',
        b"R OK SEARCH completed\r\n",
    ]
    # With MIN or MAX alone, the MODSEQ is that of the message(s) returned (RFC 4731 §3.2).
    assert raw.cmd(b"R", b"UID SEARCH RETURN (MIN) MODSEQ 10")[0] == (
        b'* ESEARCH (TAG "R") UID MIN 1 MODSEQ 11\r\n'
    )
    assert raw.cmd(b"R", b"UID SEARCH RETURN (MAX) MODSEQ 10")[0] == (
        b'* ESEARCH (TAG "R") UID MAX 6 MODSEQ 10\r\n'
    )
    assert raw.cmd(b"R", b"UID SEARCH RETURN (MIN COUNT) MODSEQ 10")[0] == (
        b'* ESEARCH (TAG "R") UID MIN 1 COUNT 3 MODSEQ 12\r\n'
    )
    lines = raw.cmd(b"T", b"STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
    assert lines == [
        b"* STATUS INBOX (HIGHESTMODSEQ 14 MESSAGES 4)\r\n",
        b"T OK STATUS completed\r\n",
    ]
    # A reconnecting client that knew everything up to MODSEQ 10 and UIDs 1:6.
    raw.cmd(b"Z", b"LOGOUT")
    raw = session(server, user)
    lines = raw.cmd(b"S", b"EXAMINE INBOX (QRESYNC (%d 10 1:6))" % validity)
    assert lines == [
        *select_lines(validity, 7, 14, 4)[:5],
        b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n",
        b"* OK [HIGHESTMODSEQ 14] Highest\r\n",
        b"* VANISHED (EARLIER) 3\r\n",
        b"* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (11))\r\n",
        b"* 2 FETCH (UID 2 FLAGS () MODSEQ (12))\r\n",
        b"S OK [READ-ONLY] Examine completed\r\n",
    ]


def test_qresync_uidvalidity_mismatch_is_a_plain_select(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    user = account(msg(1))
    _, validity = mailbox_of(store, user)
    raw = session(server, user)
    lines = raw.cmd(b"S", b"SELECT INBOX (QRESYNC (%d 1))" % (validity + 1))
    assert lines == [*select_lines(validity, 2, 2, 1), b"S OK [READ-WRITE] Select completed\r\n"]


def test_qresync_needs_enable(server: Server, account: Callable[..., str]) -> None:
    user = account(msg(1))
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    lines = raw.cmd(b"S", b"SELECT INBOX (QRESYNC (1 1))")
    assert lines[-1].startswith(b"S BAD "), lines
    assert raw.cmd(b"S", b"SELECT INBOX")[-1].startswith(b"S OK")
    lines = raw.cmd(b"F", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
    assert lines[-1].startswith(b"F BAD "), lines
    # CHANGEDSINCE alone is CONDSTORE and needs no ENABLE.
    lines = raw.cmd(b"F", b"FETCH 1:* (FLAGS) (CHANGEDSINCE 1)")
    assert lines == [b"* 1 FETCH (FLAGS () MODSEQ (2))\r\n", b"F OK FETCH completed\r\n"]


def test_enable_answers_only_what_it_enabled(server: Server, account: Callable[..., str]) -> None:
    user = account()
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    assert raw.cmd(b"E", b"ENABLE CONDSTORE X-UNKNOWN") == [
        b"* ENABLED CONDSTORE\r\n",
        b"E OK ENABLE completed\r\n",
    ]
    assert raw.cmd(b"E", b"ENABLE CONDSTORE QRESYNC") == [
        b"* ENABLED QRESYNC\r\n",
        b"E OK ENABLE completed\r\n",
    ]


def test_condstore_unsolicited_fetch_carries_uid_and_modseq(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    user = account(msg(1), msg(2))  # MODSEQs 2, 3
    mailbox_id, _ = mailbox_of(store, user)
    raw = Raw(server.address("imaps"), tls=True)
    raw.login(user)
    lines = raw.cmd(b"S", b"SELECT INBOX (CONDSTORE)")
    assert b"* OK [HIGHESTMODSEQ 3] Highest\r\n" in lines
    store.store_flags(mailbox_id, [2], frozenset({"$Label"}), "add").result(timeout=10)
    lines = raw.cmd(b"N", b"NOOP")
    assert lines == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label)\r\n",
        b"* 2 FETCH (UID 2 FLAGS ($Label) MODSEQ (4))\r\n",
        b"N OK NOOP completed\r\n",
    ]
    # FETCH of FLAGS, and of a body that sets \Seen, carry MODSEQ once CONDSTORE is on.
    lines = raw.cmd(b"F", b"FETCH 1 (FLAGS)")
    assert lines == [b"* 1 FETCH (FLAGS () MODSEQ (2))\r\n", b"F OK FETCH completed\r\n"]
    lines = raw.cmd(b"F", b"FETCH 1 (BODY[HEADER.FIELDS (SUBJECT)])")
    assert lines == [
        b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {22}\r\nSubject: message 1\r\n\r\n"
        b" FLAGS (\\Seen) MODSEQ (5))\r\n",
        b"F OK FETCH completed\r\n",
    ]
    # With EXPUNGE (no QRESYNC) the classic responses stay.
    raw.cmd(b"D", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    lines = raw.cmd(b"X", b"EXPUNGE")
    assert lines == [b"* 1 EXPUNGE\r\n", b"X OK EXPUNGE completed\r\n"]


def test_imaplib_condstore_search_and_store(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    """A client nobody here wrote: imaplib sends the RFC 7162 commands as raw arguments."""
    user = account(msg(1), msg(2), msg(3))
    client = imaps(server, user)
    assert {"CONDSTORE", "QRESYNC"} <= set(client.capabilities)
    typ, data = client.select("INBOX")
    assert typ == "OK"
    assert client.untagged_responses.get("HIGHESTMODSEQ") == [b"4"]
    typ, data = client.uid("STORE", "2", "(UNCHANGEDSINCE 3)", "+FLAGS", "(\\Answered)")
    assert typ == "OK" and data == [b"2 (UID 2 FLAGS (\\Answered) MODSEQ (5))"]
    # UID 1 (MODSEQ 2) fails UNCHANGEDSINCE 1: no FETCH, nothing changed.
    typ, data = client.uid("STORE", "1", "(UNCHANGEDSINCE 1)", "+FLAGS", "(\\Answered)")
    assert (typ, data) == ("OK", [None])
    mailbox_id, _ = mailbox_of(store, user)
    assert {m.uid: m.flags for m in store.list_messages(mailbox_id)}[1] == frozenset()
    typ, data = client.uid("SEARCH", "MODSEQ", "5")
    assert (typ, data) == ("OK", [b"2 (MODSEQ 5)"])
    typ, data = client.uid("FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE 4)")
    assert (typ, data) == ("OK", [b"2 (UID 2 FLAGS (\\Answered) MODSEQ (5))"])
    client.logout()


def test_qresync_move_and_an_expunge_held_back_during_fetch(
    server: Server, store: Store, account: Callable[..., str]
) -> None:
    user = account(msg(1), msg(2), msg(3))  # MODSEQs 2-4
    archive, archive_validity = mailbox_of(store, user, "Archive")
    raw = session(server, user)
    raw.cmd(b"S", b"SELECT INBOX")
    # MOVE under QRESYNC (RFC 6851 §4.3 with RFC 7162): COPYUID, then VANISHED (MODSEQ 5).
    lines = raw.cmd(b"M", b"UID MOVE 1 Archive")
    assert lines == [
        b"* OK [COPYUID %d 1 1] Moved UIDs\r\n" % archive_validity,
        b"* VANISHED 1\r\n",
        b"M OK MOVE completed\r\n",
    ]
    # An expunge by another party (MODSEQ 6, 7) cannot be announced during FETCH by number
    # (RFC 9051 §7.5.1), so the FETCH is followed by HIGHESTMODSEQ below it: a client that
    # loses the connection now resynchronises from there and still hears of it.
    expunge_elsewhere(server, user, 2)
    lines = raw.cmd(b"F", b"FETCH 1:* (UID FLAGS)")
    assert lines == [
        b"* 2 FETCH (UID 3 FLAGS () MODSEQ (4))\r\n",
        b"* OK [HIGHESTMODSEQ 5] Highest\r\n",
        b"F NO [EXPUNGEISSUED] Some of the requested messages no longer exist\r\n",
    ]
    assert raw.cmd(b"N", b"NOOP") == [b"* VANISHED 2\r\n", b"N OK NOOP completed\r\n"]
    assert [m.uid for m in store.list_messages(archive)] == [1]
