"""Table tests for homing.proto.imap.fetch: exact FETCH response bytes for every item."""

from __future__ import annotations

import time

import pytest

from homing.mail.mime import encode_partmap, parse_message
from homing.proto.imap.fetch import (
    FetchError,
    MessageView,
    compile_fetch,
    compile_fetch_chunks,
    format_flags,
    format_internaldate,
    needs_data,
    needs_parse,
    render_fetch,
    render_fetch_chunks,
    sets_seen,
)
from homing.proto.imap.grammar import RawCommand, parse_command
from homing.proto.imap.types import Fetch, FetchAtt, Section


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def lit(data: bytes) -> bytes:
    return b"{%d}\r\n%b" % (len(data), data)


PREFIX = crlf("Return-Path: <alice@example.org>\nDelivered-To: bob@example.net\n")
HEADER = crlf(
    "From: Alice <alice@example.org>\n"
    "To: bob@example.net\n"
    "Subject: Test\n"
    " folded\n"
    "Date: Tue, 2 Jan 2024 10:00:00 +0000\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="b1"\n'
    "\n"
)
PART1_MIME = crlf(
    "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
)
PART1 = crlf("caf=C3=A9 =\nsoft")
PART2_MIME = crlf("Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n")
PART2 = b"AAECAwQ="
PART3_MIME = crlf("Content-Type: message/rfc822\n\n")
INNER_HEADER = crlf(
    "From: Carol <carol@example.com>\n"
    "Subject: Inner\n"
    "Content-Type: multipart/alternative; boundary=b2\n"
    "\n"
)
INNER_TEXT = crlf(
    "--b2\nContent-Type: text/plain\n\ninner text\n"
    "--b2\nContent-Type: text/html\n\n<p>inner</p>\n--b2--"
)
TEXT = (
    crlf("preamble\n--b1\n")
    + PART1_MIME
    + PART1
    + crlf("\n--b1\n")
    + PART2_MIME
    + PART2
    + crlf("\n--b1\n")
    + PART3_MIME
    + INNER_HEADER
    + INNER_TEXT
    + crlf("\n--b1--\n")
)
BODY = HEADER + TEXT
MESSAGE = PREFIX + BODY


def view(
    body: bytes = BODY,
    prefix: bytes | None = PREFIX,
    *,
    flags: frozenset[str] = frozenset({"\\Seen", "$Work"}),
    partmap: bytes | None = None,
    loaded: bool = True,
) -> MessageView:
    parsed = parse_message(body)
    return MessageView(
        seq=3,
        uid=7,
        flags=flags,
        internaldate=1704189600.0,  # 2024-01-02 10:00:00 UTC
        size=len(prefix or b"") + len(body),
        modseq=12,
        envelope=parsed.envelope,
        bodystructure=parsed.bodystructure,
        body_nx=parsed.body,
        partmap=encode_partmap(parsed.parts) if partmap is None else partmap,
        prefix=prefix if loaded else None,
        body=body if loaded else None,
    )


def body_att(
    part: tuple[int, ...] = (),
    text: str | None = None,
    fields: tuple[str, ...] = (),
    partial: tuple[int, int] | None = None,
    *,
    peek: bool = False,
    name: str = "BODY",
) -> FetchAtt:
    return FetchAtt(name, Section(part, text, fields), partial, peek)


def fetch(*atts: FetchAtt, uid: bool = False, v: MessageView | None = None) -> bytes:
    return render_fetch(v or view(), atts, uid=uid, rev2=False)


def one(att: FetchAtt, v: MessageView | None = None) -> bytes:
    """The response to a FETCH of `att` alone, without the "* 3 FETCH (" and ")\\r\\n"."""
    out = fetch(att, v=v)
    assert out.startswith(b"* 3 FETCH (") and out.endswith(b")\r\n")
    return out[len(b"* 3 FETCH (") : -3]


# --------------------------------------------------------------------------- the fixture itself


def test_fixture_parts() -> None:
    parts = {p.section: p for p in parse_message(BODY).parts}
    assert sorted(parts) == ["", "1", "2", "3", "3.1", "3.2"]
    assert BODY[parts["1"].body_start : parts["1"].end] == PART1
    assert BODY[parts["3"].body_start : parts["3"].text_start] == INNER_HEADER


# --------------------------------------------------------------------------- metadata items


def test_metadata_items_in_requested_order() -> None:
    out = fetch(
        FetchAtt("FLAGS"),
        FetchAtt("UID"),
        FetchAtt("INTERNALDATE"),
        FetchAtt("RFC822.SIZE"),
        FetchAtt("MODSEQ"),
    )
    assert out == (
        b'* 3 FETCH (FLAGS (\\Seen $Work) UID 7 INTERNALDATE "02-Jan-2024 10:00:00 +0000" '
        b"RFC822.SIZE %d MODSEQ (12))\r\n" % len(MESSAGE)
    )


def test_uid_fetch_puts_uid_first_when_not_requested() -> None:
    assert fetch(FetchAtt("FLAGS"), uid=True) == b"* 3 FETCH (UID 7 FLAGS (\\Seen $Work))\r\n"
    assert fetch(FetchAtt("FLAGS"), FetchAtt("UID"), uid=True) == (
        b"* 3 FETCH (FLAGS (\\Seen $Work) UID 7)\r\n"
    )


def test_parse_results_are_passed_through() -> None:
    parsed = parse_message(BODY)
    assert one(FetchAtt("ENVELOPE")) == b"ENVELOPE " + parsed.envelope
    assert one(FetchAtt("BODYSTRUCTURE")) == b"BODYSTRUCTURE " + parsed.bodystructure
    assert one(FetchAtt("BODY")) == b"BODY " + parsed.body
    assert parsed.envelope.startswith(b'("Tue, 2 Jan 2024 10:00:00 +0000" "Test folded" ')


def test_metadata_fetch_does_not_need_the_message() -> None:
    v = view(loaded=False)
    atts = [FetchAtt("UID"), FetchAtt("FLAGS"), FetchAtt("RFC822.SIZE"), FetchAtt("ENVELOPE")]
    expected = b"* 3 FETCH (UID 7 FLAGS (\\Seen $Work) RFC822.SIZE %d ENVELOPE %b)\r\n" % (
        len(MESSAGE),
        v.envelope,
    )
    assert render_fetch(v, atts, uid=True, rev2=True) == expected
    assert b"".join(render_fetch_chunks(v, atts, uid=True, rev2=True)) == expected


def test_duplicates_are_answered_once() -> None:
    out = fetch(FetchAtt("FLAGS"), FetchAtt("FLAGS"), body_att((1,), peek=True), body_att((1,)))
    assert out == b"* 3 FETCH (FLAGS (\\Seen $Work) BODY[1] " + lit(PART1) + b")\r\n"


def test_empty_flags() -> None:
    assert fetch(FetchAtt("FLAGS"), v=view(flags=frozenset())) == b"* 3 FETCH (FLAGS ())\r\n"


def test_format_flags_order_is_stable() -> None:
    flags = frozenset({"$Label1", "\\Seen", "\\Answered", "Junk", "\\Recent"})
    assert format_flags(flags) == b"(\\Answered \\Recent \\Seen $Label1 Junk)"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (0, b'"01-Jan-1970 00:00:00 +0000"'),
        (951868799.9, b'"29-Feb-2000 23:59:59 +0000"'),
        (1704189600, b'"02-Jan-2024 10:00:00 +0000"'),
        (-1, b'"01-Jan-1970 00:00:00 +0000"'),  # clamped
        (1e20, b'"31-Dec-9999 23:59:59 +0000"'),  # clamped
    ],
)
def test_format_internaldate(ts: float, expected: bytes) -> None:
    assert format_internaldate(ts) == expected


# --------------------------------------------------------------------------- body sections


@pytest.mark.parametrize(
    ("att", "expected"),
    [
        (body_att(), b"BODY[] " + lit(MESSAGE)),
        (FetchAtt("RFC822"), b"RFC822 " + lit(MESSAGE)),
        (body_att(text="HEADER"), b"BODY[HEADER] " + lit(PREFIX + HEADER)),
        (FetchAtt("RFC822.HEADER"), b"RFC822.HEADER " + lit(PREFIX + HEADER)),
        (body_att(text="TEXT"), b"BODY[TEXT] " + lit(TEXT)),
        (FetchAtt("RFC822.TEXT"), b"RFC822.TEXT " + lit(TEXT)),
        (body_att((1,)), b"BODY[1] " + lit(PART1)),
        (body_att((1,), "MIME"), b"BODY[1.MIME] " + lit(PART1_MIME)),
        (body_att((2,)), b"BODY[2] " + lit(PART2)),
        (body_att((3,)), b"BODY[3] " + lit(INNER_HEADER + INNER_TEXT)),
        (body_att((3,), "MIME"), b"BODY[3.MIME] " + lit(PART3_MIME)),
        (body_att((3,), "HEADER"), b"BODY[3.HEADER] " + lit(INNER_HEADER)),
        (body_att((3,), "TEXT"), b"BODY[3.TEXT] " + lit(INNER_TEXT)),
        (body_att((3, 1)), b"BODY[3.1] " + lit(b"inner text")),
        (body_att((3, 2)), b"BODY[3.2] " + lit(b"<p>inner</p>")),
        (body_att((3, 2), "MIME"), b"BODY[3.2.MIME] " + lit(crlf("Content-Type: text/html\n\n"))),
        (
            body_att((3,), "HEADER.FIELDS", ("subject",)),
            b"BODY[3.HEADER.FIELDS (subject)] " + lit(crlf("Subject: Inner\n\n")),
        ),
        # Fields in message order, folded lines kept, the prefix's trace fields included.
        (
            body_att(text="HEADER.FIELDS", fields=("SUBJECT", "Delivered-To")),
            b"BODY[HEADER.FIELDS (SUBJECT Delivered-To)] "
            + lit(crlf("Delivered-To: bob@example.net\nSubject: Test\n folded\n\n")),
        ),
        (
            body_att(text="HEADER.FIELDS.NOT", fields=("subject", "return-path", "content-type")),
            b"BODY[HEADER.FIELDS.NOT (subject return-path content-type)] "
            + lit(
                crlf(
                    "Delivered-To: bob@example.net\nFrom: Alice <alice@example.org>\n"
                    "To: bob@example.net\nDate: Tue, 2 Jan 2024 10:00:00 +0000\n"
                    "MIME-Version: 1.0\n\n"
                )
            ),
        ),
        (
            body_att(text="HEADER.FIELDS", fields=("X-Absent",)),
            b"BODY[HEADER.FIELDS (X-Absent)] " + lit(b"\r\n"),
        ),
        # Sections that do not exist are empty strings.
        (body_att((4,)), b"BODY[4] {0}\r\n"),
        (body_att((1,), "HEADER"), b"BODY[1.HEADER] {0}\r\n"),
        (body_att((1,), "TEXT"), b"BODY[1.TEXT] {0}\r\n"),
        (body_att((3, 1, 2)), b"BODY[3.1.2] {0}\r\n"),
        (body_att((9, 9), "MIME"), b"BODY[9.9.MIME] {0}\r\n"),
    ],
)
def test_body_sections(att: FetchAtt, expected: bytes) -> None:
    assert one(att) == expected


@pytest.mark.parametrize(
    ("att", "expected"),
    [
        (body_att(partial=(0, 6)), b"BODY[]<0> " + lit(b"Return")),
        # Across the prefix / body boundary.
        (
            body_att(partial=(len(PREFIX) - 2, 8)),
            b"BODY[]<%d> " % (len(PREFIX) - 2) + lit(b"\r\nFrom: "),
        ),
        # Clipped at the end; origin at and beyond the end: empty.
        (
            body_att(partial=(len(MESSAGE) - 3, 100)),
            b"BODY[]<%d> " % (len(MESSAGE) - 3) + lit(b"-\r\n"),
        ),
        (body_att(partial=(len(MESSAGE), 1)), b"BODY[]<%d> {0}\r\n" % len(MESSAGE)),
        (body_att(partial=(2**63 - 1, 2**63 - 1)), b"BODY[]<%d> {0}\r\n" % (2**63 - 1)),
        (body_att((1,), partial=(5, 100)), b"BODY[1]<5> " + lit(PART1[5:])),
        (body_att((1,), partial=(4, 1)), b"BODY[1]<4> " + lit(b"C")),
        (body_att((3,), "TEXT", partial=(0, 4)), b"BODY[3.TEXT]<0> " + lit(b"--b2")),
        (
            body_att(text="HEADER.FIELDS", fields=("subject",), partial=(9, 100)),
            b"BODY[HEADER.FIELDS (subject)]<9> " + lit(crlf("Test\n folded\n\n")),
        ),
        (body_att((4,), partial=(0, 10)), b"BODY[4]<0> {0}\r\n"),
        (FetchAtt("BODY", Section((1,)), (0, 3), peek=True), b"BODY[1]<0> " + lit(b"caf")),
    ],
)
def test_partial_fetches(att: FetchAtt, expected: bytes) -> None:
    assert one(att) == expected


def test_prefix_shifts_offsets_but_not_part_data() -> None:
    bare = view(prefix=None)
    for att in (body_att((1,)), body_att((3,), "HEADER"), body_att(text="TEXT")):
        assert one(att, bare) == one(att)
    assert one(body_att(text="HEADER"), bare) == b"BODY[HEADER] " + lit(HEADER)
    assert one(body_att(), bare) == b"BODY[] " + lit(BODY)
    assert one(body_att(partial=(0, 4)), bare) == b"BODY[]<0> " + lit(b"From")


def test_single_part_message_part_one_is_the_body() -> None:
    body = crlf("Subject: x\nContent-Transfer-Encoding: base64\n\naGVsbG8=\n")
    v = view(body)
    assert one(body_att((1,)), v) == b"BODY[1] " + lit(b"aGVsbG8=\r\n")
    # Part 1's MIME header is the message header, so the trace fields come with it.
    assert one(body_att((1,), "MIME"), v) == b"BODY[1.MIME] " + lit(
        PREFIX + crlf("Subject: x\nContent-Transfer-Encoding: base64\n\n")
    )
    assert one(body_att((2,)), v) == b"BODY[2] {0}\r\n"
    assert one(body_att((1,), name="BINARY"), v) == b"BINARY[1] " + lit(b"hello")


def test_message_without_body_or_blank_line() -> None:
    v = view(b"Subject: no body")
    assert one(body_att(text="HEADER"), v) == b"BODY[HEADER] " + lit(PREFIX + b"Subject: no body")
    assert one(body_att(text="TEXT"), v) == b"BODY[TEXT] {0}\r\n"
    fields = body_att(text="HEADER.FIELDS", fields=("subject",))
    assert one(fields, v) == b"BODY[HEADER.FIELDS (subject)] " + lit(b"Subject: no body\r\n\r\n")
    empty = view(b"", prefix=b"")
    assert one(body_att(), empty) == b"BODY[] {0}\r\n"
    assert one(body_att(text="HEADER"), empty) == b"BODY[HEADER] {0}\r\n"


def test_nul_octets_are_sent_as_0x80_in_body_sections() -> None:
    body = b"Subject: x\r\n\r\na\x00b\x00"
    assert one(body_att(text="TEXT"), view(body)) == b"BODY[TEXT] " + lit(b"a\x80b\x80")
    assert one(body_att(), view(body, b"")) == b"BODY[] " + lit(body.replace(b"\x00", b"\x80"))


def test_header_fields_names_are_case_insensitive_and_lines_kept_verbatim() -> None:
    body = (
        b"X-A: 1\r\nx-a : 2\r\n folded\r\nX-AB: 9\r\nX-B: 3\r\n\tmore\r\n"
        b"not a field line\r\nX-A:3\r\n\r\nbody"
    )
    v = view(body, b"")
    assert one(body_att(text="HEADER.FIELDS", fields=("x-A",)), v) == (
        b"BODY[HEADER.FIELDS (x-A)] " + lit(b"X-A: 1\r\nx-a : 2\r\n folded\r\n\r\n")
    )
    assert one(body_att(text="HEADER.FIELDS.NOT", fields=("x-A",)), v) == (
        b"BODY[HEADER.FIELDS.NOT (x-A)] " + lit(b"X-AB: 9\r\nX-B: 3\r\n\tmore\r\n\r\n")
    )
    # A header that runs to the end of the message (no blank line, no final CRLF).
    v = view(b"A: 1\r\nB: 2\r\n x", b"")
    assert one(body_att(text="HEADER.FIELDS", fields=("b",)), v) == (
        b"BODY[HEADER.FIELDS (b)] " + lit(b"B: 2\r\n x\r\n\r\n")
    )
    assert one(body_att(text="HEADER.FIELDS.NOT", fields=("a",)), v) == (
        b"BODY[HEADER.FIELDS.NOT (a)] " + lit(b"B: 2\r\n x\r\n\r\n")
    )


def test_header_fields_echo_quotes_odd_field_names() -> None:
    out = one(body_att(text="HEADER.FIELDS", fields=("Odd Name",)))
    assert out == b'BODY[HEADER.FIELDS ("Odd Name")] ' + lit(b"\r\n")


# --------------------------------------------------------------------------- BINARY (RFC 3516)


@pytest.mark.parametrize(
    ("att", "expected"),
    [
        (body_att((1,), name="BINARY"), b"BINARY[1] " + lit("café soft".encode())),
        (body_att((2,), name="BINARY"), b"BINARY[2] ~{5}\r\n\x00\x01\x02\x03\x04"),
        (body_att((2,), name="BINARY", partial=(1, 2)), b"BINARY[2]<1> " + lit(b"\x01\x02")),
        (body_att((2,), name="BINARY", partial=(0, 1)), b"BINARY[2]<0> ~{1}\r\n\x00"),
        (body_att((2,), name="BINARY", partial=(9, 1)), b"BINARY[2]<9> {0}\r\n"),
        (body_att((2,), name="BINARY.SIZE"), b"BINARY.SIZE[2] 5"),
        (body_att((1,), name="BINARY.SIZE"), b"BINARY.SIZE[1] 10"),
        (body_att((3,), name="BINARY"), b"BINARY[3] " + lit(INNER_HEADER + INNER_TEXT)),
        (body_att((3, 1), name="BINARY"), b"BINARY[3.1] " + lit(b"inner text")),
        (body_att(name="BINARY"), b"BINARY[] " + lit(MESSAGE)),
        (body_att((7,), name="BINARY"), b"BINARY[7] {0}\r\n"),
        (body_att((7,), name="BINARY.SIZE"), b"BINARY.SIZE[7] 0"),
    ],
)
def test_binary(att: FetchAtt, expected: bytes) -> None:
    assert one(att) == expected


def test_binary_base64_is_decoded_leniently() -> None:
    for encoded, decoded in [
        (b"aGVs\r\nbG8=\r\n", b"hello"),
        (b"aGVsbG8", b"hello"),  # missing padding
        (b"aG!!VsbG8=garbage", b"hello"),  # junk skipped, stops at padding
        (b"a", b""),  # a lone character carries no octet
        (b"", b""),
    ]:
        body = b"Content-Transfer-Encoding: BASE64\r\n\r\n" + encoded
        assert one(body_att((1,), name="BINARY"), view(body, b"")) == b"BINARY[1] " + lit(decoded)


def test_binary_identity_encodings() -> None:
    for cte in ("7bit", "8BIT", "binary", "7bit (comment)"):
        body = b"Content-Transfer-Encoding: %b\r\n\r\n\xff\xfe" % cte.encode()
        assert one(body_att((1,), name="BINARY"), view(body, b"")) == b"BINARY[1] {2}\r\n\xff\xfe"


def test_binary_unknown_encoding_is_refused() -> None:
    body = b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
    with pytest.raises(FetchError) as info:
        fetch(body_att((1,), name="BINARY"), v=view(body))
    assert info.value.code == "UNKNOWN-CTE"
    assert info.value.response("a1") == b"a1 NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding\r\n"
    # BODY of the same part is fine: only BINARY decodes.
    assert one(body_att((1,)), view(body)) == b"BODY[1] " + lit(b"begin 644 x\r\n")


def test_binary_refused_when_not_offered() -> None:
    with pytest.raises(FetchError) as info:
        compile_fetch([body_att((1,), name="BINARY")], uid=False, rev2=False, binary_ok=False)
    assert info.value.bad
    assert info.value.response("b") == b"b BAD BINARY is not available\r\n"


# --------------------------------------------------------------------------- robustness


def test_damaged_partmap_falls_back_to_parsing() -> None:
    for partmap in (b"", b"P1garbage"):
        v = view(partmap=partmap)
        assert one(body_att((3, 1)), v) == b"BODY[3.1] " + lit(b"inner text")


def test_missing_bytes_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="needs_data"):
        fetch(body_att((1,)), v=view(loaded=False))


def test_unknown_attribute_is_refused() -> None:
    with pytest.raises(FetchError):
        compile_fetch([FetchAtt("X-UNKNOWN")], uid=False, rev2=False)


# --------------------------------------------------------------------------- what to load


@pytest.mark.parametrize(
    ("att", "data", "parse", "seen"),
    [
        (FetchAtt("UID"), False, False, False),
        (FetchAtt("FLAGS"), False, False, False),
        (FetchAtt("INTERNALDATE"), False, False, False),
        (FetchAtt("RFC822.SIZE"), False, False, False),
        (FetchAtt("MODSEQ"), False, False, False),
        (FetchAtt("ENVELOPE"), False, True, False),
        (FetchAtt("BODYSTRUCTURE"), False, True, False),
        (FetchAtt("BODY"), False, True, False),
        (FetchAtt("RFC822"), True, False, True),
        (FetchAtt("RFC822.HEADER"), True, True, False),
        (FetchAtt("RFC822.TEXT"), True, True, True),
        (body_att(), True, False, True),
        (body_att(peek=True), True, False, False),
        (body_att(partial=(0, 10), peek=True), True, False, False),
        (body_att((1,), peek=True), True, True, False),
        (body_att(text="HEADER"), True, True, True),
        (body_att((1,), name="BINARY"), True, True, True),
        (body_att((1,), name="BINARY", peek=True), True, True, False),
        (body_att((1,), name="BINARY.SIZE"), True, True, False),
    ],
)
def test_needs(att: FetchAtt, data: bool, parse: bool, seen: bool) -> None:
    assert needs_data([att]) is data
    assert needs_parse([att]) is parse
    assert sets_seen([att]) is seen


# --------------------------------------------------------------------------- from the wire


def test_parsed_command_renders_as_rfc9051_example() -> None:
    cmd = parse_command(
        RawCommand((b"a FETCH 3 (FLAGS BODY.PEEK[HEADER.FIELDS (DATE FROM)] BODY[1]<0.4>)",))
    )
    assert isinstance(cmd, Fetch)
    assert render_fetch(view(), cmd.attributes, uid=False, rev2=False) == (
        b"* 3 FETCH (FLAGS (\\Seen $Work) BODY[HEADER.FIELDS (DATE FROM)] "
        + lit(crlf("From: Alice <alice@example.org>\nDate: Tue, 2 Jan 2024 10:00:00 +0000\n\n"))
        + b" BODY[1]<0> "
        + lit(b"caf=")
        + b")\r\n"
    )


def test_macros_from_the_parser() -> None:
    cmd = parse_command(RawCommand((b"a UID FETCH 1:* FAST",)))
    assert isinstance(cmd, Fetch)
    assert render_fetch(view(loaded=False), cmd.attributes, uid=True, rev2=False) == (
        b'* 3 FETCH (UID 7 FLAGS (\\Seen $Work) INTERNALDATE "02-Jan-2024 10:00:00 +0000" '
        b"RFC822.SIZE %d)\r\n" % len(MESSAGE)
    )


# --------------------------------------------------------------------------- copies and speed


def test_chunks_do_not_copy_the_message() -> None:
    v = view()
    chunks = compile_fetch_chunks([body_att(), body_att((1,))], uid=False, rev2=False)(v)
    assert any(c is v.body for c in chunks)  # BODY[]: the stored bytes themselves
    assert any(isinstance(c, memoryview) and c.obj is v.body for c in chunks)  # BODY[1]: a view
    assert b"".join(chunks) == compile_fetch([body_att(), body_att((1,))], uid=False, rev2=False)(v)


def test_metadata_fetch_renderer_is_fast() -> None:
    parsed = parse_message(BODY)
    views = [
        MessageView(i, i, frozenset({"\\Seen"}), 1.7e9 + i, 2000, i, parsed.envelope, b"", b"", b"")
        for i in range(1, 10_001)
    ]
    atts = [FetchAtt("UID"), FetchAtt("FLAGS"), FetchAtt("RFC822.SIZE"), FetchAtt("ENVELOPE")]
    render = compile_fetch(atts, uid=True, rev2=False)
    start = time.perf_counter()
    out = [render(v) for v in views]
    elapsed = time.perf_counter() - start
    assert out[0].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Seen) RFC822.SIZE 2000 ENVELOPE (")
    assert elapsed < 0.25  # about 12 ms here; generous for slow CI machines
