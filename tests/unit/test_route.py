"""The MX route planner (RFC 5321 §5.1, RFC 7505) and its driver over FakeResolver."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homing.dns import MX, AddressResult, FakeResolver, Lookup, MXResult
from homing.outbound.route import (
    Attempt,
    Hop,
    HostPlan,
    RouteFailure,
    RoutePlan,
    find_route,
    find_smarthost,
    ip_literal,
    plan_attempts,
    plan_hosts,
    plan_literal,
    plan_route,
    plan_smarthost,
)

OURS = {"mail.homing.test"}


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


def v4(*addresses: str) -> AddressResult:
    return AddressResult.found(ipv4=addresses)


def both(v6: tuple[str, ...], v4: tuple[str, ...]) -> AddressResult:
    return AddressResult.found(ipv6=v6, ipv4=v4)


def hosts_of(result: HostPlan | RouteFailure) -> list[str]:
    assert isinstance(result, HostPlan), result
    return list(result.hosts)


def failure(result: object) -> RouteFailure:
    assert isinstance(result, RouteFailure), result
    return result


def plan(result: object) -> RoutePlan:
    assert isinstance(result, RoutePlan), result
    return result


# --- step 1: MX -> hosts ------------------------------------------------------------------------


def test_mx_in_preference_order() -> None:
    mx = MXResult.found([MX(30, "c.test"), MX(10, "a.test"), MX(20, "b.test")])
    assert hosts_of(plan_hosts("d.test", mx, our_names=OURS, rng=rng())) == [
        "a.test",
        "b.test",
        "c.test",
    ]


def test_equal_preferences_are_shuffled_by_the_given_rng() -> None:
    mx = MXResult.found([MX(10, "a.test"), MX(10, "b.test"), MX(10, "c.test"), MX(5, "z.test")])
    orders = Counter(
        tuple(hosts_of(plan_hosts("d.test", mx, our_names=OURS, rng=rng(seed))))
        for seed in range(300)
    )
    assert all(order[0] == "z.test" for order in orders)  # preference still rules
    assert len(orders) == 6  # every order of the three equals shows up
    same = plan_hosts("d.test", mx, our_names=OURS, rng=rng(7))
    assert same == plan_hosts("d.test", mx, our_names=OURS, rng=rng(7))  # no hidden randomness


def test_a_host_listed_twice_is_kept_once_at_its_best_preference() -> None:
    mx = MXResult.found([MX(20, "a.test"), MX(10, "a.test"), MX(15, "b.test")])
    result = plan_hosts("d.test", mx, our_names=OURS, rng=rng())
    assert isinstance(result, HostPlan)
    assert result.hops == (Hop("a.test", 10), Hop("b.test", 15))


def test_at_most_max_mx_hosts() -> None:
    mx = MXResult.found([MX(i, f"mx{i}.test") for i in range(10)])
    assert hosts_of(plan_hosts("d.test", mx, our_names=OURS, rng=rng(), max_mx=3)) == [
        "mx0.test",
        "mx1.test",
        "mx2.test",
    ]


def test_limits_must_allow_one_host() -> None:
    mx = MXResult.found([MX(10, "a.test")])
    with pytest.raises(ValueError):
        plan_hosts("d.test", mx, our_names=OURS, rng=rng(), max_mx=0)
    with pytest.raises(ValueError):
        plan_attempts(TWO, {}, rng=rng(), max_addresses=0)


def test_no_mx_means_implicit_mx() -> None:
    # RFC 5321 §5.1: an empty MX answer -> the domain itself, preference 0.
    result = plan_hosts("Example.TEST", MXResult.nodata(), our_names=OURS, rng=rng())
    assert isinstance(result, HostPlan)
    assert result.implicit
    assert result.hops == (Hop("example.test", 0),)


def test_nxdomain_is_permanent_5_1_2() -> None:
    result = failure(plan_hosts("nx.test", MXResult.nxdomain(), our_names=OURS, rng=rng()))
    assert result.permanent
    assert (result.reply.code, result.reply.enhanced) == (550, "5.1.2")
    assert "nx.test" in result.reply.text


def test_null_mx_is_permanent_5_1_10() -> None:
    mx = MXResult.found([MX(0, ".")])
    result = failure(plan_hosts("nomail.test", mx, our_names=OURS, rng=rng()))
    assert (result.reply.code, result.reply.enhanced) == (556, "5.1.10")  # RFC 7505 §5


def test_root_exchange_beside_real_mx_is_skipped() -> None:
    mx = MXResult.found([MX(0, "."), MX(10, "mx.test")])
    assert hosts_of(plan_hosts("d.test", mx, our_names=OURS, rng=rng())) == ["mx.test"]


def test_temporary_failure_defers_and_never_falls_back_to_implicit_mx() -> None:
    result = failure(plan_hosts("d.test", MXResult.tempfail("SERVFAIL"), our_names=OURS, rng=rng()))
    assert not result.permanent
    assert (result.reply.code, result.reply.enhanced) == (451, "4.4.3")
    assert result.detail == "SERVFAIL"


def test_our_name_drops_it_and_everything_behind_it() -> None:
    # RFC 5321 §5.1: we are a backup MX at 20: deliver only to MX closer than us.
    mx = MXResult.found(
        [MX(10, "primary.test"), MX(20, "MAIL.homing.test."), MX(20, "other.test"),
         MX(30, "last.test")]
    )  # fmt: skip
    assert hosts_of(plan_hosts("d.test", mx, our_names=OURS, rng=rng())) == ["primary.test"]


def test_best_mx_is_us_is_a_mail_loop() -> None:
    mx = MXResult.found([MX(10, "mail.homing.test"), MX(20, "backup.test")])
    result = failure(plan_hosts("d.test", mx, our_names=OURS, rng=rng()))
    assert (result.reply.code, result.reply.enhanced) == (550, "5.4.6")


def test_implicit_mx_pointing_at_us_is_a_mail_loop() -> None:
    result = failure(plan_hosts("mail.homing.test", MXResult.nodata(), our_names=OURS, rng=rng()))
    assert result.reply.enhanced == "5.4.6"


# --- step 3: hosts -> attempts ------------------------------------------------------------------

TWO = HostPlan("d.test", (Hop("a.test", 10), Hop("b.test", 20)))


def test_attempts_follow_host_order_with_ipv6_interleaved_first() -> None:
    result = plan(
        plan_attempts(
            TWO,
            {
                "a.test": both(("2001:db8::1", "2001:db8::2"), ("192.0.2.1",)),
                "b.test": v4("192.0.2.9"),
            },
            rng=rng(),
            port=2525,
        )
    )
    hosts = [(a.host, a.address) for a in result.attempts]
    families = ["6" if ":" in address else "4" for _, address in hosts[:3]]
    assert families == ["6", "4", "6"]
    assert hosts[3] == ("b.test", "192.0.2.9")
    assert {a.port for a in result.attempts} == {2525}
    assert [a.preference for a in result.attempts] == [10, 10, 10, 20]


def test_ipv6_can_be_left_out() -> None:
    result = plan(
        plan_attempts(
            TWO,
            {"a.test": both(("2001:db8::1",), ("192.0.2.1",)), "b.test": v4("192.0.2.2")},
            rng=rng(),
            ipv6=False,
        )
    )
    assert [a.address for a in result.attempts] == ["192.0.2.1", "192.0.2.2"]


def test_an_address_shared_by_two_mx_is_tried_once() -> None:
    result = plan(
        plan_attempts(
            TWO, {"a.test": v4("192.0.2.1"), "b.test": v4("192.0.2.1", "192.0.2.2")}, rng=rng()
        )
    )
    assert [(a.host, a.address) for a in result.attempts] == [
        ("a.test", "192.0.2.1"),
        ("b.test", "192.0.2.2"),
    ]


def test_at_most_max_addresses() -> None:
    many = v4(*(f"192.0.2.{i}" for i in range(1, 30)))
    result = plan(plan_attempts(TWO, {"a.test": many, "b.test": many}, rng=rng(), max_addresses=4))
    assert len(result.attempts) == 4


def test_unresolvable_host_is_skipped_and_remembered() -> None:
    result = plan(
        plan_attempts(
            TWO, {"a.test": AddressResult.tempfail("timeout"), "b.test": v4("192.0.2.2")}, rng=rng()
        )
    )
    assert [a.host for a in result.attempts] == ["b.test"]
    assert result.unresolved == ("a.test",)


def test_host_without_address_is_skipped() -> None:
    result = plan(
        plan_attempts(
            TWO, {"a.test": AddressResult.nxdomain(), "b.test": v4("192.0.2.2")}, rng=rng()
        )
    )
    assert [a.host for a in result.attempts] == ["b.test"]
    assert result.unresolved == ()


def test_no_address_with_a_temporary_failure_defers() -> None:
    result = failure(
        plan_attempts(
            TWO,
            {"a.test": AddressResult.tempfail("x"), "b.test": AddressResult.nodata()},
            rng=rng(),
        )
    )
    assert (result.reply.code, result.reply.enhanced) == (451, "4.4.3")
    assert "a.test" in result.reply.text


def test_no_address_anywhere_is_permanent_5_4_4() -> None:
    result = failure(
        plan_attempts(
            TWO, {"a.test": AddressResult.nxdomain(), "b.test": AddressResult.nodata()}, rng=rng()
        )
    )
    assert (result.reply.code, result.reply.enhanced) == (550, "5.4.4")


def test_implicit_mx_without_address_is_permanent() -> None:
    implicit = HostPlan("d.test", (Hop("d.test", 0),), implicit=True)
    result = failure(plan_attempts(implicit, {"d.test": AddressResult.nodata()}, rng=rng()))
    assert result.permanent
    assert "no MX" in result.reply.text


def test_plan_route_in_one_call() -> None:
    mx = MXResult.found([MX(10, "a.test")])
    result = plan(
        plan_route("d.test", mx, {"a.test": v4("192.0.2.1")}, our_names=OURS, rng=rng(), max_mx=5)
    )
    assert result.attempts == (Attempt("a.test", "192.0.2.1", 25, 10),)
    assert not result.implicit


def test_plan_route_passes_failures_through() -> None:
    result = plan_route("d.test", MXResult.nxdomain(), {}, our_names=OURS, rng=rng())
    assert failure(result).reply.enhanced == "5.1.2"


# --- smarthost and literals ---------------------------------------------------------------------


def test_smarthost_by_name() -> None:
    result = plan(plan_smarthost("Relay.Test", 587, both(("2001:db8::5",), ("192.0.2.5",))))
    assert result.smarthost
    assert [(a.host, a.address, a.port) for a in result.attempts] == [
        ("relay.test", "2001:db8::5", 587),
        ("relay.test", "192.0.2.5", 587),
    ]


@pytest.mark.parametrize("host", ["192.0.2.7", "[192.0.2.7]"])
def test_smarthost_by_address_needs_no_dns(host: str) -> None:
    result = plan(plan_smarthost(host, 25, None))
    assert [a.address for a in result.attempts] == ["192.0.2.7"]


@pytest.mark.parametrize(
    "answer",
    [AddressResult.nxdomain(), AddressResult.tempfail("x"), AddressResult.nodata(), None],
)
def test_smarthost_failures_defer(answer: AddressResult | None) -> None:
    # Our configuration is at fault, not the message: never bounce for it.
    result = failure(plan_smarthost("relay.test", 25, answer))
    assert not result.permanent


def test_smarthost_with_only_ipv6_and_ipv6_off_defers() -> None:
    answer = AddressResult.found(ipv6=("2001:db8::5",))
    assert not failure(plan_smarthost("relay.test", 25, answer, ipv6=False)).permanent


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:DB8::1]", "2001:db8::1"),
        ("example.test", None),
        ("[example.test]", None),
        ("[IPv6:192.0.2.1.5]", None),
    ],
)
def test_ip_literal(text: str, address: str | None) -> None:
    assert ip_literal(text) == address


def test_plan_literal() -> None:
    assert plan(plan_literal("[192.0.2.1]")).attempts == (Attempt("[192.0.2.1]", "192.0.2.1"),)
    assert plan_literal("example.test") is None
    assert plan_literal("[bogus]") is None


# --- the driver over FakeResolver ---------------------------------------------------------------

ZONES = {
    "example.test": {
        "MX": [(10, "mx1.example.test"), (20, "mx2.example.test")],
        "A": ["192.0.2.1"],
    },
    "mx1.example.test": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
    "mx2.example.test": {"A": ["192.0.2.3"]},
    "nomx.test": {"A": ["192.0.2.4"]},
    "nomail.test": {"MX": [(0, ".")], "A": ["192.0.2.5"]},
    "broken.test": {"A": ["192.0.2.6"]},
}


async def test_find_route_over_mx() -> None:
    result = plan(await find_route(FakeResolver(ZONES), "example.test", our_names=OURS, rng=rng()))
    assert [(a.host, a.address) for a in result.attempts] == [
        ("mx1.example.test", "2001:db8::2"),
        ("mx1.example.test", "192.0.2.2"),
        ("mx2.example.test", "192.0.2.3"),
    ]


async def test_find_route_implicit_mx() -> None:
    result = plan(await find_route(FakeResolver(ZONES), "nomx.test", our_names=OURS, rng=rng()))
    assert result.implicit
    assert [a.address for a in result.attempts] == ["192.0.2.4"]


async def test_servfail_on_mx_defers_and_never_asks_for_the_a_record() -> None:
    fake = FakeResolver(ZONES, servfail={("broken.test", "MX")})
    result = failure(await find_route(fake, "broken.test", our_names=OURS, rng=rng()))
    assert not result.permanent
    assert fake.queries == [("broken.test", "MX")]


async def test_timeout_on_mx_defers() -> None:
    fake = FakeResolver(ZONES, timeout={"example.test"})
    result = failure(await find_route(fake, "example.test", our_names=OURS, rng=rng()))
    assert result.reply.enhanced == "4.4.3"


async def test_null_mx_is_not_delivered_to_its_a_record() -> None:
    fake = FakeResolver(ZONES)
    result = failure(await find_route(fake, "nomail.test", our_names=OURS, rng=rng()))
    assert result.reply.enhanced == "5.1.10"
    assert ("nomail.test", "A") not in fake.queries


async def test_find_route_literal_needs_no_dns() -> None:
    fake = FakeResolver()
    result = plan(await find_route(fake, "[192.0.2.9]", our_names=OURS, rng=rng()))
    assert result.attempts[0].address == "192.0.2.9"
    assert fake.queries == []


async def test_find_smarthost() -> None:
    fake = FakeResolver({"relay.test": {"A": ["192.0.2.8"]}})
    result = plan(await find_smarthost(fake, "relay.test", 587))
    assert result.attempts == (Attempt("relay.test", "192.0.2.8", 587),)
    assert plan(await find_smarthost(fake, "[192.0.2.1]", 25)).attempts[0].address == "192.0.2.1"
    assert fake.queries == [("relay.test", "AAAA"), ("relay.test", "A")]


# --- properties ---------------------------------------------------------------------------------

names = st.sampled_from([f"mx{i}.test" for i in range(8)] + ["mail.homing.test", "."])
mx_records = st.lists(st.builds(MX, st.integers(0, 40), names), max_size=12)
address_results = st.one_of(
    st.builds(
        AddressResult.found,
        st.lists(st.sampled_from(["2001:db8::1", "2001:db8::2", "::1"]), unique=True).map(tuple),
        st.lists(st.sampled_from(["192.0.2.1", "192.0.2.2", "127.0.0.1"]), unique=True).map(tuple),
    ),
    st.sampled_from(
        [AddressResult.nxdomain(), AddressResult.nodata(), AddressResult.tempfail("t")]
    ),
)
mx_answers = st.one_of(
    mx_records.map(MXResult.found),
    st.sampled_from([MXResult.nxdomain(), MXResult.nodata(), MXResult.tempfail("t")]),
)


@given(
    mx=mx_answers,
    answers=st.dictionaries(names, address_results),
    default=address_results,
    seed=st.integers(0, 2**32),
    max_mx=st.integers(1, 6),
    ipv6=st.booleans(),
)
def test_route_invariants(
    *,
    mx: MXResult,
    answers: dict[str, AddressResult],
    default: AddressResult,
    seed: int,
    max_mx: int,
    ipv6: bool,
) -> None:
    """Whatever DNS says, the planner answers with a plan or a failure (never raises) and:
    attempts go by non-decreasing preference, never to us or anything behind us, at most
    `max_mx` hosts, each address from its own host's answer and tried once; a temporary DNS
    failure is never a permanent routing failure's only cause."""
    addresses = {host: answers.get(host, default) for host in [*names_of(mx), "d.test"]}
    result = plan_route(
        "d.test", mx, addresses, our_names=OURS, rng=rng(seed), max_mx=max_mx, ipv6=ipv6
    )
    if isinstance(result, RouteFailure):
        if mx.status is Lookup.TEMPFAIL:
            assert not result.permanent
        return
    preferences = [a.preference for a in result.attempts]
    assert preferences == sorted(preferences)
    own = [r.preference for r in mx.records if r.exchange in OURS]
    assert all(p < min(own) for p in preferences) if own else True
    assert len({a.host for a in result.attempts}) <= max_mx
    assert len({a.address for a in result.attempts}) == len(result.attempts)
    for attempt in result.attempts:
        assert attempt.address in addresses[attempt.host].addresses
        assert ipv6 or ":" not in attempt.address
        assert attempt.host != "."
    if mx.status is Lookup.NODATA:
        assert result.implicit
        assert {a.host for a in result.attempts} == {"d.test"}


def names_of(mx: MXResult) -> list[str]:
    return [r.exchange for r in mx.records]
