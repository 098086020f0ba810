"""Property tests for homing.mail.address.

Invariants:
- round trip: parse_path(str(path)) == path for every valid mailbox (dot-strings, quoted strings
  with specials, address literals, U-labels and UTF-8 local parts when utf8=True), and the same
  for parse_mailbox and for the A-label form of an ASCII local part;
- robustness: for any text, the parsers return or raise AddressError, nothing else;
- relay safety: for any input that parses, `domain` is the normalised text after the last "@"
  outside quotes, and the local part is exactly the text before it (unquoted), so "%" and "!"
  are never reinterpreted and a source route never changes the destination.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from homing.mail.address import (
    MAX_PATH,
    AddressError,
    Mailbox,
    Path,
    parse_domain,
    parse_mailbox,
    parse_path,
    split_path,
)

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
UTF8_LETTERS = "éüßøçñяжλπ用户例日本ไทย"
QTEXT = "".join(chr(c) for c in range(32, 127))  # a quoted string can carry every printable
U_LABELS = ["bücher", "例え", "пример", "münchen", "παράδειγμα", "δοκιμή", "テスト", "ไทย"]


def octets(text: str) -> int:
    return len(text.encode("utf-8"))


def atoms(utf8: bool) -> st.SearchStrategy[str]:
    alphabet = ATEXT + (UTF8_LETTERS if utf8 else "")
    return st.text(alphabet, min_size=1, max_size=8)


def locals_(utf8: bool) -> st.SearchStrategy[str]:
    dot_string = st.lists(atoms(utf8), min_size=1, max_size=4).map(".".join)
    quoted = st.text(QTEXT + (UTF8_LETTERS if utf8 else ""), min_size=1, max_size=30)
    specials = st.lists(
        st.sampled_from(["@", '"', "\\", " ", "%", "!", ".", "<", ">", ":", "a"]), min_size=1
    )
    return st.one_of(dot_string, quoted, specials.map("".join))


def domains(utf8: bool) -> st.SearchStrategy[str]:
    ldh = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
    label = st.one_of(ldh, st.sampled_from(U_LABELS)) if utf8 else ldh
    name = st.lists(label, min_size=1, max_size=4).map(".".join)
    v4 = st.ip_addresses(v=4).map(lambda ip: f"[{ip}]")
    v6 = st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]")
    return st.one_of(name, v4, v6)


@st.composite
def mailboxes(draw: st.DrawFn, utf8: bool) -> Mailbox:
    mailbox = Mailbox(draw(locals_(utf8)), draw(domains(utf8)))
    assume(octets(str(mailbox)) <= MAX_PATH - 2)
    assume(octets(str(mailbox).rpartition("@")[0]) <= 64)
    return mailbox


def test_sampled_u_labels_are_valid() -> None:
    for label in U_LABELS:
        assert parse_domain(label) == label


@given(mailboxes(utf8=False))
@settings(max_examples=200)
def test_ascii_path_round_trips(mailbox: Mailbox) -> None:
    path = Path(mailbox)
    assert parse_path(str(path)) == path
    assert parse_path(str(path), utf8=True) == path
    assert parse_mailbox(str(mailbox), utf8=False) == mailbox


@given(mailboxes(utf8=True))
@settings(max_examples=200)
def test_utf8_path_round_trips(mailbox: Mailbox) -> None:
    path = Path(mailbox)
    assert parse_path(str(path), utf8=True) == path
    assert parse_mailbox(str(mailbox)) == mailbox
    if mailbox.local.isascii():
        assert parse_path(path.as_ascii()) == path  # A-labels come back as U-labels


texts = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.text(alphabet='<>@"\\.:,[]% !aé\x00\r\n-x1'),
)


@given(texts, st.booleans())
@settings(max_examples=500)
def test_any_text_returns_or_raises_address_error(text: str, utf8: bool) -> None:
    for parse in (parse_path, parse_mailbox, parse_domain):
        try:
            parse(text, utf8=utf8)
        except AddressError as exc:
            assert exc.reason.isprintable() and exc.reason.isascii()
    try:
        split_path(text)
    except AddressError:
        pass


TOKENS = [
    "a", "b.", "%", "!", "@", "@", '"', "\\", ".", ":", ",", " ", "é", "x.example", "example",
    "[192.0.2.1]", "[IPv6:::1]", "xn--bcher-kva", "BÜCHER", "@a.example,", "@r.example:", "-",
]  # fmt: skip


def last_unquoted_at(inner: str) -> int:
    """Oracle, written independently of the parser: index of the last "@" outside quotes."""
    quoted = escaped = False
    last = -1
    for i, c in enumerate(inner):
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "@" and not quoted:
            last = i
    return last


def unquote(raw: str) -> str:
    if not raw.startswith('"'):
        return raw
    out, body, i = [], raw[1:-1], 0
    while i < len(body):
        i += body[i] == "\\"
        out.append(body[i])
        i += 1
    return "".join(out)


def check_relay_safety(inner: str, utf8: bool) -> bool:
    """Assert the relay-safety invariant for "<inner>"; return whether it parsed."""
    try:
        path = parse_path(f"<{inner}>", utf8=utf8)
    except AddressError:
        return False
    if path.mailbox is None:
        assert inner == ""
        return True
    at = last_unquoted_at(inner)
    assert at >= 0
    raw_local = inner[:at].partition(":")[2] if inner.startswith("@") else inner[:at]
    assert path.mailbox.domain == parse_domain(inner[at + 1 :], utf8=utf8)
    assert path.mailbox.local == unquote(raw_local)
    for c in "%!@":
        assert path.mailbox.local.count(c) == unquote(raw_local).count(c)
    return True


ROUTES = ["", "@a.example:", "@a.example,@b.example:", "@x.example:"]
DOT_PIECES = ["a", "b", "%", "!", ".", "x.example", "é"]
QUOTED_PIECES = ["a", "@", "%", "!", " ", '\\"', "\\\\", ">", "x.example", "é", '"']
DOMAINS = ["x.example", "[192.0.2.1]", "[IPv6:::1]", "xn--bcher-kva.example", "BÜCHER.example"]
DOMAINS += ["localhost", "a.b@c", "x%y", "", "x.", "[1.2.3]", "a!b", '"x"']
shaped = st.tuples(
    st.sampled_from(ROUTES),
    st.one_of(
        st.lists(st.sampled_from(DOT_PIECES), min_size=1, max_size=6).map("".join),
        st.lists(st.sampled_from(QUOTED_PIECES), max_size=6).map(lambda p: '"' + "".join(p) + '"'),
    ),
    st.sampled_from(DOMAINS),
).map(lambda t: f"{t[0]}{t[1]}@{t[2]}")
free = st.lists(st.sampled_from(TOKENS), max_size=12).map("".join)


@given(st.one_of(shaped, free), st.booleans())
@settings(max_examples=1000)
def test_relay_safety(inner: str, utf8: bool) -> None:
    event("parsed" if check_relay_safety(inner, utf8) else "rejected")


@pytest.mark.parametrize(
    "inner",
    [
        "a%b@x.example",
        "b.!a@x.example",
        '"a@b"@x.example',
        '"a\\"@"@x.example',
        "@a.example,@r.example:a@x.example",
        "a@xn--bcher-kva",
    ],
)
def test_relay_oracle_on_known_good_inputs(inner: str) -> None:
    assert check_relay_safety(inner, utf8=False)
