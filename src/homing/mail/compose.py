"""Composing a correct MIME message for `homing send` (RFC 5322, RFC 2045-2049, RFC 2047, RFC 2231).

The standard library's `email` package does the MIME work: UTF-8 headers become encoded words,
non-ASCII file names use RFC 2231 parameters, attachments get their content types from their
names and base64 transfer encoding, and lines end in CRLF (policy SMTP).
"""

from __future__ import annotations

import email.policy
import email.utils
import mimetypes
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path


def compose(
    *,
    sender: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    subject: str = "",
    body: str = "",
    attachments: Sequence[Path] = (),
    date: float | None = None,
    message_id_domain: str | None = None,
) -> bytes:
    """The message as CRLF bytes. Bcc recipients are never written into it."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(date, localtime=False, usegmt=False).replace(
        "-0000", "+0000"
    )
    msg["Message-ID"] = email.utils.make_msgid(domain=message_id_domain)
    msg.set_content(body if body.endswith("\n") or not body else body + "\n")
    for path in attachments:
        ctype, encoding = mimetypes.guess_type(path.name)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"  # compressed or unknown: send the bytes as they are
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(
            path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name
        )
    return msg.as_bytes()
