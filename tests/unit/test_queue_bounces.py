"""DSN decisions (RFC 3461/3464) as a pure function of an entry, an attempt's outcomes and now,
with a Hypothesis run over whole lifetimes: however attempts turn out, a recipient is
reported failed at most once, the delay warning comes at most once and before giving up, and
nothing is ever reported to the null sender."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from homing.mail.reply import Reply
from homing.outbound.attempt import Outcome
from homing.queue import bounces
from homing.queue.schedule import HOUR, MINUTE, SchedulePolicy
from homing.store import QueuedRecipient, QueueEntry

T0 = 1_800_000_000.0
POLICY = SchedulePolicy(jitter=0.0)
OK = Reply(250, "2.0.0", "Ok: queued as 123")
USER_UNKNOWN = Reply(550, "5.1.1", "No such user")
GREYLISTED = Reply(450, "4.7.1", "Greylisted, try again")
SENT = Outcome("delivered", OK, "mx.remote.test", dsn_offered=False)
FAILED = Outcome("failed", USER_UNKNOWN, "mx.remote.test")
DEFERRED = Outcome("deferred", GREYLISTED, "mx.remote.test")


def rcpt(i: int, notify: frozenset[str] | None = None, orcpt: str | None = None) -> QueuedRecipient:
    return QueuedRecipient(i, f"r{i}@remote.test", notify, orcpt, "pending", None, None, None)


def entry(*rcpts: QueuedRecipient, sender: str = "alice@local.test", **kw: object) -> QueueEntry:
    base = QueueEntry(
        id="Q.1",
        queue_id="Q",
        domain="remote.test",
        mail_from=sender,
        envid=None,
        ret=None,
        smtputf8=False,
        body_8bit=False,
        size=100,
        created=T0,
        next_attempt=T0,
        attempts=0,
        last_attempt=None,
        warned=False,
        held=False,
        bounce=False,
        last_error=None,
        recipients=rcpts or (rcpt(0),),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_mixed_outcomes_in_one_attempt() -> None:
    e = entry(rcpt(0), rcpt(1), rcpt(2))
    d = bounces.decide(e, {0: SENT, 1: FAILED, 2: DEFERRED}, T0, POLICY)
    states = {u.index: u.state for u in d.update.recipients}
    assert states == {0: "delivered", 1: "failed", 2: "deferred"}
    assert d.update.next_attempt == T0 + POLICY.first_retry
    assert not d.finished
    (report,) = d.reports
    assert report.action == "failed"
    (status,) = report.recipients
    assert status.final_recipient == "r1@remote.test"
    assert status.status == "5.1.1"
    assert status.diagnostic == "550 5.1.1 No such user"
    assert status.remote_mta == "mx.remote.test"


def test_all_final_finishes_the_entry() -> None:
    d = bounces.decide(entry(rcpt(0), rcpt(1)), {0: SENT, 1: FAILED}, T0, POLICY)
    assert d.finished and d.update.next_attempt is None


def test_notify_never_and_notify_without_failure_get_no_bounce() -> None:
    e = entry(rcpt(0, frozenset({"NEVER"})), rcpt(1, frozenset({"SUCCESS"})), rcpt(2))
    d = bounces.decide(e, {0: FAILED, 1: FAILED, 2: FAILED}, T0, POLICY)
    (report,) = d.reports
    assert [s.final_recipient for s in report.recipients] == ["r2@remote.test"]


def test_success_is_reported_as_relayed_only_when_the_next_hop_lacks_dsn() -> None:
    e = entry(rcpt(0, frozenset({"SUCCESS"}), orcpt="orig@local.test"), rcpt(1))
    d = bounces.decide(e, {0: SENT, 1: SENT}, T0, POLICY)
    (report,) = d.reports
    assert report.action == "relayed"
    assert report.recipients[0].original_recipient == "orig@local.test"
    passed_on = replace(SENT, dsn_offered=True)
    assert bounces.decide(e, {0: passed_on, 1: passed_on}, T0, POLICY).reports == ()


def test_null_sender_never_gets_a_dsn() -> None:
    e = entry(rcpt(0), rcpt(1, frozenset({"SUCCESS"})), sender="")
    assert bounces.decide(e, {0: FAILED, 1: SENT}, T0, POLICY).reports == ()
    late = T0 + POLICY.give_up_after
    assert bounces.decide(e, {0: DEFERRED}, late, POLICY).reports == ()


def test_one_delay_warning_after_warn_after() -> None:
    e = entry(rcpt(0), rcpt(1, frozenset({"FAILURE"})), attempts=5, last_attempt=T0 + 3 * HOUR)
    now = T0 + 4 * HOUR + MINUTE
    d = bounces.decide(e, {0: DEFERRED, 1: DEFERRED}, now, POLICY)
    (report,) = d.reports
    assert report.action == "delayed"
    assert [s.final_recipient for s in report.recipients] == ["r0@remote.test"]  # NOTIFY
    assert report.recipients[0].will_retry_until == T0 + POLICY.give_up_after
    assert d.update.warned
    again = bounces.decide(replace(e, warned=True), {0: DEFERRED}, now + HOUR, POLICY)
    assert again.reports == ()


def test_giving_up_fails_every_open_recipient_with_its_last_reply() -> None:
    old = replace(rcpt(1), state="deferred", reply=GREYLISTED, remote_mta="mx.remote.test")
    e = entry(rcpt(0), old, attempts=40, warned=True)
    now = T0 + POLICY.give_up_after
    d = bounces.decide(e, {0: Outcome("deferred", Reply(451, "", "try later"))}, now, POLICY)
    assert d.finished
    (report,) = d.reports
    assert report.action == "failed"
    by = {s.final_recipient: s for s in report.recipients}
    assert by["r0@remote.test"].status == "4.4.7"  # no enhanced code of its own: expired
    assert by["r1@remote.test"].status == "4.7.1"
    assert by["r1@remote.test"].diagnostic == str(GREYLISTED)


def test_operator_bounce() -> None:
    delivered = replace(rcpt(1), state="delivered", reply=OK)
    d = bounces.operator_bounce(entry(rcpt(0), delivered), T0 + 60, POLICY)
    assert d.finished and d.update.attempted is None
    (report,) = d.reports
    assert [s.final_recipient for s in report.recipients] == ["r0@remote.test"]
    assert report.recipients[0].status == "5.0.0"


def test_compose_gives_a_multipart_report() -> None:
    e = entry(rcpt(0, orcpt="rfc822-orig@local.test"), envid="ENV-1", ret="HDRS")
    d = bounces.decide(e, {0: FAILED}, T0, POLICY)
    original = b"Subject: the original\r\nFrom: alice@local.test\r\n\r\nsecret body\r\n"
    data = bounces.compose(d.reports[0], e, original, hostname="mx.local.test", now=T0)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg["To"].addresses[0].addr_spec == "alice@local.test"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert b"Original-Envelope-Id: ENV-1" in data
    assert b"Original-Recipient: rfc822;rfc822-orig@local.test" in data
    assert b"Action: failed" in data and b"Status: 5.1.1" in data
    assert b"secret body" not in data  # RET=HDRS


_OUTCOMES = st.sampled_from([SENT, FAILED, DEFERRED, None])


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 4),
    rounds=st.lists(st.lists(_OUTCOMES, min_size=4, max_size=4), min_size=1, max_size=60),
    null_sender=st.booleans(),
    gaps=st.lists(st.floats(60, 6 * HOUR), min_size=60, max_size=60),
)
def test_lifetimes(
    n: int, rounds: list[list[Outcome | None]], null_sender: bool, gaps: list[float]
) -> None:
    """Invariant: each recipient fails in at most one report and is reported delayed at most
    once; the delay report precedes any expiry; nothing goes to <>; finished entries have no
    open recipient."""
    e = entry(*(rcpt(i) for i in range(n)), sender="" if null_sender else "a@local.test")
    now = T0
    failed: list[str] = []
    delayed: list[str] = []
    for outcomes, gap in zip(rounds, gaps, strict=False):
        given_ = {i: o for i, o in enumerate(outcomes[:n]) if o is not None}
        given_ = {i: o for i, o in given_.items() if not e.recipients[i].final}
        d = bounces.decide(e, given_, now, POLICY)
        if null_sender:
            assert d.reports == ()
        for report in d.reports:
            names = [s.final_recipient for s in report.recipients]
            if report.action == "failed":
                failed += names
            elif report.action == "delayed":
                assert not failed or all(f not in names for f in failed)
                delayed += names
        by_index = {u.index: u for u in d.update.recipients}
        e = replace(
            e,
            recipients=tuple(
                replace(r, state=by_index[r.index].state, reply=by_index[r.index].reply)
                if r.index in by_index
                else r
                for r in e.recipients
            ),
            warned=d.update.warned,
            attempts=e.attempts + 1,
            last_attempt=now,
        )
        if d.finished:
            assert not e.open_recipients
            break
        assert d.update.next_attempt is not None and d.update.next_attempt > now
        now = max(now + gap, d.update.next_attempt)
    assert len(failed) == len(set(failed))
    assert len(delayed) == len(set(delayed))
