"""Local injection: how `homing sendmail` hands a message to the router without a network hop.

The message is written straight into the store (local copies) and the outbound queue (remote
recipients), in one group-committed transaction, by the calling process itself. It works
whether or not `homing serve` is running; a running server's queue runner picks up what was
queued. Nothing is accepted unless it is on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from homing.clock import Clock
from homing.config.model import Config
from homing.mail import trace
from homing.mail.address import AddressError, Mailbox, Path, parse_mailbox
from homing.mail.headers import add_header_fields, field_names, missing_fixups
from homing.proto.smtp import codes
from homing.proto.smtp.grammar import RcptArgs
from homing.router import Envelope, Resolution, Router
from homing.store import Store

log = logging.getLogger("homing.sendmail")


@dataclass
class InjectResult:
    queue_id: str
    delivered: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (address, reason)


def _resolve(router: Router, address: str) -> tuple[Mailbox | None, Resolution | None, str]:
    try:
        mailbox = parse_mailbox(address)
    except AddressError as err:
        return None, None, f"bad address: {err.reason}"
    if not router.is_local_domain(mailbox.domain):
        if not router.forwarding:
            return mailbox, None, "remote delivery is not available yet"
        return mailbox, Resolution(codes.RECIPIENT_OK, remote=(str(mailbox),)), ""
    res = router.resolve(mailbox)
    if not res.accepted:
        return mailbox, None, res.reply.text
    return mailbox, res, ""


def inject(
    store: Store,
    config: Config,
    clock: Clock,
    *,
    sender: str,
    recipients: list[str],
    message: bytes,
    local_user: str,
    full_name: str | None = None,
) -> InjectResult:
    """Deliver `message` to `recipients`; returns what went where. Blocks until it is on disk."""
    router = Router(store, config, clock)
    result = InjectResult(trace.new_queue_id())
    envelope = Envelope(mail_from=sender)
    for address in recipients:
        mailbox, res, reason = _resolve(router, address)
        if mailbox is None or res is None:
            result.refused.append((address, reason))
            continue
        envelope.rcpts.append((str(mailbox), res))
        envelope.rcpt_args.append(RcptArgs(path=Path(mailbox)))
        result.delivered.append(str(mailbox))
    if not envelope.rcpts:
        return result
    message = _fix_up(message, config, clock, result.queue_id, sender=sender, full_name=full_name)
    info = trace.TraceInfo(
        helo=f"local user {local_user}",
        client_ip="127.0.0.1",
        hostname=config.hostname,
        queue_id=result.queue_id,
        protocol="local",
        hidden=True,
    )
    router.deliver(message, envelope, info).result()
    log.info(
        "id=%s from=<%s> rcpts=%d local injection", result.queue_id, sender, len(envelope.rcpts)
    )
    return result


def _fix_up(
    message: bytes,
    config: Config,
    clock: Clock,
    queue_id: str,
    *,
    sender: str,
    full_name: str | None,
) -> bytes:
    """What cron and mailx leave out: From, Date, Message-ID (RFC 6409 §8 in spirit)."""
    need_id, need_date = missing_fixups(message)
    fields = b""
    if "from" not in field_names(trace.header_section(message)) and sender:
        name = f'"{full_name}" ' if full_name else ""
        fields += f"From: {name}<{sender}>\r\n".encode()
    if need_date:
        fields += f"Date: {trace.rfc5322_date(clock.now())}\r\n".encode()
    if need_id:
        fields += f"Message-ID: <{queue_id}@{config.hostname}>\r\n".encode()
    return add_header_fields(message, fields)
