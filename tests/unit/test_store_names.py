"""Property tests for the store's name parsers: mailbox names, addresses, domains, flags.

Invariants: only InvalidName escapes; normalising is idempotent; accepted names never hold
control characters or empty hierarchy levels; flags survive a store/format round trip."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homing.store import InvalidName, names

IMAP_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
ATOM = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='(){%*"\\]'),
    min_size=1,
    max_size=10,
)


@given(IMAP_TEXT)
def test_mailbox_name(text: str) -> None:
    try:
        name = names.mailbox_name(text)
    except InvalidName:
        return
    assert names.mailbox_name(name) == name
    assert name and all(name.split("/"))
    assert not any(unicodedata.category(c) == "Cc" for c in name)
    assert name.split("/")[0].upper() != "INBOX" or name.split("/")[0] == "INBOX"
    assert all(name.startswith(s + "/") for s in names.superiors(name))


@pytest.mark.parametrize(
    ("given_name", "stored"),
    [("inbox", "INBOX"), ("InBoX/a", "INBOX/a"), ("a/inbox", "a/inbox"), ("Ärger", "Ärger")],
)
def test_mailbox_name_examples(given_name: str, stored: str) -> None:
    assert names.mailbox_name(given_name) == stored


@given(IMAP_TEXT)
def test_address_key(text: str) -> None:
    try:
        key = names.address_key(text)
    except InvalidName:
        return
    assert names.address_key(key) == key
    if text.isascii():
        assert names.address_key(text.swapcase()) == key
    assert key == key.lower()


@given(IMAP_TEXT)
def test_domain_key(text: str) -> None:
    try:
        key = names.domain_key(text)
    except InvalidName:
        return
    assert names.domain_key(key) == key
    assert "@" not in key and key


@given(st.frozensets(st.one_of(st.sampled_from(sorted(names.SYSTEM_FLAGS)), ATOM), max_size=8))
def test_flags_roundtrip(flags: frozenset[str]) -> None:
    mask, keywords = names.parse_flags(flags)
    shown = names.flag_set(mask, names.encode_keywords(keywords))
    assert {f.lower() for f in shown} == {f.lower() for f in flags}
    again = names.parse_flags(shown)
    assert again == (mask, names.decode_keywords(names.encode_keywords(keywords)))


@given(st.frozensets(IMAP_TEXT, max_size=4))
def test_parse_flags_total(flags: frozenset[str]) -> None:
    try:
        names.parse_flags(flags)
    except InvalidName:
        pass


def test_special_use() -> None:
    assert names.special_use("\\sent") == "\\Sent"
    assert names.special_use(None) is None
    with pytest.raises(InvalidName):
        names.special_use("Sent")
