"""SMTP worker processes: port 25 served by several processes, each with its own interpreter.

Theory of operation. One Python process runs one interpreter at a time on one core; at a
few thousand SMTP transactions a second that core is the limit while the others idle. With
`[smtp] workers = N` the main process binds port 25 as usual but does not accept on it: it
starts N worker processes (`homing serve` with a hidden `--worker` option), each inheriting
the listening sockets, and the kernel hands each new connection to one of them. A worker
runs only the receiving SMTP server, with its own store connections (the store's lock file
orders the writers of all processes: homing.store.writer), router and TLS contexts. The
main process keeps IMAP, POP3, submission and the queue runner, so a flood on port 25 does
not slow down the people reading their mail.

Inheriting the sockets, rather than each worker binding the port with SO_REUSEPORT, means a
worker needs no privilege to bind port 25, and a second `homing serve` started by mistake
fails with "address in use" instead of silently sharing the port.

The link. Each worker has a SOCK_SEQPACKET socket pair with the main process (messages keep
their boundaries, and the end of the other side reads as EOF):

- worker -> main: "ready" once it accepts, then after each commit what it changed and
  whether it queued mail, in homing.notify's messages. The main process hands these to its
  own store subscribers (IMAP sessions in IDLE, the queue runner) as if it had committed
  them. A worker never blocks on the link: if the main process is too far behind to take a
  message, the next one says "lost", which the main process treats as "anything may have
  changed".
- EOF on either side means the other process is gone. A worker whose main process died,
  even by kill -9, stops as on SIGTERM: it stops accepting, lets transactions in progress
  finish, says 421 to idle clients, and exits. The main process starts a worker that died
  again, after a pause that grows while workers keep dying early.

Shutdown: the main process sends SIGTERM to its workers when it stops, waits for them as
long as its own sessions (the same grace), then kills what is left. Workers run in their
own session (setsid), so a Ctrl-C in the terminal reaches the main process only, which then
stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from homing.notify import MAX_MESSAGE, QUEUED, decode, deliver_message, encode_changes
from homing.store import Store
from homing.store.model import Change

log = logging.getLogger("homing.workers")

#: Seconds a worker may take from start to accepting connections.
START_TIMEOUT = 30.0
#: Pauses before restarting a worker that died: doubles from the first up to the last while
#: workers keep dying within `STABLE` seconds of their start.
RESTART_DELAY = (0.5, 30.0)
STABLE = 60.0

# --------------------------------------------------------------------------------- worker side


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """What the main process tells a worker on its command line: `index:link:fd,fd,...`."""

    index: int
    link_fd: int
    socket_fds: tuple[int, ...]

    def render(self) -> str:
        return f"{self.index}:{self.link_fd}:{','.join(map(str, self.socket_fds))}"

    @classmethod
    def parse(cls, text: str) -> WorkerArgs:
        index, link, fds = text.split(":")
        return cls(int(index), int(link), tuple(int(fd) for fd in fds.split(",") if fd))


class WorkerLink:
    """A worker's end of the link, and the listening sockets it inherited."""

    def __init__(self, args: WorkerArgs) -> None:
        self.index = args.index
        self._sock = socket.socket(fileno=args.link_fd)
        self.sockets = [socket.socket(fileno=fd) for fd in args.socket_fds]
        for sock in self.sockets:
            sock.setblocking(False)
        self._lost = False
        self._lock = threading.Lock()

    def ready(self) -> None:
        self._send([b'{"ready":1}'])

    def committed(self, changes: list[Change]) -> None:
        """A `Store.subscribe` callback (on the writer thread): tell the main process."""
        self._send(encode_changes(changes))

    def queued(self) -> None:
        """A `Spool.subscribe` callback: mail was queued for other servers."""
        self._send([QUEUED])

    def _send(self, messages: list[bytes]) -> None:
        with self._lock:  # one sender at a time, so "lost" goes out before what follows it
            if self._lost:
                messages = [b'{"lost":1,"q":1}', *messages]
            for index, data in enumerate(messages):
                try:
                    self._sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    # The main process is far behind: say so with the next message rather
                    # than hold up this commit's callers.
                    self._lost = True
                    return
                except OSError:  # the main process is gone; watch_closed stops this worker
                    return
                if index == 0:
                    self._lost = False

    def watch_closed(self, loop: asyncio.AbstractEventLoop, on_close: Callable[[], None]) -> None:
        """Call `on_close` (on the loop) when the main process closes its end or dies."""

        def readable() -> None:
            try:
                data = self._sock.recv(1024, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(self._sock.fileno())
                on_close()

        loop.add_reader(self._sock.fileno(), readable)

    def close(self) -> None:
        self._sock.close()
        for sock in self.sockets:
            sock.close()


# --------------------------------------------------------------------------------- main side


class WorkerStartError(OSError):
    """A worker did not start (it exited, or did not say it was ready in time)."""


class _Worker:
    __slots__ = ("index", "link", "proc", "ready", "started")

    def __init__(
        self, index: int, proc: subprocess.Popen[bytes], link: socket.socket, started: float
    ) -> None:
        self.index = index
        self.proc = proc
        self.link = link
        self.started = started
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class WorkerPool:
    """The main process's SMTP workers: starts them, passes on what they tell, restarts the
    ones that die, stops them all."""

    def __init__(
        self,
        count: int,
        command: Sequence[str],
        *,
        store: Store,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        """`command` starts `homing serve` with this configuration; the pool appends
        `--worker index:link:fds`. What the workers commit is passed on to `store`'s
        subscribers in this process. `on_restart` is called once a worker started again
        (after one died) accepts connections."""
        self._count = count
        self._command = list(command)
        self._store = store
        self._on_restart = on_restart
        self._sockets: list[socket.socket] = []
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._failures = 0
        self._restarts: set[asyncio.Task[None]] = set()
        self.started = 0
        """Worker processes started, restarts included."""

    def pids(self) -> list[int]:
        return [worker.proc.pid for worker in self._workers.values()]

    async def start(self, sockets: Sequence[socket.socket]) -> None:
        """Start every worker on `sockets` and wait until each accepts; WorkerStartError
        (after stopping the others) if one does not."""
        self._sockets = list(sockets)
        try:
            for index in range(1, self._count + 1):
                self._spawn(index)
            for worker in list(self._workers.values()):
                await self._wait_ready(worker)
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _wait_ready(self, worker: _Worker) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await worker.ready
        except TimeoutError:
            raise WorkerStartError(
                f"SMTP worker {worker.index} did not start within {START_TIMEOUT:.0f}s"
            ) from None

    def _spawn(self, index: int) -> _Worker:
        main_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = WorkerArgs(index, worker_end.fileno(), tuple(s.fileno() for s in self._sockets))
        try:
            proc = subprocess.Popen(
                [*self._command, "--worker", args.render()],
                pass_fds=(worker_end.fileno(), *args.socket_fds),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            main_end.close()
            raise
        finally:
            worker_end.close()
        self.started += 1
        worker = _Worker(index, proc, main_end, time.monotonic())
        self._workers[index] = worker
        asyncio.get_running_loop().add_reader(main_end.fileno(), self._readable, worker)
        log.info("started SMTP worker %d pid=%d", index, proc.pid)
        return worker

    def _readable(self, worker: _Worker) -> None:
        while True:
            try:
                data = worker.link.recv(MAX_MESSAGE + 1024, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._ended(worker)
                return
            try:
                message = decode(data)
            except (ValueError, TypeError) as exc:
                log.warning("SMTP worker %d sent a bad message: %s", worker.index, exc)
                continue
            if message.ready and not worker.ready.done():
                worker.ready.set_result(None)
            deliver_message(message, self._store)

    def _ended(self, worker: _Worker) -> None:
        """The worker closed its end of the link: it exited, or is about to."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.link.fileno())
        worker.link.close()
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        if not worker.ready.done():
            worker.ready.set_exception(
                WorkerStartError(f"SMTP worker {worker.index} exited before it was ready")
            )
        task = loop.create_task(self._reap(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _reap(self, worker: _Worker) -> None:
        status = await _wait_exit(worker.proc, 10.0)
        if self._stopping:
            return
        # Status 0: it was stopped by someone else's SIGTERM (systemd's KillMode=control-group
        # signals every process of the service at once; docs/operations.md suggests "mixed").
        log.log(
            logging.WARNING if status == 0 else logging.ERROR,
            "SMTP worker %d pid=%d exited (status %s)",
            worker.index,
            worker.proc.pid,
            status,
        )
        if not worker.ready.done() or time.monotonic() - worker.started < STABLE:
            self._failures += 1
        else:
            self._failures = 0
        first, last = RESTART_DELAY
        delay = min(last, first * 2 ** max(self._failures - 1, 0))
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._restart(worker.index)

    async def _restart(self, index: int) -> None:
        fresh = self._spawn(index)
        with contextlib.suppress(WorkerStartError):  # it died again: reaped like the first
            await self._wait_ready(fresh)
            if self._on_restart is not None and not self._stopping:
                self._on_restart()

    def signal(self, sig: int) -> None:
        """Pass `sig` on to every worker (SIGHUP: reload the certificate)."""
        for worker in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(sig)

    async def stop(self, grace: float) -> None:
        """SIGTERM to every worker; wait `grace` seconds (and a little) for them to finish
        their transactions and exit; kill the rest."""
        self._stopping = True
        for task in list(self._restarts):
            task.cancel()
        workers = list(self._workers.values())
        self.signal(signal.SIGTERM)
        deadline = grace + 10.0
        await asyncio.gather(*(_wait_exit(w.proc, deadline) for w in workers))
        for worker in workers:
            if worker.proc.poll() is None:
                log.warning("SMTP worker %d did not stop; killing it", worker.index)
                worker.proc.kill()
                await _wait_exit(worker.proc, 5.0)
        loop = asyncio.get_running_loop()
        for worker in workers:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(worker.link.fileno())
            worker.link.close()
        self._workers.clear()


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit status of `proc` once it has exited, or None after `timeout` seconds. Polls
    (every 20 ms at most): no child watcher, which would differ between event loops."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while (status := proc.poll()) is None and time.monotonic() < deadline:
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.02)
    return status


def worker_command(config_path: os.PathLike[str] | str) -> list[str]:
    """The command line that runs `homing serve` for the configuration at `config_path`."""
    return [sys.executable, "-m", "homing", "--config", os.fspath(config_path), "serve"]
