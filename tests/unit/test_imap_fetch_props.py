"""Property tests for homing.proto.imap.fetch.

Invariants, for any message bytes (random MIME trees and raw garbage), any trace prefix, any
section and any partial:
* Rendering never raises, except FetchError(UNKNOWN-CTE) for BINARY of a part in an unknown
  transfer encoding.
* The response is framed exactly: items in the order asked, each literal's announced length
  equals the octets that follow it, and the response ends right after the closing ")\\r\\n".
  No literal (only literal8) carries NUL.
* A partial fetch <o.c> returns octets [o, o+c) of the same section fetched whole.
* BODY[] is the stored message (NUL sent as 0x80), of RFC822.SIZE octets.
* BINARY undoes base64 and quoted-printable: the payload comes back as it was encoded.
* The bytes renderer and the chunk renderer produce the same bytes.
* HEADER.FIELDS (names) and HEADER.FIELDS.NOT (names) split the header's fields between them:
  together they hold each field exactly once, in order, and each ends with the blank line.
"""

from __future__ import annotations

import base64
import binascii
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homing.mail.mime import encode_partmap, parse_message
from homing.proto.imap.fetch import (
    FetchError,
    MessageView,
    compile_fetch,
    compile_fetch_chunks,
)
from homing.proto.imap.types import FetchAtt, Section

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- messages

_BODY_BYTES = st.binary(max_size=40) | st.sampled_from(
    [b"", b"\r\n", b"--b\r\n", b"a\x00b", b"=41=\r\nx", b"\xff\xfe", b"\r\n\r\n", b"YWJj"]
)
_CTE = st.sampled_from(["", "7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "BASE64"])
_TYPES = st.sampled_from(
    ["", "text/plain", "text/html; charset=utf-8", "application/octet-stream", "image/png"]
)


def _header(ctype: str, cte: str, extra: list[bytes]) -> bytes:
    lines = list(extra)
    if ctype:
        lines.append(b"Content-Type: " + ctype.encode())
    if cte:
        lines.append(b"Content-Transfer-Encoding: " + cte.encode())
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@st.composite
def entities(draw: st.DrawFn, depth: int = 0) -> bytes:
    """A MIME entity (header + body): a leaf, a multipart or a message/rfc822."""
    kind = draw(
        st.sampled_from(["leaf", "leaf", "multipart", "message"] if depth < 3 else ["leaf"])
    )
    extra = draw(
        st.lists(
            st.sampled_from(
                [b"Subject: hi", b"Subject: a\r\n folded", b"X-A: 1", b"From: a@b", b"junk line"]
            ),
            max_size=3,
        )
    )
    if kind == "leaf":
        return _header(draw(_TYPES), draw(_CTE), extra) + draw(_BODY_BYTES)
    if kind == "message":
        return _header("message/rfc822", "", extra) + draw(entities(depth + 1))
    boundary = draw(st.sampled_from(["b", "b1", "x y"]))
    children = draw(st.lists(entities(depth + 1), max_size=3))
    body = draw(_BODY_BYTES) + b"\r\n"  # preamble
    for child in children:
        body += b"--" + boundary.encode() + b"\r\n" + child + b"\r\n"
    if draw(st.booleans()):
        body += b"--" + boundary.encode() + b"--\r\n" + draw(_BODY_BYTES)
    return _header(f'multipart/mixed; boundary="{boundary}"', "", extra) + body


messages = entities() | st.binary(max_size=300)
prefixes = st.sampled_from([b"", b"Return-Path: <a@b>\r\nDelivered-To: c@d\r\n"])

# --------------------------------------------------------------------------- attributes

_PARTS = st.lists(st.integers(1, 4), max_size=3).map(tuple)
_FIELDS = st.lists(
    st.sampled_from(["Subject", "x-a", "FROM", "Return-Path"]), min_size=1, max_size=3
)
_PARTIALS = st.none() | st.tuples(st.integers(0, 300), st.integers(1, 300))


@st.composite
def sections(draw: st.DrawFn) -> Section:
    part = draw(_PARTS)
    texts: list[str | None] = [None, "HEADER", "TEXT", "HEADER.FIELDS", "HEADER.FIELDS.NOT"]
    if part:
        texts.append("MIME")
    text = draw(st.sampled_from(texts))
    fields = tuple(draw(_FIELDS)) if text and text.startswith("HEADER.FIELDS") else ()
    return Section(part, text, fields)


@st.composite
def data_atts(draw: st.DrawFn) -> FetchAtt:
    kind = draw(
        st.sampled_from(["BODY", "BODY", "BINARY", "BINARY.SIZE", "RFC822", "RFC822.HEADER"])
    )
    if kind.startswith("RFC822"):
        return FetchAtt(kind)
    if kind == "BODY":
        return FetchAtt("BODY", draw(sections()), draw(_PARTIALS), draw(st.booleans()))
    partial = draw(_PARTIALS) if kind == "BINARY" else None
    return FetchAtt(kind, Section(draw(_PARTS)), partial)


def make_view(body: bytes, prefix: bytes) -> MessageView:
    parsed = parse_message(body)
    return MessageView(
        seq=3,
        uid=9,
        flags=frozenset({"\\Seen"}),
        internaldate=0.0,
        size=len(prefix) + len(body),
        modseq=1,
        envelope=parsed.envelope,
        bodystructure=parsed.bodystructure,
        body_nx=parsed.body,
        partmap=encode_partmap(parsed.parts),
        prefix=prefix,
        body=body,
    )


# --------------------------------------------------------------------------- response reader

_LITERAL = re.compile(rb"(~?)\{(\d+)\}\r\n")
_NUMBER = re.compile(rb"\d+")


def item_name(att: FetchAtt) -> bytes:
    if att.section is None:
        return att.name.encode()
    name = b"%s[%s]" % (att.name.encode(), att.section.to_bytes())
    return name + (b"<%d>" % att.partial[0] if att.partial else b"")


def read_items(response: bytes, atts: list[FetchAtt]) -> list[bytes | int]:
    """Walk the response: each item's name, then its literal or number. Returns the values."""
    assert response.startswith(b"* 3 FETCH (")
    pos = len(b"* 3 FETCH (")
    values: list[bytes | int] = []
    for i, att in enumerate(atts):
        if i:
            assert response[pos : pos + 1] == b" "
            pos += 1
        name = item_name(att) + b" "
        assert response.startswith(name, pos), (response[pos : pos + 40], name)
        pos += len(name)
        if att.name == "BINARY.SIZE":
            m = _NUMBER.match(response, pos)
            assert m is not None
            values.append(int(m.group()))
            pos = m.end()
            continue
        m = _LITERAL.match(response, pos)
        assert m is not None, response[pos : pos + 20]
        size = int(m.group(2))
        data = response[m.end() : m.end() + size]
        assert len(data) == size
        if not m.group(1):
            assert b"\x00" not in data  # only literal8 may carry NUL (RFC 9051 §4.3)
        values.append(data)
        pos = m.end() + size
    assert response[pos:] == b")\r\n"
    return values


def render(view: MessageView, atts: list[FetchAtt]) -> bytes | None:
    try:
        out = compile_fetch(atts, uid=False, rev2=False)(view)
    except FetchError as exc:
        assert exc.code == "UNKNOWN-CTE"
        assert any(a.name.startswith("BINARY") for a in atts)
        return None
    assert b"".join(compile_fetch_chunks(atts, uid=False, rev2=False)(view)) == out
    return out


def dedup(atts: list[FetchAtt]) -> list[FetchAtt]:
    seen: set[bytes] = set()
    out = []
    for att in atts:
        if item_name(att) not in seen:
            seen.add(item_name(att))
            out.append(att)
    return out


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(messages, prefixes, st.lists(data_atts(), min_size=1, max_size=4))
def test_literals_are_framed_exactly(body: bytes, prefix: bytes, atts: list[FetchAtt]) -> None:
    out = render(make_view(body, prefix), atts)
    if out is not None:
        read_items(out, dedup(atts))


@SETTINGS
@given(messages, prefixes, data_atts(), st.integers(0, 400), st.integers(1, 400))
def test_partial_is_a_slice_of_the_whole(
    body: bytes, prefix: bytes, att: FetchAtt, origin: int, count: int
) -> None:
    if att.name not in ("BODY", "BINARY"):
        return
    view = make_view(body, prefix)
    whole_att = FetchAtt(att.name, att.section)
    part_att = FetchAtt(att.name, att.section, (origin, count))
    whole = render(view, [whole_att])
    if whole is None:
        return
    part = render(view, [part_att])
    assert part is not None
    (whole_data,) = read_items(whole, [whole_att])
    (part_data,) = read_items(part, [part_att])
    assert isinstance(whole_data, bytes)
    assert part_data == whole_data[origin : origin + count]


@SETTINGS
@given(messages, prefixes)
def test_body_is_the_stored_message(body: bytes, prefix: bytes) -> None:
    view = make_view(body, prefix)
    atts = [FetchAtt("BODY", Section()), FetchAtt("RFC822.SIZE")]
    out = compile_fetch(atts, uid=False, rev2=False)(view)
    expected = prefix + body
    assert out == (
        b"* 3 FETCH (BODY[] {%d}\r\n%b RFC822.SIZE %d)\r\n"
        % (len(expected), expected.replace(b"\x00", b"\x80"), len(expected))
    )


@SETTINGS
@given(st.binary(max_size=200), st.sampled_from(["base64", "quoted-printable"]), prefixes)
def test_binary_undoes_the_transfer_encoding(payload: bytes, cte: str, prefix: bytes) -> None:
    if cte == "base64":
        encoded = base64.encodebytes(payload)
    else:
        encoded = binascii.b2a_qp(payload, quotetabs=True, istext=False)
    for body in (
        b"Content-Transfer-Encoding: %b\r\n\r\n%b" % (cte.encode(), encoded),
        b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\n'
        b"Content-Transfer-Encoding: %b\r\n\r\n%b\r\n--q--\r\n" % (cte.encode(), encoded),
    ):
        view = make_view(body, prefix)
        atts = [FetchAtt("BINARY", Section((1,))), FetchAtt("BINARY.SIZE", Section((1,)))]
        out = render(view, atts)
        assert out is not None
        assert read_items(out, atts) == [payload, len(payload)]


_HEADER_LINES = st.sampled_from(
    [b"Subject: a", b"subject : b", b" folded", b"\tfolded", b"X-A: 1", b"X-AB: 2", b"From: c"]
)


@SETTINGS
@given(
    st.lists(_HEADER_LINES, max_size=8),
    st.sampled_from([b"\r\n", b"\n"]),
    st.booleans(),
    st.lists(st.sampled_from(["subject", "X-A", "FROM", "x-ab"]), min_size=1, max_size=3),
)
def test_header_fields_and_not_partition_the_header(
    lines: list[bytes], eol: bytes, blank: bool, names: list[str]
) -> None:
    header = b"".join(line + eol for line in lines)
    body = header + (eol + b"body" if blank else b"")
    view = make_view(body, b"")
    if parse_message(body).parts[0].body_start != len(header) + (len(eol) if blank else 0):
        return  # a leading continuation line: not a header the parser takes whole
    pick = FetchAtt("BODY", Section((), "HEADER.FIELDS", tuple(names)))
    drop = FetchAtt("BODY", Section((), "HEADER.FIELDS.NOT", tuple(names)))
    out = render(view, [pick, drop])
    assert out is not None
    picked, dropped = read_items(out, [pick, drop])
    assert isinstance(picked, bytes) and isinstance(dropped, bytes)
    assert picked.endswith(b"\r\n") and dropped.endswith(b"\r\n")
    assert sorted(header_fields(picked[:-2] + dropped[:-2])) == sorted(header_fields(header))
    wanted = {n.lower().encode() for n in names}
    for field in header_fields(picked[:-2]):
        assert field.split(b":")[0].strip().lower() in wanted


def header_fields(header: bytes) -> list[bytes]:
    """The fields of a header block (folded lines joined); orphan continuations and lines
    without a colon are no fields."""
    fields: list[bytes] = []
    orphan = True
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not orphan:
                fields[-1] += line
            continue
        fields.append(line)
        orphan = False
    return [f for f in fields if b":" in f.split(b"\n")[0]]
