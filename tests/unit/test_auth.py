"""homing.auth: the brute-force limiter (pure, fake clock) and the Authenticator on a real store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st

import homing.auth as auth_module
from homing.auth import (
    APP_PASSWORD_HASHER,
    Authenticator,
    FailureLimiter,
    client_key,
    make_app_password_credentials,
)
from homing.clock import FakeClock
from homing.proto import sasl
from homing.store import Credentials, Store, StoreError, make_credentials
from homing.store.sqlitestore import MAX_APP_PASSWORDS

# "Account password" cost for these tests: cheap, but distinguishable from app passwords.
ACCOUNT_HASHER = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
IP = "192.0.2.7"

# --- FailureLimiter ---------------------------------------------------------------------------


def test_first_three_failures_are_free_then_each_adds_a_delay() -> None:
    limiter = FailureLimiter(per_ip_limit=100, delay=1.0, max_delay=5.0)
    delays = [limiter.failure(IP, "a@x", now=float(i)) for i in range(10)]
    assert delays == [0, 0, 0, 1, 2, 3, 4, 5, 5, 5]


def test_counts_slide_with_the_window() -> None:
    limiter = FailureLimiter(per_ip_limit=100, window=60.0, delay=1.0)
    for t in (0.0, 10.0, 20.0, 30.0):
        limiter.failure(IP, "a@x", t)
    assert limiter.failures(IP, "a@x", 30.0) == (4, 4)
    assert limiter.failures(IP, "a@x", 75.0) == (2, 2)  # t=0 and t=10 have left the window
    assert limiter.failure(IP, "a@x", 75.0) == 0.0  # third in the window: still free
    assert limiter.failure(IP, "a@x", 76.0) == 1.0


def test_lockout_past_the_per_ip_limit_and_only_for_that_ip() -> None:
    limiter = FailureLimiter(per_ip_limit=10, lockout=300.0, delay=0.0)
    for i in range(9):
        limiter.failure(IP, f"user{i}@x", now=float(i))
        assert limiter.locked_out(IP, float(i)) == 0.0
    limiter.failure(IP, "user9@x", now=9.0)
    assert limiter.locked_out(IP, 9.0) == 300.0
    assert limiter.locked_out(IP, 308.0) == 1.0
    assert limiter.locked_out("192.0.2.8", 10.0) == 0.0  # other IPs are not locked out
    assert limiter.locked_out(IP, 309.0) == 0.0  # and it ends
    assert limiter.failures(IP, "x", 309.0)[0] == 0  # with a clean slate


def test_account_failures_slow_down_a_distributed_attack_but_never_lock() -> None:
    limiter = FailureLimiter(per_ip_limit=3, delay=1.0, max_delay=10.0, lockout=60.0)
    delays = [limiter.failure(f"198.51.100.{i}", "victim@x", now=float(i)) for i in range(8)]
    assert delays == [0, 0, 0, 1, 2, 3, 4, 5]
    assert all(limiter.locked_out(f"198.51.100.{i}", 8.0) == 0 for i in range(8))


def test_success_clears_the_account_count_not_the_ip_count() -> None:
    limiter = FailureLimiter(per_ip_limit=100, delay=1.0)
    for i in range(5):
        limiter.failure(IP, "a@x", float(i))
    limiter.success(IP, "a@x", 5.0)
    assert limiter.failures(IP, "a@x", 5.0) == (5, 0)
    assert limiter.failure(IP, "a@x", 6.0) == 3.0  # the IP's six failures still count


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert (
        client_key("2001:db8:1:2:3:4:5:6")
        == client_key("2001:db8:1:2::ffff")
        == ("2001:db8:1:2::/64")
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("not an ip") == "not an ip"
    limiter = FailureLimiter(per_ip_limit=2, lockout=60.0)
    limiter.failure("2001:db8::1", "a", 0.0)
    limiter.failure("2001:db8::2", "b", 0.0)
    assert limiter.locked_out("2001:db8::ffff", 1.0) > 0


def test_memory_is_bounded() -> None:
    limiter = FailureLimiter(per_ip_limit=1, lockout=60.0, max_tracked=100)
    for i in range(1000):
        limiter.failure(f"10.0.{i // 256}.{i % 256}", f"u{i}", float(i) / 1000)
    assert len(limiter._by_ip) <= 100
    assert len(limiter._by_account) <= 100
    assert len(limiter._locked) <= 100
    assert limiter.locked_out("10.0.3.231", 1.0) > 0  # the most recent are kept


_EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]),
        st.sampled_from(["a@x", "b@x", "c@x"]),
        st.floats(min_value=0.0, max_value=30.0),  # seconds since the previous event
        st.booleans(),  # a failure (True) or a success
    ),
    max_size=60,
)


@given(_EVENTS)
def test_limiter_invariants(events: list[tuple[str, str, float, bool]]) -> None:
    """Whatever the sequence of logins: a delay is never negative nor above max_delay, and
    is zero while neither the IP nor the account has more than three failures in the window;
    an IP is only ever locked after `per_ip_limit` of its own failures within one window
    (so another IP's failures never lock it)."""
    limiter = FailureLimiter(per_ip_limit=5, window=60.0, delay=1.0, max_delay=4.0, lockout=90.0)
    now = 0.0
    history: list[tuple[float, str, str]] = []  # (time, ip key, account) of every failure
    locked_at: dict[str, float] = {}
    for ip, account, gap, failed in events:
        now += gap
        key = client_key(ip)
        if not failed:
            limiter.success(ip, account, now)
            continue
        was_locked = limiter.locked_out(ip, now) > 0
        delay = limiter.failure(ip, account, now)
        history.append((now, key, account))
        recent = [h for h in history if h[0] > now - 60.0]
        since_lock = [h for h in recent if h[0] >= locked_at.get(key, -1.0)]
        by_ip = sum(1 for _, k, _ in since_lock if k == key)
        by_account = sum(1 for _, _, a in recent if a == account)
        assert 0.0 <= delay <= 4.0
        if by_ip <= 3 and by_account <= 3:
            assert delay == 0.0
        if limiter.locked_out(ip, now) > 0 and not was_locked:
            assert by_ip >= 5
            locked_at[key] = now


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        FailureLimiter(per_ip_limit=0)
    with pytest.raises(ValueError):
        FailureLimiter(delay=-1)


# --- Authenticator ----------------------------------------------------------------------------

ALICE = "alice@example.com"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "homing.db", create=True)
    s.add_domain("example.com")
    s.add_account(
        ALICE, make_credentials("account pw", hasher=ACCOUNT_HASHER, scram_iterations=4096)
    )
    yield s
    s.close()


@pytest.fixture
def authenticator(store: Store, clock: FakeClock) -> Iterator[Authenticator]:
    a = Authenticator(
        store,
        FailureLimiter(per_ip_limit=5, delay=0.5, lockout=60.0),
        clock=clock,
        dummy_hash=ACCOUNT_HASHER.hash("unguessable dummy"),
    )
    yield a
    a.close()


def check(a: Authenticator, user: str, password: str, ip: str = IP) -> auth_module.AuthResult:
    return asyncio.run(a.check_password(user, password, ip=ip, service="test"))


def test_account_password_and_app_passwords(authenticator: Authenticator, store: Store) -> None:
    store.add_app_password(ALICE, "phone", make_app_password_credentials("phone pw"))
    ok = check(authenticator, "Alice@Example.COM", "account pw")
    assert ok.ok and ok.account is not None and ok.account.address == ALICE
    assert ok.credential is None
    app = check(authenticator, ALICE, "phone pw")
    assert app.ok and app.credential == "phone"
    assert not check(authenticator, ALICE, "wrong").ok
    store.remove_app_password(ALICE, "phone")
    assert not check(authenticator, ALICE, "phone pw").ok


def test_app_password_use_is_recorded(authenticator: Authenticator, store: Store) -> None:
    store.add_app_password(ALICE, "phone", make_app_password_credentials("phone pw"))
    assert check(authenticator, ALICE, "phone pw").ok
    for _ in range(100):
        if store.list_app_passwords(ALICE)[0].last_used is not None:
            break
        threading.Event().wait(0.01)
    assert store.list_app_passwords(ALICE)[0].last_used is not None


def test_disabled_account_is_refused(authenticator: Authenticator, store: Store) -> None:
    store.set_disabled(ALICE, True)
    assert not check(authenticator, ALICE, "account pw").ok
    assert authenticator.scram_keys(ALICE) is None


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every argon2 verification the Authenticator does, as "app" or "account" cost."""
    seen: list[str] = []
    real = auth_module.verify_password

    def counting(cred: Credentials, password: str) -> bool:
        seen.append("app" if cred.password_hash.startswith("$argon2id$v=19$m=1024,") else "account")
        return real(cred, password)

    monkeypatch.setattr(auth_module, "verify_password", counting)
    return seen


def work_for(a: Authenticator, verifications: list[str], user: str, password: str) -> list[str]:
    verifications.clear()
    assert not check(a, user, password).ok
    return sorted(verifications)


def test_failures_do_the_same_work_for_every_user(
    authenticator: Authenticator, store: Store, verifications: list[str]
) -> None:
    """Timing equalisation, by shape: an unknown user, a wrong password, and a wrong password
    for an account with app passwords all cost one account-password verification plus
    MAX_APP_PASSWORDS app-password ones."""
    store.add_account("bob@example.com", make_credentials("bob pw", hasher=ACCOUNT_HASHER))
    for i in range(3):
        store.add_app_password(ALICE, f"app{i}", make_app_password_credentials(f"app pw {i}"))
    expected = sorted(["account"] + ["app"] * MAX_APP_PASSWORDS)
    assert work_for(authenticator, verifications, "nobody@example.com", "guess") == expected
    assert work_for(authenticator, verifications, "not-an-address", "guess") == expected
    assert work_for(authenticator, verifications, "bob@example.com", "guess") == expected
    assert work_for(authenticator, verifications, ALICE, "guess") == expected
    # And the answer is the same object shape: no field tells the cases apart.
    a = check(authenticator, "nobody@example.com", "guess", ip="192.0.2.50")
    b = check(authenticator, ALICE, "guess", ip="192.0.2.51")
    assert (a.ok, a.credential, a.locked_out, a.temporary) == (
        b.ok,
        b.credential,
        b.locked_out,
        b.temporary,
    )


def test_app_passwords_are_checked_first_and_cheaply(
    authenticator: Authenticator, store: Store, verifications: list[str]
) -> None:
    store.add_app_password(ALICE, "phone", make_app_password_credentials("phone pw"))
    verifications.clear()
    assert check(authenticator, ALICE, "phone pw").ok
    assert verifications == ["app"]


def test_light_hash_is_what_app_passwords_use() -> None:
    cred = make_app_password_credentials("x")
    assert APP_PASSWORD_HASHER.check_needs_rehash(cred.password_hash) is False
    assert cred.password_hash.startswith("$argon2id$v=19$m=1024,t=1,p=1$")


def test_failures_are_counted_and_lock_the_ip_out(
    authenticator: Authenticator, clock: FakeClock
) -> None:
    delays = [check(authenticator, ALICE, f"guess {i}").delay for i in range(4)]
    assert delays == [0.0, 0.0, 0.0, 0.5]
    assert check(authenticator, "nobody@example.com", "guess").delay == 1.0
    # The fifth failure from this IP locked it out: even the right password is refused
    # unchecked, while other IPs go on.
    locked = check(authenticator, ALICE, "account pw")
    assert not locked.ok and locked.locked_out
    assert check(authenticator, ALICE, "account pw", ip="192.0.2.99").ok
    clock.advance(61)
    assert check(authenticator, ALICE, "account pw").ok


def test_store_trouble_is_temporary(authenticator: Authenticator, store: Store) -> None:
    def broken(address: str) -> None:
        raise StoreError("disk on fire")

    store.get_account = broken  # type: ignore[method-assign,assignment]
    result = check(authenticator, ALICE, "account pw")
    assert not result.ok and result.temporary
    assert authenticator.limiter.failures(IP, ALICE, 0.0) == (0, 0)  # not counted as guessing


def test_scram_keys_are_the_account_passwords(authenticator: Authenticator, store: Store) -> None:
    store.add_app_password(ALICE, "phone", make_app_password_credentials("phone pw"))
    keys = authenticator.scram_keys("ALICE@example.com")
    cred = store.get_credentials(ALICE)
    assert keys is not None and cred is not None
    assert keys == sasl.scram_derive("account pw", cred.scram_salt, cred.scram_iterations)
    assert authenticator.scram_keys("nobody@example.com") is None
    assert authenticator.scram_keys("not an address") is None
    assert len(authenticator.scram_secret()) == 32
    assert authenticator.scram_secret() == store.get_secret("scram")


def test_scram_outcomes_are_counted(authenticator: Authenticator) -> None:
    delays = [authenticator.scram_failed(ALICE, ip=IP, service="test") for _ in range(4)]
    assert delays == [0.0, 0.0, 0.0, 0.5]
    result = authenticator.scram_succeeded(ALICE, ip=IP, service="test")
    assert result.ok and result.credential is None
    assert authenticator.limiter.failures(IP, ALICE, 1000.0) == (4, 0)
    assert not authenticator.scram_succeeded("gone@example.com", ip=IP, service="test").ok


def test_scram_watch_records_a_failure_once_and_not_for_a_locked_out_ip(
    authenticator: Authenticator,
) -> None:
    keys, watch = authenticator.begin_scram(ALICE, ip=IP, count=2)
    assert keys == authenticator.scram_keys(ALICE) and not watch.locked_out
    # The session's failure count has not moved: the exchange is still going (or succeeded).
    assert authenticator.scram_outcome(watch, 2, ip=IP, service="test") is None
    assert authenticator.limiter.failures(IP, ALICE, 0.0) == (0, 0)
    assert authenticator.scram_outcome(watch, 3, ip=IP, service="test") == 0.0
    assert authenticator.limiter.failures(IP, ALICE, 0.0) == (1, 1)
    # Unknown users get no keys (the exchange fails on fake ones) and are counted the same.
    keys, watch = authenticator.begin_scram("nobody@example.com", ip=IP, count=0)
    assert keys is None
    assert authenticator.scram_outcome(watch, 1, ip=IP, service="test") == 0.0
    # A locked-out IP gets no keys and its failed exchange is not counted again.
    for _ in range(5):
        authenticator.scram_failed(ALICE, ip=IP, service="test")
    assert authenticator.locked_out(IP)
    before = authenticator.limiter.failures(IP, ALICE, 0.0)
    keys, watch = authenticator.begin_scram(ALICE, ip=IP, count=0)
    assert keys is None and watch.locked_out
    assert authenticator.scram_outcome(watch, 1, ip=IP, service="test") == 0.0
    assert authenticator.limiter.failures(IP, ALICE, 0.0) == before


def test_verification_runs_off_the_event_loop(authenticator: Authenticator) -> None:
    threads: list[str] = []
    real = authenticator._verify

    def spy(user: str, password: str) -> object:
        threads.append(threading.current_thread().name)
        return real(user, password)

    authenticator._verify = spy  # type: ignore[method-assign,assignment]
    assert check(authenticator, ALICE, "account pw").ok
    assert threads and threads[0].startswith("homing-auth")
