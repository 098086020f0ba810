"""A small DNS server for tests: zone data from dicts, served over UDP and TCP on loopback.

It answers like a recursive resolver would (RA set, CNAME chains followed and included),
from data shaped like `homing.dns.fake.FakeResolver`'s::

    zones = {
        "example.test": {"MX": [(10, "mx1.example.test")], "A": ["127.0.0.2"]},
        "mx1.example.test": {"A": ["127.0.0.3"], "AAAA": ["::1"]},
        "www.example.test": {"CNAME": ["example.test"]},
        "none.test": {"MX": [(0, ".")]},  # RFC 7505 null MX
    }
    with DNSServer(zones, servfail={"broken.test"}, timeout={"slow.test"}) as server:
        host, port = server.address

Faults are names (every question about them) or (name, type) pairs: `servfail` answers
SERVFAIL, `refused` REFUSED, `nxdomain` NXDOMAIN whatever the zone says, `timeout` never
answers (UDP datagrams are dropped, TCP connections are held open without a reply).
A name with an entry, or the parent of one, exists: other types give NODATA (NOERROR, no
answer); any other name is NXDOMAIN. UDP answers longer than 512 octets are truncated
(TC set, no records; RFC 1035 §4.2.1) so the client must retry over TCP; EDNS is not
spoken. `queries` records every question as (transport, name, type).

UDP and TCP listen on the same ephemeral port, as a real nameserver does. Integration
tests use it as a context manager, or through the `make_dns_server` fixture, brought into
a test module by assignment (an import would trip ruff's F811 on the test parameters):

    from tests import dnsserver
    make_dns_server = dnsserver.make_dns_server

    def test_x(make_dns_server):
        server = make_dns_server(zones, servfail={"broken.test"})
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, TXT, A, DNSLabel, DNSRecord

Zones = Mapping[str, Mapping[str, Sequence[Any]]]
Faults = Iterable[str | tuple[str, str]]

UDP_LIMIT = 512  # RFC 1035 §4.2.1, without EDNS
TTL = 300
MAX_CNAME_CHAIN = 16
HOLD_SECONDS = 30.0  # how long a "timeout" TCP connection is held at most


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower() or "."


def _faults(items: Faults) -> set[str | tuple[str, str]]:
    return {
        _norm(item) if isinstance(item, str) else (_norm(item[0]), item[1].upper())
        for item in items
    }


def _rdata(rtype: str, value: Any) -> Any:
    if rtype == "A":
        return A(value)
    if rtype == "AAAA":
        return AAAA(value)
    if rtype == "MX":
        preference, exchange = value
        return MX(DNSLabel(exchange), int(preference))
    if rtype == "CNAME":
        return CNAME(DNSLabel(value))
    if rtype == "TXT":
        return TXT(value)
    raise ValueError(f"record type {rtype} is not supported by the test DNS server")


class DNSServer:
    """An authoritative-looking, recursion-available DNS server on 127.0.0.1 (or ::1)."""

    def __init__(
        self,
        zones: Zones | None = None,
        *,
        servfail: Faults = (),
        timeout: Faults = (),
        nxdomain: Faults = (),
        refused: Faults = (),
        host: str = "127.0.0.1",
    ) -> None:
        self.zones: dict[str, dict[str, list[Any]]] = {
            _norm(name): {rtype.upper(): list(values) for rtype, values in rrs.items()}
            for name, rrs in (zones or {}).items()
        }
        for rrs in self.zones.values():  # fail here, not silently in a server thread
            for rtype, values in rrs.items():
                for value in values:
                    _rdata(rtype, value)
        self.servfail = _faults(servfail)
        self.timeout = _faults(timeout)
        self.nxdomain = _faults(nxdomain)
        self.refused = _faults(refused)
        self.host = host
        self.queries: list[tuple[str, str, str]] = []
        self._stopping = threading.Event()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self._address: tuple[str, int] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("DNSServer not started")
        return self._address

    def start(self) -> tuple[str, int]:
        """Listen on an ephemeral port (the same number for UDP and TCP); return (host, port)."""
        if self._address is not None:
            return self._address
        udp, tcp = self._bind()
        for server in (udp, tcp):
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self._address = (self.host, udp.server_address[1])
        return self._address

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self._address = None

    def __enter__(self) -> DNSServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self) -> tuple[socketserver.UDPServer, socketserver.TCPServer]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        udp_class = type("UDP", (_UDPServer,), {"address_family": family})
        tcp_class = type("TCP", (_TCPServer,), {"address_family": family})
        last: OSError | None = None
        for _ in range(50):
            udp = udp_class((self.host, 0), _UDPHandler, self)
            port = udp.server_address[1]
            try:
                tcp = tcp_class((self.host, port), _TCPHandler, self)
            except OSError as exc:  # that port is taken for TCP: draw another
                udp.server_close()
                last = exc
                continue
            return udp, tcp
        raise OSError(f"no port free for both UDP and TCP: {last}")

    # --- answering ---------------------------------------------------------------------

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query message, or None to stay silent."""
        try:
            request = DNSRecord.parse(wire)
        except Exception:
            return None
        qname, qtype = _norm(str(request.q.qname)), QTYPE.get(request.q.qtype)
        self.queries.append((transport, qname, str(qtype)))
        reply = request.reply(ra=1, aa=1)
        if not self._fill(reply, qname, str(qtype)):
            return None
        data = bytes(reply.pack())
        if transport == "udp" and len(data) > UDP_LIMIT:
            truncated = request.reply(ra=1, aa=1)
            truncated.header.tc = 1
            data = bytes(truncated.pack())
        return data

    def _fill(self, reply: DNSRecord, qname: str, qtype: str) -> bool:
        """Put the answer into `reply`; False means "do not answer at all"."""
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            fault = self._fault(name, qtype)
            if fault == "timeout":
                return False
            if fault is not None:
                reply.rr = []
                reply.header.rcode = getattr(RCODE, fault.upper())
                return True
            rrs = self.zones.get(name)
            if rrs is None and not any(other.endswith("." + name) for other in self.zones):
                reply.header.rcode = RCODE.NXDOMAIN
                return True
            rrs = rrs or {}
            if rrs.get(qtype):
                for value in rrs[qtype]:
                    reply.add_answer(
                        RR(name, getattr(QTYPE, qtype), rdata=_rdata(qtype, value), ttl=TTL)
                    )
                return True
            if not rrs.get("CNAME"):
                return True  # NODATA
            target = _norm(str(rrs["CNAME"][0]))
            reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(DNSLabel(target)), ttl=TTL))
            name = target
        reply.rr = []
        reply.header.rcode = RCODE.SERVFAIL  # CNAME loop
        return True

    def _fault(self, name: str, qtype: str) -> str | None:
        for faults, kind in (
            (self.timeout, "timeout"),
            (self.servfail, "servfail"),
            (self.refused, "refused"),
            (self.nxdomain, "nxdomain"),
        ):
            if name in faults or (name, qtype) in faults:
                return kind
        return None


class _UDPServer(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, dns: DNSServer) -> None:
        self.dns = dns
        super().__init__(address, handler)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, dns: DNSServer) -> None:
        self.dns = dns
        super().__init__(address, handler)


class _UDPHandler(socketserver.BaseRequestHandler):
    server: _UDPServer

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.dns.answer(data, "udp")
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TCPHandler(socketserver.StreamRequestHandler):
    """RFC 1035 §4.2.2 / RFC 7766: two-octet length prefix, several queries per connection."""

    server: _TCPServer

    def handle(self) -> None:
        while True:
            prefix = self.rfile.read(2)
            if len(prefix) < 2:
                return
            (length,) = struct.unpack("!H", prefix)
            data = self.rfile.read(length)
            if len(data) < length:
                return
            reply = self.server.dns.answer(data, "tcp")
            if reply is None:
                self.server.dns._stopping.wait(HOLD_SECONDS)
                return
            with contextlib.suppress(OSError):
                self.wfile.write(struct.pack("!H", len(reply)) + reply)


@pytest.fixture
def make_dns_server() -> Iterator[Callable[..., DNSServer]]:
    """Start `DNSServer`s (same arguments) that are stopped when the test ends."""
    servers: list[DNSServer] = []

    def make(zones: Zones | None = None, **kwargs: Any) -> DNSServer:
        server = DNSServer(zones, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
