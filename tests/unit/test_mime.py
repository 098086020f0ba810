"""Table tests for homing.mail.mime: exact ENVELOPE / BODY / BODYSTRUCTURE bytes and spans."""

from __future__ import annotations

import inspect
import sys
import time

import pytest

from homing.mail import imapfmt
from homing.mail.mime import (
    MAX_DEPTH,
    MAX_PARTS,
    MAX_STRUCTURED,
    PartSpan,
    decode_partmap,
    encode_partmap,
    parse_message,
)

CHARSET = b'("CHARSET" "US-ASCII")'
NO_EXT = b"NIL NIL NIL NIL"


def crlf(text: str) -> bytes:
    """Test messages are written with \\n and sent with CRLF, as over SMTP."""
    return text.replace("\n", "\r\n").encode("utf-8")


def text_body(octets: int, lines: int) -> bytes:
    """A body of exactly `octets` octets with `lines` CRLF-terminated lines."""
    fill = octets - 2 * lines
    return b"".join(b"a" * (fill // lines + (i < fill % lines)) + b"\r\n" for i in range(lines))


def spans(data: bytes) -> dict[str, tuple[bytes, bytes]]:
    """section -> (MIME header bytes, body bytes)."""
    return {
        p.section: (data[p.header_start : p.body_start], data[p.body_start : p.end])
        for p in parse_message(data).parts
    }


# --------------------------------------------------------------------------- RFC 9051 §7.5.2


def test_rfc9051_simple_text_example() -> None:
    data = crlf("From: a@example.org\nSubject: x\n\n") + text_body(2279, 48)
    parsed = parse_message(data)
    assert parsed.body == b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 2279 48)'
    assert parsed.bodystructure == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 2279 48 NIL NIL NIL NIL)'
    )


def test_rfc9051_two_part_example() -> None:
    data = (
        crlf(
            "From: a@example.org\nMIME-Version: 1.0\n"
            'Content-Type: MULTIPART/MIXED; BOUNDARY="xyz"\n\n'
            "--xyz\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\n"
        )
        + text_body(1152, 23)
        + crlf(
            "\n--xyz\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff\n"
            "Content-ID: <960723163407.20117h@cac.washington.edu>\n"
            "Content-Description: Compiler diff\n"
            "Content-Transfer-Encoding: BASE64\n\n"
        )
        + text_body(4554, 73)
        + crlf("\n--xyz--\n")
    )
    parsed = parse_message(data)
    assert parsed.body == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff")'
        b' "<960723163407.20117h@cac.washington.edu>" "Compiler diff"'
        b' "BASE64" 4554 73) "MIXED")'
    )
    assert parsed.bodystructure == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23 NIL NIL NIL NIL)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff")'
        b' "<960723163407.20117h@cac.washington.edu>" "Compiler diff"'
        b' "BASE64" 4554 73 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "xyz") NIL NIL NIL)'
    )


RFC9051_HEADER = crlf(
    "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\n"
    "From: Terry Gray <gray@cac.washington.edu>\n"
    "Subject: IMAP4rev2 WG mtg summary and minutes\n"
    "To: imap@cac.washington.edu\n"
    "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\n"
    "Message-Id: <B27397-0100000@cac.washington.edu>\n"
    "MIME-Version: 1.0\n"
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\n\n"
)
RFC9051_ENVELOPE = (
    b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev2 WG mtg summary and minutes"'
    b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
    b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
    b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
    b' ((NIL NIL "imap" "cac.washington.edu"))'
    b' ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU"))'
    b' NIL NIL "<B27397-0100000@cac.washington.edu>")'
)


def test_rfc9051_envelope_example() -> None:
    parsed = parse_message(RFC9051_HEADER + b"Hello\r\n")
    assert parsed.envelope == RFC9051_ENVELOPE
    assert parsed.message_id == "<B27397-0100000@cac.washington.edu>"
    assert parsed.subject == "IMAP4rev2 WG mtg summary and minutes"
    assert not parsed.has_8bit


# --------------------------------------------------------------------------- classic shapes

MIXED = crlf(
    "From: Alice <alice@example.org>\n"
    "To: bob@example.net\n"
    "Subject: report\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="frontier"\n'
    "\n"
    "This is a message with multiple parts in MIME format.\n"
    "--frontier\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "Hi Bob,\n"
    "see attached.\n"
    "--frontier\n"
    'Content-Type: application/pdf; name="report.pdf"\n'
    "Content-Transfer-Encoding: base64\n"
    'Content-Disposition: attachment; filename="report.pdf"\n'
    "\n"
    "JVBERi0xLjQK\n"
    "--frontier--\n"
    "epilogue\n"
)


def test_multipart_mixed_with_attachment() -> None:
    parsed = parse_message(MIXED)
    assert parsed.bodystructure == (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 22 1 NIL NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" 12 NIL'
        b' ("ATTACHMENT" ("FILENAME" "report.pdf")) NIL NIL)'
        b' "MIXED" ("BOUNDARY" "frontier") NIL NIL NIL)'
    )
    assert parsed.body == (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 22 1)'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" 12) "MIXED")'
    )
    got = spans(MIXED)
    assert list(got) == ["", "1", "2"]
    assert got["1"] == (
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n",
        b"Hi Bob,\r\nsee attached.",
    )
    assert got["2"][1] == b"JVBERi0xLjQK"
    assert got["2"][0].startswith(b"Content-Type: application/pdf") and got["2"][0].endswith(
        b'"report.pdf"\r\n\r\n'
    )
    assert got[""][0].endswith(b'boundary="frontier"\r\n\r\n')
    assert got[""][1].startswith(b"This is a message") and got[""][1].endswith(b"epilogue\r\n")


def test_multipart_alternative() -> None:
    data = crlf(
        "Content-Type: multipart/alternative; boundary=alt\n\n"
        "--alt\nContent-Type: text/plain; charset=us-ascii\n\nplain\n"
        "--alt\nContent-Type: text/html; charset=us-ascii\n"
        "Content-Language: en, de-CH\nContent-Location: http://example.org/index.html\n"
        "Content-ID: <h@x>\nContent-Description: the HTML\nContent-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
        "\n<p>html</p>\n--alt--\n"
    )
    assert parse_message(data).bodystructure == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 5 0 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "us-ascii") "<h@x>" "the HTML" "7BIT" 11 0'
        b' "Q2hlY2sgSW50ZWdyaXR5IQ==" NIL ("en" "de-CH") "http://example.org/index.html")'
        b' "ALTERNATIVE" ("BOUNDARY" "alt") NIL NIL NIL)'
    )


def test_message_rfc822_inside_multipart() -> None:
    inner = crlf(
        "From: Carol <carol@example.org>\nSubject: inner\n"
        "Content-Type: multipart/alternative; boundary=in\n\n"
        "--in\n\none\n--in\nContent-Type: text/html\n\n<b>two</b>\n--in--\n"
    )
    data = (
        crlf(
            "From: a@example.org\nSubject: outer\nContent-Type: multipart/mixed; boundary=out\n\n"
            "--out\n\nsee below\n--out\nContent-Type: message/rfc822\n"
            "Content-Disposition: inline\n\n"
        )
        + inner
        + crlf("--out--\n")
    )
    parsed = parse_message(data)
    inner_env = (
        b'(NIL "inner" (("Carol" NIL "carol" "example.org"))'
        b' (("Carol" NIL "carol" "example.org")) (("Carol" NIL "carol" "example.org"))'
        b" NIL NIL NIL NIL NIL)"
    )
    inner_structure = (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 0 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0 NIL NIL NIL NIL)'
        b' "ALTERNATIVE" ("BOUNDARY" "in") NIL NIL NIL)'
    )
    embedded = inner[:-2]  # the CRLF before "--out--" belongs to the delimiter
    inner_size, inner_lines = len(embedded), embedded.count(b"\n")
    assert parsed.bodystructure == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 9 0 NIL NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" %d %b %b %d NIL ("INLINE" NIL) NIL NIL)'
        b' "MIXED" ("BOUNDARY" "out") NIL NIL NIL)'
        % (inner_size, inner_env, inner_structure, inner_lines)
    )
    assert parsed.body == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 9 0)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" %d %b'
        b' (("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3 0)'
        b'("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 10 0) "ALTERNATIVE") %d)'
        b' "MIXED")' % (inner_size, inner_env, inner_lines)
    )
    by_section = {p.section: p for p in parsed.parts}
    assert list(by_section) == ["", "1", "2", "2.1", "2.2"]
    two = by_section["2"]
    assert two.is_message
    assert inner_lines == 11
    assert data[two.body_start : two.end] == embedded  # BODY[2]
    assert (
        data[two.body_start : two.text_start] == inner[: inner.index(b"\r\n\r\n") + 4]
    )  # 2.HEADER
    assert data[two.text_start : two.end].startswith(b"--in\r\n")  # 2.TEXT
    assert data[two.header_start : two.body_start].endswith(b"inline\r\n\r\n")  # 2.MIME
    assert data[by_section["2.1"].body_start : by_section["2.1"].end] == b"one"
    assert data[by_section["2.2"].body_start : by_section["2.2"].end] == b"<b>two</b>"


def test_single_part_message_rfc822_numbering() -> None:
    """RFC 9051 §6.4.5: the body of a non-multipart embedded message is part N.1."""
    data = crlf("Content-Type: message/rfc822\n\nSubject: hi\n\nbody\n")
    parsed = parse_message(data)
    assert [p.section for p in parsed.parts] == ["", "1", "1.1"]
    one, one_one = parsed.parts[1], parsed.parts[2]
    assert (one.header_start, one.body_start, one.end, one.is_message) == (0, 32, 53, True)
    assert data[one.body_start : one.text_start] == b"Subject: hi\r\n\r\n"
    assert (one_one.header_start, one_one.body_start, one_one.end) == (32, 47, 53)
    assert parsed.bodystructure == (
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 21 (NIL "hi" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 6 1 NIL NIL NIL NIL) 3'
        b" NIL NIL NIL NIL)"
    )


def test_message_global_is_a_message() -> None:
    data = crlf("Content-Type: message/global\n\nSubject: caf\u00e9\n\nx")
    parsed = parse_message(data)
    assert parsed.parts[1].is_message
    assert b'"MESSAGE" "GLOBAL"' in parsed.bodystructure
    assert b"{5}\r\ncaf\xc3\xa9" in parsed.bodystructure
    assert parsed.has_8bit


def test_digest_parts_default_to_message_rfc822() -> None:
    data = crlf(
        "Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: one\n\n1\n"
        "--d\nContent-Type: text/plain\n\n2\n--d--\n"
    )
    parsed = parse_message(data)
    assert [(p.section, p.is_message) for p in parsed.parts] == [
        ("", False),
        ("1", True),
        ("1.1", False),
        ("2", False),
    ]
    # Part 1 is an empty MIME header, then "Subject: one" CRLF CRLF "1": 17 octets, 2 lines.
    assert parsed.body == (
        b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 17 (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 0) 2)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 0) "DIGEST")'
    )


# --------------------------------------------------------------------------- envelope


def test_group_addresses() -> None:
    data = crlf(
        "From: a@example.org\n"
        "To: A Group: a@example.org, Carol <c@example.org>;, undisclosed-recipients:;\n"
        'Cc: "Joe Q. Public" <john.q.public@example.com>,\n'
        " Mary Smith <@node.test:mary@example.net>,\n"
        '  jdoe@one.test (John Doe), "Giant; \\"Big\\" Box" <sysservices@example.net>\n'
        "Bcc:\n\n"
    )
    env = parse_message(data).envelope
    assert env == (
        b'(NIL NIL ((NIL NIL "a" "example.org")) ((NIL NIL "a" "example.org"))'
        b' ((NIL NIL "a" "example.org"))'
        b' ((NIL NIL "A Group" NIL)(NIL NIL "a" "example.org")("Carol" NIL "c" "example.org")'
        b'(NIL NIL NIL NIL)(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
        b' (("Joe Q. Public" NIL "john.q.public" "example.com")'
        b'("Mary Smith" "@node.test" "mary" "example.net")'
        b'("John Doe" NIL "jdoe" "one.test")'
        b'("Giant; \\"Big\\" Box" NIL "sysservices" "example.net"))'
        b" NIL NIL NIL)"
    )


def test_missing_from_and_sender_defaults() -> None:
    assert parse_message(crlf("Subject: s\n\n")).envelope == (
        b'(NIL "s" NIL NIL NIL NIL NIL NIL NIL NIL)'
    )
    env = parse_message(crlf("Sender: s@x.test\nReply-To:\nFrom: f@x.test\n\n")).envelope
    assert env == (
        b'(NIL NIL ((NIL NIL "f" "x.test")) ((NIL NIL "s" "x.test"))'
        b' ((NIL NIL "f" "x.test")) NIL NIL NIL NIL NIL)'
    )


def test_present_but_empty_and_duplicate_fields() -> None:
    data = crlf("Subject:\nSubject: second\nIn-Reply-To: \nMessage-ID:\n\n")
    parsed = parse_message(data)
    assert parsed.envelope == b'(NIL "" NIL NIL NIL NIL NIL NIL "" "")'
    assert parsed.message_id is None
    assert parsed.subject == ""


def test_encoded_words_stay_raw_in_envelope() -> None:
    data = crlf(
        "From: =?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>\n"
        "Subject: =?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=\n"
        " =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?=\n\n"
    )
    parsed = parse_message(data)
    assert parsed.envelope == (
        b'(NIL "=?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?='
        b' =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?="'
        b' (("=?US-ASCII?Q?Keith_Moore?=" NIL "moore" "cs.utk.edu"))'
        b' (("=?US-ASCII?Q?Keith_Moore?=" NIL "moore" "cs.utk.edu"))'
        b' (("=?US-ASCII?Q?Keith_Moore?=" NIL "moore" "cs.utk.edu")) NIL NIL NIL NIL NIL)'
    )
    assert parsed.subject == "If you can read this you understand the example."


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("=?utf-8?q?caf=C3=A9?= =?utf-8?b?w6k=?= x", "caf\u00e9\u00e9 x"),
        ("a =?iso-8859-1?q?=E9?= b", "a \u00e9 b"),
        ("=?utf-8?q?split_=E2=82?= =?utf-8?q?=AC?=", "split \u20ac"),
        ("=?x-unknown?q?abc?= =?utf-8?q?d?=", "=?x-unknown?q?abc?= d"),
        ("=?base64?q?abc?=", "=?base64?q?abc?="),
        ("=?utf-8?b?!!!?=", "=?utf-8?b?!!!?="),
        ("=?utf-8*en?q?lang?=", "lang"),
        ("plain", "plain"),
    ],
)
def test_subject_decoding(raw: str, decoded: str) -> None:
    assert parse_message(b"Subject: " + raw.encode() + b"\r\n\r\n").subject == decoded


def test_8bit_and_nul_in_header_values() -> None:
    data = b"Subject: caf\xc3\xa9 \x00ok\r\nFrom: J\xc3\xb6rg <j@ex.test>\r\n\r\nx"
    parsed = parse_message(data)
    assert parsed.envelope.startswith(
        b'(NIL {8}\r\ncaf\xc3\xa9 ok (({5}\r\nJ\xc3\xb6rg NIL "j" "ex.test"))'
    )
    assert parsed.subject == "caf\u00e9 ok"
    assert parsed.has_8bit


def test_missing_mailbox_and_domain() -> None:
    env = parse_message(b"To: root, <>, Foo <>\r\n\r\n").envelope
    assert env == (
        b"(NIL NIL NIL NIL NIL"
        b' ((NIL NIL "root" "MISSING_DOMAIN")(NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")'
        b'("Foo" NIL "MISSING_MAILBOX" "MISSING_DOMAIN")) NIL NIL NIL NIL)'
    )


# --------------------------------------------------------------------------- parameters


def test_rfc2231_continuations_and_charsets_dovecot_style() -> None:
    data = crlf(
        "Content-Type: application/x-stuff;\n"
        " title*0*=us-ascii'en'This%20is%20even%20more%20;\n"
        " title*1*=%2A%2A%2Afun%2A%2A%2A%20;\n"
        ' title*2="isn\'t it!";\n'
        ' plain*0="a "; plain*1=b; gap*0=x; gap*2=z; mixed*0=50%; mixed*1*=%41\n'
        "Content-Disposition: attachment; filename*=utf-8''%E2%82%AC.txt\n\nx"
    )
    assert parse_message(data).bodystructure == (
        b'("APPLICATION" "X-STUFF" ("TITLE*"'
        b" \"us-ascii'en'This%20is%20even%20more%20%2A%2A%2Afun%2A%2A%2A%20isn't it!\""
        b' "PLAIN" "a b" "GAP*0" "x" "GAP*2" "z" "MIXED*" "\'\'50%25%41")'
        b' NIL NIL "7BIT" 1 NIL ("ATTACHMENT" ("FILENAME*" "utf-8\'\'%E2%82%AC.txt")) NIL NIL)'
    )


def test_parameter_oddities() -> None:
    data = crlf(
        'Content-Type: Text/Plain ; charset = "iso-8859-1" (Latin 1) ;; junk;'
        ' name="a;b \\"c\\".txt"; format=flowed\n\nx'
    )
    assert parse_message(data).body == (
        b'("TEXT" "PLAIN" ("CHARSET" "iso-8859-1" "NAME" "a;b \\"c\\".txt" "FORMAT" "flowed")'
        b' NIL NIL "7BIT" 1 0)'
    )


@pytest.mark.parametrize("value", ["text", "text/", "/plain", "te xt/plain", "", "text/pl@in"])
def test_unparsable_content_type_is_text_plain(value: str) -> None:
    data = crlf(f"Content-Type: {value}\n\nx")
    assert parse_message(data).body == b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 0)'


# --------------------------------------------------------------------------- broken input


def test_empty_input() -> None:
    parsed = parse_message(b"")
    assert parsed.envelope == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert parsed.bodystructure == b'("TEXT" "PLAIN" %b NIL NIL "7BIT" 0 0 %b)' % (CHARSET, NO_EXT)
    assert parsed.parts == (PartSpan("", 0, 0, 0, False), PartSpan("1", 0, 0, 0, False))
    assert (parsed.message_id, parsed.subject, parsed.has_8bit) == (None, "", False)


def test_bare_lf_message() -> None:
    data = b"Subject: x\nContent-Type: text/plain\n\nline1\nline2\n"
    parsed = parse_message(data)
    assert parsed.body == b'("TEXT" "PLAIN" %b NIL NIL "7BIT" 12 2)' % CHARSET
    assert parsed.parts[0] == PartSpan("", 0, 37, 49, False)


def test_header_without_body_or_blank_line() -> None:
    parsed = parse_message(b"Subject: hi")
    assert parsed.parts[0] == PartSpan("", 0, 11, 11, False)
    assert parsed.envelope.startswith(b'(NIL "hi" ')


def test_line_that_is_not_a_field_starts_the_body() -> None:
    data = b"Subject: x\r\nthis is text\r\nFrom: a@b\r\n\r\nmore"
    parsed = parse_message(data)
    assert parsed.parts[0] == PartSpan("", 0, 12, len(data), False)
    assert parsed.envelope == b'(NIL "x" NIL NIL NIL NIL NIL NIL NIL NIL)'
    assert parse_message(b"hello world\r\n\r\n").parts[0] == PartSpan("", 0, 0, 15, False)
    # RFC 5322 §4.5 obsolete syntax: WSP before the colon is still a field.
    assert parse_message(b"Subject : obs\r\n\r\n").subject == "obs"


def test_part_without_blank_line() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html\n--b--\n"
    )
    parsed = parse_message(data)
    assert parsed.body == (b'(("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0) "MIXED")')
    one = parsed.parts[1]
    assert data[one.header_start : one.body_start] == b"Content-Type: text/html"
    assert one.body_start == one.end


def test_multipart_without_boundary_is_a_leaf() -> None:
    data = crlf("Content-Type: multipart/mixed\n\n--x\nfoo\n")
    parsed = parse_message(data)
    assert parsed.body == b'("MULTIPART" "MIXED" NIL NIL NIL "7BIT" 10)'
    assert [p.section for p in parsed.parts] == ["", "1"]


def test_wrong_boundary_gives_one_empty_part() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=right\n\n--wrong\n\nfoo\n--wrong--\n")
    parsed = parse_message(data)
    assert parsed.bodystructure == (
        b'(("TEXT" "PLAIN" %b NIL NIL "7BIT" 0 0 %b) "MIXED" ("BOUNDARY" "right") NIL NIL NIL)'
        % (CHARSET, NO_EXT)
    )
    assert parsed.parts[1] == PartSpan("1", len(data), len(data), len(data), False)


def test_missing_close_delimiter_runs_to_the_end() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n\none\n--b\n\ntwo\n")
    got = spans(data)
    assert got["1"][1] == b"one"
    assert got["2"][1] == b"two\r\n"  # no delimiter takes the last line end


def test_boundary_must_be_followed_by_end_of_line() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b \t\n\none\n--bX\nstill one\n--b--junk\n--b--  \nepilogue\n--b\n"
    )
    got = spans(data)
    assert list(got) == ["", "1"]
    assert got["1"][1] == b"one\r\n--bX\r\nstill one\r\n--b--junk"


def test_outer_boundary_ends_unclosed_inner_multipart() -> None:
    data = crlf(
        "Content-Type: multipart/mixed; boundary=outer\n\n"
        "--outer\nContent-Type: multipart/alternative; boundary=inner\n\n"
        "--inner\n\na\n--outer\n\nb\n--outer--\n"
    )
    got = spans(data)
    assert list(got) == ["", "1", "1.1", "2"]
    assert got["1.1"][1] == b"a"
    assert got["2"][1] == b"b"


def test_delimiter_lines_back_to_back_and_at_body_start() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\nx\n--b--")
    got = spans(data)
    assert got["1"] == (b"", b"")
    assert got["2"] == (b"\r\n", b"x")


def _nested_multiparts(levels: int) -> bytes:
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(levels)
    )
    tail = b"".join(b"\r\n--b%d--" % i for i in reversed(range(levels)))
    return head + b"Content-Type: text/plain\r\n\r\nleaf" + tail


def _low_recursion_limit() -> int:
    """A limit well below Python's default, relative to the current stack depth."""
    return len(inspect.stack()) + 4 * MAX_DEPTH + 50


def test_deep_multipart_nesting_is_capped() -> None:
    data = _nested_multiparts(1000)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(_low_recursion_limit())
    try:
        parsed = parse_message(data)
    finally:
        sys.setrecursionlimit(old)
    assert len(parsed.parts) == MAX_DEPTH + 1
    deepest = parsed.parts[-1]
    assert deepest.section == ".".join(["1"] * MAX_DEPTH)
    # MAX_DEPTH multiparts, then one more that is only a leaf of type MULTIPART/MIXED.
    assert parsed.body.count(b'"MIXED"') == MAX_DEPTH + 1
    assert b'("MULTIPART" "MIXED" ("BOUNDARY" "b100") NIL NIL "7BIT"' in parsed.body
    assert parse_message(_nested_multiparts(5)).body.endswith(
        b' 4 0) "MIXED") "MIXED") "MIXED") "MIXED") "MIXED")'
    )


def test_deep_message_nesting_is_capped() -> None:
    data = b"Content-Type: message/rfc822\r\n\r\n" * 1000 + b"Subject: x\r\n\r\nbody"
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(_low_recursion_limit())
    try:
        parsed = parse_message(data)
    finally:
        sys.setrecursionlimit(old)
    assert sum(p.is_message for p in parsed.parts) == MAX_DEPTH
    assert parsed.body.count(b'"MESSAGE" "RFC822"') == MAX_DEPTH
    assert b'"APPLICATION" "OCTET-STREAM"' in parsed.body


def test_part_count_is_capped() -> None:
    data = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n" + b"--x\r\n\r\na\r\n" * 12000
    parsed = parse_message(data)
    assert len(parsed.parts) == MAX_PARTS  # the message itself and 9,999 parts
    assert parsed.parts[-1].section == str(MAX_PARTS - 1)


def test_large_body() -> None:
    body = (b"x" * 78 + b"\r\n") * (50 * 1024 * 1024 // 80)
    data = b"Subject: big\r\nContent-Type: text/plain\r\n\r\n" + body
    started = time.perf_counter()
    parsed = parse_message(data)
    assert time.perf_counter() - started < 2.0  # a few ms here; C-speed scans only
    assert parsed.body == b'("TEXT" "PLAIN" %b NIL NIL "7BIT" %d %d)' % (
        CHARSET,
        len(body),
        body.count(b"\n"),
    )


def test_huge_structured_fields_are_cut_at_a_separator() -> None:
    address = b"someone@example.org"
    to = b", ".join([address] * 200_000)  # 4 MB
    params = b"".join(b"; p%d=v" % i for i in range(200_000))
    data = b"To: " + to + b"\r\nContent-Type: text/plain" + params + b"\r\n\r\n"
    started = time.perf_counter()
    parsed = parse_message(data)
    assert time.perf_counter() - started < 2.0  # tens of ms here
    kept = parsed.envelope.count(b'(NIL NIL "someone" "example.org")')
    whole = to[: to.rfind(b",", 0, MAX_STRUCTURED)].count(b",") + 1  # cut at a comma
    assert kept == whole
    assert parsed.envelope.count(b'(NIL NIL "') == whole  # no partial address
    assert parsed.body.startswith(b'("TEXT" "PLAIN" ("P0" "v" "P1" "v" ')
    subject = b"x" * 100_000
    assert parse_message(b"Subject: " + subject + b"\r\n\r\n").envelope.startswith(
        b'(NIL "' + subject + b'" NIL'  # raw-text fields stay whole
    )


@pytest.mark.parametrize(
    "data",
    [
        b"\r",
        b"\n\n\n",
        b"\x00\xff\xfe" * 100,
        b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n',
        b'Content-Type: multipart/mixed; boundary="unterminated\r\n\r\n--unterminated\r\n',
        b"Content-Type: message/rfc822\r\n\r\n",
        b'From: "unterminated <a@b>\r\nTo: (open comment a@b\r\nCc: <@route:>, [1.2.3.4]\r\n',
        b"To: =?x?q?a?= <a@[127.0.0.1]>, \\ , @, :;, g: ; ;;\r\n\r\n",
        b"Content-Type: text/plain; p*0*=x; p*0=y; p*1*=z; p*=w; *=v; p**=u\r\n\r\n",
    ],
)
def test_garbage_is_accepted(data: bytes) -> None:
    parsed = parse_message(data)
    assert parsed.parts[0].end == len(data)
    assert parsed.bodystructure.startswith(b"(") and parsed.envelope.startswith(b"(")


# --------------------------------------------------------------------------- part map, strings


def test_partmap_round_trip_and_rejects_garbage() -> None:
    parts = parse_message(MIXED).parts
    blob = encode_partmap(parts)
    assert decode_partmap(blob) == parts
    for bad in (b"", b"XX", blob[:-1], blob + b"\x00", b"P1\xff\xff\xff\xff"):
        with pytest.raises(ValueError):
            decode_partmap(bad)


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"", b'""'),
        (b"plain text\twith tab", b'"plain text\twith tab"'),
        (b'say "hi" \\o/', b'"say \\"hi\\" \\\\o/"'),
        (b'"""""', b'{5}\r\n"""""'),
        (b"a\rb", b"{3}\r\na\rb"),
        (b"line\r\n", b"{6}\r\nline\r\n"),
        (b"caf\xc3\xa9", b"{5}\r\ncaf\xc3\xa9"),
        (b"nul\x00byte", b'"nulbyte"'),
    ],
)
def test_imap_string_forms(value: bytes, wire: bytes) -> None:
    assert imapfmt.string(value) == wire


def test_imap_nstring_and_list() -> None:
    assert imapfmt.nstring(None) == b"NIL"
    assert imapfmt.plist([b'"a"', b"NIL", imapfmt.number(3)]) == b'("a" NIL 3)'
