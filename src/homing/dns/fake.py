"""`FakeResolver`: a `Resolver` answering from Python dicts, for unit tests.

The zone data has the same shape as the test DNS server's (tests/dnsserver.py), so a test
can move between the fake and a real server on loopback without rewriting its data::

    FakeResolver(
        {
            "example.test": {"MX": [(10, "mx1.example.test")], "A": ["192.0.2.1"]},
            "mx1.example.test": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
            "alias.test": {"CNAME": ["example.test"]},
        },
        servfail={"broken.test"},  # every question about the name fails temporarily
        timeout={("slow.test", "AAAA")},  # or only one type of question
    )

A name that has an entry (even an empty one), or is the parent of one that has, exists:
asking it for a type it lacks gives NODATA; any other name is NXDOMAIN. CNAMEs are
followed as a recursive resolver would, at most `MAX_CNAME_CHAIN` links.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from homing.dns.resolver import MX, AddressResult, Lookup, MXResult, normalize_name

#: Longest CNAME chain followed before the lookup is called a (temporary) failure.
MAX_CNAME_CHAIN = 16

Zones = Mapping[str, Mapping[str, Sequence[Any]]]
Faults = Iterable[str | tuple[str, str]]


class FakeResolver:
    """Answers from dicts; records every question in `queries` as (name, type)."""

    def __init__(
        self,
        zones: Zones | None = None,
        *,
        servfail: Faults = (),
        timeout: Faults = (),
        nxdomain: Faults = (),
    ) -> None:
        self.zones: dict[str, dict[str, list[Any]]] = {
            normalize_name(name): {rtype.upper(): list(values) for rtype, values in rrs.items()}
            for name, rrs in (zones or {}).items()
        }
        self.servfail = _faults(servfail)
        self.timeout = _faults(timeout)
        self.nxdomain = _faults(nxdomain)
        self.queries: list[tuple[str, str]] = []

    async def mx(self, domain: str) -> MXResult:
        status, values, detail = self._ask(domain, "MX")
        if status is Lookup.FOUND:
            return MXResult.found([MX(int(pref), str(host)) for pref, host in values])
        return MXResult(status, detail=detail)

    async def addresses(self, host: str) -> AddressResult:
        return AddressResult.combine(self._family(host, "AAAA"), self._family(host, "A"))

    def _family(self, host: str, rtype: str) -> AddressResult:
        status, values, detail = self._ask(host, rtype)
        if status is not Lookup.FOUND:
            return AddressResult(status, detail=detail)
        found = tuple(str(v) for v in values)
        if rtype == "AAAA":
            return AddressResult.found(ipv6=found)
        return AddressResult.found(ipv4=found)

    def _ask(self, name: str, rtype: str) -> tuple[Lookup, list[Any], str]:
        """One question, CNAMEs followed: (status, record values, detail)."""
        current = normalize_name(name)
        self.queries.append((current, rtype))
        for _ in range(MAX_CNAME_CHAIN):
            fault = self._fault(current, rtype)
            if fault is not None:
                return fault, [], f"{current} {rtype}: injected {fault.value}"
            rrs = self.zones.get(current)
            if rrs is None and not self._is_parent(current):
                return Lookup.NXDOMAIN, [], f"{current}: no such domain"
            rrs = rrs or {}
            if rrs.get(rtype):
                return Lookup.FOUND, rrs[rtype], ""
            if not rrs.get("CNAME"):
                return Lookup.NODATA, [], f"{current}: no {rtype} record"
            current = normalize_name(str(rrs["CNAME"][0]))
        return Lookup.TEMPFAIL, [], f"{normalize_name(name)}: CNAME chain too long"

    def _fault(self, name: str, rtype: str) -> Lookup | None:
        for faults, status in (
            (self.timeout, Lookup.TEMPFAIL),
            (self.servfail, Lookup.TEMPFAIL),
            (self.nxdomain, Lookup.NXDOMAIN),
        ):
            if name in faults or (name, rtype) in faults:
                return status
        return None

    def _is_parent(self, name: str) -> bool:
        suffix = "." + name
        return any(other.endswith(suffix) for other in self.zones)


def _faults(items: Faults) -> set[str | tuple[str, str]]:
    out: set[str | tuple[str, str]] = set()
    for item in items:
        if isinstance(item, str):
            out.add(normalize_name(item))
        else:
            out.add((normalize_name(item[0]), item[1].upper()))
    return out
