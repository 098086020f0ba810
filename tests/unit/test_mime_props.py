"""Property tests for homing.mail.mime.

Invariants:
* `parse_message` accepts any bytes and never raises.
* Every PartSpan lies inside the message, has header_start <= body_start <= end, parts are
  numbered 1..n under their parent, siblings do not overlap, and children lie inside
  their parent (inside the embedded message for message/rfc822 parts).
* ENVELOPE, BODY and BODYSTRUCTURE are each exactly one balanced IMAP list that follows
  RFC 9051 §9 (`envelope`, `body`), BODY is BODYSTRUCTURE without extension data, and the
  sections the structure implies are exactly the sections of `parts`.
* For well-formed MIME trees (nested multiparts, message/rfc822, parameters, odd
  whitespace and folding), the part tree -- sections, content types and the bytes of
  every leaf body -- agrees with Python's `email` parser, used as an oracle.
* The address fast path gives the same bytes as the general address parser.
* encode_partmap / decode_partmap round-trip; imapfmt strings read back as their value.
"""

from __future__ import annotations

import email
import email.policy
import re
import string as string_module
from dataclasses import dataclass
from email.message import Message
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from homing.mail import imapfmt, mime
from homing.mail.mime import ParsedMessage, PartSpan, decode_partmap, encode_partmap, parse_message

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- IMAP reader

Value = None | int | bytes | list["Value"]


class ImapSyntaxError(Exception):
    pass


_ATOM = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\\]]+")


def read_imap(data: bytes) -> Value:
    """Read exactly one IMAP value (NIL, number, string, list) spanning all of `data`."""
    value, pos = _read_value(data, 0)
    if pos != len(data):
        raise ImapSyntaxError(f"trailing bytes at {pos}: {data[pos : pos + 20]!r}")
    return value


def _read_value(data: bytes, pos: int) -> tuple[Value, int]:
    if pos >= len(data):
        raise ImapSyntaxError("unexpected end")
    c = data[pos : pos + 1]
    if c == b"(":
        items: list[Value] = []
        pos += 1
        if data[pos : pos + 1] == b")":
            return items, pos + 1
        while True:
            item, pos = _read_value(data, pos)
            items.append(item)
            c = data[pos : pos + 1]
            if c == b")":
                return items, pos + 1
            if c == b"(" and data[pos - 1 : pos] == b")":
                continue  # 1*address, 1*body: lists follow each other without SP
            if c != b" ":
                raise ImapSyntaxError(f"expected SP or ) at {pos}: {data[pos : pos + 20]!r}")
            pos += 1
    if c == b'"':
        out = bytearray()
        pos += 1
        while True:
            if pos >= len(data):
                raise ImapSyntaxError("unterminated quoted string")
            ch = data[pos]
            if ch == 0x22:
                return bytes(out), pos + 1
            if ch == 0x5C:
                if data[pos + 1 : pos + 2] not in (b'"', b"\\"):
                    raise ImapSyntaxError("bad quoted-pair")
                out.append(data[pos + 1])
                pos += 2
                continue
            if ch in (0, 0x0D, 0x0A) or ch >= 0x80:
                raise ImapSyntaxError(f"octet {ch:#x} not allowed in a quoted string")
            out.append(ch)
            pos += 1
    if c == b"{":
        m = re.compile(rb"\{([0-9]+)\}\r\n").match(data, pos)
        if m is None:
            raise ImapSyntaxError("bad literal header")
        n = int(m.group(1))
        value = data[m.end() : m.end() + n]
        if len(value) != n or b"\x00" in value:
            raise ImapSyntaxError("bad literal")
        return value, m.end() + n
    m = _ATOM.match(data, pos)
    if m is None:
        raise ImapSyntaxError(f"unexpected {c!r} at {pos}")
    atom = m.group()
    if atom == b"NIL":
        return None, m.end()
    if atom.isdigit():
        return int(atom), m.end()
    raise ImapSyntaxError(f"unexpected atom {atom!r}")


# --------------------------------------------------------------------------- RFC 9051 §9


def _is_nstring(v: Value) -> bool:
    return v is None or isinstance(v, bytes)


def check_envelope(env: Value) -> None:
    assert isinstance(env, list) and len(env) == 10, env
    for i in (0, 1, 8, 9):
        assert _is_nstring(env[i])
    for addresses in env[2:8]:
        if addresses is None:
            continue
        assert isinstance(addresses, list) and addresses  # "(" 1*address ")"
        depth = 0
        for address in addresses:
            assert isinstance(address, list) and len(address) == 4
            assert all(_is_nstring(x) for x in address)
            name, route, mailbox, host = address
            if host is None and mailbox is not None:
                depth += 1  # group start
                assert name is None and route is None
            elif host is None:
                depth -= 1  # group end
                assert depth >= 0
            else:
                assert mailbox is not None
        assert depth == 0


def _check_params(v: Value) -> None:
    if v is not None:
        assert isinstance(v, list) and v and len(v) % 2 == 0
        assert all(isinstance(x, bytes) for x in v)


def _check_extension(items: list[Value]) -> None:
    assert len(items) == 4, items
    dsp, lang, loc = items[1], items[2], items[3]
    if dsp is not None:
        assert isinstance(dsp, list) and len(dsp) == 2 and isinstance(dsp[0], bytes)
        _check_params(dsp[1])
    if isinstance(lang, list):
        assert lang and all(isinstance(x, bytes) for x in lang)
    else:
        assert _is_nstring(lang)
    assert _is_nstring(loc)


@dataclass
class Body:
    """A parsed `body`: leaf type or multipart children, and where it sits."""

    mtype: bytes
    stype: bytes
    children: list[Body]
    inner: Body | None = None  # message/rfc822
    stripped: Value = None  # the same body without extension data


def check_body(v: Value, extended: bool) -> Body:
    """Validate `body` (RFC 9051 §9) and return its shape."""
    assert isinstance(v, list) and v, v
    if isinstance(v[0], list):  # body-type-mpart = 1*body SP media-subtype [SP ext]
        n = 0
        while n < len(v) and isinstance(v[n], list):
            n += 1
        children = [check_body(x, extended) for x in v[:n]]
        subtype = v[n]
        assert isinstance(subtype, bytes)
        rest = v[n + 1 :]
        if extended:
            _check_params(rest[0])
            _check_extension([None, *rest[1:]])
        else:
            assert rest == []
        stripped: list[Value] = [c.stripped for c in children]
        return Body(b"MULTIPART", subtype, children, None, [*stripped, subtype])
    mtype, stype, params, cid, desc, enc, size = v[:7]
    assert isinstance(mtype, bytes) and isinstance(stype, bytes)
    _check_params(params)
    assert _is_nstring(cid) and _is_nstring(desc) and isinstance(enc, bytes)
    assert isinstance(size, int) and size >= 0
    rest = v[7:]
    inner = None
    basic = list(v[:7])
    if mtype.upper() == b"TEXT":
        assert isinstance(rest[0], int)
        basic.append(rest[0])
        rest = rest[1:]
    elif mtype.upper() == b"MESSAGE" and stype.upper() in (b"RFC822", b"GLOBAL"):
        check_envelope(rest[0])
        inner = check_body(rest[1], extended)
        assert isinstance(rest[2], int)
        basic += [rest[0], inner.stripped, rest[2]]
        rest = rest[3:]
    if extended:
        assert _is_nstring(rest[0])  # body-fld-md5
        _check_extension(rest)
    else:
        assert rest == []
    return Body(mtype, stype, [], inner, basic)


def structure_sections(body: Body) -> list[tuple[str, str]]:
    """(section, type/subtype) for every part a client would see, per RFC 9051 §6.4.5."""
    out: list[tuple[str, str]] = []
    _message_sections(body, "", out)
    return out


def _message_sections(body: Body, prefix: str, out: list[tuple[str, str]]) -> None:
    if body.children:
        for i, child in enumerate(body.children, 1):
            _part_sections(child, f"{prefix}{i}", out)
    else:
        _part_sections(body, f"{prefix}1", out)


def _part_sections(body: Body, section: str, out: list[tuple[str, str]]) -> None:
    out.append((section, (body.mtype + b"/" + body.stype).decode("latin-1").lower()))
    for i, child in enumerate(body.children, 1):
        _part_sections(child, f"{section}.{i}", out)
    if body.inner is not None:
        _message_sections(body.inner, f"{section}.", out)


def check_invariants(data: bytes, parsed: ParsedMessage) -> list[tuple[str, str]]:
    """Everything that must hold for any input; returns the structure's sections."""
    check_envelope(read_imap(parsed.envelope))
    structure = check_body(read_imap(parsed.bodystructure), extended=True)
    plain = check_body(read_imap(parsed.body), extended=False)
    assert read_imap(parsed.body) == structure.stripped
    assert structure_sections(structure) == structure_sections(plain)
    sections = structure_sections(structure)

    parts = parsed.parts
    assert parts[0].section == "" and parts[0].header_start == 0 and parts[0].end == len(data)
    assert [p.section for p in parts[1:]] == [s for s, _ in sections]
    by_section = {p.section: p for p in parts}
    assert len(by_section) == len(parts)
    for p in parts:
        assert 0 <= p.header_start <= p.body_start <= p.end <= len(data), p
        if p.is_message:
            assert p.body_start <= p.text_start <= p.end, p
        else:
            assert p.text_start == -1
        if not p.section:
            continue
        parent_section, _, number = p.section.rpartition(".")
        parent = by_section[parent_section]
        if number != "1":
            previous = by_section[f"{parent_section}.{int(number) - 1}".lstrip(".")]
            assert previous.end <= p.header_start, (previous, p)
        assert parent.header_start <= p.header_start and p.end <= parent.end, (parent, p)
        if parent.is_message:
            assert p.header_start >= parent.body_start
    assert decode_partmap(encode_partmap(parts)) == parts
    return sections


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes_parse_with_invariants(data: bytes) -> None:
    check_invariants(data, parse_message(data))


@SETTINGS
@given(
    st.lists(
        st.sampled_from(
            [
                b"Content-Type: multipart/mixed; boundary=x\r\n",
                b"Content-Type: message/rfc822\n",
                b'Content-Type: multipart/digest; boundary="x"\r\n',
                b"Content-Type: text/plain; name*0*=utf-8''%41; name*1=b\r\n",
                b"From: a <b@c>, g: d@e;, (x) f\r\n",
                b"Subject: =?utf-8?q?a?= \xc3\xa9\r\n",
                b"\r\n",
                b"\n",
                b"--x\r\n",
                b"--x--\r\n",
                b"--x\n",
                b"body line\r\n",
                b" folded\r\n",
                b"\r",
                b"\x00",
                b"\xff",
            ]
        ),
        max_size=40,
    )
)
def test_mime_shaped_garbage(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    check_invariants(data, parse_message(data))


# --------------------------------------------------------------------------- MIME trees


@dataclass
class Leaf:
    headers: list[bytes]
    body: list[bytes]  # lines without line ends
    ctype: str | None  # what the stdlib should report, None = default


@dataclass
class Multi:
    headers: list[bytes]
    subtype: str
    boundary: str
    parts: list[Node]
    preamble: list[bytes]
    epilogue: list[bytes]
    close: bool


@dataclass
class Msg:
    headers: list[bytes]
    inner: Node  # the embedded message (its own headers are in the node)


Node = Leaf | Multi | Msg

_SAFE_LINE = st.lists(
    st.sampled_from(list(string_module.ascii_letters + string_module.digits + " .,:;=\t\"'-"))
    | st.sampled_from(["\xe9", "\xff"]),
    max_size=30,
).map(lambda cs: ("x" + "".join(cs)).encode("latin-1"))
_LINES = st.lists(_SAFE_LINE, max_size=5)
_BCHARS = string_module.ascii_letters + string_module.digits + "'()+_,-./:=?"
_FIELD_NAME_CASE = st.sampled_from(["Content-Type", "content-type", "CONTENT-TYPE"])


@st.composite
def _content_type(draw: Any, mtype: str, params: list[tuple[str, str]]) -> bytes:
    """A Content-Type field with varied case, spacing, quoting and folding."""
    name = draw(_FIELD_NAME_CASE)
    shown = draw(st.sampled_from([mtype, mtype.upper(), mtype.title()]))
    out = f"{name}:{draw(st.sampled_from([' ', '', '   ', chr(9)]))}{shown}"
    for key, value in params:
        sep = draw(st.sampled_from(["; ", ";", ";\r\n\t", ";\r\n ", " ; "]))
        quote = draw(st.booleans()) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", value)
        shown_value = f'"{value}"' if quote else value
        out += f"{sep}{key}={shown_value}"
    return out.encode("latin-1")


@st.composite
def _leaf(draw: Any, in_digest: bool) -> Leaf:
    kind = draw(st.sampled_from(["text/plain", "text/html", "application/pdf", "image/png", None]))
    headers: list[bytes] = []
    if kind is not None:
        params = [("charset", "utf-8")] if kind.startswith("text/") and draw(st.booleans()) else []
        if draw(st.booleans()):
            params.append(("name", draw(st.sampled_from(["a b.txt", "x.pdf", "r;e.png"]))))
        headers.append(draw(_content_type(kind, params)))
    if draw(st.booleans()):
        headers.append(b"Content-Transfer-Encoding: " + draw(st.sampled_from([b"7bit", b"base64"])))
    if draw(st.booleans()):
        headers.append(b'Content-Disposition: attachment; filename="f.bin"')
    if draw(st.booleans()):
        headers.append(b"X-Extra: value\r\n  folded")
    ctype = kind or ("message/rfc822" if in_digest else "text/plain")
    if kind is None and in_digest:
        # A digest default is message/rfc822: give it a body that is a message.
        return Leaf(headers, [b"Subject: in digest", b"", *draw(_LINES)], ctype)
    return Leaf(headers, draw(_LINES), ctype)


def _tree(counter: list[int], unclosed: bool) -> Any:
    def extend(children: Any) -> Any:
        return st.one_of(_multi(children, counter, unclosed), _message(children))

    return st.recursive(_leaf(False), extend, max_leaves=6)


@st.composite
def _multi(draw: Any, children: Any, counter: list[int], unclosed: bool) -> Multi:
    subtype = draw(st.sampled_from(["mixed", "alternative", "related", "digest"]))
    counter[0] += 1
    suffix = draw(st.text(_BCHARS, max_size=12))
    boundary = f"=_b{counter[0]}_{suffix}"
    parts = draw(
        st.lists(
            _leaf(subtype == "digest") if subtype == "digest" else children, min_size=1, max_size=3
        )
    )
    params = [("boundary", boundary)]
    if draw(st.booleans()):
        params.insert(0, ("type", "text/plain"))
    headers = [draw(_content_type(f"multipart/{subtype}", params))]
    if draw(st.integers(0, 4)) == 0 and re.fullmatch(r"[A-Za-z0-9=_]+", boundary):
        # RFC 2231 continuation of the boundary parameter.
        half = len(boundary) // 2
        headers = [
            f'Content-Type: multipart/{subtype};\r\n boundary*0="{boundary[:half]}";'
            f'\r\n boundary*1="{boundary[half:]}"'.encode()
        ]
    close = not unclosed or draw(st.booleans())
    return Multi(headers, subtype, boundary, parts, draw(_LINES), draw(_LINES), close)


@st.composite
def _message(draw: Any, children: Any) -> Msg:
    inner = draw(children)
    envelope = [b"Subject: inner " + draw(_SAFE_LINE), b"From: Someone <some@example.org>"]
    inner.headers = envelope + inner.headers
    return Msg([draw(_content_type("message/rfc822", []))], inner)


def render(node: Node, nl: bytes) -> bytes:
    def header(lines: list[bytes]) -> bytes:
        return b"".join(line.replace(b"\r\n", nl) + nl for line in lines) + nl

    def text(lines: list[bytes]) -> bytes:
        return b"".join(line + nl for line in lines)

    if isinstance(node, Leaf):
        return header(node.headers) + nl.join(node.body)
    if isinstance(node, Msg):
        return header(node.headers) + render(node.inner, nl)
    delimiter = b"--" + node.boundary.encode()
    out = header(node.headers) + text(node.preamble)
    for part in node.parts:
        out += delimiter + nl + render(part, nl) + nl
    if node.close:
        out += delimiter + b"--" + nl + text(node.epilogue)
    return out


@st.composite
def messages(draw: Any, unclosed: bool = False) -> tuple[bytes, Node]:
    """A rendered MIME tree. Python's email drops the last line end of the last part of
    a multipart without close delimiter (we keep it), so the oracle test uses closed ones.
    """
    counter = [0]
    root = draw(_tree(counter, unclosed))
    root.headers = [b"From: a@example.org", b"Subject: test", *root.headers]
    nl = draw(st.sampled_from([b"\r\n", b"\n"]))
    return render(root, nl), root


def oracle_parts(msg: Message) -> list[tuple[str, str, bytes | None]]:
    """(section, content type, leaf body) as Python's email parser sees the message."""
    out: list[tuple[str, str, bytes | None]] = []
    _oracle_message(msg, "", out)
    return out


def _oracle_message(msg: Any, prefix: str, out: list[tuple[str, str, bytes | None]]) -> None:
    if msg.get_content_maintype() == "multipart":
        for i, child in enumerate(msg.get_payload(), 1):
            _oracle_part(child, f"{prefix}{i}", out)
    else:
        _oracle_part(msg, f"{prefix}1", out)


def _oracle_part(msg: Any, section: str, out: list[tuple[str, str, bytes | None]]) -> None:
    ctype = msg.get_content_type()
    if msg.get_content_maintype() == "multipart":
        out.append((section, ctype, None))
        for i, child in enumerate(msg.get_payload(), 1):
            _oracle_part(child, f"{section}.{i}", out)
    elif ctype == "message/rfc822":
        out.append((section, ctype, None))
        _oracle_message(msg.get_payload(0), f"{section}.", out)
    else:
        payload = msg._payload  # get_payload() re-decodes 8-bit text; we want the raw octets
        assert isinstance(payload, str)
        out.append((section, ctype, payload.encode("ascii", "surrogateescape")))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_part_tree_agrees_with_stdlib(sample: tuple[bytes, Node]) -> None:
    data, _ = sample
    parsed = parse_message(data)
    sections = check_invariants(data, parsed)
    expected = oracle_parts(email.message_from_bytes(data, policy=email.policy.compat32))
    assert [(s, t) for s, t, _ in expected] == sections
    spans = {p.section: p for p in parsed.parts}
    for section, _, body in expected:
        if body is not None:
            span = spans[section]
            assert data[span.body_start : span.end] == body, section


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(unclosed=True), st.data())
def test_damaged_messages_keep_invariants(sample: tuple[bytes, Node], draw: st.DataObject) -> None:
    data = bytearray(sample[0])
    for _ in range(draw.draw(st.integers(1, 4))):
        if not data:
            break
        i = draw.draw(st.integers(0, len(data) - 1))
        action = draw.draw(st.sampled_from(["cut", "flip", "dup", "drop"]))
        if action == "cut":
            del data[i:]
        elif action == "flip":
            data[i] = draw.draw(st.sampled_from([0x0A, 0x0D, 0x2D, 0x22, 0x3B, 0x00, 0xFF]))
        elif action == "dup":
            data[i:i] = data[i : i + draw.draw(st.integers(1, 40))]
        else:
            del data[i : i + draw.draw(st.integers(1, 10))]
    check_invariants(bytes(data), parse_message(bytes(data)))


# --------------------------------------------------------------------------- pieces

_ATEXT_WORD = st.text(
    string_module.ascii_letters + string_module.digits + "!#$%&'*+-/=?^_`{|}~",
    min_size=1,
    max_size=8,
)
_DOMAIN = st.lists(
    st.text(string_module.ascii_letters + string_module.digits + "-", min_size=1, max_size=6),
    min_size=1,
    max_size=3,
).map(".".join)


@st.composite
def _address(draw: Any) -> str:
    addr = f"{draw(_ATEXT_WORD)}@{draw(_DOMAIN)}"
    form = draw(st.integers(0, 4))
    if form == 0:
        return addr
    if form == 1:
        return f"{draw(_ATEXT_WORD)} {draw(_ATEXT_WORD)} <{addr}>"
    if form == 2:
        name = draw(st.text(string_module.ascii_letters + " ,.:;<>@()", max_size=10))
        return f'"{name}" <{addr}>'
    if form == 3:
        return f"<{addr}>"
    return f"  {draw(_ATEXT_WORD)}\t <{addr}>  "


@SETTINGS
@given(st.lists(_address(), min_size=1, max_size=4), st.sampled_from([",", ", ", " ,\t"]))
def test_address_fast_path_matches_general_parser(addresses: list[str], sep: str) -> None:
    value = sep.join(addresses).encode()
    assert mime._addresses(value) == mime._address_list(mime._parse_address_list(value))


@SETTINGS
@given(st.binary(max_size=200))
def test_address_parser_total(value: bytes) -> None:
    wire = mime._addresses(value)
    parsed = read_imap(b"(NIL NIL %b NIL NIL NIL NIL NIL NIL NIL)" % wire)
    check_envelope(parsed)


@SETTINGS
@given(st.binary(max_size=100))
def test_imap_string_reads_back(value: bytes) -> None:
    assert read_imap(imapfmt.string(value)) == value.replace(b"\x00", b"")


@SETTINGS
@given(
    st.text(string_module.ascii_letters + string_module.digits + " %", min_size=1, max_size=40),
    st.integers(1, 5),
    st.data(),
)
def test_rfc2231_continuations_merge(value: str, pieces: int, draw: st.DataObject) -> None:
    cuts = sorted(
        draw.draw(st.lists(st.integers(0, len(value)), min_size=pieces - 1, max_size=pieces - 1))
    )
    chunks = [value[a:b] for a, b in zip([0, *cuts], [*cuts, len(value)], strict=True)]
    order = draw.draw(st.permutations(range(len(chunks))))
    params = "; ".join(f'title*{i}="{chunks[i]}"' for i in order)
    data = f"Content-Type: text/plain; {params}\r\n\r\n".encode()
    structure = read_imap(parse_message(data).bodystructure)
    assert isinstance(structure, list)
    assert structure[2] == [b"TITLE", value.encode(), b"CHARSET", b"US-ASCII"]


@FEW
@given(
    st.lists(
        st.builds(
            PartSpan,
            st.text("0123456789.", max_size=12),
            st.integers(0, 2**40),
            st.integers(0, 2**40),
            st.integers(0, 2**40),
            st.booleans(),
            st.integers(-1, 2**40),
        ),
        max_size=20,
    ).map(tuple)
)
def test_partmap_round_trip(parts: tuple[PartSpan, ...]) -> None:
    assert decode_partmap(encode_partmap(parts)) == parts


def test_reader_rejects_unbalanced() -> None:
    for bad in (b"(", b"(NIL", b"NIL)", b'("a"', b"(NIL NIL))", b"{3}\r\nab", b'"\xff"'):
        try:
            read_imap(bad)
        except ImapSyntaxError:
            continue
        raise AssertionError(bad)


def test_generated_messages_are_mime() -> None:
    """The oracle test is only meaningful if the generator makes real multiparts."""
    seen: set[str] = set()

    @settings(max_examples=25, deadline=None, database=None)
    @given(messages())
    def collect(sample: tuple[bytes, Node]) -> None:
        assume(b"multipart" in sample[0].lower())
        msg = email.message_from_bytes(sample[0], policy=email.policy.compat32)
        seen.update(part.get_content_type() for part in msg.walk())

    collect()
    assert {"message/rfc822", "text/plain"} <= seen
    assert any(t.startswith("multipart/") for t in seen)
