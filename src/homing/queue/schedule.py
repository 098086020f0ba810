"""When to try a queued message again, when to warn its sender, when to give up.

Pure functions of an entry's timestamps and `now` (seconds since the epoch): no clock is
read and no hidden randomness is used, so tests run days of schedule in milliseconds.

The defaults follow the classic sendmail behaviour: retry about every 15 minutes at first,
backing off geometrically (x1.5) to at most an hour apart; one delay warning (RFC 3464
"delayed" DSN) after 4 hours; give up and return a failure DSN after 5 days. RFC 5321
§4.5.4.1 says the retry interval SHOULD be at least 30 minutes and the give-up time at
least 4-5 days, and welcomes "more sophisticated and variable strategies": the first
retries come sooner (most temporary failures, such as greylisting, clear within minutes)
and the backoff passes 30 minutes by the third retry.

How the queue runner uses this:

- attempt at `next_attempt(created, attempts, last_attempt, policy, entry_id=...)`
  (equal to `created` for a new entry);
- after a temporary failure at time `now`: if `expired(created, now, policy)`, give up
  (failure DSN); else if `should_warn(created, now, warned, policy)`, send the delay
  warning and remember that it was sent; then schedule the next attempt;
- `next_wakeup` gives the earliest of the next attempt and a pending warning, for a runner
  that wants to send the warning on time rather than at the next attempt.

Invariants (tested): attempt times strictly increase; consecutive attempts are never less
than `first_retry` nor more than `max_interval` apart; the last attempt before giving up
is at the give-up time, or less than `first_retry` after it when the previous attempt came
too close to it; the warning is sent at most once and never after giving up.

Jitter spreads retries of messages queued together (a remote outage must not make them
all come back in the same second). It is a deterministic function of the entry's id and
attempt number (a hash), so the schedule of an entry is reproducible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    """Retry, warning and give-up times for queued mail. Durations are seconds."""

    first_retry: float = 15 * MINUTE
    """Wait after the first failed attempt; also the shortest wait between attempts."""
    max_interval: float = HOUR
    """The longest wait between two attempts, however long the message has been queued."""
    backoff: float = 1.5
    """Each wait is this many times the previous one, until `max_interval`."""
    warn_after: float | None = 4 * HOUR
    """Send one delay warning to the sender this long after queueing; None: never."""
    give_up_after: float = 5 * DAY
    """Stop trying and return the message this long after queueing."""
    jitter: float = 0.1
    """Each wait is moved by up to this fraction either way (kept within the bounds)."""

    def __post_init__(self) -> None:
        if self.first_retry <= 0:
            raise ValueError("first_retry must be positive")
        if self.max_interval < self.first_retry:
            raise ValueError("max_interval must be at least first_retry")
        if self.backoff < 1:
            raise ValueError("backoff must be at least 1")
        if self.warn_after is not None and self.warn_after < 0:
            raise ValueError("warn_after must not be negative")
        if self.give_up_after <= 0:
            raise ValueError("give_up_after must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")


DEFAULT_POLICY = SchedulePolicy()


def retry_interval(attempts: int, policy: SchedulePolicy, *, entry_id: str = "") -> float:
    """The wait after the `attempts`-th failed attempt (1 for the first), before the deadline
    is taken into account: first_retry * backoff^(attempts-1), capped, jittered, and kept
    within [first_retry, max_interval]."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    # Cap the exponent: past the cap the interval is max_interval anyway (no overflow).
    base = policy.first_retry * policy.backoff ** min(attempts - 1, 200)
    base = min(base, policy.max_interval)
    spread = 1 + policy.jitter * (2 * _unit(entry_id, attempts) - 1)
    return min(max(base * spread, policy.first_retry), policy.max_interval)


def next_attempt(
    created: float,
    attempts: int,
    last_attempt: float | None,
    policy: SchedulePolicy = DEFAULT_POLICY,
    *,
    entry_id: str = "",
) -> float:
    """When to make the next delivery attempt of an entry queued at `created` that has had
    `attempts` attempts, the last one at `last_attempt` (None when `attempts` is 0).

    A new entry is tried at once. Later attempts come `retry_interval` after the last one,
    but not after the give-up time, so that one last attempt is made right then; if the
    last attempt was within `first_retry` of the give-up time, the next comes
    `first_retry` after it (past the give-up time), never sooner.
    """
    if attempts <= 0:
        return created
    last = created if last_attempt is None else last_attempt
    wait = retry_interval(attempts, policy, entry_id=entry_id)
    deadline = give_up_at(created, policy)
    return max(last + policy.first_retry, min(last + wait, deadline))


def give_up_at(created: float, policy: SchedulePolicy = DEFAULT_POLICY) -> float:
    return created + policy.give_up_after


def warn_at(created: float, policy: SchedulePolicy = DEFAULT_POLICY) -> float | None:
    """When the delay warning is due, or None if this policy never sends one (no warning
    is sent when the message would be given up on by then anyway)."""
    if policy.warn_after is None or policy.warn_after >= policy.give_up_after:
        return None
    return created + policy.warn_after


def expired(created: float, now: float, policy: SchedulePolicy = DEFAULT_POLICY) -> bool:
    """True once the entry has been queued for `give_up_after`: return it to the sender."""
    return now >= give_up_at(created, policy)


def should_warn(
    created: float, now: float, warned: bool, policy: SchedulePolicy = DEFAULT_POLICY
) -> bool:
    """True if the delay warning is due now and has not been sent."""
    due = warn_at(created, policy)
    return not warned and due is not None and now >= due and not expired(created, now, policy)


def next_wakeup(
    created: float,
    attempts: int,
    last_attempt: float | None,
    warned: bool,
    policy: SchedulePolicy = DEFAULT_POLICY,
    *,
    entry_id: str = "",
) -> float:
    """The earliest time something is due for the entry: an attempt or the warning
    (which may be in the past: it is overdue then)."""
    when = next_attempt(created, attempts, last_attempt, policy, entry_id=entry_id)
    due = warn_at(created, policy)
    if not warned and due is not None:
        when = min(when, due)
    return when


def _unit(entry_id: str, attempts: int) -> float:
    """A number in [0, 1) fixed by the entry id and attempt number."""
    digest = hashlib.blake2b(f"{entry_id}\0{attempts}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
