"""`Listeners`: bind every service's addresses, accept, enforce limits, run handlers.

Per accepted connection: count it per (service, client IP) and globally; over a limit,
send the service's `over_limit` bytes and close without running the handler. Otherwise
log one line at open, run the handler in its own task (after the TLS handshake for
implicit-TLS services, RFC 8314 §3.3), close the stream when the handler returns, and
log one line at close with the duration and byte counts. A handler that raises is logged
with its traceback and its connection aborted: the client sees the connection drop,
never the error, and the listener carries on.

`stop(grace)` is the shutdown protocol: stop accepting, set `draining` (handlers that
watch it say goodbye, e.g. "421 4.3.2 shutting down"), wait up to `grace` seconds, then
cancel whatever is left and abort its connection.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from homing.config.model import ListenAddress
from homing.net.stream import Stream, TCPStream
from homing.net.tls import TLSContexts

Handler = Callable[[Stream], Awaitable[None]]

#: Seconds `stop()` waits for cancelled handlers before giving up on them.
CANCEL_WAIT = 5.0


@dataclass(frozen=True)
class ServiceSpec:
    """One service to listen for (the listener knows nothing of its protocol)."""

    name: str
    """Service name for logs and counts: "smtp", "submission", "imaps", ..."""
    addresses: Sequence[ListenAddress]
    """Where to listen; port 0 asks the OS for a free port (see `Listeners.bound`)."""
    handler: Handler
    """Runs the session; the stream is closed when it returns."""
    implicit_tls: bool = False
    """TLS from the first byte (RFC 8314): the handshake happens before the handler runs."""
    per_ip_limit: int = 20
    """Simultaneous connections to this service from one IP address; 0 means no limit."""
    over_limit: bytes = b""
    """Sent before closing a connection over the per-IP or global limit, e.g.
    b"421 4.7.0 Too many connections\\r\\n". Not sent on implicit-TLS services: it would be
    plaintext to a client expecting a TLS handshake, and a handshake just to refuse
    would spend the CPU the limit protects."""
    handshake_timeout: float = 30.0
    """Seconds allowed for a TLS handshake (implicit TLS and STARTTLS)."""
    write_timeout: float | None = 300.0
    """Seconds a write may wait for a peer that does not read before the connection is
    aborted (RFC 5321 §4.5.3.2 gives servers 5 minutes per exchange); None waits forever."""
    sockets: Sequence[socket.socket] = ()
    """Sockets already listening, to accept on instead of binding `addresses`: an SMTP
    worker process's inherited copies of the main process's port 25 sockets."""


class Listeners:
    """All listening sockets of one process and the connections they accepted."""

    def __init__(
        self,
        tls: TLSContexts | None,
        *,
        max_connections: int,
        logger: logging.Logger,
        reuse_port: bool = False,
        backlog: int = 511,
    ) -> None:
        """`max_connections` counts every service together (0: no limit). `reuse_port`
        sets SO_REUSEPORT so several processes can share the ports."""
        self._tls = tls
        self._max = max_connections
        self._logger = logger
        self._reuse_port = reuse_port
        self._backlog = backlog
        self._servers: list[tuple[str, asyncio.Server]] = []
        self._tasks: dict[asyncio.Task[None], TCPStream] = {}
        self._total = 0
        self._per_service: dict[str, int] = {}
        self._per_ip: dict[tuple[str, str], int] = {}
        self._draining = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, services: Sequence[ServiceSpec]) -> None:
        """Bind and listen on every address of every service, or raise and bind nothing.

        Raises OSError naming the service and address that failed (in use, not local,
        permission denied), ValueError for an implicit-TLS service without TLS contexts.
        """
        if self._servers or self._draining.is_set():
            raise RuntimeError("Listeners.start() may be called once, before stop()")
        loop = asyncio.get_running_loop()
        self._loop = loop
        servers: list[tuple[str, asyncio.Server]] = []
        try:
            for spec in services:
                if spec.implicit_tls and self._tls is None:
                    raise ValueError(f"service {spec.name} uses TLS but no certificate is set")
                factory = functools.partial(self._new_stream, spec, loop)
                sources: Sequence[ListenAddress | None] = [None] if spec.sockets else spec.addresses
                for address in sources:
                    sockets = (
                        list(spec.sockets)
                        if address is None
                        else await self._bind(loop, spec.name, address)
                    )
                    for index, sock in enumerate(sockets):
                        try:
                            server = await loop.create_server(
                                factory, sock=sock, backlog=self._backlog, start_serving=False
                            )
                        except BaseException:
                            for unused in sockets[index:]:
                                unused.close()
                            raise
                        servers.append((spec.name, server))
            # Accept nothing until every address is bound: all or nothing.
            for _, server in servers:
                await server.start_serving()
        except BaseException:
            for _, server in servers:
                server.close()
            raise
        self._servers = servers
        for service, addresses in self.bound().items():
            for host, port in addresses:
                self._logger.info("listening service=%s address=%s", service, _hostport(host, port))

    def bound(self) -> dict[str, list[tuple[str, int]]]:
        """Service name -> the (host, port) pairs actually bound (port 0 resolved)."""
        result: dict[str, list[tuple[str, int]]] = {}
        for service, server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                result.setdefault(service, []).append((str(name[0]), int(name[1])))
        return result

    async def bind(self, service: str, addresses: Sequence[ListenAddress]) -> list[socket.socket]:
        """Listening sockets for `addresses`, not accepted on here (the main process binds
        port 25 for its SMTP worker processes this way). All or nothing, as `start`."""
        loop = asyncio.get_running_loop()
        sockets: list[socket.socket] = []
        try:
            for address in addresses:
                sockets.extend(await self._bind(loop, service, address))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            self._logger.info("listening service=%s address=%s", service, _hostport(host, port))
        return sockets

    @property
    def draining(self) -> asyncio.Event:
        """Set when `stop()` begins; long-running handlers should wind up when it is."""
        return self._draining

    def connection_count(self, service: str | None = None) -> int:
        """Connections whose handler is running (or handshaking), for one service or all."""
        if service is None:
            return self._total
        return self._per_service.get(service, 0)

    async def stop(self, grace: float) -> None:
        """Stop accepting; give handlers `grace` seconds; cancel and abort the rest.

        Returns when every handler has returned and every connection is closed.
        """
        self._draining.set()
        for _, server in self._servers:
            server.close()
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(grace, 0.0))
            if pending:
                self._logger.info(
                    "cancelling %d connection(s) still open after %.1fs", len(pending), grace
                )
                for task in pending:
                    task.cancel()
                _, stuck = await asyncio.wait(pending, timeout=CANCEL_WAIT)
                if stuck:
                    self._logger.warning("%d handler(s) ignored cancellation", len(stuck))
                    for task in stuck:
                        self._tasks[task].abort()
        for _, server in self._servers:
            await server.wait_closed()
        self._servers = []

    # -- internals -------------------------------------------------------------------

    async def _bind(
        self, loop: asyncio.AbstractEventLoop, service: str, address: ListenAddress
    ) -> list[socket.socket]:
        """Listening sockets for one address (one per address family a name gives)."""
        where = f"cannot listen on {address} for {service}"
        try:
            infos = await loop.getaddrinfo(
                address.host or None,
                address.port,
                type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
        except socket.gaierror as exc:
            raise OSError(errno.EADDRNOTAVAIL, f"{where}: {exc.strerror}") from exc
        sockets: list[socket.socket] = []
        seen: set[tuple[int, object]] = set()
        try:
            for family, _, proto, _, sockaddr in infos:
                if (family, sockaddr) in seen:
                    continue
                seen.add((family, sockaddr))
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self._reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    # "::" means IPv6 only, so "0.0.0.0" can be listed beside it.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setblocking(False)
                sock.bind(sockaddr)
                sock.listen(self._backlog)
        except OSError as exc:
            for sock in sockets:
                sock.close()
            raise OSError(exc.errno, f"{where}: {exc.strerror or exc}") from exc
        return sockets

    def _new_stream(self, spec: ServiceSpec, loop: asyncio.AbstractEventLoop) -> TCPStream:
        return TCPStream(
            spec.name,
            loop,
            self._logger,
            on_connect=functools.partial(self._accepted, spec),
            handshake_timeout=spec.handshake_timeout,
            write_timeout=spec.write_timeout,
        )

    def _accepted(self, spec: ServiceSpec, stream: TCPStream) -> None:
        """From `connection_made`: admit the connection (start its task) or refuse it."""
        if self._draining.is_set() or self._loop is None:
            stream.refuse(b"")
            return
        key = (spec.name, stream.peer[0])
        refusal = ""
        if 0 < self._max <= self._total:
            refusal = f"connection limit ({self._max})"
        elif 0 < spec.per_ip_limit <= self._per_ip.get(key, 0):
            refusal = f"per-IP limit ({spec.per_ip_limit})"
        if refusal:
            self._logger.info(
                "conn=%s service=%s peer=%s refused: %s",
                stream.conn_id,
                spec.name,
                _hostport(*stream.peer),
                refusal,
            )
            stream.refuse(b"" if spec.implicit_tls else spec.over_limit)
            return
        self._total += 1
        self._per_service[spec.name] = self._per_service.get(spec.name, 0) + 1
        self._per_ip[key] = self._per_ip.get(key, 0) + 1
        task = self._loop.create_task(self._serve(spec, stream, key), name=f"conn-{stream.conn_id}")
        self._tasks[task] = stream
        task.add_done_callback(self._forget)

    async def _serve(self, spec: ServiceSpec, stream: TCPStream, key: tuple[str, str]) -> None:
        """The task of one admitted connection: handshake, handler, close, log."""
        log = self._logger
        # One info line per connection (at its end, with peer, duration and bytes); the opening
        # is debug so a busy server does not pay for two.
        log.debug(
            "conn=%s service=%s peer=%s local=%s open",
            stream.conn_id,
            spec.name,
            _hostport(*stream.peer),
            _hostport(*stream.local),
        )
        outcome = "closed"
        try:
            outcome = await self._run_handler(spec, stream)
            await stream.close()
        except asyncio.CancelledError:
            outcome = "cancelled"
            stream.abort()
            await stream.close()  # returns once the transport reported the loss
            raise
        finally:
            self._release(spec.name, key)
            log.info(
                "conn=%s service=%s peer=%s %s duration=%.3fs in=%d out=%d tls=%s",
                stream.conn_id,
                spec.name,
                _hostport(*stream.peer),
                outcome,
                time.monotonic() - stream.opened,
                stream.bytes_in,
                stream.bytes_out,
                stream.tls or "-",
            )

    async def _run_handler(self, spec: ServiceSpec, stream: TCPStream) -> str:
        """Run the handler (after the handshake for implicit TLS); how it ended, for the log."""
        try:
            if spec.implicit_tls:
                assert self._tls is not None
                await stream.handshake(self._tls.server_context(), replay=True)
            await spec.handler(stream)
        except ConnectionError as exc:
            # A handshake that failed, or a peer that vanished mid-write: routine.
            stream.abort()
            return f"dropped ({exc})"
        except Exception:
            log = self._logger
            log.exception(
                "conn=%s service=%s peer=%s handler failed",
                stream.conn_id,
                spec.name,
                _hostport(*stream.peer),
            )
            stream.abort()
            return "aborted (handler error)"
        return "closed"

    def _forget(self, task: asyncio.Task[None]) -> None:
        del self._tasks[task]

    def _release(self, service: str, key: tuple[str, str]) -> None:
        self._total -= 1
        self._per_service[service] -= 1
        remaining = self._per_ip[key] - 1
        if remaining:
            self._per_ip[key] = remaining
        else:
            del self._per_ip[key]


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
