"""Property tests for homing.proto.imap.grammar and types.format_command.

Invariants:
- round trip: for every command value, parse(format(cmd)) == cmd, in both name modes (modified
  UTF-7 and UTF-8), with non-synchronising and with synchronising literals, however the wire
  bytes are split into reads;
- robustness: any bytes fed to the CommandReader, with every command it frames parsed, raise
  nothing but IMAPParseError (TooBig included); so do valid commands with bytes flipped,
  dropped or inserted;
- framing is independent of how the input is split into reads: the same commands, continuation
  requests and errors come out, in the same order;
- memory is bounded: after NEED_DATA the reader buffers at most max_line + 1 octets, and a
  command it returns is never larger than max_command;
- SequenceSet.resolve and contains agree with the set of numbers the ranges spell out.
"""

from __future__ import annotations

import datetime as dt
import string
from dataclasses import replace

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from homing.proto.imap.grammar import (
    NEED_DATA,
    CommandReader,
    ContinuationRequest,
    IMAPParseError,
    Limits,
    RawCommand,
    parse_command,
)
from homing.proto.imap.types import (
    ATOM_CHARS,
    SPECIAL_USES,
    STAR,
    SYSTEM_FLAGS,
    TAG_CHARS,
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
    SearchKey,
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

ATOM = "".join(chr(c) for c in sorted(ATOM_CHARS))
MAX32, MAX63 = 2**32 - 1, 2**63 - 1

# --- strategies ---------------------------------------------------------------------------------

tags = st.text("".join(chr(c) for c in sorted(TAG_CHARS)), min_size=1, max_size=6)
atoms = st.text(ATOM, min_size=1, max_size=8)
words = atoms.map(str.upper)
nz32 = st.integers(1, MAX32)
octets = st.binary(max_size=24).map(lambda b: b.replace(b"\x00", b""))
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


def mailboxes(utf8: bool) -> st.SearchStrategy[str]:
    names = st.one_of(
        st.sampled_from(["INBOX", "inbox", "Sent", "R&D", "a b", "日本語", "Entwürfe", "", "%"]),
        texts if utf8 else st.text(st.characters(codec="utf-8"), max_size=12),
    )
    # RFC 9051 §9: every case variant of INBOX is INBOX.
    return names.map(lambda s: "INBOX" if s.isascii() and s.upper() == "INBOX" else s)


def patterns(utf8: bool) -> st.SearchStrategy[str]:
    return st.one_of(mailboxes(utf8), st.sampled_from(["*", "%", "foo/%", "*2", "a]"]))


def canonical_flag(flag: str) -> str:
    return SYSTEM_FLAGS.get(flag.upper(), flag) if flag.startswith("\\") else flag


flags = st.one_of(
    st.sampled_from(sorted(SYSTEM_FLAGS.values())),
    atoms,
    atoms.map(lambda a: canonical_flag("\\" + a)),
)
flag_lists = st.lists(flags, max_size=4).map(tuple)
seq_numbers = st.one_of(nz32, st.just(STAR), st.integers(1, 20))
seq_sets = st.one_of(
    st.lists(st.tuples(seq_numbers, seq_numbers), min_size=1, max_size=4)
    .map(tuple)
    .map(SequenceSet),
    st.lists(seq_numbers, min_size=1, max_size=4).map(
        lambda ns: SequenceSet(tuple((n, n) for n in ns))
    ),
    st.just(SequenceSet((), saved=True)),
)
known_sets = st.lists(st.tuples(nz32, nz32), min_size=1, max_size=3).map(tuple).map(SequenceSet)
dates = st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31))
zones = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m))
)
datetimes = st.builds(
    lambda d, tz: d.replace(microsecond=0, tzinfo=tz),
    st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31)),
    zones,
)
status_items = st.lists(
    st.sampled_from(
        [
            *("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT"),
            *("HIGHESTMODSEQ", "APPENDLIMIT", "MAILBOXID"),
        ]
    ),
    min_size=1,
    max_size=4,
).map(tuple)

search_leaves: st.SearchStrategy[SearchKey] = st.one_of(
    st.sampled_from(
        ["ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNSEEN", "NEW"]
    ).map(SearchFlag),
    st.builds(
        SearchString,
        st.sampled_from(["BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"]),
        octets,
    ),
    st.builds(SearchHeader, texts, octets),
    st.builds(SearchKeyword, atoms, st.booleans()),
    st.builds(
        SearchDate,
        st.sampled_from(["BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"]),
        dates,
    ),
    st.builds(SearchSize, st.sampled_from(["LARGER", "SMALLER"]), st.integers(0, MAX63)),
    st.builds(SearchAge, st.sampled_from(["OLDER", "YOUNGER"]), nz32),
    st.builds(SearchSet, seq_sets, st.booleans()),
    st.builds(SearchModSeq, st.integers(0, MAX63)),
    st.builds(
        SearchModSeq,
        st.integers(0, MAX63),
        flags.map(lambda f: "/flags/" + f),
        st.sampled_from(["priv", "shared", "all"]),
    ),
)
search_keys: st.SearchStrategy[SearchKey] = st.recursive(
    search_leaves,
    lambda inner: st.one_of(
        inner.map(SearchNot),
        st.builds(SearchOr, inner, inner),
        st.lists(inner, min_size=1, max_size=3).map(tuple).map(SearchGroup),
    ),
    max_leaves=8,
)

header_names = st.lists(
    st.one_of(st.sampled_from(["From", "To", "Subject"]), texts), min_size=1, max_size=3
)
sections = st.one_of(
    st.just(Section()),
    st.builds(
        Section,
        st.lists(st.integers(1, MAX32), max_size=3).map(tuple),
        st.sampled_from([None, "HEADER", "TEXT"]),
    ),
    st.builds(
        Section,
        st.lists(st.integers(1, MAX32), min_size=1, max_size=3).map(tuple),
        st.just("MIME"),
    ),
    st.builds(
        Section,
        st.lists(st.integers(1, 9), max_size=2).map(tuple),
        st.sampled_from(["HEADER.FIELDS", "HEADER.FIELDS.NOT"]),
        header_names.map(tuple),
    ),
)
partials = st.none() | st.tuples(st.integers(0, MAX63), st.integers(1, MAX63))
binary_sections = st.lists(st.integers(1, MAX32), max_size=3).map(lambda p: Section(tuple(p)))
fetch_atts = st.one_of(
    st.sampled_from(
        [
            *("ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY", "BODYSTRUCTURE"),
            *("UID", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "MODSEQ"),
        ]
    ).map(FetchAtt),
    st.builds(FetchAtt, st.just("BODY"), sections, partials, st.booleans()),
    st.builds(FetchAtt, st.just("BINARY"), binary_sections, partials, st.booleans()),
    st.builds(FetchAtt, st.just("BINARY.SIZE"), binary_sections),
)


@st.composite
def append_messages(draw: st.DrawFn) -> AppendMessage:
    kind = draw(st.sampled_from(["text", "binary", "utf8"]))
    data = draw(st.binary(max_size=40))
    if kind == "text":
        data = data.replace(b"\x00", b"")
    return AppendMessage(
        data,
        draw(flag_lists),
        draw(st.none() | datetimes),
        binary=kind != "text",
        utf8=kind == "utf8",
    )


@st.composite
def lists(draw: st.DrawFn, utf8: bool) -> List:
    selection = draw(
        st.none()
        | st.lists(st.sampled_from(["SUBSCRIBED", "REMOTE", "SPECIAL-USE"]), max_size=3).map(tuple)
    )
    if selection and draw(st.booleans()) and {"SUBSCRIBED", "SPECIAL-USE"} & set(selection):
        selection = (*selection, "RECURSIVEMATCH")
    pats = tuple(draw(st.lists(patterns(utf8), min_size=1, max_size=3)))
    returns = draw(
        st.none()
        | st.lists(
            st.sampled_from(["SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"]),
            unique=True,
            max_size=4,
        ).map(tuple)
    )
    items = draw(status_items) if returns and "STATUS" in returns else ()
    pattern_list = len(pats) != 1 or draw(st.booleans())
    return List(draw(tags), draw(mailboxes(utf8)), pats, selection, returns, items, pattern_list)


def commands(utf8: bool) -> st.SearchStrategy[Command]:
    names = mailboxes(utf8)
    return st.one_of(
        st.builds(Capability, tags),
        st.builds(Noop, tags),
        st.builds(Logout, tags),
        st.builds(StartTLS, tags),
        st.builds(Namespace, tags),
        st.builds(Idle, tags),
        st.builds(Check, tags),
        st.builds(Close, tags),
        st.builds(Unselect, tags),
        st.builds(Authenticate, tags, words, st.none() | st.binary(max_size=30)),
        st.builds(Login, tags, texts, octets),
        st.builds(Enable, tags, st.lists(words, min_size=1, max_size=3).map(tuple)),
        st.builds(
            Select,
            tags,
            names,
            st.booleans(),
            st.booleans(),
            st.none()
            | st.builds(
                QResync,
                nz32,
                st.integers(1, MAX63),
                st.none() | known_sets,
                st.none() | st.tuples(known_sets, known_sets),
            ),
        ),
        st.builds(
            Create,
            tags,
            names,
            st.none()
            | st.lists(
                st.one_of(
                    st.sampled_from(sorted(SPECIAL_USES.values())),
                    atoms.map(lambda a: SPECIAL_USES.get("\\" + a.upper(), "\\" + a)),
                ),
                max_size=3,
            ).map(tuple),
        ),
        st.builds(Delete, tags, names),
        st.builds(Rename, tags, names, names),
        st.builds(Subscribe, tags, names),
        st.builds(Unsubscribe, tags, names),
        lists(utf8),
        st.builds(Lsub, tags, names, patterns(utf8)),
        st.builds(Status, tags, names, status_items),
        st.builds(
            Append, tags, names, st.lists(append_messages(), min_size=1, max_size=3).map(tuple)
        ),
        st.builds(Expunge, tags, st.none() | seq_sets),
        st.builds(
            Search,
            tags,
            st.lists(search_keys, min_size=1, max_size=4).map(tuple),
            st.none() | st.sampled_from(["UTF-8", "US-ASCII", "ISO-8859-1"]),
            st.none()
            | st.lists(st.sampled_from(["MIN", "MAX", "ALL", "COUNT", "SAVE"]), max_size=3).map(
                tuple
            ),
            st.booleans(),
        ),
        st.builds(
            Fetch,
            tags,
            seq_sets,
            st.lists(fetch_atts, min_size=1, max_size=4).map(tuple),
            st.booleans(),
            st.none() | st.integers(1, MAX63),
            st.booleans(),
        ).map(  # RFC 7162 §3.2.6: VANISHED only with UID FETCH and CHANGEDSINCE
            lambda f: replace(f, vanished=f.vanished and f.uid and f.changed_since is not None)
        ),
        st.builds(
            Store,
            tags,
            seq_sets,
            st.sampled_from(["replace", "add", "remove"]),
            flag_lists,
            st.booleans(),
            st.booleans(),
            st.none() | st.integers(0, MAX63),
        ),
        st.builds(Copy, tags, seq_sets, names, st.booleans()),
        st.builds(Move, tags, seq_sets, names, st.booleans()),
        st.builds(
            Id,
            tags,
            st.none() | st.lists(st.tuples(texts, st.none() | texts), max_size=3).map(tuple),
        ),
    )


COMMANDS = {utf8: commands(utf8) for utf8 in (False, True)}


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces if p]


Outcome = object


def run(pieces: list[bytes], limits: Limits | None = None, *, utf8: bool = False) -> list[Outcome]:
    """Feed `pieces`, answering every continuation request; every outcome in order."""
    reader = CommandReader(limits)
    out: list[Outcome] = []
    for piece in pieces:
        reader.feed(piece)
        while True:
            try:
                event = reader.next_event()
            except IMAPParseError as exc:  # the only exception allowed out
                out.append(("error", exc.tag, exc.text, exc.code, exc.fatal))
                if exc.fatal:
                    return out
                continue
            if event is NEED_DATA:
                assert reader.buffered <= reader.limits.max_line + 1
                break
            if isinstance(event, ContinuationRequest):
                out.append(event)
                continue
            assert isinstance(event, RawCommand)
            assert event.size <= reader.limits.max_command
            try:
                out.append(parse_command(event, utf8=utf8))
            except IMAPParseError as exc:
                out.append(("bad", exc.tag, exc.text))
    return out


# --- round trip ---------------------------------------------------------------------------------


@given(st.data(), st.booleans(), st.booleans(), st.lists(st.integers(0), max_size=6))
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_parse_inverts_format(
    data: st.DataObject, utf8: bool, literal_plus: bool, cuts: list[int]
) -> None:
    cmd = data.draw(COMMANDS[utf8])
    wire = format_command(cmd, utf8=utf8, literal_plus=literal_plus)
    outcomes = run(split(wire, cuts), utf8=utf8)
    assert outcomes[-1] == cmd
    assert all(isinstance(o, ContinuationRequest) for o in outcomes[:-1])
    if literal_plus:
        assert len(outcomes) == 1


@given(st.lists(COMMANDS[False], min_size=2, max_size=4))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_pipelined_commands_come_out_in_order(cmds: list[Command]) -> None:
    wire = b"".join(format_command(c) for c in cmds)
    assert run([wire]) == cmds


# --- robustness ---------------------------------------------------------------------------------

TOKENS = [
    b" ", b"(", b")", b"[", b"]", b"<", b">", b'"', b"\\", b"{", b"}", b"~", b"+", b"*", b"%",
    b"$", b":", b",", b".", b"-", b"\r\n", b"\n", b"\r", b"\x00", b"\xff", b"{3}\r\n",
    b"{2+}\r\n", b"~{1+}\r\n", b"{0}\r\n", b"a1", b"UID", b"FETCH", b"SEARCH", b"STORE",
    b"APPEND", b"LIST", b"SELECT", b"LOGIN", b"ID", b"NIL", b"BODY", b"BODY.PEEK[", b"BINARY[",
    b"HEADER.FIELDS", b"MIME", b"OR", b"NOT", b"RETURN", b"CHARSET", b"MODSEQ", b"1", b"0",
    b"1:*", b"4294967296", b"FLAGS", b"+FLAGS.SILENT", b"\\Seen", b"INBOX", b"&AOk-", b"&",
    b"01-Jan-2020", b'"01-Jan-2020 00:00:00 +0000"', b"QRESYNC", b"CHANGEDSINCE", b"UTF8",
    b"SUBSCRIBED", b"RECURSIVEMATCH", b"STATUS", b"MESSAGES", b"USE", b"AUTHENTICATE", b"=",
]  # fmt: skip
imap_ish = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=40).map(
    b"".join
)
small = Limits(max_line=64, max_literal=32, max_command=96, max_nonsync_literal=16)


@given(st.one_of(st.binary(max_size=300), imap_ish), st.booleans(), st.booleans())
@settings(max_examples=1500, deadline=None)
@example(b"a SEARCH " + b"(" * 200 + b"\r\n", False, False)
@example(b"a LOGIN {99999999999999999999999+}\r\n", True, False)
def test_any_input_raises_only_imap_parse_errors(data: bytes, utf8: bool, limited: bool) -> None:
    run([data], small if limited else None, utf8=utf8)


@st.composite
def mutated_commands(draw: st.DrawFn) -> bytes:
    wire = bytearray(format_command(draw(COMMANDS[False])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire)))
        action = draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "insert" or at == len(wire):
            wire[at:at] = draw(st.sampled_from(TOKENS))
        elif action == "drop":
            del wire[at]
        else:
            wire[at] = draw(st.integers(0, 255))
    return bytes(wire)


@given(mutated_commands(), st.booleans())
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_damaged_commands_raise_only_imap_parse_errors(wire: bytes, utf8: bool) -> None:
    run([wire], utf8=utf8)


@given(
    st.one_of(st.binary(max_size=300), imap_ish, mutated_commands()),
    st.lists(st.integers(0), max_size=12),
    st.booleans(),
)
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_framing_does_not_depend_on_how_input_is_split(
    data: bytes, cuts: list[int], limited: bool
) -> None:
    limits = small if limited else None
    assert run(split(data, cuts), limits) == run([data], limits)


# --- sequence sets ------------------------------------------------------------------------------


@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30)), min_size=1, max_size=5),
    st.integers(0, 40),
)
def test_resolve_and_contains_match_the_numbers_spelled_out(
    ranges: list[tuple[int, int]], largest: int
) -> None:
    sequence = SequenceSet(tuple(ranges))  # 0 is STAR
    expanded: set[int] = set()
    for a, b in ranges:
        a, b = a or largest, b or largest
        expanded.update(range(min(a, b), max(a, b) + 1))
    resolved = sequence.resolve(largest)
    assert {n for lo, hi in resolved for n in range(lo, hi + 1)} == expanded
    assert all(lo <= hi for lo, hi in resolved)
    assert all(resolved[i][1] + 1 < resolved[i + 1][0] for i in range(len(resolved) - 1))
    assert all(sequence.contains(n, largest) == (n in expanded) for n in range(45))


assert set(string.digits) <= set(ATOM)  # numbers are atoms: the strategies rely on it
