"""DSN composition (RFC 3464 / RFC 6522), checked with the stdlib email parser."""

from __future__ import annotations

import email
import email.policy
from email.message import Message

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homing.mail.dsn import RecipientStatus, compose_dsn

ORIGINAL = b"From: a@here.test\r\nTo: b@there.test\r\nSubject: hi\r\n\r\nbody line\r\n"


def parse(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def failed(**kw: object) -> RecipientStatus:
    base: dict[str, object] = {
        "final_recipient": "b@there.test",
        "action": "failed",
        "status": "5.1.1",
        "remote_mta": "mx.there.test",
        "diagnostic": "550 5.1.1 No such user",
        "last_attempt": 1_800_000_000.0,
    }
    base.update(kw)
    return RecipientStatus(**base)  # type: ignore[arg-type]


def test_failure_dsn_structure() -> None:
    raw = compose_dsn(
        hostname="mx.here.test",
        to="a@here.test",
        recipients=[failed(original_recipient="B@there.test")],
        original=ORIGINAL,
        arrival=1_800_000_000.0,
        now=1_800_000_100.0,
        envid="QQ314159",
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = msg.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    status_blocks = parts[1].get_payload()
    assert status_blocks[0]["Reporting-MTA"] == "dns;mx.here.test"
    assert status_blocks[0]["Original-Envelope-Id"] == "QQ314159"
    rcpt = status_blocks[1]
    assert rcpt["Final-Recipient"] == "rfc822;b@there.test"
    assert rcpt["Original-Recipient"] == "rfc822;B@there.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns;mx.there.test"
    assert rcpt["Diagnostic-Code"] == "smtp;550 5.1.1 No such user"
    returned = parts[2].get_payload()[0]
    assert returned["Subject"] == "hi"


def test_delay_dsn_returns_headers_only() -> None:
    raw = compose_dsn(
        hostname="mx.here.test",
        to="a@here.test",
        recipients=[failed(action="delayed", status="4.4.1", will_retry_until=1_800_400_000.0)],
        original=ORIGINAL,
        arrival=1_800_000_000.0,
        now=1_800_014_400.0,
    )
    msg = parse(raw)
    parts = msg.get_payload()
    assert isinstance(parts, list)
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert b"body line" not in raw
    assert parts[1].get_payload()[1]["Will-Retry-Until"]


def test_ret_hdrs() -> None:
    raw = compose_dsn(
        hostname="h.test",
        to="a@h.test",
        recipients=[failed()],
        original=ORIGINAL,
        arrival=0.0,
        now=0.0,
        ret="HDRS",
    )
    assert b"body line" not in raw and b"Subject: hi" in raw


def test_needs_recipients() -> None:
    with pytest.raises(ValueError):
        compose_dsn(hostname="h", to="a@h", recipients=[], original=b"", arrival=0, now=0)


@given(st.text(max_size=200), st.binary(max_size=500))
def test_remote_text_cannot_inject_fields(diagnostic: str, original: bytes) -> None:
    raw = compose_dsn(
        hostname="h.test",
        to="a@h.test",
        recipients=[failed(diagnostic=diagnostic)],
        original=original,
        arrival=0.0,
        now=0.0,
    )
    msg = parse(raw)
    parts = msg.get_payload()
    assert isinstance(parts, list) and len(parts) == 3
    rcpt = parts[1].get_payload()[1]
    assert rcpt["Action"] == "failed"
    assert rcpt.get_all("Status") == ["5.1.1"]
