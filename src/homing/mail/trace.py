"""Trace headers (RFC 5321 §4.4): Received, Return-Path, Delivered-To, and the loop checks on them.

Pure functions over bytes; the MDA prepends what these return to each delivered copy.
"""

from __future__ import annotations

import email.utils
import functools
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)
_DELIVERED_TO = re.compile(
    rb"^delivered-to[ \t]*:[ \t]*(.*(?:\r\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)
_B32 = "0123456789BCDFGHJKLMNPQRSTVWXYZ"


_ID_RANDOM = random.Random()  # seeded from os.urandom; ids need uniqueness, not secrecy


def new_queue_id() -> str:
    """A short, sortable, unique id for one accepted message (logs, Received `id`)."""
    n = int(time.time() * 1000) << 20 | _ID_RANDOM.getrandbits(20)
    out = []
    while n:
        n, r = divmod(n, len(_B32))
        out.append(_B32[r])
    return "".join(reversed(out))


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(second, UTC))


def rfc5322_date(ts: float) -> str:
    """An RFC 5322 §3.3 date with a real zone, "+0000" ("-0000" would mean unknown)."""
    return _date_of_second(int(ts))  # formatted once per second, not once per message


def header_section(message: bytes) -> bytes:
    """The header block of a message, up to and including the blank line (or all of it)."""
    end = message.find(b"\r\n\r\n")
    if message.startswith(b"\r\n"):
        return b""
    return message if end < 0 else message[: end + 2]


def count_received(headers: bytes) -> int:
    """Number of Received fields (RFC 5321 §6.3: a loop shows as too many of them)."""
    return len(_RECEIVED.findall(headers))


def delivered_to(headers: bytes) -> set[str]:
    """The lower-cased addresses of every Delivered-To field."""
    found = set()
    for m in _DELIVERED_TO.finditer(headers):
        value = re.sub(rb"\r\n[ \t]", b" ", m.group(1)).strip()
        found.add(value.decode("utf-8", "replace").strip("<>").lower())
    return found


@dataclass(frozen=True, slots=True)
class TraceInfo:
    """What the receiving session knows about the hop, for the Received field."""

    helo: str
    client_ip: str
    hostname: str
    queue_id: str
    protocol: (
        str  # RFC 3848 / RFC 6531 "with" keyword: SMTP, ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS, ...
    )
    tls: str | None = None  # "version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384"
    client_name: str | None = None  # verified reverse DNS name, if known
    hidden: bool = False  # leave the client out (submission privacy option)


def with_protocol(*, extended: bool, tls: bool, auth: bool, utf8: bool) -> str:
    """The `with` keyword for Received (RFC 3848, RFC 6531 §4.3)."""
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if utf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")


def _clean(text: str) -> str:
    """Keep header text to safe printable characters (the HELO name is the client's word)."""
    return re.sub(r"[^\x21-\x7e\u00a0-\U0010ffff]", "?", text)[:255] or "unknown"


def received(info: TraceInfo, rcpt: str | None, when: float) -> bytes:
    """A Received field in RFC 5321 §4.4 form, folded, ending with CRLF."""
    peer = f"{info.client_name} [{info.client_ip}]" if info.client_name else f"[{info.client_ip}]"
    by = f"by {info.hostname} (Homing) with {info.protocol} id {info.queue_id}"
    if info.hidden:
        lines = [f"Received: {by}"]
    else:
        lines = [f"Received: from {_clean(info.helo)} ({peer})", f"\t{by}"]
    if info.tls:
        lines.append(f"\t({info.tls})")
    date = rfc5322_date(when)
    if rcpt is not None:
        lines.append(f"\tfor <{_clean(rcpt)}>; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def return_path(reverse_path: str) -> bytes:
    """Return-Path: <sender> (RFC 5321 §4.4: added by the final delivery MTA)."""
    return f"Return-Path: <{reverse_path}>\r\n".encode()


def delivered_to_header(address: str) -> bytes:
    """Delivered-To: the address this copy was delivered for (loop detection across forwards)."""
    return f"Delivered-To: {address}\r\n".encode()
