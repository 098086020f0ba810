"""Property tests for the SMTP server core.

Invariants: a message body round-trips through dot-stuffing and any split into reads; whatever
the line endings, at most one message comes out per CRLF.CRLF and an accepted message never
contains a bare CR or LF; and no input makes anything but well-formed replies come out (no
exception escapes the core).
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_smtp_server import Driver, transaction

lines = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=30
)
REPLY_LINE = re.compile(rb"^\d{3}[ -][^\r\n]*$")


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return [p for p in pieces if p]


def stuff(body: bytes) -> bytes:
    return (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:]


@given(lines, st.lists(st.integers(min_value=0), max_size=20))
@settings(max_examples=200, deadline=None)
def test_body_round_trips_through_stuffing_and_any_split(
    body_lines: list[bytes], cuts: list[int]
) -> None:
    body = b"".join(line + b"\r\n" for line in body_lines)
    d = Driver()
    d.start()
    transaction(d, b"")
    wire = stuff(body) + b".\r\n"
    out = b""
    for piece in split(wire, cuts):
        out += d.send(piece)
    assert out.startswith(b"250 ")
    assert [m.data for m in d.messages] == [body]


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=10))
@settings(max_examples=300, deadline=None)
def test_at_most_one_message_per_terminator_and_never_bare_line_ends(
    junk: bytes, cuts: list[int]
) -> None:
    d = Driver()
    d.start()
    transaction(d, b"")
    wire = junk + b"\r\n.\r\n"
    for piece in split(wire, cuts):
        d.send(piece)
    assert len(d.messages) <= 1 + junk.count(b"\r\n.\r\n")
    for m in d.messages:
        assert m.data.count(b"\n") == m.data.count(b"\r\n") == m.data.count(b"\r")


@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=10))
@settings(max_examples=300, deadline=None)
def test_any_input_only_yields_replies(stream: bytes, cuts: list[int]) -> None:
    d = Driver()
    d.start()
    out = b""
    for piece in split(stream, cuts):
        out += d.send(piece)
    for line in out.split(b"\r\n")[:-1]:
        assert REPLY_LINE.match(line), line
