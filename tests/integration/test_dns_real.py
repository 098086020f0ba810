"""The dnspython adapter against a real DNS server on loopback (tests/dnsserver.py), over
real UDP and TCP: answers, NXDOMAIN/NODATA, SERVFAIL and silence, truncation, CNAMEs."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Callable

import pytest

from homing.config.model import ListenAddress
from homing.dns import MX, Lookup
from homing.dns.dnspython import DnspythonResolver
from homing.outbound.route import RouteFailure, RoutePlan, find_route
from tests import dnsserver
from tests.dnsserver import DNSServer

make_dns_server = dnsserver.make_dns_server  # the fixture, used by name below

MakeServer = Callable[..., DNSServer]

ZONES = {
    "example.test": {
        "MX": [(10, "mx1.example.test"), (20, "mx2.example.test")],
        "A": ["127.0.0.2"],
    },
    "mx1.example.test": {"A": ["127.0.0.3"], "AAAA": ["::1"]},
    "mx2.example.test": {"A": ["127.0.0.4"]},
    "nomx.test": {"A": ["127.0.0.5"]},
    "nomail.test": {"MX": [(0, ".")], "A": ["127.0.0.6"]},
    "alias.test": {"CNAME": ["example.test"]},
    "big.test": {"MX": [(i, f"mx{i:02}.a-rather-long-exchange-name.big.test") for i in range(40)]},
    "half.test": {"A": ["127.0.0.7"], "AAAA": ["::1"]},
}


def resolver_for(server: DNSServer, timeout: float = 2.0) -> DnspythonResolver:
    host, port = server.address
    return DnspythonResolver([ListenAddress(host, port)], timeout=timeout, attempt_timeout=0.3)


async def test_mx_over_udp(make_dns_server: MakeServer) -> None:
    server = make_dns_server(ZONES)
    result = await resolver_for(server).mx("example.test")
    assert result.status is Lookup.FOUND
    assert set(result.records) == {MX(10, "mx1.example.test"), MX(20, "mx2.example.test")}
    assert server.queries == [("udp", "example.test", "MX")]


async def test_addresses_both_families(make_dns_server: MakeServer) -> None:
    server = make_dns_server(ZONES)
    result = await resolver_for(server).addresses("mx1.example.test")
    assert result.ipv6 == ("::1",)
    assert result.ipv4 == ("127.0.0.3",)
    assert sorted(q[2] for q in server.queries) == ["A", "AAAA"]


async def test_nodata_and_nxdomain(make_dns_server: MakeServer) -> None:
    resolver = resolver_for(make_dns_server(ZONES))
    assert (await resolver.mx("nomx.test")).status is Lookup.NODATA
    assert (await resolver.mx("missing.test")).status is Lookup.NXDOMAIN
    assert (await resolver.addresses("missing.test")).status is Lookup.NXDOMAIN
    assert (await resolver.addresses("example.test")).ipv4 == ("127.0.0.2",)  # no AAAA: fine


async def test_null_mx(make_dns_server: MakeServer) -> None:
    result = await resolver_for(make_dns_server(ZONES)).mx("nomail.test")
    assert result.is_null_mx


async def test_cname_is_followed(make_dns_server: MakeServer) -> None:
    resolver = resolver_for(make_dns_server(ZONES))
    assert (await resolver.mx("alias.test")).records[0].exchange.startswith("mx")
    assert (await resolver.addresses("alias.test")).ipv4 == ("127.0.0.2",)


async def test_truncated_udp_answer_is_retried_over_tcp(make_dns_server: MakeServer) -> None:
    server = make_dns_server(ZONES)
    result = await resolver_for(server).mx("big.test")
    assert len(result.records) == 40
    assert [q[0] for q in server.queries] == ["udp", "tcp"]


async def test_servfail_is_temporary_and_fast(make_dns_server: MakeServer) -> None:
    resolver = resolver_for(make_dns_server(ZONES, servfail={"example.test"}), timeout=6.0)
    started = time.monotonic()
    result = await resolver.mx("example.test")
    assert result.status is Lookup.TEMPFAIL
    assert "SERVFAIL" in result.detail
    assert time.monotonic() - started < 3.0  # answered, not waited out (margin for a busy CI)


async def test_refused_is_temporary(make_dns_server: MakeServer) -> None:
    resolver = resolver_for(make_dns_server(ZONES, refused={"example.test"}))
    assert (await resolver.mx("example.test")).status is Lookup.TEMPFAIL


async def test_silence_is_temporary_within_the_timeout(make_dns_server: MakeServer) -> None:
    resolver = resolver_for(make_dns_server(ZONES, timeout={"example.test"}), timeout=0.8)
    started = time.monotonic()
    result = await resolver.mx("example.test")
    elapsed = time.monotonic() - started
    assert result.status is Lookup.TEMPFAIL
    assert "timeout" in result.detail.lower()
    assert 0.5 < elapsed < 4.0


async def test_one_family_silent_still_gives_the_other(make_dns_server: MakeServer) -> None:
    resolver = resolver_for(make_dns_server(ZONES, timeout={("half.test", "AAAA")}), timeout=0.6)
    result = await resolver.addresses("half.test")
    assert result.status is Lookup.FOUND
    assert result.ipv4 == ("127.0.0.7",)
    assert "AAAA" in result.detail


async def test_silent_first_server_fails_over_to_the_second(make_dns_server: MakeServer) -> None:
    silent = make_dns_server(ZONES, timeout={"example.test"})
    good = make_dns_server(ZONES)
    resolver = DnspythonResolver([silent.address, good.address], timeout=3.0, attempt_timeout=0.3)
    result = await resolver.mx("example.test")
    assert result.status is Lookup.FOUND
    assert good.queries


async def test_server_on_ipv6_loopback() -> None:
    try:
        server = DNSServer(ZONES, host="::1")
        server.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        result = await resolver_for(server).mx("example.test")
        assert result.status is Lookup.FOUND
    finally:
        server.stop()


async def test_nobody_listening_is_temporary() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is closed now: UDP gets ICMP port unreachable, or nothing at all.
    resolver = DnspythonResolver([("127.0.0.1", port)], timeout=0.6, attempt_timeout=0.2)
    assert (await resolver.mx("example.test")).status is Lookup.TEMPFAIL


async def test_concurrent_questions(make_dns_server: MakeServer) -> None:
    resolver = resolver_for(make_dns_server(ZONES))
    results = await asyncio.gather(*(resolver.addresses("mx1.example.test") for _ in range(20)))
    assert {r.ipv4 for r in results} == {("127.0.0.3",)}


async def test_route_end_to_end(make_dns_server: MakeServer) -> None:
    resolver = resolver_for(make_dns_server(ZONES))
    route = await find_route(resolver, "example.test", our_names={"me.test"}, rng=random.Random(1))
    assert isinstance(route, RoutePlan)
    assert [(a.host, a.address) for a in route.attempts] == [
        ("mx1.example.test", "::1"),
        ("mx1.example.test", "127.0.0.3"),
        ("mx2.example.test", "127.0.0.4"),
    ]
    implicit = await find_route(resolver, "nomx.test", our_names=set(), rng=random.Random(1))
    assert isinstance(implicit, RoutePlan)
    assert implicit.implicit
    nomail = await find_route(resolver, "nomail.test", our_names=set(), rng=random.Random(1))
    assert isinstance(nomail, RouteFailure)
    assert nomail.reply.enhanced == "5.1.10"


async def test_servfail_on_mx_defers_the_route(make_dns_server: MakeServer) -> None:
    server = make_dns_server(ZONES, servfail={("example.test", "MX")})
    route = await find_route(
        resolver_for(server), "example.test", our_names=set(), rng=random.Random(1)
    )
    assert isinstance(route, RouteFailure)
    assert not route.permanent
    assert [q[2] for q in server.queries] == ["MX"]  # never fell back to the A record


def test_server_context_manager_and_same_port_for_udp_and_tcp() -> None:
    with DNSServer(ZONES) as server:
        host, port = server.address
        assert port != 53
        with socket.create_connection((host, port), timeout=2):
            pass  # TCP listens on the UDP port number
    with pytest.raises(RuntimeError):
        _ = server.address
