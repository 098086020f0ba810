"""The queue runner with a real store and router but a fake resolver, a fake clock and a fake
SMTP attempt: routing decisions, whole retry lifetimes in milliseconds, DSNs delivered to
local senders and queued for remote ones, the operator's bounce, and wake-ups."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from homing.clock import FakeClock
from homing.config.model import Config, TLSConfig
from homing.dns import FakeResolver
from homing.mail.reply import Reply
from homing.outbound.attempt import AttemptSettings, Job, JobResult, OnResult, Outcome
from homing.outbound.route import RoutePlan
from homing.proto.smtp.client import ClientSettings
from homing.queue.runner import QueueRunner, RunnerSettings
from homing.queue.schedule import SchedulePolicy
from homing.router import Router
from homing.store import NewQueued, QueueRecipient, Store, make_credentials

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
POLICY = SchedulePolicy(
    first_retry=60.0, max_interval=300.0, warn_after=600.0, give_up_after=1800.0, jitter=0.0
)
ZONES = {
    "remote.test": {"MX": [(10, "mx1.remote.test"), (20, "mx2.remote.test")]},
    "mx1.remote.test": {"A": ["192.0.2.1"]},
    "mx2.remote.test": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "loop.test": {"MX": [(10, "mx.local.test")]},
    "implicit.test": {"A": ["192.0.2.9"]},
}
BODY = b"From: alice@local.test\r\nTo: bob@remote.test\r\nSubject: hello\r\n\r\nHi Bob\r\n"
OK = Reply(250, "2.0.0", "Ok")


@dataclass
class FakeAttempt:
    """Stands in for outbound.attempt.deliver: answers every recipient with `behaviour`."""

    behaviour: Callable[[Job, str], Outcome] = lambda job, rcpt: Outcome("delivered", OK, "mx1")
    calls: list[tuple[RoutePlan, list[Job]]] = field(default_factory=list)

    async def __call__(
        self,
        plan: RoutePlan,
        jobs: Sequence[Job],
        settings: AttemptSettings,
        on_result: OnResult,
    ) -> list[JobResult]:
        self.calls.append((plan, list(jobs)))
        results = []
        for job in jobs:
            outcomes = [self.behaviour(job, str(r.path.mailbox)) for r in job.rcpts]
            result = JobResult(job.key, outcomes)
            await on_result(result)
            results.append(result)
        return results


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    s = Store.open(tmp_path / "homing.db", create=True, clock=clock)
    s.add_domain("local.test")
    s.add_account("alice@local.test", make_credentials("pw", hasher=FAST, scram_iterations=4096))
    yield s
    assert s.integrity_check() == []
    s.close()


@pytest.fixture
def router(store: Store, clock: FakeClock, tmp_path: Path) -> Router:
    config = Config(
        hostname="mx.local.test",
        data_dir=tmp_path,
        tls=TLSConfig(tmp_path / "c.pem", tmp_path / "k.pem"),
        domains=("local.test",),
    )
    return Router(store, config, clock)


def make_runner(
    store: Store,
    router: Router,
    clock: FakeClock,
    fake: FakeAttempt,
    resolver: FakeResolver | None = None,
    **kw: object,
) -> QueueRunner:
    settings = RunnerSettings(hostname="mx.local.test", policy=POLICY, **kw)  # type: ignore[arg-type]
    return QueueRunner(
        store,
        resolver=resolver or FakeResolver(ZONES),
        attempt_settings=AttemptSettings(ClientSettings("mx.local.test")),
        settings=settings,
        clock=clock,
        sink=router,
        deliver=fake,
    )


def enqueue(
    store: Store, *rcpts: str, sender: str = "alice@local.test", queue_id: str = "Q1"
) -> None:
    domain = rcpts[0].rpartition("@")[2]
    entry = NewQueued(queue_id, sender, tuple(QueueRecipient(r) for r in rcpts), domain, BODY)
    store.deliver([], [entry]).result()


def inbox(store: Store, address: str = "alice@local.test") -> list[bytes]:
    account = store.get_account(address)
    assert account is not None
    box = store.get_mailbox(account.id, "INBOX")
    assert box is not None
    out = []
    for info in store.list_messages(box.id):
        data = store.read_message(box.id, info.uid)
        assert data is not None
        out.append(data)
    return out


def report_fields(message: bytes) -> dict[str, str]:
    msg = email.message_from_bytes(message, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    status = next(p for p in msg.iter_parts() if p.get_content_type() == "message/delivery-status")
    text = status.as_bytes().decode()
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key[0].isupper():
            fields[key] = value
    fields["Subject"] = str(msg["Subject"])
    return fields


async def test_delivered_entries_leave_the_queue(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt()
    enqueue(store, "bob@remote.test", "carol@remote.test")
    runner = make_runner(store, router, clock, fake)
    assert await runner.run_due() == 1
    ((plan, jobs),) = fake.calls
    assert [a.host for a in plan.attempts][:1] == ["mx1.remote.test"]
    assert plan.attempts[0].port == 25
    (job,) = jobs
    assert [str(r.path.mailbox) for r in job.rcpts] == ["bob@remote.test", "carol@remote.test"]
    assert job.message == BODY and str(job.mail.path) == "<alice@local.test>"
    assert store.spool.count() == 0
    assert inbox(store) == []


async def test_a_whole_lifetime_deferred_warned_then_returned(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt(lambda job, r: Outcome("deferred", Reply(421, "4.3.2", "busy"), "mx1"))
    enqueue(store, "bob@remote.test")
    runner = make_runner(store, router, clock, fake)
    start = clock.now()
    attempt_times = []
    while store.spool.count():
        (entry,) = store.spool.entries()
        clock.advance(max(entry.next_attempt - clock.now(), 0))
        attempt_times.append(clock.now() - start)
        await runner.run_due()
    assert attempt_times[0] == 0
    assert attempt_times[-1] == POLICY.give_up_after
    gaps = [b - a for a, b in itertools.pairwise(attempt_times)]
    assert all(POLICY.first_retry <= g <= POLICY.max_interval for g in gaps)
    delayed, failed = inbox(store)
    d = report_fields(delayed)
    assert d["Action"] == "delayed" and d["Status"] == "4.3.2"
    assert d["Subject"].startswith("Delayed Mail")
    f = report_fields(failed)
    assert f["Action"] == "failed" and f["Final-Recipient"] == "rfc822;bob@remote.test"
    assert f["Diagnostic-Code"] == "smtp;421 4.3.2 busy"
    assert b"Hi Bob" in failed  # RET=FULL by default: the message comes back


async def test_null_mx_fails_at_once_without_an_attempt(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt()
    enqueue(store, "x@nullmx.test")
    await make_runner(store, router, clock, fake).run_due()
    assert fake.calls == [] and store.spool.count() == 0
    (dsn,) = inbox(store)
    fields = report_fields(dsn)
    assert fields["Status"] == "5.1.10" and fields["Action"] == "failed"


async def test_mx_pointing_at_us_is_a_mail_loop(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt()
    enqueue(store, "x@loop.test")
    await make_runner(store, router, clock, fake).run_due()
    (dsn,) = inbox(store)
    assert report_fields(dsn)["Status"] == "5.4.6"
    assert b"loops back to myself" in dsn


async def test_dns_failure_defers_and_never_uses_the_a_record(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt()
    resolver = FakeResolver(ZONES, servfail={("implicit.test", "MX")})
    enqueue(store, "x@implicit.test")
    await make_runner(store, router, clock, fake, resolver).run_due()
    assert fake.calls == []
    (entry,) = store.spool.entries()
    assert entry.recipients[0].state == "deferred"
    assert entry.recipients[0].reply is not None and entry.recipients[0].reply.code == 451
    assert "Temporary DNS failure" in (entry.last_error or "")
    assert ("implicit.test", "A") not in resolver.queries
    assert inbox(store) == []


async def test_implicit_mx_and_configured_port(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt()
    enqueue(store, "x@implicit.test")
    await make_runner(store, router, clock, fake, port=2525).run_due()
    ((plan, _),) = fake.calls
    assert plan.implicit and [(a.address, a.port) for a in plan.attempts] == [("192.0.2.9", 2525)]


async def test_smarthost_takes_everything(store: Store, router: Router, clock: FakeClock) -> None:
    fake = FakeAttempt()
    enqueue(store, "x@nullmx.test")  # no MX lookup at all with a smarthost
    await make_runner(store, router, clock, fake, smarthost=("192.0.2.50", 587)).run_due()
    ((plan, _),) = fake.calls
    assert plan.smarthost and [(a.address, a.port) for a in plan.attempts] == [("192.0.2.50", 587)]


async def test_permanent_failure_dsn_to_a_remote_sender_is_queued_from_null(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt(lambda job, r: Outcome("failed", Reply(550, "5.1.1", "unknown"), "mx1"))
    enqueue(store, "bob@remote.test", sender="someone@implicit.test")
    runner = make_runner(store, router, clock, fake)
    await runner.run_due()  # the DSN is queued with the record, and is due at once
    assert len(fake.calls) == 2
    (dsn_job,) = fake.calls[1][1]
    assert str(dsn_job.mail.path) == "<>"
    assert [str(r.path.mailbox) for r in dsn_job.rcpts] == ["someone@implicit.test"]
    assert b"multipart/report" in dsn_job.message
    # The DSN failed too: nobody hears of that (no bounce loops), and the queue is empty.
    assert store.spool.count() == 0


async def test_mixed_results_one_bounce_then_the_rest_later(
    store: Store, router: Router, clock: FakeClock
) -> None:
    answers = {
        "ok@remote.test": Outcome("delivered", OK, "mx1"),
        "bad@remote.test": Outcome("failed", Reply(550, "5.1.1", "unknown"), "mx1"),
        "later@remote.test": Outcome("deferred", Reply(450, "4.2.0", "busy"), "mx1"),
    }
    fake = FakeAttempt(lambda job, r: answers[r])
    enqueue(store, "ok@remote.test", "bad@remote.test", "later@remote.test")
    runner = make_runner(store, router, clock, fake)
    await runner.run_due()
    (entry,) = store.spool.entries()
    assert [r.state for r in entry.recipients] == ["delivered", "failed", "deferred"]
    (bounce,) = inbox(store)
    assert report_fields(bounce)["Final-Recipient"] == "rfc822;bad@remote.test"
    answers["later@remote.test"] = Outcome("delivered", OK, "mx1")
    clock.advance(POLICY.first_retry)
    await runner.run_due()
    assert [str(r.path.mailbox) for r in fake.calls[1][1][0].rcpts] == ["later@remote.test"]
    assert store.spool.count() == 0 and len(inbox(store)) == 1


async def test_operator_bounce_returns_the_message(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt()
    enqueue(store, "bob@remote.test")
    store.spool.hold("Q1")
    store.spool.bounce("Q1.1", clock.now())
    await make_runner(store, router, clock, fake).run_due()
    assert fake.calls == [] and store.spool.count() == 0
    (dsn,) = inbox(store)
    assert report_fields(dsn)["Status"] == "5.0.0"


async def test_the_running_runner_wakes_on_enqueue_and_connection_reuse_batches(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt()
    runner = make_runner(store, router, clock, fake, poll_interval=30.0)
    await runner.start()
    try:
        enqueue(store, "a@remote.test", queue_id="Q1")
        for _ in range(200):
            if store.spool.count() == 0:
                break
            await asyncio.sleep(0.01)
        assert store.spool.count() == 0
        await runner.stop()
        for n in range(5):
            enqueue(store, f"r{n}@remote.test", queue_id=f"B{n}")
        runner = make_runner(store, router, clock, fake)
        await runner.start()
        for _ in range(200):
            if store.spool.count() == 0:
                break
            await asyncio.sleep(0.01)
        assert store.spool.count() == 0
        assert [len(jobs) for _, jobs in fake.calls] == [1, 5]  # one domain, one attempt
    finally:
        await runner.stop()


async def test_an_unexpected_failure_cools_the_domain_down_instead_of_spinning(
    store: Store, router: Router, clock: FakeClock
) -> None:
    calls = 0

    async def broken(*args: object) -> list[JobResult]:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    runner = make_runner(store, router, clock, FakeAttempt(), poll_interval=0.05)
    runner._deliver = broken
    await runner.start()
    try:
        enqueue(store, "a@remote.test")
        await asyncio.sleep(0.3)
        assert calls == 1  # not retried in a tight loop
        clock.advance(POLICY.first_retry)
        runner.wake()
        for _ in range(100):
            if calls == 2:
                break
            await asyncio.sleep(0.01)
        assert calls == 2
    finally:
        await runner.stop()
    assert store.spool.count() == 1  # nothing was lost meanwhile


async def test_an_unusable_sender_fails_rather_than_going_out_from_null(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt()
    enqueue(store, "a@remote.test", sender="not an address")
    await make_runner(store, router, clock, fake).run_due()
    assert fake.calls == [] and store.spool.count() == 0


async def test_idn_domains_are_looked_up_as_a_labels(
    store: Store, router: Router, clock: FakeClock
) -> None:
    fake = FakeAttempt()
    resolver = FakeResolver({"xn--bcher-kva.test": {"A": ["192.0.2.3"]}})
    enqueue(store, "anna@bücher.test")
    await make_runner(store, router, clock, fake, resolver).run_due()
    assert ("xn--bcher-kva.test", "MX") in resolver.queries
    ((plan, _),) = fake.calls
    assert plan.attempts[0].address == "192.0.2.3"


async def test_concurrency_is_bounded_without_spinning(
    store: Store, router: Router, clock: FakeClock
) -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    async def slow(
        plan: RoutePlan, jobs: Sequence[Job], settings: AttemptSettings, on_result: OnResult
    ) -> list[JobResult]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        results = [JobResult(j.key, [Outcome("delivered", OK, "mx")] * len(j.rcpts)) for j in jobs]
        for r in results:
            await on_result(r)
        return results

    zones = {f"d{n}.test": {"A": ["192.0.2.10"]} for n in range(5)}
    for n in range(5):
        enqueue(store, f"x@d{n}.test", queue_id=f"C{n}")
    runner = make_runner(store, router, clock, FakeAttempt(), FakeResolver(zones), concurrency=2)
    looks = 0
    next_due = store.spool.next_due

    def counting(**kw: Any) -> float | None:
        nonlocal looks
        looks += 1
        return next_due(**kw)

    store.spool.next_due = counting  # type: ignore[method-assign]
    runner._deliver = slow
    await runner.start()
    try:
        await asyncio.sleep(0.2)
        assert peak == 2 and running == 2
        assert looks < 10  # waiting for a slot, not spinning
        assert store.spool.due(clock.now())  # the others wait, due
        release.set()
        for _ in range(200):
            if store.spool.count() == 0:
                break
            await asyncio.sleep(0.01)
        assert store.spool.count() == 0 and peak == 2
    finally:
        await runner.stop()


async def test_a_busy_domain_gets_several_connections_and_leaves_room_for_others(
    store: Store, router: Router, clock: FakeClock
) -> None:
    """95 entries for one domain and 1 for another, concurrency 4, at most 3 per domain: the
    big domain is split over 3 concurrent attempts, the other gets the fourth slot, no entry
    is ever in two attempts at once, and each is delivered once."""
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    in_flight: set[str] = set()
    delivered: list[str] = []
    release = asyncio.Event()

    async def slow(
        plan: RoutePlan, jobs: Sequence[Job], settings: AttemptSettings, on_result: OnResult
    ) -> list[JobResult]:
        domain = plan.attempts[0].host
        running[domain] = running.get(domain, 0) + 1
        peak[domain] = max(peak.get(domain, 0), running[domain])
        keys = {job.key for job in jobs}
        assert not keys & in_flight, "an entry was handed to two attempts at once"
        in_flight.update(keys)
        await release.wait()
        await asyncio.sleep(0)
        results = [JobResult(j.key, [Outcome("delivered", OK, "mx")] * len(j.rcpts)) for j in jobs]
        for r in results:
            await on_result(r)
            delivered.append(r.key)
        in_flight.difference_update(keys)
        running[domain] -= 1
        return results

    zones = {"big.test": {"A": ["192.0.2.10"]}, "small.test": {"A": ["192.0.2.11"]}}
    for n in range(95):
        enqueue(store, f"x{n}@big.test", queue_id=f"B{n:03d}")
    enqueue(store, "y@small.test", queue_id="S1")
    runner = make_runner(
        store,
        router,
        clock,
        FakeAttempt(),
        FakeResolver(zones),
        concurrency=4,
        destination_concurrency=3,
        batch=20,
    )
    runner._deliver = slow
    await runner.start()
    try:
        for _ in range(100):
            if sum(running.values()) == 4:
                break
            await asyncio.sleep(0.01)
        assert running == {"big.test": 3, "small.test": 1}
        assert len(in_flight) == 3 * 20 + 1  # batches of `batch`, the rest waits its turn
        release.set()
        for _ in range(300):
            if store.spool.count() == 0:
                break
            await asyncio.sleep(0.01)
        assert store.spool.count() == 0
    finally:
        await runner.stop()
    assert peak == {"big.test": 3, "small.test": 1}
    assert sorted(delivered) == sorted({*delivered}) and len(delivered) == 96


async def test_a_few_entries_share_one_connection(
    store: Store, router: Router, clock: FakeClock
) -> None:
    """Splitting pays only with at least MIN_PER_TASK entries per connection: 25 entries make
    3 attempts (10, 10, 5), not 5."""
    fake = FakeAttempt()
    for n in range(25):
        enqueue(store, f"r{n}@remote.test", queue_id=f"F{n:02d}")
    await make_runner(store, router, clock, fake).run_due()
    assert sorted(len(jobs) for _, jobs in fake.calls) == [5, 10, 10]
    assert store.spool.count() == 0


async def test_a_domain_that_only_defers_gets_one_connection_until_it_takes_mail_again(
    store: Store, router: Router, clock: FakeClock
) -> None:
    deferred = Outcome("deferred", Reply(421, "4.7.0", "Too many connections"), "mx1")
    answer = deferred
    fake = FakeAttempt(behaviour=lambda job, rcpt: answer)
    runner = make_runner(store, router, clock, fake)
    for n in range(60):
        enqueue(store, f"r{n}@remote.test", queue_id=f"T{n:02d}")
    await runner.run_due()
    assert len(fake.calls) == 5  # split over destination_concurrency attempts: all deferred
    clock.advance(POLICY.first_retry)
    answer = Outcome("delivered", OK, "mx1")
    fake.calls.clear()
    await runner.run_due()
    assert [len(jobs) for _, jobs in fake.calls] == [60]  # held to one connection
    assert store.spool.count() == 0
    for n in range(60):
        enqueue(store, f"s{n}@remote.test", queue_id=f"U{n:02d}")
    fake.calls.clear()
    await runner.run_due()
    assert len(fake.calls) == 5  # it delivered: the limit is lifted
