"""Table tests for homing.proto.imap.grammar: framing (literals, limits), every command form
(examples from RFC 9051 §6, RFC 5258, RFC 7162, RFC 6154, RFC 3502), and every error."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from homing.proto.imap.grammar import (
    MAX_NESTING,
    NEED_DATA,
    CommandReader,
    ContinuationRequest,
    IMAPParseError,
    Limits,
    RawCommand,
    RawLiteral,
    TooBig,
    is_idle_done,
    parse_command,
    parse_sasl_response,
)
from homing.proto.imap.types import (
    STAR,
    Append,
    AppendMessage,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAtt,
    FormatError,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    Rename,
    Search,
    SearchAge,
    SearchDate,
    SearchFlag,
    SearchGroup,
    SearchHeader,
    SearchKeyword,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSet,
    SearchSize,
    SearchString,
    Section,
    Select,
    SequenceSet,
    StartTLS,
    Status,
    Store,
    Subscribe,
    Unselect,
    Unsubscribe,
    format_command,
)

Event = Command | ContinuationRequest | IMAPParseError


def drain(reader: CommandReader, out: list[Event], *, utf8: bool = False) -> None:
    """Take every event the reader has; parse commands; record errors as events."""
    while True:
        try:
            event = reader.next_event()
        except IMAPParseError as exc:
            out.append(exc)
            if exc.fatal:
                return
            continue
        if event is NEED_DATA:
            return
        if isinstance(event, RawCommand):
            try:
                out.append(parse_command(event, utf8=utf8))
            except IMAPParseError as exc:
                out.append(exc)
        else:
            out.append(event)


def events(
    data: bytes | list[bytes], limits: Limits | None = None, *, utf8: bool = False
) -> list[Event]:
    reader = CommandReader(limits)
    out: list[Event] = []
    for piece in [data] if isinstance(data, bytes) else data:
        reader.feed(piece)
        drain(reader, out, utf8=utf8)
    return out


def parse(wire: bytes, *, utf8: bool = False) -> Command:
    """The one command `wire` (without CRLF) holds; continuation requests are answered."""
    out = [e for e in events(wire + b"\r\n", utf8=utf8) if not isinstance(e, ContinuationRequest)]
    assert len(out) == 1, out
    if isinstance(out[0], IMAPParseError):
        raise out[0]
    return out[0]


def error(wire: bytes, *, utf8: bool = False) -> IMAPParseError:
    with pytest.raises(IMAPParseError) as info:
        parse(wire, utf8=utf8)
    return info.value


def seq(*ranges: int | tuple[int, int]) -> SequenceSet:
    return SequenceSet(tuple((r, r) if isinstance(r, int) else r for r in ranges))


SAVED = SequenceSet((), saved=True)
FLAGS, UID, ENVELOPE = FetchAtt("FLAGS"), FetchAtt("UID"), FetchAtt("ENVELOPE")
INTERNALDATE, SIZE = FetchAtt("INTERNALDATE"), FetchAtt("RFC822.SIZE")
SMITH = SearchNot(SearchString("FROM", b"Smith"))
FEB94 = SearchDate("SINCE", dt.date(1994, 2, 1))


# --- framing ------------------------------------------------------------------------------------


def test_commands_pipelined_in_one_read() -> None:
    assert events(b"a NOOP\r\nb CAPABILITY\r\nc LOGOUT\r\n") == [
        Noop("a"),
        Capability("b"),
        Logout("c"),
    ]


def test_bare_lf_ends_a_line() -> None:
    assert events(b"a NOOP\nb NOOP\r\n") == [Noop("a"), Noop("b")]


def test_incomplete_line_waits() -> None:
    reader = CommandReader()
    reader.feed(b"a NO")
    assert reader.next_event() is NEED_DATA
    reader.feed(b"OP\r")
    assert reader.next_event() is NEED_DATA
    reader.feed(b"\n")
    assert reader.next_event() == RawCommand((b"a NOOP",))
    assert reader.next_event() is NEED_DATA


def test_byte_by_byte_gives_the_same_commands() -> None:
    wire = b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\na2 SELECT INBOX\r\n"
    assert events([bytes([b]) for b in wire]) == events(wire)


def test_synchronising_literals_ask_for_continuation() -> None:
    # RFC 9051 §7.6 example.
    reader = CommandReader()
    reader.feed(b"A001 LOGIN {11}\r\n")
    assert reader.next_event() == ContinuationRequest("A001", "LOGIN", 11, False)
    assert reader.next_event() is NEED_DATA
    reader.feed(b"FRED FOOBAR {7}\r\n")
    assert reader.next_event() == ContinuationRequest("A001", "LOGIN", 7, False)
    reader.feed(b"fat man\r\n")
    raw = reader.next_event()
    assert raw == RawCommand(
        (b"A001 LOGIN ", b" ", b""), (RawLiteral(b"FRED FOOBAR"), RawLiteral(b"fat man"))
    )
    assert isinstance(raw, RawCommand) and raw.tag == "A001" and raw.size == 30
    assert parse_command(raw) == Login("A001", "FRED FOOBAR", b"fat man")


def test_continuation_request_names_uid_commands_and_literal8() -> None:
    reader = CommandReader()
    reader.feed(b"x1 uid search text {3}\r\n")
    assert reader.next_event() == ContinuationRequest("x1", "UID SEARCH", 3, False)
    reader = CommandReader()
    reader.feed(b"x2 APPEND INBOX ~{3}\r\n")
    assert reader.next_event() == ContinuationRequest("x2", "APPEND", 3, True)
    reader = CommandReader()
    reader.feed(b"+bad {3}\r\n")
    assert reader.next_event() == ContinuationRequest(None, "", 3, False)


def test_refused_literal_resynchronises() -> None:
    # RFC 9051 §7.6: "A044 BLURDYBLOOP {102856}" refused; the client sends the next command.
    reader = CommandReader()
    reader.feed(b"A044 BLURDYBLOOP {102856}\r\n")
    assert reader.next_event() == ContinuationRequest("A044", "BLURDYBLOOP", 102856, False)
    reader.refuse_literal()
    assert reader.next_event() is NEED_DATA
    reader.feed(b"A045 NOOP\r\n")
    assert reader.next_event() == RawCommand((b"A045 NOOP",))
    with pytest.raises(RuntimeError):
        reader.refuse_literal()


def test_literal_cannot_be_refused_once_reading_started() -> None:
    reader = CommandReader()
    reader.feed(b"a LOGIN {5}\r\n")
    assert isinstance(reader.next_event(), ContinuationRequest)
    reader.feed(b"ab")
    assert reader.next_event() is NEED_DATA
    with pytest.raises(RuntimeError):
        reader.refuse_literal()


def test_non_synchronising_and_empty_literals() -> None:
    assert events(b"a LOGIN {0+}\r\n {3+}\r\nx\r\n\r\n") == [Login("a", "", b"x\r\n")]
    reader = CommandReader()
    reader.feed(b"a LOGIN {0}\r\n")
    assert reader.next_event() == ContinuationRequest("a", "LOGIN", 0, False)
    reader.feed(b" b\r\n")
    assert parse_command(reader.next_event()) == Login("a", "", b"b")  # type: ignore[arg-type]


def test_literal_content_is_not_scanned_for_line_ends() -> None:
    assert events(b"a LOGIN {4+}\r\n{1}\n x\r\n") == [Login("a", "{1}\n", b"x")]


def test_sync_literal_over_limit_is_refused_without_continuation() -> None:
    limits = Limits(max_literal=10)
    out = events(b"a APPEND INBOX {11}\r\nb NOOP\r\n", limits)
    assert len(out) == 2 and out[1] == Noop("b")
    err = out[0]
    assert isinstance(err, TooBig) and not err.fatal
    assert err.to_bytes() == b"a BAD [TOOBIG] Literal too large\r\n"


def test_command_over_total_limit_is_refused() -> None:
    limits = Limits(max_literal=10, max_command=40)
    wire = b"a APPEND INBOX {10+}\r\n0123456789 {10+}\r\n0123456789 {10}\r\nb NOOP\r\n"
    out = events(wire, limits)
    assert isinstance(out[0], TooBig) and out[0].tag == "a" and not out[0].fatal
    assert out[1:] == [Noop("b")]


def test_nonsync_literal_over_limit_is_fatal() -> None:
    reader = CommandReader(Limits(max_literal=10))
    reader.feed(b"a APPEND INBOX {11+}\r\n0123456789A\r\nb NOOP\r\n")
    with pytest.raises(TooBig) as info:
        reader.next_event()
    assert info.value.fatal and info.value.tag == "a"
    assert info.value.to_bytes() == b"* BYE [TOOBIG] Literal too large\r\n"
    assert reader.buffered == 0
    reader.feed(b"c NOOP\r\n")  # ignored from now on
    assert reader.buffered == 0
    with pytest.raises(TooBig):
        reader.next_event()
    with pytest.raises(TooBig):
        reader.next_line()


def test_huge_announcement_is_too_big_not_an_overflow() -> None:
    out = events(b"a LOGIN {99999999999999999999999999}\r\nb NOOP\r\n")
    assert isinstance(out[0], TooBig) and out[1] == Noop("b")
    out = events(b"a LOGIN {000000000000000000000000000000000000005+}\r\nhello x\r\n")
    assert out == [Login("a", "hello", b"x")]


def test_literal_minus_skips_large_nonsync_literal_and_answers_toobig() -> None:
    # RFC 7888 §5: LITERAL- servers take non-synchronising literals up to 4096 octets; a larger
    # one within our means is read, thrown away, and the command answered BAD [TOOBIG].
    limits = Limits(max_nonsync_literal=4096)
    big = b"x" * 5000
    wire = b"a APPEND INBOX {5000+}\r\n" + big + b" {3+}\r\nabc\r\nb NOOP\r\n"
    for pieces in ([wire], [wire[i : i + 7] for i in range(0, len(wire), 7)]):
        out = events(pieces, limits)
        assert len(out) == 2 and out[1] == Noop("b")
        assert isinstance(out[0], TooBig) and not out[0].fatal
        assert out[0].to_bytes() == b"a BAD [TOOBIG] Literal too large\r\n"
    assert events(b"a LOGIN {4096+}\r\n" + b"y" * 4096 + b" z\r\n", limits) == [
        Login("a", "y" * 4096, b"z")
    ]


def test_long_line_is_thrown_away_with_bounded_memory() -> None:
    limits = Limits(max_line=1024)
    reader = CommandReader(limits)
    out: list[Event] = []
    reader.feed(b"tag1 SEARCH TEXT ")
    for _ in range(1000):
        reader.feed(b"x" * 1000)
        drain(reader, out)
        assert reader.buffered <= limits.max_line + 1
    assert out == []
    reader.feed(b"\r\ntag2 NOOP\r\n")
    drain(reader, out)
    assert len(out) == 2 and out[1] == Noop("tag2")
    assert isinstance(out[0], TooBig) and out[0].tag == "tag1" and not out[0].fatal
    assert out[0].to_bytes() == b"tag1 BAD [TOOBIG] Command line too long\r\n"


def test_line_budget_covers_all_lines_of_a_command() -> None:
    limits = Limits(max_line=30)
    assert events(b"a LOGIN {1+}\r\nx {1+}\r\ny\r\n", limits) == [Login("a", "x", b"y")]
    out = events(b"a LOGIN {1+}\r\nx {1+}\r\ny" + b" " * 20 + b"\r\nb NOOP\r\n", limits)
    assert isinstance(out[0], TooBig) and out[0].tag == "a" and out[1:] == [Noop("b")]


def test_long_line_ending_in_literals() -> None:
    limits = Limits(max_line=100, max_literal=1000)
    long = b"a LOGIN " + b"u" * 200
    # Synchronising: the client waits for "+", gets BAD, and sends no literal.
    out = events(long + b" {5}\r\nb NOOP\r\n", limits)
    assert isinstance(out[0], TooBig) and not out[0].fatal and out[1:] == [Noop("b")]
    # Non-synchronising within max_literal: the literal and the rest are skipped.
    out = events(long + b" {5+}\r\nhello rest {2+}\r\nxx\r\nb NOOP\r\n", limits)
    assert isinstance(out[0], TooBig) and not out[0].fatal and out[1:] == [Noop("b")]
    # Non-synchronising beyond max_literal: nothing to resynchronise on.
    out = events(long + b" {5000+}\r\n", limits)
    assert len(out) == 1 and isinstance(out[0], TooBig) and out[0].fatal


def test_next_line_reads_raw_lines() -> None:
    reader = CommandReader(Limits(max_line=16))
    reader.feed(b"a IDLE\r\nDO")
    assert reader.next_event() == RawCommand((b"a IDLE",))
    assert reader.next_line() is NEED_DATA
    reader.feed(b"NE\r\n{5}\r\nb NOOP\r\n")
    assert reader.next_line() == b"DONE"
    assert reader.next_line() == b"{5}"  # no literal processing in raw lines
    assert reader.next_event() == RawCommand((b"b NOOP",))
    reader.feed(b"A" * 40)
    assert reader.next_line() is NEED_DATA
    assert reader.buffered == 0
    reader.feed(b"B" * 40 + b"\r\nc NOOP\r\n")
    with pytest.raises(TooBig) as info:
        reader.next_line()
    assert info.value.tag is None and not info.value.fatal
    assert reader.next_event() == RawCommand((b"c NOOP",))


def test_next_line_only_between_commands() -> None:
    reader = CommandReader()
    reader.feed(b"a LOGIN {3}\r\n")
    reader.next_event()
    with pytest.raises(RuntimeError):
        reader.next_line()


def test_reset_forgets_buffered_input() -> None:
    # RFC 9051 §6.2.1 / ARCHITECTURE rule 2: nothing received before the TLS handshake is used.
    reader = CommandReader()
    reader.feed(b"a STARTTLS\r\nb LOGIN injected command\r\nc LOG")
    assert reader.next_event() == RawCommand((b"a STARTTLS",))
    assert reader.buffered > 0
    reader.reset()
    assert reader.buffered == 0
    reader.feed(b"d NOOP\r\n")
    assert reader.next_event() == RawCommand((b"d NOOP",))


def test_idle_done_and_sasl_responses() -> None:
    assert is_idle_done(b"DONE") and is_idle_done(b"done")
    assert not is_idle_done(b"DONE ") and not is_idle_done(b"a NOOP")
    assert parse_sasl_response(b"dGVzdA==") == b"test"
    assert parse_sasl_response(b"") == b""
    assert parse_sasl_response(b"*") is None
    for bad in (b"dGVzdA", b"dGVzdA=", b"dG Vz", b"====", b"dGVzdA==x"):
        with pytest.raises(IMAPParseError) as info:
            parse_sasl_response(bad, "a1")
        assert info.value.tag == "a1"


# --- commands -----------------------------------------------------------------------------------

COMMANDS: list[tuple[bytes, Command]] = [
    # Any state, not authenticated (RFC 9051 §6.1, §6.2)
    (b"a CAPABILITY", Capability("a")),
    (b"a noop", Noop("a")),
    (b"a LOGOUT", Logout("a")),
    (b"a000 starttls", StartTLS("a000")),
    (b"A001 AUTHENTICATE SCRAM-SHA-256", Authenticate("A001", "SCRAM-SHA-256")),
    (
        b"A001 AUTHENTICATE PLAIN dGVzdAB0ZXN0AHRlc3Q=",  # RFC 4959 SASL-IR
        Authenticate("A001", "PLAIN", b"test\x00test\x00test"),
    ),
    (b"a AUTHENTICATE EXTERNAL =", Authenticate("a", "EXTERNAL", b"")),
    (b"a001 LOGIN SMITH SESAME", Login("a001", "SMITH", b"SESAME")),
    (b'a LOGIN "fred \\"the\\" user" "pa\\\\ss"', Login("a", 'fred "the" user', b"pa\\ss")),
    (b"a LOGIN {5+}\r\nj\xc3\xb8rn {4+}\r\np\xe6ss", Login("a", "jørn", b"p\xe6ss")),
    (b"a ID NIL", Id("a", None)),
    (b'a ID ("name" "sodr" "version" "19.34")', Id("a", (("name", "sodr"), ("version", "19.34")))),
    (b'a ID ("os" NIL)', Id("a", (("os", None),))),
    (b"a ID ()", Id("a", ())),
    # Authenticated state (RFC 9051 §6.3)
    (b"babc ENABLE IMAP4rev2", Enable("babc", ("IMAP4REV2",))),
    (b"a ENABLE CONDSTORE utf8=accept", Enable("a", ("CONDSTORE", "UTF8=ACCEPT"))),
    (b"a002 select inbox", Select("a002", "INBOX")),
    (b'a SELECT "iNbOx"', Select("a", "INBOX")),
    (b"A932 EXAMINE blurdybloop", Select("A932", "blurdybloop", readonly=True)),
    (b"a SELECT INBOX (CONDSTORE)", Select("a", "INBOX", condstore=True)),
    (
        b"A142 SELECT INBOX (QRESYNC (3857529045 20010715194032001 1:198))",  # RFC 7162 §6
        Select("A142", "INBOX", qresync=QResync(3857529045, 20010715194032001, seq((1, 198)))),
    ),
    (
        b"B202 EXAMINE INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541 "
        b"(1,3,4:5 41,43,45:46)))",
        Select(
            "B202",
            "INBOX",
            readonly=True,
            qresync=QResync(
                67890007,
                20050715194045000,
                seq(41, (43, 211), (214, 541)),
                (seq(1, 3, (4, 5)), seq(41, 43, (45, 46))),
            ),
        ),
    ),
    (
        b"a SELECT x (CONDSTORE QRESYNC (1 2 (1:2 3:4)))",
        Select("a", "x", condstore=True, qresync=QResync(1, 2, None, (seq((1, 2)), seq((3, 4))))),
    ),
    (b"A003 CREATE owatagusiam/", Create("A003", "owatagusiam/")),
    (
        b"t1 CREATE MySpecial (USE (\\drafts \\Sent))",
        Create("t1", "MySpecial", ("\\Drafts", "\\Sent")),
    ),
    (b"a CREATE x (USE ())", Create("a", "x", ())),
    (b"a CREATE x (USE (\\Important))", Create("a", "x", ("\\Important",))),
    (b"A683 DELETE blurdybloop", Delete("A683", "blurdybloop")),
    (b"A682 RENAME blurdybloop sarasoop", Rename("A682", "blurdybloop", "sarasoop")),
    (b"A002 SUBSCRIBE #news.comp.mail.mime", Subscribe("A002", "#news.comp.mail.mime")),
    (b"A002 UNSUBSCRIBE #news.comp.mail.mime", Unsubscribe("A002", "#news.comp.mail.mime")),
    (b"A001 NAMESPACE", Namespace("A001")),
    (b'A002 CREATE "INBOX.Sent Mail"', Create("A002", "INBOX.Sent Mail")),
    (b"a CREATE Entw&APw-rfe", Create("a", "Entwürfe")),
    (b"a CREATE R&-D", Create("a", "R&D")),
    (
        b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)",
        Status("A042", "blurdybloop", ("UIDNEXT", "MESSAGES")),
    ),
    (
        b"a STATUS INBOX (size deleted highestmodseq recent appendlimit mailboxid unseen "
        b"uidvalidity)",
        Status(
            "a",
            "INBOX",
            (
                "SIZE",
                "DELETED",
                "HIGHESTMODSEQ",
                "RECENT",
                "APPENDLIMIT",
                "MAILBOXID",
                "UNSEEN",
                "UIDVALIDITY",
            ),
        ),
    ),
    (b"a IDLE", Idle("a")),
    # LIST (RFC 9051 §6.3.9.8, RFC 5258 §5, RFC 6154 §5)
    (b'A101 LIST "" ""', List("A101", "", ("",))),
    (b'A102 LIST #news.comp.mail.misc ""', List("A102", "#news.comp.mail.misc", ("",))),
    (b'A103 LIST /usr/staff/jones ""', List("A103", "/usr/staff/jones", ("",))),
    (b"A202 LIST ~/Mail/ %", List("A202", "~/Mail/", ("%",))),
    (b'A01 LIST "" "*"', List("A01", "", ("*",))),
    (b'A02 LIST (SUBSCRIBED) "" "*"', List("A02", "", ("*",), ("SUBSCRIBED",))),
    (b'A03 LIST () "" "%" RETURN (CHILDREN)', List("A03", "", ("%",), (), ("CHILDREN",))),
    (
        b'A04 LIST (REMOTE) "" "%" RETURN (CHILDREN)',
        List("A04", "", ("%",), ("REMOTE",), ("CHILDREN",)),
    ),
    (b'A05 LIST (REMOTE SUBSCRIBED) "" "*"', List("A05", "", ("*",), ("REMOTE", "SUBSCRIBED"))),
    (
        b'A06 LIST (REMOTE) "" "*" RETURN (SUBSCRIBED)',
        List("A06", "", ("*",), ("REMOTE",), ("SUBSCRIBED",)),
    ),
    (
        b'C04 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)',
        List("C04", "", ("%",), ("SUBSCRIBED", "RECURSIVEMATCH"), ("CHILDREN",)),
    ),
    (
        b'D03 LIST (RECURSIVEMATCH SUBSCRIBED) "" "*2"',
        List("D03", "", ("*2",), ("RECURSIVEMATCH", "SUBSCRIBED")),
    ),
    (b'a1 LIST "" ("foo")', List("a1", "", ("foo",), pattern_list=True)),
    (b'a2 LIST (SUBSCRIBED) "" "foo/*"', List("a2", "", ("foo/*",), ("SUBSCRIBED",))),
    (
        b'a3 LIST (SUBSCRIBED RECURSIVEMATCH) "" foo RETURN (CHILDREN)',
        List("a3", "", ("foo",), ("SUBSCRIBED", "RECURSIVEMATCH"), ("CHILDREN",)),
    ),
    (b'a1 LIST (REMOTE) "" *', List("a1", "", ("*",), ("REMOTE",))),
    (b'a3.1 LIST "" (% music/rock)', List("a3.1", "", ("%", "music/rock"), pattern_list=True)),
    (
        b'A01 LIST "" % RETURN (STATUS (MESSAGES UNSEEN))',
        List("A01", "", ("%",), None, ("STATUS",), ("MESSAGES", "UNSEEN")),
    ),
    (
        b'A02 LIST (SUBSCRIBED RECURSIVEMATCH) "" % RETURN (STATUS (MESSAGES))',
        List("A02", "", ("%",), ("SUBSCRIBED", "RECURSIVEMATCH"), ("STATUS",), ("MESSAGES",)),
    ),
    (
        b'A06 LIST "" ("INBOX" "Drafts" Sent/%) RETURN (CHILDREN SUBSCRIBED)',
        List(
            "A06",
            "",
            ("INBOX", "Drafts", "Sent/%"),
            None,
            ("CHILDREN", "SUBSCRIBED"),
            pattern_list=True,
        ),
    ),
    (b't1 LIST "" "%" RETURN (SPECIAL-USE)', List("t1", "", ("%",), None, ("SPECIAL-USE",))),
    (b't3 LIST (SPECIAL-USE) "" "*"', List("t3", "", ("*",), ("SPECIAL-USE",))),
    (
        b'a LIST (SPECIAL-USE RECURSIVEMATCH) "" *',
        List("a", "", ("*",), ("SPECIAL-USE", "RECURSIVEMATCH")),
    ),
    (b'a LIST "" inbox]', List("a", "", ("inbox]",))),  # resp-specials are list-chars
    (b'a LIST "" &AOk-*', List("a", "", ("é*",))),
    (b'A002 LSUB "#news." "comp.mail.*"', Lsub("A002", "#news.", "comp.mail.*")),
    # APPEND (RFC 9051 §6.3.12, RFC 3502 MULTIAPPEND, RFC 3516 BINARY, RFC 6855 UTF8)
    (
        b"A003 APPEND saved-messages (\\Seen) {5+}\r\nhello",
        Append("A003", "saved-messages", (AppendMessage(b"hello", ("\\Seen",)),)),
    ),
    (
        b'a APPEND INBOX " 7-Feb-1994 21:52:25 -0800" {2+}\r\nhi',
        Append(
            "a",
            "INBOX",
            (
                AppendMessage(
                    b"hi",
                    (),
                    dt.datetime(1994, 2, 7, 21, 52, 25, tzinfo=dt.timezone(dt.timedelta(hours=-8))),
                ),
            ),
        ),
    ),
    (
        b'A003 APPEND saved-messages (\\Seen $Junk) "07-Feb-1994 21:52:25 +0130" {3}\r\none '
        b"(\\Draft) {3}\r\ntwo ~{4}\r\nt\x00o3 {0}\r\n",
        Append(
            "A003",
            "saved-messages",
            (
                AppendMessage(
                    b"one",
                    ("\\Seen", "$Junk"),
                    dt.datetime(
                        1994, 2, 7, 21, 52, 25, tzinfo=dt.timezone(dt.timedelta(minutes=90))
                    ),
                ),
                AppendMessage(b"two", ("\\Draft",)),
                AppendMessage(b"t\x00o3", binary=True),
                AppendMessage(b""),
            ),
        ),
    ),
    (
        b"a APPEND INBOX () UTF8 (~{4+}\r\n\xc3\xa9t\xc3)",
        Append("a", "INBOX", (AppendMessage(b"\xc3\xa9t\xc3", binary=True, utf8=True),)),
    ),
    # Selected state (RFC 9051 §6.4)
    (b"A341 CLOSE", Close("A341")),
    (b"A342 UNSELECT", Unselect("A342")),
    (b"FXXZ CHECK", Check("FXXZ")),
    (b"A202 EXPUNGE", Expunge("A202")),
    (b"A003 UID EXPUNGE 3000:3002", Expunge("A003", seq((3000, 3002)))),
    (b"A003 COPY 2:4 MEETING", Copy("A003", seq((2, 4)), "MEETING")),
    (b'E283 COPY $ "Other Messages"', Copy("E283", SAVED, "Other Messages")),
    (b"A003 MOVE 2:4 MEETING", Move("A003", seq((2, 4)), "MEETING")),
    (b"A004 UID MOVE 42:69 foo", Move("A004", seq((42, 69)), "foo", uid=True)),
    (b"A004 UID COPY 1:* INBOX", Copy("A004", seq((1, STAR)), "INBOX", uid=True)),
    # FETCH (RFC 9051 §6.4.5, §8; RFC 7162 §3.1.4, §3.2.6)
    (
        b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])",
        Fetch(
            "A654",
            seq((2, 4)),
            (FLAGS, FetchAtt("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM")))),
        ),
    ),
    (
        b"a003 fetch 12 full",
        Fetch("a003", seq(12), (FLAGS, INTERNALDATE, SIZE, ENVELOPE, FetchAtt("BODY"))),
    ),
    (b"a FETCH 1 ALL", Fetch("a", seq(1), (FLAGS, INTERNALDATE, SIZE, ENVELOPE))),
    (b"a FETCH 1 fast", Fetch("a", seq(1), (FLAGS, INTERNALDATE, SIZE))),
    (
        b"a004 fetch 12 body[header]",
        Fetch("a004", seq(12), (FetchAtt("BODY", Section((), "HEADER")),)),
    ),
    (
        b"A283 FETCH $ (UID INTERNALDATE FLAGS BODY.PEEK[HEADER])",
        Fetch(
            "A283",
            SAVED,
            (UID, INTERNALDATE, FLAGS, FetchAtt("BODY", Section((), "HEADER"), peek=True)),
        ),
    ),
    (b"a FETCH 1 BODY[]<0.2048>", Fetch("a", seq(1), (FetchAtt("BODY", Section(), (0, 2048)),))),
    (
        b"a FETCH 1:* (ENVELOPE BODYSTRUCTURE RFC822.SIZE UID RFC822 RFC822.HEADER RFC822.TEXT "
        b"MODSEQ)",
        Fetch(
            "a",
            seq((1, STAR)),
            tuple(
                FetchAtt(n)
                for n in (
                    "ENVELOPE",
                    "BODYSTRUCTURE",
                    "RFC822.SIZE",
                    "UID",
                    "RFC822",
                    "RFC822.HEADER",
                    "RFC822.TEXT",
                    "MODSEQ",
                )
            ),
        ),
    ),
    (
        b"a FETCH 2,4:7,9,12:* (BODY[1.2.MIME] BODY.PEEK[3.HEADER.FIELDS.NOT (Received {4+}\r\n"
        b"X-Yz)]<10.5> BODY[2.TEXT] BODY[4.1])",
        Fetch(
            "a",
            seq(2, (4, 7), 9, (12, STAR)),
            (
                FetchAtt("BODY", Section((1, 2), "MIME")),
                FetchAtt(
                    "BODY",
                    Section((3,), "HEADER.FIELDS.NOT", ("Received", "X-Yz")),
                    (10, 5),
                    peek=True,
                ),
                FetchAtt("BODY", Section((2,), "TEXT")),
                FetchAtt("BODY", Section((4, 1))),
            ),
        ),
    ),
    (
        b"a FETCH *:4 (BINARY[1.2] BINARY.PEEK[]<0.100> BINARY.SIZE[3] binary.size[])",
        Fetch(
            "a",
            seq((STAR, 4)),
            (
                FetchAtt("BINARY", Section((1, 2))),
                FetchAtt("BINARY", Section(), (0, 100), peek=True),
                FetchAtt("BINARY.SIZE", Section((3,))),
                FetchAtt("BINARY.SIZE", Section()),
            ),
        ),
    ),
    (b"a FETCH 4294967295 UID", Fetch("a", seq(4294967295), (UID,))),
    (
        b"s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)",
        Fetch("s100", seq((1, STAR)), (FLAGS,), uid=True, changed_since=12345),
    ),
    (
        b"s101 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        Fetch("s101", seq((300, 500)), (FLAGS,), uid=True, changed_since=12345, vanished=True),
    ),
    # STORE (RFC 9051 §6.4.6, RFC 7162 §3.1.3)
    (b"A003 STORE 2:4 +FLAGS (\\Deleted)", Store("A003", seq((2, 4)), "add", ("\\Deleted",))),
    (b"a005 store 12 +flags \\deleted", Store("a005", seq(12), "add", ("\\Deleted",))),
    (
        b"F284 STORE $ +FLAGS.Silent (\\Deleted)",
        Store("F284", SAVED, "add", ("\\Deleted",), silent=True),
    ),
    (b"a STORE 1 FLAGS ()", Store("a", seq(1), "replace", ())),
    (
        b"a STORE 1 -FLAGS \\Seen $Forwarded foo",
        Store("a", seq(1), "remove", ("\\Seen", "$Forwarded", "foo")),
    ),
    (
        b"a UID STORE 1 FLAGS.SILENT (\\FLAGGED)",
        Store("a", seq(1), "replace", ("\\Flagged",), silent=True, uid=True),
    ),
    (
        b"A150 STORE 1:2 (UNCHANGEDSINCE 96) +FLAGS.SILENT \\Seen",
        Store("A150", seq((1, 2)), "add", ("\\Seen",), silent=True, unchanged_since=96),
    ),
    (
        b"a STORE 7 (UNCHANGEDSINCE 0) -FLAGS (\\X)",
        Store("a", seq(7), "remove", ("\\X",), unchanged_since=0),
    ),
]

FLAG_KEYS = [
    *("ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED"),
    *("UNDRAFT", "UNFLAGGED", "UNSEEN", "NEW", "OLD", "RECENT"),
]
SEARCHES: list[tuple[bytes, Command]] = [
    # RFC 9051 §6.4.4 examples
    (
        b'A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"',
        Search("A282", (SearchFlag("FLAGGED"), FEB94, SMITH), None, ("MIN", "COUNT")),
    ),
    (
        b'A283 SEARCH RETURN () FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"',
        Search("A283", (SearchFlag("FLAGGED"), FEB94, SMITH), None, ()),
    ),
    (
        b'A284 SEARCH TEXT "string not in mailbox"',
        Search("A284", (SearchString("TEXT", b"string not in mailbox"),)),
    ),
    (
        "A285 SEARCH CHARSET UTF-8 TEXT {12}\r\nотпуск".encode(),
        Search("A285", (SearchString("TEXT", "отпуск".encode()),), "UTF-8"),
    ),
    (b"A284 SEARCH RETURN (MIN) UNSEEN", Search("A284", (SearchFlag("UNSEEN"),), None, ("MIN",))),
    (
        b"A285 UID SEARCH RETURN (MIN MAX) 1:5000",
        Search("A285", (SearchSet(seq((1, 5000))),), None, ("MIN", "MAX"), uid=True),
    ),
    (
        b"A286 SEARCH RETURN (COUNT) DELETED",
        Search("A286", (SearchFlag("DELETED"),), None, ("COUNT",)),
    ),
    (
        b"A301 UID SEARCH UID $ SMALLER 4096",
        Search("A301", (SearchSet(SAVED, uid=True), SearchSize("SMALLER", 4096)), uid=True),
    ),
    (
        b"A301 UID SEARCH $ SMALLER 4096",
        Search("A301", (SearchSet(SAVED), SearchSize("SMALLER", 4096)), uid=True),
    ),
    (
        "P283 SEARCH CHARSET UTF-8 (OR $ 1,3000:3021) TEXT {8+}\r\nмать".encode(),
        Search(
            "P283",
            (
                SearchGroup((SearchOr(SearchSet(SAVED), SearchSet(seq(1, (3000, 3021)))),)),
                SearchString("TEXT", "мать".encode()),
            ),
            "UTF-8",
        ),
    ),
    (
        b"F282 SEARCH RETURN (SAVE) KEYWORD $Junk",
        Search("F282", (SearchKeyword("$Junk"),), None, ("SAVE",)),
    ),
    (
        b'C285 SEARCH RETURN (MAX SAVE MIN) SINCE 12-Feb-2006 NOT FROM "Smith"',
        Search(
            "C285", (SearchDate("SINCE", dt.date(2006, 2, 12)), SMITH), None, ("MAX", "SAVE", "MIN")
        ),
    ),
    # RFC 3501 §6.4.4 examples
    (
        b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"',
        Search("A282", (SearchFlag("FLAGGED"), FEB94, SMITH)),
    ),
    (
        b'A283 SEARCH TEXT "string not in mailbox"',
        Search("A283", (SearchString("TEXT", b"string not in mailbox"),)),
    ),
    (
        b"A284 SEARCH CHARSET UTF-8 TEXT {6+}\r\nXXXXXX",
        Search("A284", (SearchString("TEXT", b"XXXXXX"),), "UTF-8"),
    ),
    (b'a SEARCH CHARSET "US-ASCII" ALL', Search("a", (SearchFlag("ALL"),), "US-ASCII")),
    # Every key
    (
        b"a SEARCH " + " ".join(FLAG_KEYS).encode(),
        Search(
            "a",
            tuple(SearchFlag(k) for k in FLAG_KEYS),
        ),
    ),
    (
        b'a SEARCH BCC b BODY "x y" CC {1+}\r\nc FROM f SUBJECT "" TEXT t TO to',
        Search(
            "a",
            (
                SearchString("BCC", b"b"),
                SearchString("BODY", b"x y"),
                SearchString("CC", b"c"),
                SearchString("FROM", b"f"),
                SearchString("SUBJECT", b""),
                SearchString("TEXT", b"t"),
                SearchString("TO", b"to"),
            ),
        ),
    ),
    (
        b'a SEARCH BEFORE 1-Jan-2000 ON "31-dec-1999" SINCE 01-FEB-2020 SENTBEFORE 29-Feb-2024 '
        b"SENTON 9-Sep-0999 SENTSINCE 1-Jan-0001",
        Search(
            "a",
            (
                SearchDate("BEFORE", dt.date(2000, 1, 1)),
                SearchDate("ON", dt.date(1999, 12, 31)),
                SearchDate("SINCE", dt.date(2020, 2, 1)),
                SearchDate("SENTBEFORE", dt.date(2024, 2, 29)),
                SearchDate("SENTON", dt.date(999, 9, 9)),
                SearchDate("SENTSINCE", dt.date(1, 1, 1)),
            ),
        ),
    ),
    (
        b'a SEARCH HEADER Message-ID "<x@y>" HEADER "X-Spam" "" KEYWORD $MDNSent UNKEYWORD foo',
        Search(
            "a",
            (
                SearchHeader("Message-ID", b"<x@y>"),
                SearchHeader("X-Spam", b""),
                SearchKeyword("$MDNSent"),
                SearchKeyword("foo", negated=True),
            ),
        ),
    ),
    (
        b"a SEARCH LARGER 0 SMALLER 9223372036854775807 OLDER 3600 YOUNGER 1",
        Search(
            "a",
            (
                SearchSize("LARGER", 0),
                SearchSize("SMALLER", 2**63 - 1),
                SearchAge("OLDER", 3600),
                SearchAge("YOUNGER", 1),
            ),
        ),
    ),
    (
        b"a SEARCH UID 1:* 5 *",
        Search("a", (SearchSet(seq((1, STAR)), uid=True), SearchSet(seq(5)), SearchSet(seq(STAR)))),
    ),
    (
        b"a SEARCH OR (SEEN FLAGGED) NOT (OR DRAFT NOT DELETED) (((ALL)))",
        Search(
            "a",
            (
                SearchOr(
                    SearchGroup((SearchFlag("SEEN"), SearchFlag("FLAGGED"))),
                    SearchNot(
                        SearchGroup(
                            (SearchOr(SearchFlag("DRAFT"), SearchNot(SearchFlag("DELETED"))),)
                        )
                    ),
                ),
                SearchGroup((SearchGroup((SearchGroup((SearchFlag("ALL"),)),)),)),
            ),
        ),
    ),
    # RFC 7162 §3.1.5
    (b"a SEARCH MODSEQ 620162338", Search("a", (SearchModSeq(620162338),))),
    (
        b"a SEARCH OR NOT MODSEQ 720162338 LARGER 50000",
        Search("a", (SearchOr(SearchNot(SearchModSeq(720162338)), SearchSize("LARGER", 50000)),)),
    ),
    (
        b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338',
        Search("a", (SearchModSeq(620162338, "/flags/\\draft", "all"),)),
    ),
    (
        b'a SEARCH MODSEQ "/flags/$mdnsent" PRIV 0',
        Search("a", (SearchModSeq(0, "/flags/$mdnsent", "priv"),)),
    ),
]


@pytest.mark.parametrize(("wire", "expected"), COMMANDS + SEARCHES)
def test_command(wire: bytes, expected: Command) -> None:
    assert parse(wire) == expected


def test_utf8_mode_mailboxes_and_quoted_strings() -> None:
    # RFC 6855 §3 / RFC 9051 §5.1: after ENABLE UTF8=ACCEPT or IMAP4rev2, names are UTF-8.
    assert parse('a SELECT "Entwürfe"'.encode(), utf8=True) == Select("a", "Entwürfe")
    assert parse(b"a SELECT R&D", utf8=True) == Select("a", "R&D")  # "&" is just "&"
    assert parse(b"a SELECT Entw&APw-rfe", utf8=True) == Select("a", "Entw&APw-rfe")
    assert parse('a SEARCH SUBJECT "café"'.encode(), utf8=True) == Search(
        "a", (SearchString("SUBJECT", "café".encode()),)
    )
    assert parse('a LIST "" "Ü*"'.encode(), utf8=True) == List("a", "", ("Ü*",))
    assert parse(b"a SELECT {5+}\r\n\xc3\xa9t\xc3\xa9", utf8=True) == Select("a", "été")


def test_fetch_macros_expand_like_the_rfc() -> None:
    full = parse(b"a FETCH 1 FULL")
    assert isinstance(full, Fetch)
    assert [a.name for a in full.attributes] == [
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODY",
    ]


# --- errors -------------------------------------------------------------------------------------

ERRORS: list[tuple[bytes, str | None, str]] = [
    # tag and command name
    (b"", None, "Empty command line"),
    (b"+a NOOP", None, "Invalid tag"),
    (b'a"b NOOP', None, "Invalid tag"),
    (b"(a NOOP", None, "Invalid tag"),
    (b"a\xff NOOP", None, "Invalid tag"),
    (b"a", "a", "Missing command"),
    (b"a ", "a", "Expected a command name"),
    (b"a BLURDYBLOOP", "a", "Unknown command"),
    (b"a  NOOP", "a", "Expected a command name"),  # SP is exactly one space (RFC 9051 §9)
    (b"a NOOP ", "a", "Unexpected extra arguments"),
    (b"a\tNOOP", None, "Invalid tag"),
    (b"a NOOP\r", "a", "Unexpected extra arguments"),  # a CR alone is not a line end
    (b"a NOOP x", "a", "Unexpected extra arguments"),
    (b"a UID NOOP", "a", "Unknown UID command"),
    (b"a UID", "a", "Missing argument"),
    # strings
    (b"a LOGIN", "a", "Missing argument"),
    (b"a LOGIN x", "a", "Missing argument"),
    (b'a LOGIN "x', "a", "Invalid quoted string"),
    (b'a LOGIN "a\\b" x', "a", "Invalid quoted string"),  # only \\ and \" are escapes
    (b'a LOGIN "a\\" x', "a", "Invalid quoted string"),
    (b'a LOGIN "a\rb" x', "a", "Invalid character in quoted string"),
    (b'a LOGIN "a\x00b" x', "a", "Invalid character in quoted string"),
    (b'a LOGIN "\xc3\xa9" x', "a", "8-bit characters in a quoted string need UTF8=ACCEPT"),
    (b"a LOGIN x\xc3\xa9 y", "a", "Expected a space"),  # 8-bit is not an ATOM-CHAR
    (b"a LOGIN (x) y", "a", "Expected a string"),
    (b"a LOGIN {3+}\r\na\x00b x", "a", "NUL in literal"),
    (b"a LOGIN ~{3+}\r\nabc x", "a", "literal8 is only allowed in APPEND"),
    (b"a LOGIN {2+}\r\n\xff\xfe x", "a", "User name is not valid UTF-8"),
    (b"a LOGIN x y {1+}\r\nz", "a", "Unexpected extra arguments"),
    (b"a NOOP {1+}\r\nz", "a", "Unexpected extra arguments"),
    (b"a {4+}\r\nNOOP", "a", "Expected a command name"),
    # mailbox names
    (b"a SELECT &AGE-", "a", "Mailbox name is not valid modified UTF-7"),
    (b"a SELECT R&D", "a", "Mailbox name is not valid modified UTF-7"),
    (b"a SELECT {2+}\r\n\xc3\xa9", "a", "Mailbox name is not valid modified UTF-7"),
    (b'a LIST "" R&D*', "a", "Mailbox name is not valid modified UTF-7"),
    (b"a SELECT INBOX ()", "a", "Expected a SELECT parameter"),
    (b"a SELECT INBOX (FOO)", "a", "Unknown or repeated SELECT parameter"),
    (b"a SELECT INBOX (CONDSTORE CONDSTORE)", "a", "Unknown or repeated SELECT parameter"),
    (b"a SELECT INBOX (QRESYNC (0 1))", "a", "Invalid a UIDVALIDITY"),
    (b"a SELECT INBOX (QRESYNC (1 0))", "a", "A mod-sequence out of range"),
    (b"a SELECT INBOX (QRESYNC (1 1 1:*))", "a", "'*' and '$' are not allowed in QRESYNC sets"),
    (b"a SELECT INBOX (QRESYNC (1 1 (1:2)))", "a", "Expected a space"),
    (b"a SELECT INBOX CONDSTORE", "a", "Expected '('"),
    (b"a CREATE x (USE (Trash))", "a", "Expected a special-use attribute"),
    (b"a CREATE x (FOO)", "a", "Unknown or repeated CREATE parameter"),
    (b"a CREATE x ()", "a", "Expected a CREATE parameter"),
    (b"a RENAME x", "a", "Missing argument"),
    (b"a STATUS INBOX ()", "a", "Expected a status item"),
    (b"a STATUS INBOX (FOO)", "a", "Unknown status item"),
    (b"a STATUS INBOX MESSAGES", "a", "Expected '('"),
    # LIST
    (b'a LIST (FOO) "" *', "a", "Unknown LIST selection option"),
    (b'a LIST (RECURSIVEMATCH) "" *', "a", "RECURSIVEMATCH needs another selection option"),
    (b'a LIST (REMOTE RECURSIVEMATCH) "" *', "a", "RECURSIVEMATCH needs another selection option"),
    (b'a LIST "" * RETURN (FOO)', "a", "Unknown or repeated LIST return option"),
    (b'a LIST "" * RETURN (CHILDREN CHILDREN)', "a", "Unknown or repeated LIST return option"),
    (b'a LIST "" * RETURN (STATUS ())', "a", "Expected a status item"),
    (b'a LIST "" * FOO (CHILDREN)', "a", "Expected RETURN"),
    (b'a LIST "" ()', "a", "Expected a mailbox pattern"),
    (b'a LIST ""', "a", "Missing argument"),
    # APPEND
    (b'a APPEND INBOX "hello"', "a", "Invalid date-time"),
    (b"a APPEND INBOX", "a", "Missing argument"),
    (b"a APPEND INBOX (\\Seen)", "a", "Missing argument"),
    (b'a APPEND INBOX "31-Feb-2020 00:00:00 +0000" {1+}\r\nx', "a", "Invalid date-time"),
    (b'a APPEND INBOX "1-Feb-2020 00:00:00 +0000" {1+}\r\nx', "a", "Invalid date-time"),
    (b'a APPEND INBOX "01-Feb-2020 24:00:00 +0000" {1+}\r\nx', "a", "Invalid date-time"),
    (b'a APPEND INBOX "01-Feb-2020 00:00:00 +0060" {1+}\r\nx', "a", "Invalid date-time"),
    (b'a APPEND INBOX "01-Feb-2020 00:00:00 +2400" {1+}\r\nx', "a", "Invalid date-time"),
    (b'a APPEND INBOX "01-Foo-2020 00:00:00 +0000" {1+}\r\nx', "a", "Invalid date-time"),
    (b"a APPEND INBOX {1+}\r\n\x00", "a", "NUL in literal"),
    (b"a APPEND INBOX UTF8 ({1+}\r\nx)", "a", "Expected a literal8"),
    (b"a APPEND INBOX UTF8 (~{1+}\r\nx", "a", "Expected ')'"),
    (b"a APPEND INBOX FOO", "a", "Expected a message literal"),
    (b"a APPEND INBOX {1+}\r\nx ", "a", "Expected a message literal"),
    # sequence sets and numbers
    (b"a FETCH 0 FLAGS", "a", "Invalid number in sequence set"),
    (b"a FETCH 01 FLAGS", "a", "Invalid number in sequence set"),
    (b"a FETCH 4294967296 FLAGS", "a", "Invalid number in sequence set"),
    (b"a FETCH 99999999999999999999999 FLAGS", "a", "Invalid number in sequence set"),
    (b"a FETCH 1:-1 FLAGS", "a", "Invalid sequence set"),
    (b"a FETCH 1:0 FLAGS", "a", "Invalid number in sequence set"),
    (b"a FETCH 1,,2 FLAGS", "a", "Invalid sequence set"),
    (b"a FETCH 1:2:3 FLAGS", "a", "Invalid sequence set"),
    (b"a FETCH 1, FLAGS", "a", "Invalid sequence set"),
    (b"a FETCH $,1 FLAGS", "a", "Invalid sequence set"),
    (b"a FETCH 1,$ FLAGS", "a", "Invalid sequence set"),
    (b"a FETCH -1 FLAGS", "a", "Expected a sequence set"),
    (b"a FETCH x FLAGS", "a", "Expected a sequence set"),
    # FETCH
    (b"a FETCH 1", "a", "Missing argument"),
    (b"a FETCH 1 ()", "a", "Unknown FETCH attribute"),
    (b"a FETCH 1 (ALL)", "a", "Unknown FETCH attribute"),  # a macro must be used by itself
    (b"a FETCH 1 (FLAGS", "a", "Expected ')'"),
    (b"a FETCH 1 FOO", "a", "Unknown FETCH attribute"),
    (b"a FETCH 1 BODY.PEEK", "a", "Unknown FETCH attribute"),
    (b"a FETCH 1 BODY[", "a", "Invalid section"),
    (b"a FETCH 1 BODY[1.]", "a", "Invalid section"),
    (b"a FETCH 1 BODY[0]", "a", "Invalid a part number"),
    (b"a FETCH 1 BODY[MIME]", "a", "Invalid section"),
    (b"a FETCH 1 BODY[HEADER.FIELDS]", "a", "Expected a space"),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "a", "Expected a string"),
    (b"a FETCH 1 BODY[TEXT.MIME]", "a", "Invalid section"),
    (b"a FETCH 1 BODY[1.TEXT", "a", "Expected ']'"),
    (b"a FETCH 1 BODY[]<0>", "a", "Expected '.'"),
    (b"a FETCH 1 BODY[]<0.0>", "a", "Invalid a length"),
    (b"a FETCH 1 BODY[]<0.9223372036854775808>", "a", "A length out of range"),
    (b"a FETCH 1 BINARY[HEADER]", "a", "Expected a part number"),
    (b"a FETCH 1 BINARY.SIZE[1]<0.1>", "a", "Expected a space"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE 0)", "a", "A mod-sequence out of range"),
    (b"a FETCH 1 FLAGS (VANISHED VANISHED)", "a", "Unknown or repeated FETCH modifier"),
    (b"a FETCH 1 FLAGS (FOO)", "a", "Unknown or repeated FETCH modifier"),
    (b"a UID FETCH 1 FLAGS (VANISHED)", "a", "VANISHED needs UID FETCH with CHANGEDSINCE"),
    (
        b"a FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)",
        "a",
        "VANISHED needs UID FETCH with CHANGEDSINCE",
    ),
    (b"a FETCH 1 FLAGS ()", "a", "Expected a FETCH modifier"),
    # STORE
    (b"a STORE 1 FLAGS", "a", "Missing argument"),
    (b"a STORE 1 XFLAGS \\Seen", "a", "Expected FLAGS, +FLAGS or -FLAGS"),
    (b"a STORE 1 +FLAGS.LOUD \\Seen", "a", "Expected FLAGS, +FLAGS or -FLAGS"),
    (b"a STORE 1 +FLAGS (\\*)", "a", "Expected a flag"),
    (b"a STORE 1 +FLAGS \\", "a", "Expected a flag"),
    (b"a STORE 1 +FLAGS (\\Seen", "a", "Expected ')'"),
    (b"a STORE 1 (UNCHANGEDSINCE x) FLAGS ()", "a", "Expected a mod-sequence"),
    (b"a STORE 1 (FOO 1) FLAGS ()", "a", "Unknown or repeated STORE modifier"),
    # SEARCH
    (b"a SEARCH", "a", "Missing argument"),
    (b"a SEARCH ", "a", "Expected a search key"),
    (b"a SEARCH FOO", "a", "Unknown search key"),
    (b"a SEARCH ALL ", "a", "Expected a search key"),
    (b"a SEARCH SINCE 31-Feb-2020", "a", "Invalid date"),
    (b"a SEARCH SINCE 1-Foo-2020", "a", "Invalid date"),
    (b"a SEARCH SINCE 1-Feb-94", "a", "Invalid date"),
    (b"a SEARCH SINCE 001-Feb-1994", "a", "Invalid date"),
    (b'a SEARCH SINCE "1-Feb-1994', "a", "Expected '\"'"),
    (b"a SEARCH KEYWORD \\Seen", "a", "Expected a keyword"),
    (b"a SEARCH OR ALL", "a", "Missing argument"),
    (b"a SEARCH NOT", "a", "Missing argument"),
    (b"a SEARCH (ALL", "a", "Expected ')'"),
    (b"a SEARCH ()", "a", "Expected a search key"),
    (b"a SEARCH LARGER -1", "a", "Expected a size"),
    (b"a SEARCH LARGER 9223372036854775808", "a", "A size out of range"),
    (b"a SEARCH OLDER 0", "a", "Invalid an interval"),
    (b"a SEARCH UID", "a", "Missing argument"),
    (b"a SEARCH RETURN (FOO) ALL", "a", "Unknown SEARCH return option"),
    (b"a SEARCH RETURN ALL", "a", "Expected '('"),
    (b"a SEARCH CHARSET", "a", "Missing argument"),
    (b'a SEARCH CHARSET "" ALL', "a", "Invalid charset"),
    (b"a SEARCH HEADER x", "a", "Missing argument"),
    (b'a SEARCH MODSEQ "/foo" all 1', "a", "Invalid MODSEQ entry name"),
    (b'a SEARCH MODSEQ "/flags/" all 1', "a", "Invalid MODSEQ entry name"),
    (b'a SEARCH MODSEQ "/flags/\\\\seen" any 1', "a", "Invalid MODSEQ entry type"),
    (b"a SEARCH MODSEQ x", "a", "Expected a mod-sequence"),
    # others
    (b"a AUTHENTICATE", "a", "Missing argument"),
    (b"a AUTHENTICATE PLAIN ====", "a", "Invalid base64 in initial response"),
    (b"a AUTHENTICATE PLAIN abc", "a", "Invalid base64 in initial response"),
    (b"a AUTHENTICATE PLAIN ab!c", "a", "Invalid base64 in initial response"),
    (b"a AUTHENTICATE PLAIN ", "a", "Invalid base64 in initial response"),
    (b"a ENABLE", "a", "Missing argument"),
    (b"a ENABLE ", "a", "Expected a capability"),
    (b'a ID ("a")', "a", "Expected a space"),
    (b'a ID ("a" x)', "a", "Expected a string"),
    (b"a ID (a b)", "a", "Expected a string"),
    (b"a ID NULL", "a", "Expected a parameter list or NIL"),
    (b"a UID EXPUNGE", "a", "Missing argument"),
    (b"a EXPUNGE 1", "a", "Unexpected extra arguments"),
    (b"a COPY 1", "a", "Missing argument"),
]


@pytest.mark.parametrize(("wire", "tag", "text"), ERRORS)
def test_error(wire: bytes, tag: str | None, text: str) -> None:
    err = error(wire)
    assert (err.tag, err.text, err.code, err.fatal) == (tag, text, None, False)
    assert err.to_bytes() == f"{tag or '*'} BAD {text}\r\n".encode()


def test_utf8_mode_errors() -> None:
    assert error(b'a SELECT "\xff"', utf8=True).text == "Invalid UTF-8 in quoted string"
    assert error(b"a SELECT {1+}\r\n\xff", utf8=True).text == "Mailbox name is not valid UTF-8"
    assert error(b'a SEARCH CHARSET "\xc3\xa9" ALL', utf8=True).text == "Invalid charset"


@pytest.mark.parametrize(
    "wire",
    [
        b"a SEARCH " + b"(" * 100_000 + b"ALL" + b")" * 100_000,
        b"a SEARCH " + b"NOT " * 100_000 + b"ALL",
        b"a SEARCH " + b"OR " * 100_000 + b"ALL" + b" ALL" * 100_000,
        b"a SEARCH " + b"(" * (MAX_NESTING + 1) + b"ALL" + b")" * (MAX_NESTING + 1),
    ],
)
def test_deep_nesting_is_a_bad_not_a_recursion_error(wire: bytes) -> None:
    raw = RawCommand((wire,))  # straight to the parser: the reader would refuse the length
    started = time.perf_counter()
    with pytest.raises(IMAPParseError) as info:
        parse_command(raw)
    assert time.perf_counter() - started < 0.5
    assert info.value.tag == "a" and not info.value.fatal


def test_nesting_up_to_the_limit_is_accepted() -> None:
    depth = MAX_NESTING - 1
    cmd = parse_command(RawCommand((b"a SEARCH " + b"NOT " * depth + b"ALL",)))
    assert isinstance(cmd, Search)
    key = cmd.criteria[0]
    for _ in range(depth):
        assert isinstance(key, SearchNot)
        key = key.key
    assert key == SearchFlag("ALL")
    # OR is one level, each parenthesis one more, and the key inside them one more.
    parens = b"(" * (MAX_NESTING - 2) + b"ALL" + b")" * (MAX_NESTING - 2)
    cmd = parse_command(RawCommand((b"a SEARCH OR " + parens + b" " + parens,)))
    assert isinstance(cmd, Search) and isinstance(cmd.criteria[0], SearchOr)
    assert events(format_command(cmd)) == [cmd]  # the formatter copes with it too
    with pytest.raises(IMAPParseError):
        parse_command(RawCommand((b"a SEARCH OR (" + parens + b") ALL",)))


@pytest.mark.parametrize(
    "wire",
    [
        b'a LOGIN "' + b"\\\\" * 30_000 + b"x",  # unterminated quoted string full of escapes
        b'a LOGIN "' + b'\\"' * 30_000,
        b"a FETCH " + b"1," * 30_000 + b"x FLAGS",
        b"a FETCH 1 " + b"(" * 30_000,
        b"a SEARCH " + b"1:2," * 15_000 + b" ALL",
        b"a LIST " + b"%" * 60_000,
    ],
)
def test_hostile_lines_cost_linear_time(wire: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(IMAPParseError):
        parse_command(RawCommand((wire,)))
    assert time.perf_counter() - started < 0.5


def test_huge_sequence_set_costs_constant_memory() -> None:
    cmd = parse(b"a UID FETCH 1:4294967295,* FLAGS")
    assert isinstance(cmd, Fetch)
    assert cmd.sequence == seq((1, 4294967295), STAR)
    assert cmd.sequence.resolve(10) == [(1, 4294967295)]


def test_sequence_set_resolve_and_contains() -> None:
    # RFC 9051 §9 examples: 2,4:7,9,12:* on 15 messages; *:4,5:7 on 10 messages.
    assert seq(2, (4, 7), 9, (12, STAR)).resolve(15) == [(2, 2), (4, 7), (9, 9), (12, 15)]
    assert seq((STAR, 4), (5, 7)).resolve(10) == [(4, 10)]
    assert seq((3291, STAR)).resolve(100) == [(100, 3291)]  # includes the last UID
    assert seq((3291, STAR)).contains(100, 100)
    assert not seq((2, 4)).contains(5, 10)
    assert str(seq(2, (4, 7), (12, STAR))) == "2,4:7,12:*"
    assert str(SAVED) == "$"


def test_typical_commands_parse_in_tens_of_microseconds() -> None:
    lines = [
        b"a001 UID FETCH 1:100 (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE)] UID)",
        b'A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith" OR SEEN NEW',
    ]
    for line in lines:
        raw = RawCommand((line,))
        best = min(_time_per_call(raw) for _ in range(5))
        assert best < 100e-6, f"{best * 1e6:.1f} us for {line!r}"


def _time_per_call(raw: RawCommand) -> float:
    n = 200
    started = time.perf_counter()
    for _ in range(n):
        parse_command(raw)
    return (time.perf_counter() - started) / n


def test_format_rejects_values_without_a_wire_form() -> None:
    bad: list[Command] = [
        Noop("a b"),
        Noop(""),
        Login("a", "user", b"pass\x00word"),
        Enable("a", ("CONDSTORE IMAP4rev2",)),
        Store("a", seq(1), "add", ("\\Seen Flagged",)),
        Fetch("a", SequenceSet(()), (FLAGS,)),
        Fetch("a", seq(1), (FetchAtt("BODY", Section((), "HEADER.FIELDS")),)),
        Append("a", "INBOX", (AppendMessage(b"a\x00b"),)),
        Append("a", "INBOX", (AppendMessage(b"x", internal_date=dt.datetime(2020, 1, 1)),)),
        Select("a", "\ud800"),
    ]
    for cmd in bad:
        with pytest.raises(FormatError):
            format_command(cmd)


def test_format_examples() -> None:
    assert format_command(Login("a", "FRED FOOBAR", b"fat man")) == (
        b'a LOGIN "FRED FOOBAR" "fat man"\r\n'
    )
    assert format_command(Login("a", "x", b"\xff"), literal_plus=False) == (
        b"a LOGIN x {1}\r\n\xff\r\n"
    )
    assert (
        format_command(Select("a", "台北", condstore=True)) == b"a SELECT &U,BTFw- (CONDSTORE)\r\n"
    )
    assert format_command(Select("a", "台北"), utf8=True) == 'a SELECT "台北"\r\n'.encode()
    assert (
        format_command(
            Fetch(
                "a", seq((1, STAR)), (FetchAtt("BODY", Section((1,), "MIME"), (0, 10), peek=True),)
            )
        )
        == b"a FETCH 1:* (BODY.PEEK[1.MIME]<0.10>)\r\n"
    )
    assert (
        format_command(
            Append(
                "a",
                "INBOX",
                (
                    AppendMessage(
                        b"hi",
                        ("\\Seen",),
                        dt.datetime(
                            1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7))
                        ),
                    ),
                ),
            )
        )
        == b'a APPEND INBOX (\\Seen) "17-Jul-1996 02:44:25 -0700" {2+}\r\nhi\r\n'
    )
