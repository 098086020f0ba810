"""The DNS answer types and the FakeResolver built from dicts."""

from __future__ import annotations

import pytest

from homing.dns import MX, AddressResult, FakeResolver, Lookup, MXResult, normalize_name

# --- value types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Example.TEST.", "example.test"), ("mx.example.test", "mx.example.test"), (".", "."),
     ("", "."), (" a.b ", "a.b")],
)  # fmt: skip
def test_normalize_name(text: str, expected: str) -> None:
    assert normalize_name(text) == expected


def test_mx_record_normalises_exchange_and_checks_preference() -> None:
    assert MX(10, "MX1.Example.Test.").exchange == "mx1.example.test"
    assert MX(0, ".").is_root
    with pytest.raises(ValueError):
        MX(70000, "mx.example.test")
    with pytest.raises(ValueError):
        MX(-1, "mx.example.test")


def test_mx_result_found_needs_records_and_only_found_has_them() -> None:
    with pytest.raises(ValueError):
        MXResult(Lookup.FOUND)
    with pytest.raises(ValueError):
        MXResult(Lookup.NODATA, (MX(10, "mx.example.test"),))
    assert MXResult.found([]).status is Lookup.NODATA


@pytest.mark.parametrize(
    ("records", "null"),
    [
        ([MX(0, ".")], True),  # RFC 7505 §3: the null MX
        ([MX(10, ".")], True),  # same meaning whatever the preference
        ([MX(0, "."), MX(10, ".")], True),  # nowhere to deliver
        ([MX(0, "."), MX(10, "mx.example.test")], False),  # a real host is listed too
        ([MX(0, "mx.example.test")], False),
    ],
)
def test_null_mx(records: list[MX], null: bool) -> None:
    assert MXResult.found(records).is_null_mx is null


def test_no_mx_is_not_null_mx() -> None:
    assert not MXResult.nodata().is_null_mx
    assert not MXResult.tempfail("SERVFAIL").is_null_mx


def test_address_result_checks_families() -> None:
    with pytest.raises(ValueError):
        AddressResult.found(ipv6=("192.0.2.1",))
    with pytest.raises(ValueError):
        AddressResult.found(ipv4=("2001:db8::1",))
    with pytest.raises(ValueError):
        AddressResult(Lookup.FOUND)
    assert AddressResult.found().status is Lookup.NODATA
    both = AddressResult.found(ipv6=("2001:db8::1",), ipv4=("192.0.2.1",))
    assert both.addresses == ("2001:db8::1", "192.0.2.1")


V6 = AddressResult.found(ipv6=("2001:db8::1",))
V4 = AddressResult.found(ipv4=("192.0.2.1",))
TEMP = AddressResult.tempfail("timeout")
NX = AddressResult.nxdomain()
NODATA = AddressResult.nodata()


@pytest.mark.parametrize(
    ("aaaa", "a", "status", "addresses"),
    [
        (V6, V4, Lookup.FOUND, ("2001:db8::1", "192.0.2.1")),
        (NODATA, V4, Lookup.FOUND, ("192.0.2.1",)),
        (TEMP, V4, Lookup.FOUND, ("192.0.2.1",)),  # half the answer is enough to deliver
        (V6, TEMP, Lookup.FOUND, ("2001:db8::1",)),
        (TEMP, NODATA, Lookup.TEMPFAIL, ()),  # the AAAA answer might have had addresses
        (NODATA, TEMP, Lookup.TEMPFAIL, ()),
        (TEMP, NX, Lookup.TEMPFAIL, ()),
        (NX, NX, Lookup.NXDOMAIN, ()),
        (NODATA, NODATA, Lookup.NODATA, ()),
        (NX, NODATA, Lookup.NODATA, ()),  # servers disagree: do not claim non-existence
    ],
)
def test_combine_families(
    aaaa: AddressResult, a: AddressResult, status: Lookup, addresses: tuple[str, ...]
) -> None:
    combined = AddressResult.combine(aaaa, a)
    assert combined.status is status
    assert combined.addresses == addresses


def test_combine_notes_the_missing_family() -> None:
    combined = AddressResult.combine(TEMP, V4)
    assert "AAAA" in combined.detail
    assert "timeout" in combined.detail


# --- FakeResolver -------------------------------------------------------------------------------

ZONES = {
    "example.test": {
        "MX": [(10, "mx1.example.test"), (20, "MX2.example.test.")],
        "A": ["192.0.2.1"],
    },
    "mx1.example.test": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
    "mx2.example.test": {"A": ["192.0.2.3"]},
    "alias.test": {"CNAME": ["example.test"]},
    "loop1.test": {"CNAME": ["loop2.test"]},
    "loop2.test": {"CNAME": ["loop1.test"]},
    "nomail.test": {"MX": [(0, ".")]},
    "deep.a.parent.test": {"A": ["192.0.2.9"]},
}


async def test_fake_mx_found() -> None:
    fake = FakeResolver(ZONES)
    result = await fake.mx("Example.Test.")
    assert result.status is Lookup.FOUND
    assert result.records == (MX(10, "mx1.example.test"), MX(20, "mx2.example.test"))
    assert fake.queries == [("example.test", "MX")]


async def test_fake_follows_cnames() -> None:
    fake = FakeResolver(ZONES)
    assert (await fake.mx("alias.test")).records[0] == MX(10, "mx1.example.test")
    assert (await fake.addresses("alias.test")).ipv4 == ("192.0.2.1",)


async def test_fake_cname_loop_is_a_temporary_failure() -> None:
    assert (await FakeResolver(ZONES).mx("loop1.test")).status is Lookup.TEMPFAIL


async def test_fake_nodata_nxdomain_and_empty_non_terminal() -> None:
    fake = FakeResolver(ZONES)
    assert (await fake.mx("mx1.example.test")).status is Lookup.NODATA
    assert (await fake.mx("missing.test")).status is Lookup.NXDOMAIN
    # "a.parent.test" has no records but a child (an empty non-terminal): NODATA.
    assert (await fake.mx("a.parent.test")).status is Lookup.NODATA
    assert (await fake.addresses("missing.test")).status is Lookup.NXDOMAIN


async def test_fake_null_mx() -> None:
    assert (await FakeResolver(ZONES).mx("nomail.test")).is_null_mx


async def test_fake_addresses_both_families() -> None:
    result = await FakeResolver(ZONES).addresses("mx1.example.test")
    assert result.ipv6 == ("2001:db8::2",)
    assert result.ipv4 == ("192.0.2.2",)


async def test_fake_faults_by_name_and_by_type() -> None:
    fake = FakeResolver(
        ZONES,
        servfail={"example.test"},
        timeout={("mx1.example.test", "AAAA")},
        nxdomain={"mx2.example.test"},
    )
    assert (await fake.mx("example.test")).status is Lookup.TEMPFAIL
    assert (await fake.addresses("example.test")).status is Lookup.TEMPFAIL
    partial = await fake.addresses("mx1.example.test")
    assert partial.status is Lookup.FOUND
    assert partial.ipv6 == ()
    assert partial.ipv4 == ("192.0.2.2",)
    assert (await fake.addresses("mx2.example.test")).status is Lookup.NXDOMAIN


async def test_fake_zones_can_change_between_questions() -> None:
    fake = FakeResolver()
    assert (await fake.mx("later.test")).status is Lookup.NXDOMAIN
    fake.zones["later.test"] = {"MX": [(5, "mx.later.test")]}
    assert (await fake.mx("later.test")).records == (MX(5, "mx.later.test"),)
