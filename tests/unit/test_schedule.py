"""The queue schedule: days of retries, warnings and give-ups, simulated in milliseconds."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homing.queue.schedule import (
    DAY,
    DEFAULT_POLICY,
    HOUR,
    MINUTE,
    SchedulePolicy,
    expired,
    give_up_at,
    next_attempt,
    next_wakeup,
    retry_interval,
    should_warn,
    warn_at,
)

CREATED = 1_800_000_000.0


@dataclass
class Run:
    """What a queue runner does to an entry that never gets through."""

    attempts: list[float] = field(default_factory=list)
    warnings: list[float] = field(default_factory=list)
    gave_up: float | None = None


def simulate(
    policy: SchedulePolicy = DEFAULT_POLICY, *, entry_id: str = "q1", created: float = CREATED
) -> Run:
    run = Run()
    last: float | None = None
    while run.gave_up is None:
        now = next_attempt(created, len(run.attempts), last, policy, entry_id=entry_id)
        run.attempts.append(now)
        last = now
        # ... the attempt fails temporarily ...
        if expired(created, now, policy):
            run.gave_up = now
        elif should_warn(created, now, bool(run.warnings), policy):
            run.warnings.append(now)
        assert len(run.attempts) < 100_000
    return run


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# --- the defaults ------------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    assert DEFAULT_POLICY.first_retry == 15 * MINUTE
    assert DEFAULT_POLICY.max_interval == HOUR
    assert DEFAULT_POLICY.warn_after == 4 * HOUR
    assert DEFAULT_POLICY.give_up_after == 5 * DAY


def test_first_attempt_is_immediate() -> None:
    assert next_attempt(CREATED, 0, None) == CREATED


def test_default_schedule_over_five_days() -> None:
    run = simulate()
    intervals = gaps(run.attempts)
    assert run.attempts[0] == CREATED
    assert all(15 * MINUTE <= g <= HOUR for g in intervals)
    # About every 15 minutes at first, backing off to an hour apart.
    assert intervals[0] < 17 * MINUTE
    assert intervals[1] > intervals[0]
    assert all(g >= 54 * MINUTE for g in intervals[10:-1])  # the last one meets the deadline
    # Give up at 5 days, after a last attempt then (or up to 15 minutes later, when the one
    # before came too close to the deadline for another attempt at it).
    deadline = CREATED + 5 * DAY
    assert run.gave_up == run.attempts[-1]
    assert deadline <= run.gave_up < deadline + 15 * MINUTE
    assert run.attempts[-2] < deadline
    assert simulate(entry_id="a").gave_up == deadline  # this one lands on it
    assert 120 < len(run.attempts) < 135


def test_default_warning_once_soon_after_four_hours() -> None:
    run = simulate()
    assert len(run.warnings) == 1
    assert CREATED + 4 * HOUR <= run.warnings[0] <= CREATED + 5 * HOUR


def test_next_wakeup_brings_the_warning_forward() -> None:
    # Attempts at 3h50 and next due ~4h50: the runner wakes at 4h for the warning.
    last = CREATED + 3 * HOUR + 50 * MINUTE
    assert next_wakeup(CREATED, 10, last, False) == CREATED + 4 * HOUR
    assert next_wakeup(CREATED, 10, last, True) == next_attempt(CREATED, 10, last)
    assert next_wakeup(CREATED, 0, None, False) == CREATED


def test_no_warning_after_giving_up_or_when_disabled() -> None:
    assert not should_warn(CREATED, CREATED + 6 * DAY, False, DEFAULT_POLICY)
    assert not should_warn(CREATED, CREATED + 3 * HOUR, False, DEFAULT_POLICY)
    assert should_warn(CREATED, CREATED + 4 * HOUR, False, DEFAULT_POLICY)
    assert not should_warn(CREATED, CREATED + 4 * HOUR, True, DEFAULT_POLICY)
    never = SchedulePolicy(warn_after=None)
    assert warn_at(CREATED, never) is None
    assert simulate(never).warnings == []
    late = SchedulePolicy(warn_after=6 * DAY)  # would come after giving up
    assert simulate(late).warnings == []


def test_expired_exactly_at_give_up_time() -> None:
    assert not expired(CREATED, CREATED + 5 * DAY - 1)
    assert expired(CREATED, CREATED + 5 * DAY)
    assert give_up_at(CREATED) == CREATED + 5 * DAY


def test_last_attempt_close_to_the_deadline_waits_first_retry() -> None:
    deadline = give_up_at(CREATED)
    late = deadline - 60
    assert next_attempt(CREATED, 50, late) == late + 15 * MINUTE
    assert next_attempt(CREATED, 50, deadline - 2 * HOUR) <= deadline - HOUR


def test_jitter_is_deterministic_per_entry_and_spreads_entries() -> None:
    assert simulate(entry_id="a").attempts == simulate(entry_id="a").attempts
    seconds = {next_attempt(CREATED, 3, CREATED + HOUR, entry_id=f"entry{i}") for i in range(50)}
    assert len(seconds) > 40  # fifty messages queued together come back apart
    flat = SchedulePolicy(jitter=0)
    assert simulate(flat, entry_id="a").attempts == simulate(flat, entry_id="b").attempts


def test_retry_interval_backs_off_without_jitter() -> None:
    flat = SchedulePolicy(jitter=0)
    assert [retry_interval(n, flat) for n in range(1, 7)] == [
        900,
        1350,
        2025,
        3037.5,
        3600,
        3600,
    ]
    assert retry_interval(10_000, flat) == 3600  # no overflow for very old entries
    with pytest.raises(ValueError):
        retry_interval(0, flat)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_retry": 0},
        {"max_interval": 60, "first_retry": 120},
        {"backoff": 0.5},
        {"warn_after": -1},
        {"give_up_after": 0},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SchedulePolicy(**kwargs)


# --- properties ---------------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn) -> SchedulePolicy:
    first = draw(st.floats(5 * MINUTE, 2 * HOUR))
    return SchedulePolicy(
        first_retry=first,
        max_interval=first * draw(st.floats(1, 12)),
        backoff=draw(st.floats(1, 4)),
        warn_after=draw(st.none() | st.floats(0, 3 * DAY)),
        give_up_after=draw(st.floats(1, 6 * DAY)),
        jitter=draw(st.floats(0, 0.99)),
    )


@given(policy=policies(), entry_id=st.text(max_size=8), created=st.floats(0, 4e9))
def test_schedule_bounds_hold_for_any_policy(
    policy: SchedulePolicy, entry_id: str, created: float
) -> None:
    """Invariants: attempt times strictly increase, start at `created`, are never closer
    than first_retry nor farther than max_interval apart; the give-up comes at the first
    attempt at or after the deadline, which is less than first_retry past it; at most one
    warning, never at or after the deadline."""
    run = simulate(policy, entry_id=entry_id, created=created)
    deadline = give_up_at(created, policy)
    assert run.attempts[0] == created
    slack = 1e-6 * max(1.0, abs(created))  # float rounding of large timestamps
    for gap in gaps(run.attempts):
        assert policy.first_retry - slack <= gap <= policy.max_interval + slack
    assert run.gave_up == run.attempts[-1]
    assert all(t < deadline for t in run.attempts[:-1])
    assert deadline <= run.attempts[-1] < deadline + policy.first_retry + slack
    assert len(run.warnings) <= 1
    assert all(t < deadline for t in run.warnings)
    due = warn_at(created, policy)
    if due is not None and any(t >= due for t in run.attempts[:-1]):
        assert len(run.warnings) == 1


@given(
    policy=policies(),
    attempts=st.integers(1, 500),
    last=st.floats(0, 7 * DAY),
    later=st.floats(0, DAY),
)
def test_next_attempt_is_monotonic_in_the_last_attempt(
    policy: SchedulePolicy, attempts: int, last: float, later: float
) -> None:
    """A later last attempt never gives an earlier next attempt, and the next attempt is
    always at least first_retry after the last."""
    first = next_attempt(0.0, attempts, last, policy, entry_id="x")
    second = next_attempt(0.0, attempts, last + later, policy, entry_id="x")
    assert first <= second
    assert first >= last + policy.first_retry


@given(policy=policies(), attempts=st.integers(1, 500), last=st.floats(0, 7 * DAY))
def test_without_jitter_more_attempts_never_retry_sooner(
    policy: SchedulePolicy, attempts: int, last: float
) -> None:
    """Backoff: with jitter off, the wait never shrinks as failures add up."""
    flat = SchedulePolicy(
        first_retry=policy.first_retry,
        max_interval=policy.max_interval,
        backoff=policy.backoff,
        give_up_after=policy.give_up_after,
        jitter=0,
    )
    assert next_attempt(0.0, attempts, last, flat) <= next_attempt(0.0, attempts + 1, last, flat)
