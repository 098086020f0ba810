"""Where to deliver mail for a domain: MX, implicit MX, null MX and smarthost (RFC 5321 §5.1).

Theory of operation. Routing is a pure planner run by a thin driver (`find_route`):

1. `plan_hosts(domain, mx_answer, ...)` turns the MX answer into an ordered list of hosts
   (or a failure): NXDOMAIN fails permanently (5.1.2), a null MX fails permanently
   (5.1.10, RFC 7505), a temporary DNS failure defers (4.4.3) - it is never read as
   "no MX" - and an empty MX answer (NODATA) makes the domain its own implicit MX. MX
   records are sorted by preference and shuffled among equal preferences; hosts at or
   behind our own name are dropped (mail loop, 5.4.6, if nothing is left).
2. The driver asks for the addresses of those hosts.
3. `plan_attempts(hosts, addresses, ...)` turns hosts and their addresses into the ordered
   list of (host, IP address) connections to try.

`plan_route` runs 1 and 3 on answers already at hand; `plan_smarthost` replaces step 1
when all mail goes to one relay. Every failure carries the `Reply` that goes into the DSN
(or the deferral log): its code says whether the failure is permanent.

Address order. For each host, IPv6 and IPv4 addresses are interleaved, IPv6 first
(IPv6, IPv4, IPv6, ...), following the address-family alternation of Happy Eyeballs
(RFC 8305 §4): a host whose IPv6 is broken costs one failed connection, not all of them.
Addresses of one family are shuffled (DNS order says nothing), and an address reached
through two MX names is tried once, at its best place.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, groupby, zip_longest

from homing.dns.resolver import MX, AddressResult, Lookup, MXResult, Resolver, normalize_name
from homing.mail.reply import Reply

#: The well-known SMTP port, where MX hosts listen.
SMTP_PORT = 25
#: MX hosts tried at most per delivery: a domain with dozens of MX records must not make
#: one delivery attempt take an hour (RFC 5321 §5.1 allows a configurable limit).
DEFAULT_MAX_MX = 5
#: Connections (host, address pairs) tried at most per delivery.
DEFAULT_MAX_ADDRESSES = 10

# --- Replies for routing failures (RFC 3463 enhanced codes) -----------------------------------
#: X.1.2 bad destination system address: the domain does not exist (NXDOMAIN).
NO_SUCH_DOMAIN = Reply(550, "5.1.2", "Domain not found")
#: X.1.10 recipient address has null MX (RFC 7505 §3, §5; 556 is RFC 7504 §3's code).
NULL_MX = Reply(556, "5.1.10", "Domain does not accept mail (null MX)")
#: X.4.6 routing loop detected: the best MX is this server (RFC 5321 §5.1).
MAIL_LOOP = Reply(550, "5.4.6", "Mail for domain loops back to myself")
#: X.4.4 unable to route: DNS answered, but no MX host has an address.
NO_ADDRESS = Reply(550, "5.4.4", "No address for any mail exchanger of the domain")
#: X.4.3 directory server failure: DNS did not answer; try again later.
DNS_TEMPFAIL = Reply(451, "4.4.3", "Temporary DNS failure")
#: X.4.4 unable to route (transient): the configured smarthost has no usable address.
SMARTHOST_UNRESOLVED = Reply(451, "4.4.4", "Smarthost has no usable address")


@dataclass(frozen=True, slots=True)
class Hop:
    """One host to deliver to, with the MX preference it came with (0 for implicit MX)."""

    host: str
    preference: int


@dataclass(frozen=True, slots=True)
class HostPlan:
    """Step 1's result: the hosts whose addresses are needed, best first."""

    domain: str
    hops: tuple[Hop, ...]
    implicit: bool = False
    """True when the domain had no MX and is its own mail exchanger (RFC 5321 §5.1)."""

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(hop.host for hop in self.hops)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connection to try: `host` is the name (for TLS and logs), `address` the IP."""

    host: str
    address: str
    port: int = SMTP_PORT
    preference: int = 0


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The connections to try, in order, for one domain."""

    domain: str
    attempts: tuple[Attempt, ...]
    implicit: bool = False
    smarthost: bool = False
    unresolved: tuple[str, ...] = ()
    """Hosts left out because their address lookup failed temporarily. If every attempt
    fails, the delivery must be deferred, not bounced: a better host may have been missed."""


@dataclass(frozen=True, slots=True)
class RouteFailure:
    """No connection can be tried. `reply` says why and whether it is permanent."""

    domain: str
    reply: Reply
    detail: str = ""
    """The DNS detail behind the failure, for logs."""

    @property
    def permanent(self) -> bool:
        return self.reply.is_permanent


def plan_hosts(
    domain: str,
    mx: MXResult,
    *,
    our_names: Collection[str],
    rng: random.Random,
    max_mx: int = DEFAULT_MAX_MX,
) -> HostPlan | RouteFailure:
    """Step 1: the MX answer for `domain` -> the hosts to look up, best first.

    `our_names` are this server's own host names (compared without case or trailing dot).
    """
    if max_mx < 1:
        raise ValueError("max_mx must be at least 1")
    domain = normalize_name(domain)
    if mx.status is Lookup.NXDOMAIN:
        return _fail(domain, NO_SUCH_DOMAIN, f"Domain {domain} not found", mx.detail)
    if mx.status is Lookup.TEMPFAIL:
        return _fail(domain, DNS_TEMPFAIL, f"Temporary DNS failure for {domain} MX", mx.detail)
    if mx.is_null_mx:
        return _fail(domain, NULL_MX, f"Domain {domain} does not accept mail (null MX)")
    ours = {normalize_name(name) for name in our_names}
    if mx.status is Lookup.NODATA:
        # RFC 5321 §5.1: no MX -> an implicit MX of preference 0 pointing at the domain.
        if domain in ours:
            return _fail(domain, MAIL_LOOP, f"Mail for {domain} loops back to myself")
        return HostPlan(domain, (Hop(domain, 0),), implicit=True)
    records = [r for r in mx.records if not r.is_root]  # "." among real MX: not a host
    records = _before_ourselves(records, ours)
    if not records:
        return _fail(domain, MAIL_LOOP, f"Mail for {domain} loops back to myself")
    hops = _order(records, rng)[:max_mx]
    return HostPlan(domain, tuple(hops))


def plan_attempts(
    hosts: HostPlan,
    addresses: Mapping[str, AddressResult],
    *,
    rng: random.Random,
    port: int = SMTP_PORT,
    ipv6: bool = True,
    max_addresses: int = DEFAULT_MAX_ADDRESSES,
) -> RoutePlan | RouteFailure:
    """Step 3: hosts and their addresses -> connections to try, best first.

    `addresses` must hold an answer for every host of `hosts` (KeyError otherwise).
    `ipv6=False` leaves IPv6 addresses out (for hosts without IPv6 connectivity).
    Without any address: DEFERRED (4.4.3) if some lookup failed temporarily, else a
    permanent 5.4.4 (every name server answered, and none of the hosts has an address).
    """
    if max_addresses < 1:
        raise ValueError("max_addresses must be at least 1")
    attempts: list[Attempt] = []
    seen: set[str] = set()
    unresolved: list[str] = []
    details: list[str] = []
    for hop in hosts.hops:
        answer = addresses[hop.host]
        if answer.status is Lookup.TEMPFAIL:
            unresolved.append(hop.host)
        if answer.detail:
            details.append(answer.detail)
        for address in _interleave(answer, rng, ipv6=ipv6):
            if address not in seen:
                seen.add(address)
                attempts.append(Attempt(hop.host, address, port, hop.preference))
    if attempts:
        return RoutePlan(
            hosts.domain,
            tuple(attempts[:max_addresses]),
            implicit=hosts.implicit,
            unresolved=tuple(unresolved),
        )
    detail = "; ".join(details)
    if unresolved:
        text = f"Temporary DNS failure looking up {', '.join(unresolved)}"
        return _fail(hosts.domain, DNS_TEMPFAIL, text, detail)
    if hosts.implicit:
        text = f"Domain {hosts.domain} has no MX and no usable address record"
    else:
        text = f"No usable address for any mail exchanger of {hosts.domain}"
    return _fail(hosts.domain, NO_ADDRESS, text, detail)


def plan_route(
    domain: str,
    mx: MXResult,
    addresses: Mapping[str, AddressResult],
    *,
    our_names: Collection[str],
    rng: random.Random,
    max_mx: int = DEFAULT_MAX_MX,
    port: int = SMTP_PORT,
    ipv6: bool = True,
    max_addresses: int = DEFAULT_MAX_ADDRESSES,
) -> RoutePlan | RouteFailure:
    """Steps 1 and 3 at once, for answers already at hand (`addresses` keyed by host)."""
    hosts = plan_hosts(domain, mx, our_names=our_names, rng=rng, max_mx=max_mx)
    if isinstance(hosts, RouteFailure):
        return hosts
    return plan_attempts(
        hosts, addresses, rng=rng, port=port, ipv6=ipv6, max_addresses=max_addresses
    )


def plan_smarthost(
    host: str,
    port: int,
    addresses: AddressResult | None,
    *,
    rng: random.Random | None = None,
    ipv6: bool = True,
    max_addresses: int = DEFAULT_MAX_ADDRESSES,
) -> RoutePlan | RouteFailure:
    """All mail goes to one relay: no MX lookup at all.

    `host` may be an IP address (plain or in brackets; `addresses` is then ignored and may
    be None). Any lookup failure of a named smarthost, NXDOMAIN included, defers
    (4.4.4): it is this server's configuration that is wrong, and bouncing every message
    for it would punish the senders.
    """
    literal = ip_literal(host)
    if literal is not None:
        return RoutePlan(host, (Attempt(host, literal, port),), smarthost=True)
    name = normalize_name(host)
    if addresses is None or addresses.status is not Lookup.FOUND:
        detail = addresses.detail if addresses is not None else ""
        return _fail(name, SMARTHOST_UNRESOLVED, f"Smarthost {name} has no usable address", detail)
    hops = HostPlan(name, (Hop(name, 0),))
    plan = plan_attempts(
        hops,
        {name: addresses},
        rng=rng or random.Random(0),
        port=port,
        ipv6=ipv6,
        max_addresses=max_addresses,
    )
    if isinstance(plan, RouteFailure):  # e.g. only IPv6 addresses and ipv6=False
        return _fail(name, SMARTHOST_UNRESOLVED, f"Smarthost {name} has no usable address")
    return RoutePlan(name, plan.attempts, smarthost=True)


def plan_literal(domain: str, *, port: int = SMTP_PORT) -> RoutePlan | None:
    """An address-literal domain ("[192.0.2.1]", "[IPv6:2001:db8::1]"; RFC 5321 §4.1.3)
    is delivered to that address with no DNS at all; None if `domain` is not one."""
    if not domain.startswith("["):
        return None
    address = ip_literal(domain)
    if address is None:
        return None
    return RoutePlan(domain, (Attempt(domain, address, port),))


def ip_literal(text: str) -> str | None:
    """The IP address written in `text` ("192.0.2.1", "[192.0.2.1]", "[IPv6:::1]"), or None."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


async def find_route(
    resolver: Resolver,
    domain: str,
    *,
    our_names: Collection[str],
    rng: random.Random,
    max_mx: int = DEFAULT_MAX_MX,
    port: int = SMTP_PORT,
    ipv6: bool = True,
    max_addresses: int = DEFAULT_MAX_ADDRESSES,
) -> RoutePlan | RouteFailure:
    """The driver: ask `resolver` what the planner needs, concurrently, and plan."""
    literal = plan_literal(domain, port=port)
    if literal is not None:
        return literal
    mx = await resolver.mx(domain)
    hosts = plan_hosts(domain, mx, our_names=our_names, rng=rng, max_mx=max_mx)
    if isinstance(hosts, RouteFailure):
        return hosts
    answers = await asyncio.gather(*(resolver.addresses(host) for host in hosts.hosts))
    return plan_attempts(
        hosts,
        dict(zip(hosts.hosts, answers, strict=True)),
        rng=rng,
        port=port,
        ipv6=ipv6,
        max_addresses=max_addresses,
    )


async def find_smarthost(
    resolver: Resolver,
    host: str,
    port: int,
    *,
    rng: random.Random | None = None,
    ipv6: bool = True,
) -> RoutePlan | RouteFailure:
    """The driver for a smarthost: one address lookup unless `host` is an IP address."""
    answer = None if ip_literal(host) is not None else await resolver.addresses(host)
    return plan_smarthost(host, port, answer, rng=rng, ipv6=ipv6)


# --- helpers ------------------------------------------------------------------------------------


def _fail(domain: str, reply: Reply, text: str, detail: str = "") -> RouteFailure:
    return RouteFailure(domain, reply.with_text(text), detail)


def _before_ourselves(records: Sequence[MX], ours: set[str]) -> list[MX]:
    """RFC 5321 §5.1: if our own name is among the MX hosts, every MX with the same or a
    higher preference value than ours must be discarded (we are as close as they are)."""
    own = [r.preference for r in records if r.exchange in ours]
    if not own:
        return list(records)
    cutoff = min(own)
    return [r for r in records if r.preference < cutoff]


def _order(records: Sequence[MX], rng: random.Random) -> list[Hop]:
    """Preference order, equal preferences shuffled (RFC 5321 §5.1: "the sender-SMTP MUST
    randomize them to spread the load"), each host once at its best preference."""
    best: dict[str, int] = {}
    for record in records:
        best[record.exchange] = min(record.preference, best.get(record.exchange, 0xFFFF))
    ordered = sorted(best.items(), key=lambda item: (item[1], item[0]))
    hops: list[Hop] = []
    for _, group in groupby(ordered, key=lambda item: item[1]):
        same = [Hop(host, preference) for host, preference in group]
        rng.shuffle(same)
        hops.extend(same)
    return hops


def _interleave(answer: AddressResult, rng: random.Random, *, ipv6: bool) -> list[str]:
    v6 = list(answer.ipv6) if ipv6 else []
    v4 = list(answer.ipv4)
    rng.shuffle(v6)
    rng.shuffle(v4)
    return [a for a in chain.from_iterable(zip_longest(v6, v4)) if a is not None]
