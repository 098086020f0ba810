"""Composition root: builds store, router and listeners from the config; signals; shutdown.

`serve(config)` is what `homing serve` runs. `App` is also used in-process by tests. The
same `App` runs an SMTP worker process (`worker=`, see homing.workers): then it serves only
port 25, on the sockets the main process handed down, and tells the main process what it
delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

from homing.auth import Authenticator, FailureLimiter
from homing.clock import Clock, SystemClock
from homing.config.model import Config
from homing.imapd import IMAPService
from homing.net.listener import Listeners, ServiceSpec
from homing.net.stream import Stream
from homing.net.tls import TLSContexts
from homing.notify import NotifyListener, notify_path
from homing.pop3d import session as pop3d
from homing.proto import sasl
from homing.proto.pop3 import codes as pop3_codes
from homing.proto.smtp import codes
from homing.proto.smtp import server as smtp_core
from homing.queue.runner import QueueRunner, build_runner
from homing.router import Router
from homing.smtpd.session import SessionRegistry, SMTPSession, Timeouts
from homing.smtpd.submission import SubmissionSession
from homing.store import Store
from homing.workers import WorkerArgs, WorkerLink, WorkerPool, worker_command

log = logging.getLogger("homing")

#: Seconds an SMTP transaction in progress may take to finish after SIGTERM.
SHUTDOWN_GRACE = 30.0


def setup_logging(level: str, *, tag: str = "") -> None:
    """One line per event on stderr; `tag` (e.g. "worker=2") goes before each message."""
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"{tag} " if tag else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s %(name)s {prefix}%(message)s")
    )
    root = logging.getLogger("homing")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class App:
    """One running Homing instance."""

    def __init__(
        self, config: Config, *, clock: Clock | None = None, worker: WorkerLink | None = None
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.worker = worker
        """Set in an SMTP worker process: its link to the main process."""
        self.store = Store.open(config.db_path, create=worker is None, clock=self.clock)
        if worker is None:
            for domain in config.domains:
                if not self.store.has_domain(domain):
                    self.store.add_domain(domain)
        self.notify = NotifyListener(notify_path(config.run_dir), self.store)
        """Where other processes (the command line) say what they committed."""
        self.workers: WorkerPool | None = None
        """The SMTP worker processes, in the main process when `[smtp] workers` is set."""
        self._smtp_sockets: list[socket.socket] = []
        self.tls = self._load_tls()
        self.router = Router(self.store, config, self.clock)
        self.queue: QueueRunner = build_runner(self.store, config, self.clock, self.router)
        self.smtp_sessions = SessionRegistry()
        auth = config.auth
        self.auth = Authenticator(
            self.store,
            FailureLimiter(
                per_ip_limit=auth.failures_per_ip,
                delay=auth.failure_delay,
                max_delay=10 * auth.failure_delay,
                lockout=auth.lockout,
            ),
            clock=self.clock,
        )
        self.pop3_sessions = pop3d.SessionRegistry()
        self.maildrops = pop3d.Maildrops()
        self.imap = IMAPService(
            self.store,
            self.auth,
            self.tls,
            idle_timeout=config.imap.idle_timeout,
            max_message_size=config.limits.message_size,
            allow_plaintext_loopback=config.imap.allow_plaintext_loopback,
        )
        self.listeners = Listeners(
            self.tls,
            max_connections=config.limits.connections,
            logger=logging.getLogger("homing.net"),
        )
        self.stopped = asyncio.Event()

    def _load_tls(self) -> TLSContexts | None:
        cert, key = self.config.tls.cert, self.config.tls.key
        if not cert.exists() or not key.exists():
            log.warning("no TLS certificate at %s: STARTTLS and implicit TLS are off", cert)
            return None
        return TLSContexts(cert, key)

    # ------------------------------------------------------------------------- services

    def smtp_settings(
        self, *, submission: bool = False, implicit_tls: bool = False
    ) -> smtp_core.Settings:
        limits = self.config.limits
        return smtp_core.Settings(
            auth_mechanisms=sasl.MECHANISMS if submission else (),
            auth_required=submission,
            tls_active=implicit_tls,
            hostname=self.config.hostname,
            banner=self.config.smtp.banner,
            max_message_size=limits.message_size,
            max_recipients=limits.recipients,
            max_command_line=limits.command_line,
            max_text_line=limits.text_line,
            max_errors=limits.max_errors,
            starttls=self.tls is not None,
        )

    async def _smtp_handler(self, stream: Stream) -> None:
        limits = self.config.limits
        session = SMTPSession(
            stream,
            settings=self.smtp_settings(),
            router=self.router,
            tls=self.tls,
            timeouts=Timeouts(
                limits.command_timeout, limits.data_timeout, self.config.smtp.greet_pause
            ),
            registry=self.smtp_sessions,
        )
        await session.run()

    async def _pop3_handler(self, stream: Stream, *, implicit_tls: bool) -> None:
        session = pop3d.POP3Session(
            stream,
            settings=pop3d.settings_for(
                stream,
                implicit_tls=implicit_tls,
                starttls=self.tls is not None,
                allow_plaintext_loopback=self.config.pop3.allow_plaintext_loopback,
            ),
            store=self.store,
            authenticator=self.auth,
            tls=self.tls,
            registry=self.pop3_sessions,
            maildrops=self.maildrops,
            idle_timeout=self.config.pop3.idle_timeout,
        )
        await session.run()

    async def _pop3_plain(self, stream: Stream) -> None:
        await self._pop3_handler(stream, implicit_tls=False)

    async def _pop3_tls(self, stream: Stream) -> None:
        await self._pop3_handler(stream, implicit_tls=True)

    def _submission_handler(self, implicit_tls: bool) -> Callable[[Stream], Awaitable[None]]:
        async def handle(stream: Stream) -> None:
            limits = self.config.limits
            session = SubmissionSession(
                stream,
                settings=self.smtp_settings(submission=True, implicit_tls=implicit_tls),
                router=self.router,
                tls=self.tls,
                timeouts=Timeouts(limits.command_timeout, limits.data_timeout),
                registry=self.smtp_sessions,
                auth=self.auth,
                submission=self.config.submission,
            )
            await session.run()

        return handle

    def _smtp_spec(self, sockets: list[socket.socket] | None = None) -> ServiceSpec:
        return ServiceSpec(
            name="smtp",
            addresses=self.config.listen.smtp,
            handler=self._smtp_handler,
            per_ip_limit=self.config.limits.connections_per_ip,
            over_limit=codes.TOO_MANY_CONNECTIONS.to_bytes(),
            sockets=sockets or (),
        )

    def services(self, *, smtp: bool = True) -> list[ServiceSpec]:
        """Every configured service; `smtp=False` leaves out port 25 (workers serve it)."""
        listen = self.config.listen
        specs = []
        if listen.smtp and smtp:
            specs.append(self._smtp_spec())
        for name, implicit, handler in (
            ("pop3", False, self._pop3_plain),
            ("pop3s", True, self._pop3_tls),
        ):
            if listen.for_service(name) and implicit and self.tls is None:
                log.warning("%s needs a TLS certificate; not listening", name)
            elif listen.for_service(name):
                specs.append(
                    ServiceSpec(
                        name=name,
                        addresses=listen.for_service(name),
                        handler=handler,
                        implicit_tls=implicit,
                        per_ip_limit=self.config.limits.connections_per_ip,
                        over_limit=pop3_codes.LOGIN_TEMP_FAILURE.with_text(
                            "Too many connections"
                        ).to_bytes(),
                    )
                )
        for name, implicit in (("submission", False), ("submissions", True)):
            if listen.for_service(name) and (self.tls is not None or not implicit):
                specs.append(
                    ServiceSpec(
                        name=name,
                        addresses=listen.for_service(name),
                        handler=self._submission_handler(implicit),
                        implicit_tls=implicit,
                        per_ip_limit=self.config.limits.connections_per_ip,
                        over_limit=codes.TOO_MANY_CONNECTIONS.to_bytes(),
                    )
                )
        for name, implicit in (("imap", False), ("imaps", True)):
            if listen.for_service(name) and implicit and self.tls is None:
                log.warning("%s needs a TLS certificate; not listening", name)
            elif listen.for_service(name):
                specs.append(
                    ServiceSpec(
                        name=name,
                        addresses=listen.for_service(name),
                        handler=self.imap.handler(implicit_tls=implicit),
                        implicit_tls=implicit,
                        per_ip_limit=self.config.limits.connections_per_ip,
                        over_limit=b"* BYE Too many connections\r\n",
                    )
                )
        return specs

    def _worker_count(self) -> int:
        count = self.config.smtp.workers if self.config.listen.smtp else 0
        if count and self.config.config_path is None:
            log.warning("[smtp] workers needs a configuration file; port 25 stays in-process")
            return 0
        return count

    async def start(self) -> None:
        if self.worker is not None:
            await self._start_worker(self.worker)
            return
        count = self._worker_count()
        if count:
            self._smtp_sockets = await self.listeners.bind("smtp", self.config.listen.smtp)
        try:
            await self.listeners.start(self.services(smtp=not count))
            if count:
                assert self.config.config_path is not None
                self.workers = WorkerPool(
                    count,
                    worker_command(self.config.config_path),
                    store=self.store,
                    on_restart=self._write_run_file,
                )
                await self.workers.start(self._smtp_sockets)
        except BaseException:
            for sock in self._smtp_sockets:
                sock.close()
            raise
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        self.notify.start()
        await self.queue.start()
        self._write_run_file()

    async def _start_worker(self, link: WorkerLink) -> None:
        await self.listeners.start([self._smtp_spec(link.sockets)])
        self.store.subscribe(link.committed)
        self.store.spool.subscribe(link.queued)
        link.ready()

    def _write_run_file(self) -> None:
        """run/listeners.json: the real addresses (port 0 resolved), for scripts and tests,
        and the PIDs of the SMTP workers (written again when one is restarted)."""
        bound = self.listeners.bound()
        if self._smtp_sockets:
            bound["smtp"] = [
                (str(name[0]), int(name[1]))
                for name in (sock.getsockname() for sock in self._smtp_sockets)
            ]
        run = self.config.run_dir
        run.mkdir(parents=True, exist_ok=True)
        tmp = run / "listeners.json.tmp"
        workers = self.workers.pids() if self.workers is not None else []
        tmp.write_text(json.dumps({"pid": os.getpid(), "listeners": bound, "workers": workers}))
        tmp.replace(run / "listeners.json")

    async def stop(self) -> None:
        log.info("shutting down")
        self.smtp_sessions.drain()
        self.pop3_sessions.drain()
        self.imap.drain()
        workers = (
            asyncio.ensure_future(self.workers.stop(SHUTDOWN_GRACE))
            if self.workers is not None
            else None
        )
        await self.listeners.stop(grace=SHUTDOWN_GRACE)
        if workers is not None:
            await workers
        for sock in self._smtp_sockets:
            sock.close()
        self.notify.close()
        await self.queue.stop()
        self.auth.close()
        self.imap.close()
        self.store.close()
        if self.worker is not None:
            self.worker.close()
        else:
            with contextlib.suppress(FileNotFoundError):
                (self.config.run_dir / "listeners.json").unlink()
        self.stopped.set()

    def reload(self) -> None:
        """SIGHUP: certificates again (accounts are read live from the store)."""
        if self.tls is not None:
            try:
                self.tls.reload()
                log.info("reloaded TLS certificate")
            except Exception as err:
                log.error("TLS reload failed, keeping the old certificate: %s", err)
        else:
            self.tls = self._load_tls()
            self.imap.tls = self.tls
        if self.workers is not None:
            self.workers.signal(signal.SIGHUP)


async def run_until_signalled(app: App) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    if app.worker is None:
        loop.add_signal_handler(signal.SIGUSR1, app.queue.wake)  # `homing queue retry`
    else:
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        app.worker.watch_closed(loop, stop.set)  # the main process is gone: stop too
    await app.start()
    if app.worker is None:
        log.info("homing ready pid=%d", os.getpid())
    else:
        log.info("SMTP worker %d ready pid=%d", app.worker.index, os.getpid())
    await stop.wait()
    await app.stop()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (faster); plain asyncio otherwise, or when
    HOMING_EVENT_LOOP=asyncio is set (for debugging)."""
    if os.environ.get("HOMING_EVENT_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


#: The garbage collector's thresholds in `homing serve` (Python's are 700, 10, 10). A FETCH
#: of 10,000 messages or a burst of SMTP sessions makes tens of thousands of short-lived
#: objects, few of them in reference cycles; with the defaults, full collections of the
#: whole heap (the selected mailboxes' metadata included) ran during such work again and
#: again. Set HOMING_GC=default to keep Python's.
GC_THRESHOLDS = (20_000, 20, 50)


def tune_gc() -> None:
    """Fewer collections, and none of the objects made at start-up scanned again."""
    if os.environ.get("HOMING_GC") == "default":
        return
    gc.collect()
    gc.freeze()  # modules, config, TLS contexts: alive for good, never garbage
    gc.set_threshold(*GC_THRESHOLDS)


#: glibc's mallopt parameter, and the size from which every allocation gets a mapping of its
#: own (glibc's default threshold starts there too, then moves up as big blocks are freed).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def tune_malloc() -> bool:
    """glibc only: keep big allocations in mappings of their own, returned to the system
    when freed. Each TLS connection's event loop buffer is 256 KiB, of which an idle IMAP
    session touches a few pages; once glibc raises its threshold (after the first such
    buffer is freed), they come from the heap instead, and the pages earlier connections
    touched stay resident. 1,000 idle IMAP sessions over TLS: 51.8 -> 46.4 KiB each.
    HOMING_MALLOC=default leaves glibc alone. Whether the setting took."""
    if os.environ.get("HOMING_MALLOC") == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def serve(config: Config, *, worker: WorkerArgs | None = None) -> int:
    """Run every configured listener in the foreground until SIGTERM/SIGINT; with `worker`,
    run as an SMTP worker process of a main `homing serve` (homing.workers)."""
    setup_logging(config.log.level, tag=f"worker={worker.index}" if worker else "")
    factory = loop_factory()
    if worker is None:
        log.info(
            "starting homing hostname=%s data=%s uvloop=%s",
            config.hostname,
            config.data_dir,
            factory is not None,
        )

    async def main() -> None:
        app = App(config, worker=WorkerLink(worker) if worker is not None else None)
        tune_gc()
        tune_malloc()
        await run_until_signalled(app)

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1
    return 0
