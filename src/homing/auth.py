"""Logins for every protocol (SMTP AUTH, IMAP, POP3): password checks against the store and
the brute-force limits, shared by all sessions of a process.

`Authenticator` checks a user name and password without blocking the event loop: the store
lookups and the argon2 verifications run in a small thread pool (argon2-cffi releases the GIL).
A password is good if it matches the account password or any of the account's app passwords
(`homing account app-password`).

Timing. An unknown user and a wrong password get the same answer, and the same work: every
failed check is exactly one verification at account-password cost (the account's own hash, or
a dummy hash with the default argon2 parameters for an unknown user) plus `MAX_APP_PASSWORDS`
verifications at app-password cost (the account's app passwords, then dummy ones). App
passwords are generated (about 116 bits of entropy), so they are hashed with a light argon2id
(`APP_PASSWORD_HASHER`): a slow hash adds nothing against guessing 116 bits, and it keeps
checking all sixteen cheap (about 0.5 ms each, against about 170 ms for the account password
here). They are checked first, so a client using an app password logs in fast.

SCRAM-SHA-256 works with the account password only. The server must send one salt in its
first message, before the client's proof shows which password it holds, so only one verifier
can take part; sharing one salt across an account's passwords would break whenever the account
password changes. App passwords therefore work with PLAIN, LOGIN and POP3 USER/PASS, which are
offered only over TLS. (Legacy clients, the reason app passwords exist, use those.)

`FailureLimiter` is the brute-force policy as pure logic with time passed in: failures are
counted per client IP (IPv6 per /64, the block one subscriber gets) and per account over a
sliding window; each failure after the first few makes the answer wait a little longer; past
the per-IP limit, that IP is locked out for a while (every attempt refused without a check).
Accounts are never locked: that would let anyone lock a user out. Other IPs are unaffected.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeVar

from argon2 import PasswordHasher

from homing.clock import Clock, SystemClock
from homing.proto.sasl import ScramKeys
from homing.store import (
    Account,
    Credentials,
    InvalidName,
    Store,
    StoreError,
    address_key,
    make_credentials,
    verify_password,
)
from homing.store.sqlitestore import MAX_APP_PASSWORDS

log = logging.getLogger("homing.auth")

_V = TypeVar("_V")

#: argon2id for app passwords: generated secrets need no slow hash (see the module docstring).
APP_PASSWORD_HASHER: Final = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
#: The hasher account passwords are made with (`store.make_credentials`' default).
ACCOUNT_PASSWORD_HASHER: Final = PasswordHasher()


def make_app_password_credentials(password: str) -> Credentials:
    """Stored credentials for a generated app password (light argon2id, SCRAM keys too)."""
    return make_credentials(password, hasher=APP_PASSWORD_HASHER)


# --------------------------------------------------------------------------------- limiter


def client_key(ip: str) -> str:
    """The unit failures are counted in: an IPv4 address, or the /64 of an IPv6 address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Counts login failures per client IP and per account; says how long to delay a failed
    answer and whether an IP is locked out. Time (`now`, monotonic seconds) is an argument.

    A failure answer waits ``delay * (n - free_failures)`` seconds (at most `max_delay`), with
    `n` the larger of the IP's and the account's failures in the last `window` seconds. The
    IP's `per_ip_limit`-th failure in a window locks it out for `lockout` seconds. A success
    clears the account's count, not the IP's (one good account must not launder an IP that
    is guessing others). At most `max_tracked` IPs and accounts are remembered each (the least
    recently seen are forgotten first), so a spray of addresses cannot exhaust memory.
    """

    def __init__(
        self,
        *,
        per_ip_limit: int = 10,
        window: float = 60.0,
        free_failures: int = 3,
        delay: float = 1.0,
        max_delay: float = 10.0,
        lockout: float = 300.0,
        max_tracked: int = 65536,
    ) -> None:
        if per_ip_limit < 1 or window <= 0 or free_failures < 0 or max_tracked < 1:
            raise ValueError("per_ip_limit, window and max_tracked must be positive")
        if delay < 0 or max_delay < 0 or lockout < 0:
            raise ValueError("delays and lockout must not be negative")
        self.per_ip_limit = per_ip_limit
        self.window = window
        self.free_failures = free_failures
        self.delay = delay
        self.max_delay = max_delay
        self.lockout = lockout
        self.max_tracked = max_tracked
        # More failures than this in one window change nothing (the delay is capped).
        self._keep = max(per_ip_limit, free_failures + 1 + int(max_delay / delay if delay else 0))
        self._by_ip: dict[str, deque[float]] = {}
        self._by_account: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}

    def locked_out(self, ip: str, now: float) -> float:
        """Seconds left in the IP's lockout; 0.0 when it may try."""
        key = client_key(ip)
        until = self._locked.get(key)
        if until is None:
            return 0.0
        if now >= until:
            del self._locked[key]
            return 0.0
        return until - now

    def failure(self, ip: str, account: str, now: float) -> float:
        """Record a failed login; the seconds to wait before answering it."""
        key = client_key(ip)
        by_ip = self._record(self._by_ip, key, now)
        by_account = self._record(self._by_account, account, now)
        if by_ip >= self.per_ip_limit and self.lockout > 0:
            self._locked.pop(key, None)
            self._locked[key] = now + self.lockout
            self._by_ip.pop(key, None)
            _forget_oldest(self._locked, self.max_tracked)
        excess = max(by_ip, by_account) - self.free_failures
        return min(self.max_delay, self.delay * excess) if excess > 0 else 0.0

    def success(self, ip: str, account: str, now: float) -> None:
        """Record a successful login: the account's failures are forgotten."""
        self._by_account.pop(account, None)

    def failures(self, ip: str, account: str, now: float) -> tuple[int, int]:
        """(the IP's, the account's) failures in the current window (for logs and tests)."""
        return (
            self._count(self._by_ip, client_key(ip), now),
            self._count(self._by_account, account, now),
        )

    def _count(self, table: dict[str, deque[float]], key: str, now: float) -> int:
        times = table.get(key)
        if times is None:
            return 0
        return sum(1 for t in times if t > now - self.window)

    def _record(self, table: dict[str, deque[float]], key: str, now: float) -> int:
        # Re-inserted at the end on every failure, so dict order is least recently seen first.
        times = table.pop(key, None) or deque(maxlen=self._keep)
        cutoff = now - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        times.append(now)
        table[key] = times
        _forget_oldest(table, self.max_tracked)
        return len(times)


def _forget_oldest(table: dict[str, _V], limit: int) -> None:
    excess = len(table) - limit
    if excess > 0:
        for key in list(itertools.islice(table, excess)):
            del table[key]


# --------------------------------------------------------------------------- authenticator


@dataclass(frozen=True, slots=True)
class ScramWatch:
    """A SCRAM exchange in progress in a POP3 or IMAP session. Their cores report a failed
    proof only by counting it (IMAP login failures, POP3 errors), so the session notes the
    count when the exchange begins and asks `Authenticator.scram_outcome` after each step."""

    user: str
    count: int
    locked_out: bool


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of one login attempt."""

    account: Account | None
    """The account logged in to; None when refused."""
    credential: str | None = None
    """The app password used (its name), None for the account password."""
    delay: float = 0.0
    """Seconds the session should wait before sending a refusal (brute-force slowdown)."""
    locked_out: bool = False
    """Refused unchecked: this client IP is locked out for too many failures."""
    temporary: bool = False
    """Refused because of our own trouble (the store failed), not the credentials."""

    @property
    def ok(self) -> bool:
        return self.account is not None


class Authenticator:
    """Checks logins against the store for every session of a process (see module docstring).

    One per process, so the brute-force counts span every protocol and connection. Call
    `close()` when the process stops.
    """

    def __init__(
        self,
        store: Store,
        limiter: FailureLimiter | None = None,
        *,
        clock: Clock | None = None,
        workers: int | None = None,
        dummy_hash: str | None = None,
    ) -> None:
        """`workers` argon2 verifications run at once (default: one per CPU). `dummy_hash`
        replaces the dummy account-password hash made on first need (for tests that use
        cheap hashes: the dummy should cost what a real account password costs)."""
        self.store = store
        self.limiter = limiter or FailureLimiter()
        self.clock = clock or SystemClock()
        self._executor = ThreadPoolExecutor(
            max_workers=workers or os.cpu_count() or 2, thread_name_prefix="homing-auth"
        )
        self._dummy_lock = threading.Lock()
        self._dummy_full: Credentials | None = (
            None if dummy_hash is None else _dummy_credentials(dummy_hash)
        )
        self._dummy_light: Credentials | None = None
        self._scram_secret: bytes | None = None

    def close(self) -> None:
        """Stop the worker threads (checks still queued are cancelled)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- passwords (PLAIN, LOGIN, POP3 USER/PASS) ----------------------------------------------

    def locked_out(self, ip: str) -> bool:
        return self.limiter.locked_out(ip, self.clock.monotonic()) > 0

    async def check_password(
        self, user: str, password: str, *, ip: str, service: str
    ) -> AuthResult:
        """Check `password` for `user` (an address), on behalf of client `ip`."""
        if self.locked_out(ip):
            log.info("auth refused service=%s ip=%s user=%s: IP locked out", service, ip, _u(user))
            return AuthResult(None, locked_out=True)
        loop = asyncio.get_running_loop()
        try:
            account, credential = await loop.run_in_executor(
                self._executor, self._verify, user, password
            )
        except StoreError as err:
            log.error("auth failed service=%s ip=%s: store error: %s", service, ip, err)
            return AuthResult(None, temporary=True)
        if account is None:
            delay = self._failed(user, ip=ip, service=service)
            return AuthResult(None, delay=delay)
        self._succeeded(account, credential, ip=ip, service=service)
        return AuthResult(account, credential=credential)

    def _verify(self, user: str, password: str) -> tuple[Account | None, str | None]:
        """In a worker thread: the account and credential `password` opens, or (None, None).

        Failed checks do the same work whoever the user is (module docstring)."""
        account = self.store.get_account(user)
        found = self.store.get_all_credentials(user) if account is not None else []
        main = found[0][1] if found else self._dummy("full")
        apps = found[1:]
        for name, cred in apps:
            if verify_password(cred, password):
                return self._usable(account, name)
        if verify_password(main, password) and found:
            return self._usable(account, None)
        light = self._dummy("light")
        for _ in range(MAX_APP_PASSWORDS - len(apps)):
            verify_password(light, password)
        return None, None

    @staticmethod
    def _usable(account: Account | None, name: str | None) -> tuple[Account | None, str | None]:
        if account is None or account.disabled:
            return None, None
        return account, name

    def _dummy(self, kind: str) -> Credentials:
        """Credentials no password opens, with the cost of a real account or app password."""
        with self._dummy_lock:
            if kind == "full":
                if self._dummy_full is None:
                    self._dummy_full = _dummy_credentials(ACCOUNT_PASSWORD_HASHER.hash(_random()))
                return self._dummy_full
            if self._dummy_light is None:
                self._dummy_light = _dummy_credentials(APP_PASSWORD_HASHER.hash(_random()))
            return self._dummy_light

    # -- SCRAM-SHA-256 -----------------------------------------------------------------------

    def scram_keys(self, user: str) -> ScramKeys | None:
        """The account password's SCRAM-SHA-256 verifier, or None (unknown or disabled user:
        the mechanism then goes on with fake keys and fails). A quick store read."""
        account = self.store.get_account(user)
        cred = self.store.get_credentials(user) if account is not None else None
        if account is None or account.disabled or cred is None:
            return None
        return ScramKeys(
            salt=cred.scram_salt,
            iterations=cred.scram_iterations,
            stored_key=cred.scram_stored_key,
            server_key=cred.scram_server_key,
        )

    def scram_secret(self) -> bytes:
        """The installation's key for fake SCRAM verifiers (stable across restarts)."""
        if self._scram_secret is None:
            self._scram_secret = self.store.get_secret("scram")
        return self._scram_secret

    def scram_succeeded(self, user: str, *, ip: str, service: str) -> AuthResult:
        """SCRAM proved `user`: the account to log in to (records the success)."""
        try:
            account = self.store.get_account(user)
        except StoreError as err:
            log.error("auth failed service=%s ip=%s: store error: %s", service, ip, err)
            return AuthResult(None, temporary=True)
        if account is None or account.disabled:
            return AuthResult(None, delay=self._failed(user, ip=ip, service=service))
        self._succeeded(account, None, ip=ip, service=service)
        return AuthResult(account)

    def scram_failed(self, user: str, *, ip: str, service: str) -> float:
        """A SCRAM exchange for `user` failed: record it; the delay before answering."""
        return self._failed(user, ip=ip, service=service)

    def begin_scram(self, user: str, *, ip: str, count: int) -> tuple[ScramKeys | None, ScramWatch]:
        """The verifier for a SCRAM exchange a POP3 or IMAP session starts, and the watch it
        keeps (see `ScramWatch`). None for an unknown user, a locked-out IP or store trouble:
        the exchange then goes on with fake keys and fails like a wrong password."""
        locked = self.locked_out(ip)
        keys = None
        if not locked:
            try:
                keys = self.scram_keys(user)
            except StoreError as err:
                log.error("scram keys ip=%s: store error: %s", ip, err)
        return keys, ScramWatch(user, count, locked)

    def scram_outcome(
        self, watch: ScramWatch, count: int, *, ip: str, service: str
    ) -> float | None:
        """None while the watched exchange has not failed (the session's failure `count` has
        not moved); once it has, the failure is recorded (not for a locked-out IP, already
        refused) and the delay to impose before the next answer is returned."""
        if count <= watch.count:
            return None
        if watch.locked_out:
            return 0.0
        return self.scram_failed(watch.user, ip=ip, service=service)

    # -- bookkeeping -------------------------------------------------------------------------

    def _failed(self, user: str, *, ip: str, service: str) -> float:
        now = self.clock.monotonic()
        delay = self.limiter.failure(ip, _account_key(user), now)
        locked = self.limiter.locked_out(ip, now) > 0
        log.info(
            "auth failed service=%s ip=%s user=%s delay=%.1fs%s",
            service,
            ip,
            _u(user),
            delay,
            " (IP now locked out)" if locked else "",
        )
        return delay

    def _succeeded(
        self, account: Account, credential: str | None, *, ip: str, service: str
    ) -> None:
        self.limiter.success(ip, _account_key(account.address), self.clock.monotonic())
        log.info(
            "auth ok service=%s ip=%s user=%s with=%s",
            service,
            ip,
            account.address,
            "password" if credential is None else f"app-password:{credential}",
        )
        if credential is not None:
            self.store.app_password_used(account.address, credential).add_done_callback(
                _log_failure("recording app password use")
            )


def _account_key(user: str) -> str:
    try:
        return address_key(user)
    except InvalidName:
        return user.casefold()


def _random() -> str:
    return secrets.token_urlsafe(24)


def _dummy_credentials(password_hash: str) -> Credentials:
    return Credentials(password_hash, b"", 0, b"", b"")


def _u(user: str) -> str:
    """A user name as sent, safe for one log line."""
    return repr(user[:100])


def _log_failure(what: str) -> Callable[[Future[None]], None]:
    def done(future: Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.warning("%s failed: %s", what, future.exception())

    return done
