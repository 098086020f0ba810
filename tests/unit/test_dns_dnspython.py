"""The dnspython adapter without a network: construction, and every dnspython outcome
translated into one of the four `Lookup`s (the real wire is in tests/integration)."""

from __future__ import annotations

import importlib
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.resolver
import dns.rrset
import pytest

from homing.config.model import ListenAddress
from homing.dns import Lookup
from homing.dns.dnspython import DnspythonResolver


def test_no_resolver_at_import_or_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("homing.dns.dnspython")
    assert not [v for v in vars(module).values() if isinstance(v, dns.resolver.BaseResolver)]
    built: list[Any] = []
    monkeypatch.setattr(dns.asyncresolver, "Resolver", lambda *a, **k: built.append(a))
    DnspythonResolver()  # construction reads no resolv.conf either: the first question does
    assert built == []


def test_nameservers_from_config_addresses() -> None:
    resolver = DnspythonResolver(
        [ListenAddress("127.0.0.1", 5353), ListenAddress("::1", 53), ("[::1]", 5300)],
        timeout=3.0,
    )
    inner = resolver._dnspython()
    assert [(ns.address, ns.port) for ns in inner.nameservers] == [  # type: ignore[union-attr]
        ("127.0.0.1", 5353),
        ("::1", 53),
        ("::1", 5300),
    ]
    assert inner.lifetime == 3.0
    assert inner.timeout == 2.0
    assert inner.search == []
    assert not inner.use_search_by_default


def test_attempt_timeout_never_exceeds_lifetime() -> None:
    inner = DnspythonResolver([("127.0.0.1", 53)], timeout=0.5)._dnspython()
    assert inner.timeout == 0.5


@pytest.mark.parametrize(
    "bad",
    [("localhost", 53), ("127.0.0.1", 0), ("127.0.0.1", 70000)],
)
def test_bad_nameserver_is_refused(bad: tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        DnspythonResolver([bad])


def test_bad_timeouts_are_refused() -> None:
    with pytest.raises(ValueError):
        DnspythonResolver(timeout=0)


@pytest.mark.parametrize("name", ["a" * 64 + ".test", "x..test", ".", ("a" * 60 + ".") * 5])
async def test_unwritable_names_cannot_exist(name: str) -> None:
    resolver = DnspythonResolver([("127.0.0.1", 9)])
    assert (await resolver.mx(name)).status is Lookup.NXDOMAIN
    assert (await resolver.addresses(name)).status is Lookup.NXDOMAIN


def _raising(exc: BaseException) -> Any:
    async def resolve(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return resolve


QNAME = dns.name.from_text("example.test.")


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (dns.resolver.NXDOMAIN(qnames=[QNAME]), Lookup.NXDOMAIN),
        (dns.resolver.NoAnswer(), Lookup.NODATA),
        (dns.resolver.LifetimeTimeout(timeout=1.0, errors=[]), Lookup.TEMPFAIL),
        (dns.exception.Timeout(), Lookup.TEMPFAIL),
        (dns.resolver.NoNameservers(), Lookup.TEMPFAIL),  # SERVFAIL, REFUSED everywhere
        (dns.resolver.YXDOMAIN(), Lookup.TEMPFAIL),
        (dns.resolver.NoResolverConfiguration(), Lookup.TEMPFAIL),
        (OSError("network unreachable"), Lookup.TEMPFAIL),
    ],
)
async def test_exceptions_become_lookups(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException, status: Lookup
) -> None:
    resolver = DnspythonResolver([("127.0.0.1", 9)])
    monkeypatch.setattr(resolver._dnspython(), "resolve", _raising(exc))
    mx = await resolver.mx("example.test")
    assert mx.status is status
    assert (await resolver.addresses("example.test")).status is status
    if status is Lookup.TEMPFAIL:
        assert mx.detail


async def test_missing_system_configuration_is_temporary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_config(*args: Any, **kwargs: Any) -> Any:
        raise dns.resolver.NoResolverConfiguration("no nameservers")

    monkeypatch.setattr(dns.asyncresolver, "Resolver", no_config)
    resolver = DnspythonResolver()
    result = await resolver.mx("example.test")
    assert result.status is Lookup.TEMPFAIL
    assert "no nameservers" in result.detail


async def test_mx_answer_is_translated(monkeypatch: pytest.MonkeyPatch) -> None:
    query = dns.message.make_query("example.test.", "MX")
    response = dns.message.make_response(query)
    rrset = dns.rrset.from_text("example.test.", 300, "IN", "MX", "10 MX1.Example.Test.", "0 .")
    response.find_rrset(
        response.answer, rrset.name, rrset.rdclass, rrset.rdtype, create=True
    ).update(rrset)
    answer = dns.resolver.Answer(QNAME, dns.rdatatype.MX, dns.rdataclass.IN, response)

    async def resolve(*args: Any, **kwargs: Any) -> Any:
        assert kwargs["search"] is False
        assert args[0].is_absolute()
        return answer

    resolver = DnspythonResolver([("127.0.0.1", 9)])
    monkeypatch.setattr(resolver._dnspython(), "resolve", resolve)
    result = await resolver.mx("example.test")
    assert {(r.preference, r.exchange) for r in result.records} == {
        (10, "mx1.example.test"),
        (0, "."),
    }
