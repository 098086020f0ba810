"""Property tests for the POP3 server core.

Invariants: whatever bytes arrive, in whatever pieces, no exception escapes the core and only
well-formed output comes out: status lines ("+OK", "-ERR", "+ " continuations) and multi-line
bodies whose lines starting with "." are stuffed, each ended by a lone "."; an Update (which
deletes mail) happens only after the client sent QUIT, never on a dropped connection; a
retrieved message round-trips through byte-stuffing and any split of the input; and sending a
message as stored (the fast path) puts on the wire exactly what normalising its line ends and
byte-stuffing it would.
"""

from __future__ import annotations

import base64
import re

from hypothesis import event, given, settings
from hypothesis import strategies as st

from homing.proto.pop3 import server as core
from tests.unit.test_pop3_server import PASSWORD, Driver
from tests.unit.test_smtp_server_props import split

STATUS = re.compile(rb"^(\+OK|-ERR)( [\x20-\x7e]*)?$|^\+ [A-Za-z0-9+/=]*$")

commands = st.sampled_from(
    [
        b"USER alice",
        b"PASS " + PASSWORD.encode(),
        b"PASS wrong",
        b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()),
        b"AUTH PLAIN",
        b"AUTH LOGIN",
        b"AUTH SCRAM-SHA-256",
        b"AUTH",
        b"*",
        b"=",
        b"",
        b"CAPA",
        b"STLS",
        b"STAT",
        b"LIST",
        b"LIST 2",
        b"UIDL",
        b"UIDL 1",
        b"RETR 1",
        b"RETR 2",
        b"TOP 2 1",
        b"TOP 1 0",
        b"DELE 1",
        b"DELE 2",
        b"RSET",
        b"NOOP",
        b"QUIT",
        b"RETR 0",
        b"TOP 1 -1",
        b"APOP a b",
    ]
)
noise = st.binary(max_size=40)
line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])
logins = st.sampled_from(
    [
        b"",
        b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\n",
        b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()) + b"\r\n",
    ]
)
scripts = st.tuples(logins, st.lists(st.tuples(commands | noise, line_ends), max_size=25)).map(
    lambda t: t[0] + b"".join(cmd + end for cmd, end in t[1])
)
mostly = st.sampled_from([True, True, True, False])
settings_ = st.builds(
    core.Settings,
    allow_plaintext_auth=mostly,
    tls_active=mostly,
    starttls=st.booleans(),
    max_errors=st.integers(min_value=1, max_value=30),
    max_line=st.sampled_from([64, 255]),
)


def check_output(out: bytes) -> None:
    """Parse the whole output as a sequence of well-formed POP3 responses."""
    if not out:
        return
    assert out.endswith(b"\r\n")
    lines = out[:-2].split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines)
    i = 0
    while i < len(lines):
        line = lines[i]
        assert STATUS.match(line), line
        i += 1
        if not line.startswith(b"+OK") or i == len(lines) or STATUS.match(lines[i]):
            continue
        # A multi-line body (no fixture line starts with "+" or "-"): runs to a lone ".".
        while lines[i] != b".":
            assert not lines[i].startswith(b".") or lines[i].startswith(b".."), lines[i]
            i += 1
        i += 1


@given(settings_, scripts, st.lists(st.integers(min_value=0), max_size=10))
@settings(max_examples=600, deadline=None)
def test_any_input_gives_well_formed_output(
    config: core.Settings, script: bytes, cuts: list[int]
) -> None:
    d = Driver(config)
    out = d.start()
    for piece in split(script, cuts):
        out += d.send(piece)
    out += d.send(b"")
    check_output(out)
    updates = d.of(core.Update)
    assert len(updates) <= 1
    if updates:
        assert b"quit" in script.lower()
    assert len(d.of(core.Closed)) == 1
    assert d.conn.closed
    event("logged in" if d.conn.user else "never logged in")
    event("retrieved" if d.of(core.Retrieve) else "nothing retrieved")


body_lines = st.lists(
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=20,
)


@given(body_lines, st.lists(st.integers(min_value=0), max_size=10), st.integers(0, 25))
@settings(max_examples=200, deadline=None)
def test_retr_and_top_round_trip(lines: list[bytes], cuts: list[int], top: int) -> None:
    message = b"Subject: x\r\n\r\n" + b"".join(line + b"\r\n" for line in lines)
    d = Driver()
    d.messages = {9: message}
    d.start()
    script = f"USER alice\r\nPASS {PASSWORD}\r\nRETR 1\r\nTOP 1 {top}\r\n".encode()
    out = b""
    for piece in split(script, cuts):
        out += d.send(piece)
    retr = out.split(b"\r\n", 2)[2]  # after "+OK Send PASS" and "+OK Logged in"
    head, _, rest = retr.partition(b"\r\n")
    assert head == b"+OK %d octets" % len(message)
    end = rest.index(b"\r\n.\r\n+OK Top of message follows\r\n")
    unstuffed = (b"\r\n" + rest[: end + 2]).replace(b"\r\n..", b"\r\n.")[2:]
    assert unstuffed == message
    top_body = rest[end + len(b"\r\n.\r\n+OK Top of message follows\r\n") :]
    assert top_body.endswith(b"\r\n.\r\n")
    expected = b"Subject: x\r\n\r\n" + b"".join(line + b"\r\n" for line in lines[:top])
    assert (b"\r\n" + top_body[:-3]).replace(b"\r\n..", b"\r\n.")[2:] == expected


# Messages made of the pieces that matter to line ends and stuffing, or of any bytes.
wire_pieces = st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"..", b"a", b"\r\n.", b"x y"])
messages = st.lists(wire_pieces, max_size=30).map(b"".join) | st.binary(max_size=60)


def reference_wire(data: bytes, top: int | None) -> bytes:
    """What RETR or TOP sends for `data`, through the normalising path only."""
    body = core._normalise(data)
    if top is not None:
        body = core._top(body, top)
    return core._stuff(body)


@given(messages, st.none() | st.integers(0, 4))
@settings(max_examples=400, deadline=None)
def test_sent_as_stored_only_when_nothing_would_change(data: bytes, top: int | None) -> None:
    d = Driver()
    d.messages = {9: data}
    d.start()
    d.send(f"USER alice\r\nPASS {PASSWORD}\r\n".encode())
    out = d.send(b"RETR 1\r\n" if top is None else b"TOP 1 %d\r\n" % top)
    head, _, wire = out.partition(b"\r\n")
    assert wire == reference_wire(data, top) + b".\r\n"
    if top is None:
        assert head == b"+OK %d octets" % len(core._normalise(data))
    if core._wire_ready(data):
        assert reference_wire(data, None) == data
    event("sent as stored" if core._wire_ready(data) else "normalised or stuffed")
