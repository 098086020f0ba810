"""The real `Resolver`: an adapter over dnspython's asyncio stub resolver.

Everything dnspython can raise is translated here, once, into the four outcomes of
`homing.dns.resolver.Lookup`; callers never see a dnspython exception. What dnspython
already does well is left to it: following CNAMEs inside a response, retrying over TCP
when a UDP answer comes back truncated (RFC 1035 §4.2.1, RFC 7766 §5), rotating through
the nameservers, retransmitting over UDP until the lifetime runs out.

Nothing happens at import time: the dnspython resolver (which reads /etc/resolv.conf
when no nameservers are configured) is built on the first question, and built again on
a later question if the system configuration could not be read.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset
from dns.rdtypes.ANY.MX import MX as MXRdata

from homing.dns.resolver import MX, AddressResult, Lookup, MXResult, normalize_name

#: Seconds to wait for one server's answer before retransmitting or trying the next
#: server (dnspython's own default). The whole lookup is bounded by `timeout`.
DEFAULT_ATTEMPT_TIMEOUT = 2.0


class HostPort(Protocol):
    """A nameserver address; `homing.config.model.ListenAddress` is one."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


class DnspythonResolver:
    """`Resolver` over `dns.asyncresolver.Resolver`.

    `nameservers`: servers to ask (IP address and port each) instead of the system's
    resolv.conf. `timeout`: seconds a whole lookup may take (dnspython's `lifetime`),
    retransmissions and server rotation included; past it the answer is TEMPFAIL.
    `attempt_timeout`: seconds for one query to one server (dnspython's `timeout`).
    """

    def __init__(
        self,
        nameservers: Iterable[HostPort | tuple[str, int]] = (),
        *,
        timeout: float = 5.0,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    ) -> None:
        if timeout <= 0 or attempt_timeout <= 0:
            raise ValueError("DNS timeouts must be positive")
        self._nameservers = tuple(_host_port(ns) for ns in nameservers)
        self._timeout = timeout
        self._attempt_timeout = min(attempt_timeout, timeout)
        self._resolver: dns.asyncresolver.Resolver | None = None

    async def mx(self, domain: str) -> MXResult:
        status, rrset, detail = await self._resolve(domain, dns.rdatatype.MX)
        if rrset is None:
            return MXResult(status, detail=detail)
        records = [
            MX(rdata.preference, rdata.exchange.to_text())
            for rdata in rrset
            if isinstance(rdata, MXRdata)
        ]
        return MXResult.found(records)

    async def addresses(self, host: str) -> AddressResult:
        aaaa, a = await asyncio.gather(
            self._family(host, dns.rdatatype.AAAA), self._family(host, dns.rdatatype.A)
        )
        return AddressResult.combine(aaaa, a)

    async def _family(self, host: str, rdtype: dns.rdatatype.RdataType) -> AddressResult:
        status, rrset, detail = await self._resolve(host, rdtype)
        if rrset is None:
            return AddressResult(status, detail=detail)
        found = tuple(rdata.to_text() for rdata in rrset)
        if rdtype == dns.rdatatype.AAAA:
            return AddressResult.found(ipv6=found)
        return AddressResult.found(ipv4=found)

    async def _resolve(
        self, name: str, rdtype: dns.rdatatype.RdataType
    ) -> tuple[Lookup, dns.rrset.RRset | None, str]:
        """Ask one question: (status, the final RRset exactly when FOUND, detail for people)."""
        qtype = dns.rdatatype.to_text(rdtype)
        try:
            qname = _absolute_name(name)
        except (dns.exception.DNSException, ValueError) as exc:
            # A name that cannot be written in DNS cannot exist in it.
            return Lookup.NXDOMAIN, None, f"invalid domain name {name!r}: {exc}"
        try:
            resolver = self._dnspython()
            # The name is absolute, and search=False: no search list, ever (a mail domain
            # is always fully qualified; RFC 5321 §2.3.5).
            answer = await resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Lookup.NXDOMAIN, None, f"{normalize_name(name)}: no such domain (NXDOMAIN)"
        except dns.resolver.NoAnswer:
            return Lookup.NODATA, None, f"{normalize_name(name)}: no {qtype} record"
        except dns.exception.Timeout:
            return Lookup.TEMPFAIL, None, f"{normalize_name(name)} {qtype}: DNS timeout"
        except dns.resolver.NoNameservers as exc:
            # Every server answered SERVFAIL, REFUSED or garbage, or could not be reached.
            return Lookup.TEMPFAIL, None, f"{normalize_name(name)} {qtype}: {exc}"
        except (dns.exception.DNSException, OSError) as exc:
            # YXDOMAIN, NoResolverConfiguration, network errors: no trustworthy answer.
            return Lookup.TEMPFAIL, None, f"{normalize_name(name)} {qtype}: {exc}"
        if answer.rrset is None:  # NOERROR without the asked type: NODATA (RFC 2308 §2.2)
            return Lookup.NODATA, None, f"{normalize_name(name)}: no {qtype} record"
        # With CNAMEs in the response, `rrset` is the one at the end of the chain.
        return Lookup.FOUND, answer.rrset, ""

    def _dnspython(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            # configure=True reads /etc/resolv.conf; with our own servers it must not.
            resolver = dns.asyncresolver.Resolver(configure=not self._nameservers)
            if self._nameservers:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(host, port) for host, port in self._nameservers
                ]
            resolver.lifetime = self._timeout
            resolver.timeout = self._attempt_timeout
            resolver.search = []
            resolver.use_search_by_default = False
            resolver.cache = None
            self._resolver = resolver
        return self._resolver


def _host_port(ns: HostPort | tuple[str, int]) -> tuple[str, int]:
    host, port = ns if isinstance(ns, tuple) else (ns.host, ns.port)
    host = host.strip("[]")
    ipaddress.ip_address(host)  # dnspython's Do53 servers are addresses, not names
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver port: {port}")
    return host, port


def _absolute_name(name: str) -> dns.name.Name:
    text = normalize_name(name)
    if text == ".":
        raise ValueError("empty name")
    return dns.name.from_text(text, origin=dns.name.root)
