"""Property tests for the SMTP client core.

Invariants:
* any message bytes, sent by DATA or BDAT, pipelined or not, arrive at the server core exactly
  as `prepare_message()` says: CRLF lines only, none over 998 octets, content otherwise intact;
* `normalize_line_endings` and `fold_long_lines` only touch line breaks / insert CRLF SP, and
  are idempotent;
* a reply written by `Reply.to_bytes` parses back to the same Reply;
* whatever bytes the server sends, the core yields only its own events (never an exception),
  writes nothing but CRLF lines, gives one result per recipient, and ends with one `Closed`.
"""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from homing.mail.reply import Reply
from homing.proto.smtp import client as cl
from homing.proto.smtp import server as sv
from tests.unit.test_smtp_client import mail, rcpt
from tests.unit.test_smtp_client_server import Job, Wire, strip_pipelining

pieces = st.one_of(
    st.binary(max_size=30),
    st.sampled_from(
        [b".", b"..", b"\r", b"\n", b"\r\n", b".\r\n", b"\r\n.\r\n", b"\xc3\xa9", b"\xff"]
    ),
    st.integers(min_value=990, max_value=2100).map(lambda n: b"L" * n),
)
messages = st.lists(pieces, max_size=25).map(b"".join)


@given(messages, st.booleans(), st.booleans())
@settings(max_examples=150, deadline=None)
def test_server_receives_the_prepared_message(
    message: bytes, chunking: bool, pipelining: bool
) -> None:
    wire = Wire(
        [Job(["a@local.test", "b@local.test"], message)],
        server_settings=sv.Settings(hostname="mx.local.test", chunking=chunking),
        to_client=(lambda d: d) if pipelining else strip_pipelining,
    ).run()
    prepared = cl.prepare_message(message)
    assert [m.data for m in wire.messages] == [prepared]
    assert all(len(line) <= 998 for line in prepared.split(b"\r\n"))
    assert [r.reply.code for r in wire.done()[0].results] == [250, 250]


@given(messages)
@settings(max_examples=300, deadline=None)
def test_normalize_only_touches_line_breaks(message: bytes) -> None:
    out = cl.normalize_line_endings(message)
    crlf = out.count(b"\r\n")
    assert out.count(b"\r") == crlf == out.count(b"\n")
    assert out == b"" or out.endswith(b"\r\n")
    assert out.replace(b"\r", b"").replace(b"\n", b"") == message.replace(b"\r", b"").replace(
        b"\n", b""
    )
    assert cl.normalize_line_endings(out) == out


@given(messages, st.integers(min_value=2, max_value=40))
@settings(max_examples=300, deadline=None)
def test_fold_only_inserts_crlf_space(message: bytes, limit: int) -> None:
    text = cl.normalize_line_endings(message)
    folded = cl.fold_long_lines(text, limit)
    for line in folded.split(b"\r\n"):
        assert len(line) <= (limit - 1 if line.startswith(b".") else limit)
    # Inserted CRLF SP sit between two content octets, so deleting every CRLF SP from both sides
    # must leave the same bytes.
    assert folded.replace(b"\r\n ", b"") == text.replace(b"\r\n ", b"")
    assert cl.fold_long_lines(folded, limit) == folded


text_lines = (
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E)
        | st.characters(min_codepoint=0xA0, max_codepoint=0x2FF),
        max_size=30,
    )
    .map(str.strip)
    .filter(lambda t: t.isprintable() and not t[:1].isdigit())
)


@given(
    st.sampled_from([2, 4, 5]),
    st.integers(min_value=0, max_value=99),
    st.booleans(),
    st.lists(text_lines, min_size=1, max_size=4),
)
@settings(max_examples=300, deadline=None)
def test_reply_round_trips_through_the_parser(
    cls: int, rest: int, enhanced: bool, lines: list[str]
) -> None:
    code = cls * 100 + rest
    reply = Reply(code, f"{cls}.{rest % 10}.{rest}" if enhanced else "", "\n".join(lines))
    conn = cl.ClientConnection(cl.ClientSettings("c.example"))
    conn.receive_data(reply.to_bytes())
    ev = conn.next_event()
    if cls == 2:
        assert ev is cl.NEED_DATA and conn.greeting == reply
    else:
        assert isinstance(ev, cl.SessionFailed) and ev.reply == reply


# ------------------------------------------------------------------------------- hostile servers

CODES = [220, 221, 235, 250, 251, 334, 354, 421, 450, 452, 500, 502, 535, 550, 552, 554]
KEYWORDS = [
    "PIPELINING",
    "CHUNKING",
    "STARTTLS",
    "SIZE 40",
    "SIZE",
    "AUTH PLAIN",
    "AUTH=PLAIN",
    "8BITMIME",
    "SMTPUTF8",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "REQUIRETLS",
]
reply_line = st.one_of(
    st.builds(
        lambda code, sep, text: b"%d%s%s\r\n" % (code, sep, text),
        st.sampled_from(CODES),
        st.sampled_from([b" ", b"-", b""]),
        st.one_of(st.sampled_from([k.encode() for k in KEYWORDS]), st.binary(max_size=12)),
    ),
    st.binary(max_size=12),
)
server_bytes = st.one_of(st.binary(max_size=400), st.lists(reply_line, max_size=40).map(b"".join))
EVENTS = (cl.NeedStartTLS, cl.TransactionDone, cl.SessionFailed, cl.Closed)
RCPTS = ["a@d.example", "δ@d.example", "b@d.example"]


@given(
    server_bytes,
    st.lists(st.integers(min_value=0), max_size=8),
    st.booleans(),
    st.booleans(),
    st.sampled_from([b"hi\r\n", b"Subject: \xc3\xa9\r\n\r\n.x\n" + b"y" * 1000, b""]),
)
@settings(max_examples=400, deadline=None)
def test_any_server_bytes_yield_only_the_cores_events(
    data: bytes, cuts: list[int], tls_ok: bool, auth: bool, message: bytes
) -> None:
    conn = cl.ClientConnection(
        cl.ClientSettings("c.example", auth=("u", "p") if auth else None, pipeline_bdat_limit=8)
    )
    started = [RCPTS[: 1 + i % 3] for i in range(3)]
    jobs = list(started)
    conn.start_transaction(mail(), [rcpt(r, utf8=True) for r in jobs.pop(0)], message)
    events: list[object] = []
    sent = bytearray()

    def pump() -> None:
        while (ev := conn.next_event()) is not cl.NEED_DATA:
            assert isinstance(ev, EVENTS)
            events.append(ev)
            if isinstance(ev, cl.NeedStartTLS):
                conn.tls_established() if tls_ok else conn.tls_failed()
            elif isinstance(ev, cl.TransactionDone):
                if jobs:
                    conn.start_transaction(
                        mail(), [rcpt(r, utf8=True) for r in jobs.pop(0)], b"x\r\n"
                    )
                else:
                    conn.quit()
        sent.extend(conn.data_to_send())
        _ = conn.timeout

    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        conn.receive_data(data[a:b])
        pump()
    conn.receive_data(b"")
    pump()
    conn.timed_out()
    pump()

    assert conn.closed
    assert [e for e in events if isinstance(e, cl.Closed)] == [events[-1]]
    # Stray CR or LF never go on the wire.
    crlf = sent.count(b"\r\n")
    assert sent.count(b"\r") == crlf == sent.count(b"\n")
    assert not re.search(rb"[^\n]{1001}", bytes(sent))
    # One result per recipient, in order, for every transaction that ended.
    outcomes = [e for e in events if isinstance(e, cl.TransactionDone | cl.SessionFailed)]
    for ev, expected in zip(outcomes, started, strict=False):
        if isinstance(ev, cl.SessionFailed) and not ev.results:
            continue
        got = [str(r.rcpt.path.mailbox) for r in ev.results]
        assert got == expected
