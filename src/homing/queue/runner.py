"""The queue runner: one asyncio task that delivers what the spool holds when it is due.

Theory of operation. The runner sleeps until the earliest `next_attempt` in the spool (at
most `poll_interval`, so entries changed by another process are noticed), or until it is
woken: by the store after a commit that queued something (`Spool.subscribe`), by a domain
task finishing, or by `wake()` (SIGUSR1 from `homing queue retry`). Each time it takes the
due entries, groups them by destination domain, and starts tasks for them: at most
`concurrency` at a time in all, and at most `destination_concurrency` for one domain (as
Postfix's default_destination_concurrency_limit). A domain with many entries due is split
among several tasks, each taking at least `MIN_PER_TASK` of them (a handful of messages is
not worth several connections) and at most `batch`; no entry is ever in two tasks. A domain
whose attempt only deferred (the server is down, or refuses more connections) is held to
one task at a time until one delivers again (or `policy.max_interval` has passed): the
negative feedback of Postfix's concurrency scheduler, in its simplest form. A task
looks up the route (`outbound.route`), then hands its entries to `outbound.attempt.deliver`,
which sends them over one connection where it can.

As each entry's fate in the attempt is settled, `bounces.decide` says what follows (new
recipient states, next attempt, DSNs), the DSN messages are composed and routed by the
`DSNSink` (the router: local senders get them in their mailbox, remote ones through this
queue), and everything is written in ONE group-committed transaction (`Spool.record`). The
domain task ends only when all its records are committed. A crash before that leaves the
entry as it was: the attempt is made again after the restart (at-least-once, RFC 5321 §6.1).

Time comes from the `Clock`, so schedules can be minutes or days long in production and
fractions of a second in tests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from homing.clock import Clock
from homing.config.model import Config
from homing.dns.resolver import Resolver
from homing.mail.address import AddressError, Mailbox, parse_path
from homing.outbound import attempt as outbound
from homing.outbound.attempt import AttemptSettings, Job, JobResult, OnResult, Outcome
from homing.outbound.route import (
    DEFAULT_MAX_MX,
    NO_SUCH_DOMAIN,
    SMTP_PORT,
    RouteFailure,
    RoutePlan,
    find_route,
    find_smarthost,
)
from homing.proto.smtp import codes
from homing.proto.smtp.client import ClientSettings
from homing.proto.smtp.grammar import MailArgs, RcptArgs
from homing.queue import bounces
from homing.queue.schedule import SchedulePolicy
from homing.store import NewMessage, NewQueued, QueueEntry, Store

log = logging.getLogger("homing.queue")


class DSNSink(Protocol):
    """Where DSNs go: the router turns one into local copies and/or queue entries."""

    def dsn_delivery(
        self, message: bytes, to: str
    ) -> tuple[Sequence[NewMessage], Sequence[NewQueued]]:
        """The store writes that deliver `message` (from <>) to `to`; empty if it cannot
        be delivered anywhere (the sender's local address no longer exists)."""
        ...


Deliver = Callable[
    [RoutePlan, Sequence[Job], AttemptSettings, OnResult], Awaitable[list[JobResult]]
]


async def _deliver(
    plan: RoutePlan, jobs: Sequence[Job], settings: AttemptSettings, on_result: OnResult
) -> list[JobResult]:
    return await outbound.deliver(plan, jobs, settings, on_result=on_result)


#: A domain's entries go to several tasks only when each gets at least this many.
MIN_PER_TASK = 10


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """What the runner needs from the configuration."""

    hostname: str
    """Reporting-MTA of DSNs; with `our_names`, what an MX pointing at us is."""
    policy: SchedulePolicy
    our_names: frozenset[str] = frozenset()
    concurrency: int = 20
    """Delivery tasks (each one connection at a time) running at once, all domains together."""
    destination_concurrency: int = 5
    """...of which for one domain at most."""
    batch: int = 100
    """Entries of one domain handed to one attempt at most."""
    batch_bytes: int = 64 * 1024 * 1024
    """...and their total size at most (the first one always goes)."""
    port: int = SMTP_PORT
    max_mx: int = DEFAULT_MAX_MX
    ipv6: bool = True
    smarthost: tuple[str, int] | None = None
    poll_interval: float = 60.0


class QueueRunner:
    """Runs the spool. `start()` it on the event loop; `stop()` before closing the store."""

    def __init__(
        self,
        store: Store,
        *,
        resolver: Resolver,
        attempt_settings: AttemptSettings,
        settings: RunnerSettings,
        clock: Clock,
        sink: DSNSink,
        rng: random.Random | None = None,
        deliver: Deliver = _deliver,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.attempt_settings = attempt_settings
        self.settings = settings
        self.clock = clock
        self.sink = sink
        self.rng = rng or random.Random()
        self._deliver = deliver
        self._active: dict[asyncio.Task[None], list[QueueEntry]] = {}
        """Delivery tasks running, with their entries."""
        self._per_domain: collections.Counter[str] = collections.Counter()
        self._inflight: set[str] = set()
        """Ids of the entries of the running tasks."""
        self._throttled: dict[str, float] = {}
        """Domains held to one task at a time until then (clock time): their last attempt
        only deferred."""
        self._cooldown: dict[str, float] = {}
        """Domains whose last run failed unexpectedly (a bug, a database error), left alone
        until then (clock time) instead of being retried in a tight loop."""
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._stopping = False

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = self.store.spool.subscribe(self.wake)
        self._task = asyncio.create_task(self._run(), name="homing-queue")
        log.info("queue runner started: %d entries queued", self.store.spool.count())

    async def stop(self, grace: float = 10.0) -> None:
        """Start nothing new; give attempts in progress `grace` seconds, then cancel them
        (they are redone after the next start)."""
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        tasks = list(self._active)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def wake(self) -> None:
        """Look at the spool again now; safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._wakeup.set()
                return
        except RuntimeError:
            pass  # not on a loop's thread: the writer thread, usually
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wakeup.set)

    # ------------------------------------------------------------------------- the loop

    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            try:
                self._dispatch()
                delay = self._delay()
            except Exception:
                log.exception("queue runner: cannot read the spool")
                delay = self.settings.poll_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()

    def _busy(self) -> set[str]:
        """Domains not to start now: with all the tasks they may have, or cooling down after
        a failure."""
        now = self.clock.now()
        for domain, until in list(self._cooldown.items()):
            if until <= now:
                del self._cooldown[domain]
        for domain, until in list(self._throttled.items()):
            if until <= now:
                del self._throttled[domain]
        full = {
            domain for domain, count in self._per_domain.items() if count >= self._limit(domain)
        }
        return full | set(self._cooldown)

    def _limit(self, domain: str) -> int:
        """Tasks `domain` may have at once."""
        return 1 if domain in self._throttled else self.settings.destination_concurrency

    def _delay(self) -> float:
        """Seconds until something is due that could be started now."""
        if len(self._active) >= self.settings.concurrency:
            return self.settings.poll_interval  # a finishing domain task wakes the loop
        nxt = self.store.spool.next_due(skip_domains=self._busy(), skip_ids=self._inflight)
        if self._cooldown:
            cooled = min(self._cooldown.values())
            nxt = cooled if nxt is None else min(nxt, cooled)
        if nxt is None:
            return self.settings.poll_interval
        return min(max(nxt - self.clock.now(), 0.0), self.settings.poll_interval)

    def _dispatch(self) -> None:
        """Start a task for each due domain that has none, up to `concurrency`."""
        free = self.settings.concurrency - len(self._active)
        if free <= 0 or self._stopping:
            return
        now = self.clock.now()
        due = self.store.spool.due(
            now,
            limit=free * self.settings.batch,
            skip_domains=self._busy(),
            skip_ids=self._inflight,
        )
        groups: dict[str, list[QueueEntry]] = {}
        for entry in due:
            groups.setdefault(entry.domain, []).append(entry)
        for domain, entries in groups.items():
            slots = min(free, self._limit(domain) - self._per_domain[domain])
            for batch in self._split(entries, slots):
                task = asyncio.create_task(self._domain(domain, batch), name=f"queue {domain}")
                self._active[task] = batch
                self._per_domain[domain] += 1
                self._inflight.update(entry.id for entry in batch)
                task.add_done_callback(self._done)
                free -= 1
            if free <= 0:
                break

    def _done(self, task: asyncio.Task[None]) -> None:
        batch = self._active.pop(task, [])
        if batch:
            domain = batch[0].domain
            self._per_domain[domain] -= 1
            if self._per_domain[domain] <= 0:
                del self._per_domain[domain]
            self._inflight.difference_update(entry.id for entry in batch)
        self._wakeup.set()

    async def run_due(self) -> int:
        """Deliver everything due now and wait until it is recorded (tests, `queue flush`).
        Returns how many entries were handled."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        handled = 0
        seen: set[str] = set()
        limit = self.settings.batch * self.settings.concurrency
        while True:
            # A handled entry is gone or due later, unless recording it failed: `seen`
            # keeps such an entry from being attempted over and over here.
            due = self.store.spool.due(self.clock.now(), limit=limit)
            fresh = [e for e in due if e.id not in seen]
            if not fresh:
                return handled
            groups: dict[str, list[QueueEntry]] = {}
            for entry in fresh:
                groups.setdefault(entry.domain, []).append(entry)
            batches = [
                batch
                for domain, entries in groups.items()
                for batch in self._split(entries, self._limit(domain))
            ]
            for batch in batches:
                seen.update(e.id for e in batch)
                handled += len(batch)
            await asyncio.gather(*(self._domain(b[0].domain, b) for b in batches))

    def _split(self, entries: list[QueueEntry], slots: int) -> list[list[QueueEntry]]:
        """At most `slots` batches of one domain's entries, one per task: as even as they
        come, at least `MIN_PER_TASK` entries each (the last may have fewer) and at most
        `batch` entries and `batch_bytes` (the first of a batch always goes). What does not
        fit stays due for the next dispatch."""
        per = max(MIN_PER_TASK, -(-len(entries) // max(slots, 1)))
        per = min(per, self.settings.batch)
        batches: list[list[QueueEntry]] = []
        rest = entries
        while rest and len(batches) < slots:
            batch = self._batch(rest, per)
            batches.append(batch)
            rest = rest[len(batch) :]
        return batches

    def _batch(self, entries: list[QueueEntry], most: int) -> list[QueueEntry]:
        """The first entries that one attempt takes: at most `most` of them and
        `batch_bytes` in all (the first always)."""
        taken: list[QueueEntry] = []
        size = 0
        for entry in entries:
            if taken and (len(taken) >= most or size + entry.size > self.settings.batch_bytes):
                break
            taken.append(entry)
            size += entry.size
        return taken

    # ------------------------------------------------------------------------- one domain

    async def _domain(self, domain: str, entries: list[QueueEntry]) -> None:
        try:
            ok = await self._attempt(domain, entries)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("queue: delivery to %s failed unexpectedly", domain)
            ok = False
        if not ok:
            self._cooldown[domain] = self.clock.now() + self.settings.policy.first_retry

    async def _attempt(self, domain: str, entries: list[QueueEntry]) -> bool:
        """One attempt for the domain's entries; False if an outcome could not be recorded."""
        ok = True

        pending: list[Future[bool]] = []
        normal: list[QueueEntry] = []
        for entry in entries:
            if entry.bounce:
                decision = bounces.operator_bounce(entry, self.clock.now(), self.settings.policy)
                pending.append(self._record(entry, decision))
            else:
                normal.append(entry)
        if normal:
            route = await self._route(domain)
            if isinstance(route, RouteFailure):
                pending += self._route_failed(route, normal)
            else:
                pending += await self._send(route, normal)
        for future in pending:
            try:
                await asyncio.wrap_future(future)
            except Exception:
                log.exception("queue: cannot record the outcome of an attempt to %s", domain)
                ok = False
        return ok

    async def _route(self, domain: str) -> RoutePlan | RouteFailure:
        s = self.settings
        if s.smarthost is not None:
            host, port = s.smarthost
            return await find_smarthost(self.resolver, host, port, rng=self.rng, ipv6=s.ipv6)
        try:
            ascii_domain = Mailbox("postmaster", domain).ascii_domain  # DNS wants A-labels
        except AddressError:
            return RouteFailure(domain, NO_SUCH_DOMAIN.with_text(f"Bad domain {domain}"))
        return await find_route(
            self.resolver,
            ascii_domain,
            our_names=s.our_names | {s.hostname},
            rng=self.rng,
            max_mx=s.max_mx,
            port=s.port,
            ipv6=s.ipv6,
        )

    def _route_failed(self, route: RouteFailure, entries: list[QueueEntry]) -> list[Future[bool]]:
        outcome = Outcome("failed" if route.permanent else "deferred", route.reply)
        log.info("queue: %s: %s (%s)", route.domain, route.reply, route.detail or "no detail")
        now = self.clock.now()
        error = f"{route.reply}" + (f" ({route.detail})" if route.detail else "")
        return [
            self._record(
                e,
                bounces.decide(
                    e, bounces.all_open(e, outcome), now, self.settings.policy, error=error
                ),
            )
            for e in entries
        ]

    async def _send(self, plan: RoutePlan, entries: list[QueueEntry]) -> list[Future[bool]]:
        jobs: list[Job] = []
        indexes: dict[str, list[int]] = {}
        unusable: dict[str, dict[int, Outcome]] = {}
        by_id: dict[str, QueueEntry] = {}
        pending: list[Future[bool]] = []
        for entry in entries:
            job, idx, bad = self._job(entry)
            if job is None:
                if bad:
                    decision = bounces.decide(entry, bad, self.clock.now(), self.settings.policy)
                    pending.append(self._record(entry, decision))
                continue
            jobs.append(job)
            indexes[entry.id] = idx
            unusable[entry.id] = bad
            by_id[entry.id] = entry

        async def on_result(result: JobResult) -> None:
            entry = by_id[result.key]
            outcomes = dict(zip(indexes[entry.id], result.outcomes, strict=True))
            outcomes.update(unusable[entry.id])
            decision = bounces.decide(
                entry,
                outcomes,
                self.clock.now(),
                self.settings.policy,
                error=result.last_error,
            )
            pending.append(self._record(entry, decision))

        if jobs:
            results = await self._deliver(plan, jobs, self.attempt_settings, on_result)
            domain = entries[0].domain
            if all(o.state == "deferred" for r in results for o in r.outcomes):
                # Down, or refusing more connections: one at a time until it takes mail again
                # (the retries, `first_retry` later, fall well within the hour).
                self._throttled[domain] = self.clock.now() + self.settings.policy.max_interval
            elif any(o.state == "delivered" for r in results for o in r.outcomes):
                self._throttled.pop(domain, None)
        return pending

    def _job(self, entry: QueueEntry) -> tuple[Job | None, list[int], dict[int, Outcome]]:
        """The attempt's job for an entry: its open recipients that can be written, their
        indexes, and outcomes for those that cannot (a permanent failure)."""
        message = self.store.spool.message(entry.id)
        if message is None:
            return None, [], {}
        try:
            reverse = parse_path(f"<{entry.mail_from}>", utf8=True)
        except AddressError as exc:
            # Never send it from <> instead: its bounces would be lost.
            reply = codes.SENDER_SYNTAX.with_text(f"Bad sender address: {exc}")
            return None, [], bounces.all_open(entry, Outcome("failed", reply))
        mail = MailArgs(path=reverse, ret=entry.ret, envid=entry.envid, smtputf8=entry.smtputf8)
        rcpts: list[RcptArgs] = []
        idx: list[int] = []
        bad: dict[int, Outcome] = {}
        for r in entry.open_recipients:
            try:
                path = parse_path(f"<{r.address}>", utf8=True)
            except AddressError as exc:
                bad[r.index] = Outcome("failed", bounces.BAD_RECIPIENT.with_text(str(exc)))
                continue
            orcpt = None
            if r.orcpt is not None:
                orcpt = ("rfc822" if r.orcpt.isascii() else "utf-8", r.orcpt)
            rcpts.append(RcptArgs(path=path, notify=r.notify, orcpt=orcpt))
            idx.append(r.index)
        if bad:
            log.warning("queue %s: recipients that cannot be written: %s", entry.id, sorted(bad))
        if not rcpts:
            return None, [], bad
        job = Job(
            key=entry.id,
            mail=mail,
            rcpts=tuple(rcpts),
            message=message,
            needs_8bit=True if entry.body_8bit else None,
        )
        return job, idx, bad

    # ------------------------------------------------------------------------- recording

    def _record(self, entry: QueueEntry, decision: bounces.Decision) -> Future[bool]:
        """Write the decision, with its DSNs, in one transaction (never blocks)."""
        messages: list[NewMessage] = []
        queued: list[NewQueued] = []
        if decision.reports:
            try:
                original = self.store.spool.message(entry.id) or b""
                now = self.clock.now()
                for report in decision.reports:
                    dsn = bounces.compose(
                        report, entry, original, hostname=self.settings.hostname, now=now
                    )
                    local, remote = self.sink.dsn_delivery(dsn, entry.mail_from)
                    messages += local
                    queued += remote
            except Exception:
                log.exception("queue %s: cannot make its DSN; recording without it", entry.id)
                messages, queued = [], []
        if decision.reports:
            log.info(
                "%s from=<%s> dsn %s", entry.id, entry.mail_from, bounces.summary(decision.reports)
            )
        if decision.finished:
            log.info("%s removed from the queue", entry.id)
        return self.store.spool.record(decision.update, messages, queued)


# ----------------------------------------------------------------------------- from config


def client_tls_context(*, verify: bool) -> ssl.SSLContext:
    """A client context: with `verify`, the system's CAs and host name checks (a
    smarthost); without, opportunistic TLS for MX hosts (RFC 7435: encrypt, do not
    authenticate, and never fall back to clear text because a certificate looks wrong)."""
    if verify:
        context = ssl.create_default_context()
    else:  # no CA store to load: nothing is checked against it
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def build_runner(
    store: Store,
    config: Config,
    clock: Clock,
    sink: DSNSink,
    *,
    resolver: Resolver | None = None,
) -> QueueRunner:
    """The runner `config` describes ([outbound], [queue], [dns]). Reads the smarthost
    password file (OSError if it cannot)."""
    out, queue = config.outbound, config.queue
    if resolver is None:
        from homing.dns.dnspython import DnspythonResolver

        resolver = DnspythonResolver(config.dns.nameservers, timeout=config.dns.timeout)
    helo = out.helo_name or config.hostname
    auth: tuple[str, str] | None = None
    smarthost: tuple[str, int] | None = None
    implicit = False
    require_tls = out.require_tls
    context: ssl.SSLContext | None = client_tls_context(verify=False)
    verify_hostname = False
    if out.smarthost:
        smarthost = (out.smarthost, out.smarthost_port)
        mode = out.smarthost_tls
        implicit = mode == "implicit"
        require_tls = require_tls or mode in ("starttls", "implicit")
        verify_hostname = out.smarthost_tls_verify
        context = None if mode == "none" else client_tls_context(verify=verify_hostname)
        password_path = out.password_path(config.data_dir)
        if out.smarthost_username:
            if password_path is None:
                raise OSError("outbound.smarthost_username is set but no password file is")
            password = password_path.read_text(encoding="utf-8").splitlines()
            auth = (out.smarthost_username, password[0] if password else "")
    policy = SchedulePolicy(
        first_retry=queue.first_retry,
        max_interval=queue.max_interval,
        warn_after=queue.warn_after or None,
        give_up_after=queue.give_up_after,
    )
    attempt_settings = AttemptSettings(
        client=ClientSettings(helo, require_tls=require_tls, auth=auth),
        tls_context=context,
        implicit_tls=implicit,
        connect_timeout=out.connect_timeout,
        max_sessions=out.max_sessions_per_attempt,
    )
    settings = RunnerSettings(
        hostname=config.hostname,
        policy=policy,
        our_names=frozenset({config.hostname, helo}),
        concurrency=queue.concurrency,
        destination_concurrency=queue.destination_concurrency,
        port=out.port,
        max_mx=out.max_mx,
        ipv6=out.ipv6,
        smarthost=smarthost,
    )
    return QueueRunner(
        store,
        resolver=resolver,
        attempt_settings=attempt_settings,
        settings=settings,
        clock=clock,
        sink=sink,
    )
