"""What an attempt means for a queue entry: recipient states, the next attempt, and the
delivery status notifications to send (RFC 3461, RFC 3464). Pure functions: no I/O, `now`
is an argument.

The rules, per recipient, after an attempt at `now`:

- delivered: final. A "relayed" DSN if the sender asked for NOTIFY=SUCCESS and the server
  that took it did not offer DSN (RFC 3461 §5.2.2: the request could not be passed on);
  when it did, the request went along and reporting is the next hop's business.
- failed (a 5xx, a null MX, a mail loop): final; a "failed" DSN unless NOTIFY=NEVER or a
  NOTIFY without FAILURE (RFC 3461 §4.1: no NOTIFY means FAILURE and DELAY).
- deferred: retried at `schedule.next_attempt`; once the entry has been queued for
  `give_up_after` the recipient fails instead (status X.4.7 "delivery time expired" unless
  the last reply had its own code). Once `warn_after` has passed, one "delayed" DSN lists
  every deferred recipient whose NOTIFY allows DELAY; it is sent at most once per entry.

A message from the null sender never causes a DSN (RFC 3461 §6.2, RFC 5321 §6.1: no bounce
loops), whatever happens to it. One DSN per entry and action: a message to several domains
may cause one report per domain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from homing.mail.dsn import Action, RecipientStatus, compose_dsn
from homing.mail.reply import Reply
from homing.outbound.attempt import NOT_ATTEMPTED, Outcome
from homing.queue import schedule
from homing.queue.schedule import SchedulePolicy
from homing.store import QueuedRecipient, QueueEntry, QueueUpdate, RecipientUpdate

#: RFC 3463 X.4.7: the message stayed in the queue past `give_up_after`.
EXPIRED = Reply(450, "4.4.7", "Delivery time expired")
#: X.0.0: the operator returned the message (`homing queue bounce`).
ADMIN_BOUNCE = Reply(550, "5.0.0", "Returned to sender by the mail system administrator")
#: X.1.3: the recipient address as queued cannot be written in SMTP.
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")


@dataclass(frozen=True, slots=True)
class Report:
    """One DSN to send to the entry's sender: every recipient in it has `action`."""

    action: Action
    recipients: tuple[RecipientStatus, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to write for an entry (`update`) and which DSNs to send with it."""

    update: QueueUpdate
    reports: tuple[Report, ...]

    @property
    def finished(self) -> bool:
        return self.update.next_attempt is None


def wants(recipient: QueuedRecipient, kind: Literal["SUCCESS", "FAILURE", "DELAY"]) -> bool:
    """Does the recipient's NOTIFY ask for this kind of DSN? (RFC 3461 §4.1: absent means
    FAILURE and DELAY; NEVER means none.)"""
    notify = recipient.notify
    if notify is None:
        return kind in ("FAILURE", "DELAY")
    return kind in notify


def status_of(reply: Reply) -> str:
    """The RFC 3463 status for a reply: its enhanced code, or the class alone."""
    if reply.enhanced:
        return reply.enhanced
    return f"{reply.code // 100}.0.0"


def decide(
    entry: QueueEntry,
    outcomes: Mapping[int, Outcome],
    now: float,
    policy: SchedulePolicy,
    *,
    attempted: bool = True,
    error: str | None = None,
) -> Decision:
    """The entry after an attempt at `now` whose `outcomes` are keyed by recipient index
    (open recipients without an outcome stay as they were)."""
    updates: list[RecipientUpdate] = []
    failed: list[RecipientStatus] = []
    relayed: list[RecipientStatus] = []
    deferred: list[tuple[QueuedRecipient, Reply, str | None]] = []
    expired = schedule.expired(entry.created, now, policy)
    for r in entry.open_recipients:
        outcome = outcomes.get(r.index)
        if outcome is None:
            if r.reply is not None:
                deferred.append((r, r.reply, r.remote_mta))
            else:
                deferred.append((r, NOT_ATTEMPTED, None))
            continue
        if outcome.state == "delivered":
            updates.append(RecipientUpdate(r.index, "delivered", outcome.reply, outcome.remote_mta))
            if wants(r, "SUCCESS") and not outcome.dsn_offered:
                relayed.append(_status(r, "relayed", outcome.reply, outcome.remote_mta, now))
        elif outcome.state == "failed":
            updates.append(RecipientUpdate(r.index, "failed", outcome.reply, outcome.remote_mta))
            if wants(r, "FAILURE"):
                failed.append(_status(r, "failed", outcome.reply, outcome.remote_mta, now))
        else:
            deferred.append((r, outcome.reply, outcome.remote_mta))
    still_open: list[tuple[QueuedRecipient, Reply, str | None]] = []
    for r, reply, mta in deferred:
        if expired:
            updates.append(RecipientUpdate(r.index, "failed", reply, mta))
            if wants(r, "FAILURE"):
                status = _status(r, "failed", reply, mta, now)
                if not reply.enhanced.startswith("4."):
                    status = replace(status, status=EXPIRED.enhanced)
                failed.append(status)
        else:
            if r.index in outcomes:
                updates.append(RecipientUpdate(r.index, "deferred", reply, mta))
            still_open.append((r, reply, mta))
    reports: list[Report] = []
    warned = entry.warned
    if still_open and schedule.should_warn(entry.created, now, entry.warned, policy):
        warned = True
        until = schedule.give_up_at(entry.created, policy)
        delayed = [
            _status(r, "delayed", reply, mta, now, until=until)
            for r, reply, mta in still_open
            if wants(r, "DELAY")
        ]
        if delayed:
            reports.append(Report("delayed", tuple(delayed)))
    if failed:
        reports.insert(0, Report("failed", tuple(failed)))
    if relayed:
        reports.append(Report("relayed", tuple(relayed)))
    attempts = entry.attempts + int(attempted)
    next_attempt = None
    if still_open:
        next_attempt = schedule.next_wakeup(
            entry.created,
            attempts,
            now if attempted else entry.last_attempt,
            warned,
            policy,
            entry_id=entry.id,
        )
    update = QueueUpdate(
        entry_id=entry.id,
        recipients=tuple(updates),
        attempted=now if attempted else None,
        next_attempt=next_attempt,
        warned=warned,
        last_error=error,
    )
    return Decision(update, () if not entry.mail_from else tuple(reports))


def operator_bounce(entry: QueueEntry, now: float, policy: SchedulePolicy) -> Decision:
    """`homing queue bounce`: every open recipient fails now, with a failure DSN."""
    outcomes = {r.index: Outcome("failed", ADMIN_BOUNCE) for r in entry.open_recipients}
    return decide(entry, outcomes, now, policy, attempted=False)


def all_open(entry: QueueEntry, outcome: Outcome) -> dict[int, Outcome]:
    """The same outcome for every open recipient (a route failure, for instance)."""
    return {r.index: outcome for r in entry.open_recipients}


def compose(
    report: Report, entry: QueueEntry, original: bytes, *, hostname: str, now: float
) -> bytes:
    """The DSN message for `report`, to be sent from <> to the entry's sender."""
    ret: Literal["FULL", "HDRS"] = "HDRS" if entry.ret == "HDRS" else "FULL"
    return compose_dsn(
        hostname=hostname,
        to=entry.mail_from,
        recipients=report.recipients,
        original=original,
        arrival=entry.created,
        now=now,
        ret=ret,
        envid=entry.envid,
    )


def _status(
    r: QueuedRecipient,
    action: Action,
    reply: Reply,
    remote_mta: str | None,
    now: float,
    *,
    until: float | None = None,
) -> RecipientStatus:
    return RecipientStatus(
        final_recipient=r.address,
        action=action,
        status=status_of(reply),
        original_recipient=r.orcpt,
        remote_mta=remote_mta,
        diagnostic=str(reply),
        last_attempt=now,
        will_retry_until=until,
    )


def summary(reports: Sequence[Report]) -> str:
    """For logs: "failed:2 delayed:1"."""
    return " ".join(f"{r.action}:{len(r.recipients)}" for r in reports)
