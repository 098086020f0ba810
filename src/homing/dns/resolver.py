"""The narrow DNS interface the rest of Homing uses: a `Resolver` protocol and its answers.

Mail routing needs only two questions (RFC 5321 §5.1): "what are the MX records of this
domain?" and "what are the addresses (AAAA and A) of this host?". Each answer says which
of four things happened, because routing depends on the difference:

- `FOUND`: records of the asked type exist (CNAMEs already followed by the resolver);
- `NXDOMAIN`: the name does not exist (RCODE 3, RFC 1035 §4.1.1) - a permanent answer;
- `NODATA`: the name exists but has no record of that type (RFC 2308 §2.2) - for MX this
  means "use the implicit MX", the domain's own addresses;
- `TEMPFAIL`: no trustworthy answer (SERVFAIL, REFUSED, timeout, network error). This is
  never to be read as "no MX": a lookup that failed is retried later, never guessed.

Names in answers are normalised with `normalize_name`: lower case, no trailing dot, the
root written ".". Implementations never raise for a DNS outcome; they return `TEMPFAIL`.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Protocol


class Lookup(enum.Enum):
    """What one DNS question came back with."""

    FOUND = "found"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TEMPFAIL = "tempfail"


def normalize_name(name: str) -> str:
    """Lower-case `name` and drop its trailing dot; the root (`.` or ``) becomes `.`."""
    stripped = name.strip().rstrip(".").lower()
    return stripped or "."


@dataclass(frozen=True, slots=True)
class MX:
    """One MX record (RFC 1035 §3.3.9): lower preference values are tried first."""

    preference: int
    exchange: str

    def __post_init__(self) -> None:
        if not 0 <= self.preference <= 0xFFFF:
            raise ValueError(f"MX preference out of range: {self.preference}")
        object.__setattr__(self, "exchange", normalize_name(self.exchange))

    @property
    def is_root(self) -> bool:
        """True for an exchange of "." (the RFC 7505 null MX target)."""
        return self.exchange == "."


@dataclass(frozen=True, slots=True)
class MXResult:
    """The answer to an MX question. `records` is non-empty exactly when `status` is FOUND."""

    status: Lookup
    records: tuple[MX, ...] = ()
    detail: str = ""
    """Why, for people: the resolver's error for TEMPFAIL, the name that was missing, ..."""

    def __post_init__(self) -> None:
        if (self.status is Lookup.FOUND) != bool(self.records):
            raise ValueError("MXResult: records are required for FOUND and forbidden otherwise")

    @classmethod
    def found(cls, records: tuple[MX, ...] | list[MX]) -> MXResult:
        return cls(Lookup.FOUND, tuple(records)) if records else cls(Lookup.NODATA)

    @classmethod
    def nxdomain(cls, detail: str = "") -> MXResult:
        return cls(Lookup.NXDOMAIN, detail=detail)

    @classmethod
    def nodata(cls, detail: str = "") -> MXResult:
        return cls(Lookup.NODATA, detail=detail)

    @classmethod
    def tempfail(cls, detail: str) -> MXResult:
        return cls(Lookup.TEMPFAIL, detail=detail)

    @property
    def is_null_mx(self) -> bool:
        """RFC 7505 §3: the domain accepts no mail.

        The RFC's null MX is a single record "0 ."; a record set whose every exchange is the
        root says the same thing (there is nowhere to deliver), so it counts too, whatever
        the preference values.
        """
        return bool(self.records) and all(r.is_root for r in self.records)


@dataclass(frozen=True, slots=True)
class AddressResult:
    """The addresses of one host: AAAA records in `ipv6`, A records in `ipv4`.

    `status` is FOUND when either family has an address. When one family failed
    temporarily and the other answered, the result is FOUND with what was found and
    `detail` says what is missing (delivery can go ahead with half the addresses).
    """

    status: Lookup
    ipv6: tuple[str, ...] = ()
    ipv4: tuple[str, ...] = ()
    detail: str = ""

    def __post_init__(self) -> None:
        if (self.status is Lookup.FOUND) != bool(self.ipv6 or self.ipv4):
            raise ValueError("AddressResult: addresses are required for FOUND only")
        for text in self.ipv6:
            if not isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address):
                raise ValueError(f"not an IPv6 address: {text!r}")
        for text in self.ipv4:
            if not isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address):
                raise ValueError(f"not an IPv4 address: {text!r}")

    @classmethod
    def found(cls, ipv6: tuple[str, ...] = (), ipv4: tuple[str, ...] = ()) -> AddressResult:
        if not ipv6 and not ipv4:
            return cls(Lookup.NODATA)
        return cls(Lookup.FOUND, tuple(ipv6), tuple(ipv4))

    @classmethod
    def nxdomain(cls, detail: str = "") -> AddressResult:
        return cls(Lookup.NXDOMAIN, detail=detail)

    @classmethod
    def nodata(cls, detail: str = "") -> AddressResult:
        return cls(Lookup.NODATA, detail=detail)

    @classmethod
    def tempfail(cls, detail: str) -> AddressResult:
        return cls(Lookup.TEMPFAIL, detail=detail)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address, IPv6 first."""
        return self.ipv6 + self.ipv4

    @classmethod
    def combine(cls, aaaa: AddressResult, a: AddressResult) -> AddressResult:
        """Merge the answers of the AAAA question and the A question for one host.

        Any address wins (a temporary failure of the other family is noted in `detail`);
        without addresses a temporary failure of either family makes the whole answer
        TEMPFAIL, since the missing family might have had addresses; the name is NXDOMAIN
        only when both questions said so, and NODATA otherwise.
        """
        ipv6, ipv4 = aaaa.ipv6, a.ipv4
        failed = [
            f"{kind}: {r.detail or 'temporary failure'}"
            for kind, r in (("AAAA", aaaa), ("A", a))
            if r.status is Lookup.TEMPFAIL
        ]
        if ipv6 or ipv4:
            return cls(Lookup.FOUND, ipv6, ipv4, "; ".join(failed))
        if failed:
            return cls.tempfail("; ".join(failed))
        if aaaa.status is Lookup.NXDOMAIN and a.status is Lookup.NXDOMAIN:
            return cls.nxdomain(a.detail or aaaa.detail)
        return cls.nodata(a.detail or aaaa.detail)


class Resolver(Protocol):
    """The DNS questions mail routing asks. Implementations never raise for DNS outcomes."""

    async def mx(self, domain: str) -> MXResult:
        """The MX records of `domain` (an A-label / ASCII domain, absolute, no search list)."""
        ...

    async def addresses(self, host: str) -> AddressResult:
        """The AAAA and A records of `host`, both families asked."""
        ...
