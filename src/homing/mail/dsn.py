"""Delivery status notifications (RFC 3464) in a multipart/report (RFC 6522).

`compose_dsn` builds the whole message a bounce or delay warning is: a human-readable part, a
machine-readable message/delivery-status part with one block per recipient, and the original
message (RET=FULL) or its header (RET=HDRS, and always for delay warnings). It is sent from the
null reverse-path to the original envelope sender; the caller makes sure no DSN is ever sent
for a message whose own sender was null (RFC 3461 §6.2, RFC 5321 §6.1: no bounce loops).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from homing.mail.trace import header_section
from homing.mail.trace import rfc5322_date as _date

Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]

#: Largest original message attached in full; larger ones are returned as headers only.
MAX_RETURNED = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of message/delivery-status (RFC 3464 §2.3)."""

    final_recipient: str
    action: Action
    status: str  # RFC 3463 code, e.g. "5.1.1"
    original_recipient: str | None = None  # ORCPT address (rfc822 type)
    remote_mta: str | None = None  # host name of the server that answered
    diagnostic: str | None = None  # the server's reply, e.g. "550 5.1.1 No such user"
    last_attempt: float | None = None
    will_retry_until: float | None = None


def _oneline(text: str) -> str:
    """Header-safe text: no CR/LF (a remote server's reply must not inject fields)."""
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def _human(action: Action, recipients: Sequence[RecipientStatus], hostname: str) -> str:
    lines = [f"This is the mail system at host {hostname}.", ""]
    if action == "failed":
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
        ]
    elif action == "delayed":
        lines += [
            "Your message could not be delivered yet to one or more recipients.",
            "Delivery will be retried; you do not need to send it again.",
        ]
    else:
        lines += ["Your message was successfully delivered to the recipients below."]
    lines.append("")
    for r in recipients:
        why = f": {_oneline(r.diagnostic)}" if r.diagnostic else ""
        host = f" (via {r.remote_mta})" if r.remote_mta else ""
        lines.append(f"<{r.final_recipient}>{host}{why}")
    return "\r\n".join(lines) + "\r\n"


def _status_block(r: RecipientStatus) -> str:
    fields = []
    if r.original_recipient:
        fields.append(f"Original-Recipient: rfc822;{_oneline(r.original_recipient)}")
    fields.append(f"Final-Recipient: rfc822;{_oneline(r.final_recipient)}")
    fields.append(f"Action: {r.action}")
    fields.append(f"Status: {r.status}")
    if r.remote_mta:
        fields.append(f"Remote-MTA: dns;{_oneline(r.remote_mta)}")
    if r.diagnostic:
        fields.append(f"Diagnostic-Code: smtp;{_oneline(r.diagnostic)}")
    if r.last_attempt is not None:
        fields.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
    if r.will_retry_until is not None:
        fields.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")
    return "\r\n".join(fields) + "\r\n"


def compose_dsn(
    *,
    hostname: str,
    to: str,
    recipients: Sequence[RecipientStatus],
    original: bytes,
    arrival: float,
    now: float,
    ret: Literal["FULL", "HDRS"] = "FULL",
    envid: str | None = None,
) -> bytes:
    """The complete DSN message (CRLF lines), to be sent from <> to `to`."""
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    action = recipients[0].action
    subject = {
        "failed": "Undelivered Mail Returned to Sender",
        "delayed": "Delayed Mail (still being retried)",
    }.get(action, "Successful Mail Delivery Report")
    boundary = f"homing-dsn-{secrets.token_hex(12)}"
    full = ret == "FULL" and action != "delayed" and len(original) <= MAX_RETURNED
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{secrets.token_hex(16)}@{hostname}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
    ]
    per_message = [f"Reporting-MTA: dns;{hostname}"]
    if envid:
        per_message.append(f"Original-Envelope-Id: {_oneline(envid)}")
    per_message.append(f"Arrival-Date: {_date(arrival)}")
    status = (
        "\r\n".join(per_message) + "\r\n\r\n" + "\r\n".join(_status_block(r) for r in recipients)
    )
    parts = [
        "\r\n".join(head),
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n"
        f"Content-Description: Notification\r\n\r\n{_human(action, recipients, hostname)}",
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n"
        f"Content-Description: Delivery report\r\n\r\n{status}",
    ]
    out = "\r\n".join(parts).encode("utf-8", "replace")
    if full:
        attach = b"Content-Type: message/rfc822\r\nContent-Description: Undelivered Message\r\n\r\n"
        body = original if original.endswith(b"\r\n") else original + b"\r\n"
    else:
        attach = (
            b"Content-Type: text/rfc822-headers\r\nContent-Description: Message headers\r\n\r\n"
        )
        body = header_section(original) or b"\r\n"
    return (
        out + f"\r\n--{boundary}\r\n".encode() + attach + body + f"\r\n--{boundary}--\r\n".encode()
    )
