"""[outbound] and [queue]: every key's error names it, the defaults are the documented ones,
a rendered file reads back the same, and `build_runner` turns the config into the runner's
settings (smarthost, TLS policy, AUTH password file, schedule)."""

from __future__ import annotations

import ssl
import tomllib
from pathlib import Path
from typing import Any

import pytest

from homing.clock import FakeClock
from homing.config import ConfigError, parse_config, render_config
from homing.config.model import OutboundConfig, QueueConfig
from homing.dns import FakeResolver
from homing.queue.runner import build_runner
from homing.router import Router
from homing.store import Store

H = {"hostname": "mail.example.org"}

#: (document, dotted key, fragment of the message): one per key at least.
ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({**H, "outbound": {"port": 0}}, "outbound.port", "from 1 to 65535"),
    ({**H, "outbound": {"helo_name": "bad name"}}, "outbound.helo_name", "dot-separated"),
    ({**H, "outbound": {"require_tls": "yes"}}, "outbound.require_tls", "true"),
    ({**H, "outbound": {"ipv6": 1}}, "outbound.ipv6", "true"),
    ({**H, "outbound": {"connect_timeout": "0s"}}, "outbound.connect_timeout", "positive"),
    ({**H, "outbound": {"max_mx": 0}}, "outbound.max_mx", "from 1 to 100"),
    (
        {**H, "outbound": {"max_sessions_per_attempt": 0}},
        "outbound.max_sessions_per_attempt",
        "from 1 to 100",
    ),
    ({**H, "outbound": {"smarthost": "not a host!"}}, "outbound.smarthost", "dot-separated"),
    ({**H, "outbound": {"smarthost_port": 70000}}, "outbound.smarthost_port", "65535"),
    ({**H, "outbound": {"smarthost_tls": "maybe"}}, "outbound.smarthost_tls", "starttls"),
    ({**H, "outbound": {"smarthost_tls_verify": "no"}}, "outbound.smarthost_tls_verify", "true"),
    (
        {**H, "outbound": {"smarthost_username": "a\nb"}},
        "outbound.smarthost_username",
        "printable",
    ),
    (
        {**H, "outbound": {"smarthost_password_file": 3}},
        "outbound.smarthost_password_file",
        "path",
    ),
    ({**H, "queue": {"first_retry": 0}}, "queue.first_retry", "positive"),
    (
        {**H, "queue": {"first_retry": "5m", "max_interval": "1m"}},
        "queue.max_interval",
        "at least queue.first_retry",
    ),
    ({**H, "queue": {"warn_after": "-1s"}}, "queue.warn_after", "such as"),
    ({**H, "queue": {"give_up_after": "0s"}}, "queue.give_up_after", "positive"),
    ({**H, "queue": {"concurrency": 0}}, "queue.concurrency", "from 1"),
    ({**H, "queue": {"destination_concurrency": 101}}, "queue.destination_concurrency", "to 100"),
]


def parse(data: dict[str, Any], base: Path = Path("/srv/homing")) -> Any:
    return parse_config(data, base_dir=base)


@pytest.mark.parametrize(("data", "key", "fragment"), ERRORS)
def test_error_names_the_dotted_key(data: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_every_outbound_and_queue_key_has_an_error_case() -> None:
    tested = {key for _, key, _ in ERRORS}
    keys = {f"outbound.{k}" for k in OutboundConfig.__dataclass_fields__}
    keys |= {f"queue.{k}" for k in QueueConfig.__dataclass_fields__}
    assert keys <= tested


def test_defaults() -> None:
    config = parse(dict(H))
    assert config.outbound == OutboundConfig()
    assert (config.outbound.port, config.outbound.max_mx) == (25, 5)
    assert config.outbound.max_sessions_per_attempt == 2
    q = config.queue
    assert (q.first_retry, q.max_interval, q.warn_after, q.give_up_after) == (
        900.0,
        3600.0,
        4 * 3600.0,
        5 * 86400.0,
    )


def test_values_and_round_trip(tmp_path: Path) -> None:
    doc = {
        **H,
        "outbound": {
            "port": 2525,
            "helo_name": "out.example.org",
            "smarthost": "[2001:db8::1]",
            "smarthost_port": 465,
            "smarthost_tls": "IMPLICIT",
            "smarthost_username": "me",
            "smarthost_password_file": "relay.pw",
        },
        "queue": {"first_retry": "30s", "max_interval": "2m", "warn_after": 0},
    }
    config = parse_config(doc, base_dir=tmp_path, config_path=tmp_path / "homing.toml")
    assert config.outbound.smarthost == "2001:db8::1"
    assert config.outbound.smarthost_tls == "implicit"
    assert config.outbound.password_path(tmp_path) == tmp_path / "relay.pw"
    assert config.queue.warn_after == 0
    again = parse_config(
        tomllib.loads(render_config(config)),
        base_dir=tmp_path,
        config_path=tmp_path / "homing.toml",
    )
    assert again == config


def _runner(tmp_path: Path, doc: dict[str, Any]) -> Any:
    config = parse_config({**H, "data_dir": str(tmp_path), **doc}, base_dir=tmp_path)
    clock = FakeClock()
    store = Store.open(config.db_path, create=True, clock=clock)
    router = Router(store, config, clock)
    return store, build_runner(store, config, clock, router, resolver=FakeResolver())


def test_build_runner_direct_delivery(tmp_path: Path) -> None:
    store, runner = _runner(
        tmp_path,
        {"outbound": {"port": 2525, "require_tls": True}, "queue": {"warn_after": "0s"}},
    )
    try:
        s, a = runner.settings, runner.attempt_settings
        assert s.smarthost is None and s.port == 2525 and s.hostname == "mail.example.org"
        assert s.policy.warn_after is None  # 0 means never
        assert a.client.helo_name == "mail.example.org" and a.client.require_tls
        assert a.client.auth is None and not a.implicit_tls
        assert a.tls_context is not None and a.tls_context.verify_mode == ssl.CERT_NONE
    finally:
        store.close()


def test_build_runner_smarthost_with_auth(tmp_path: Path) -> None:
    (tmp_path / "relay.pw").write_text("s3cret pass\nignored\n")
    store, runner = _runner(
        tmp_path,
        {
            "outbound": {
                "smarthost": "relay.example.net",
                "smarthost_port": 465,
                "smarthost_tls": "implicit",
                "smarthost_username": "me@example.org",
                "smarthost_password_file": "relay.pw",
            }
        },
    )
    try:
        a = runner.attempt_settings
        assert runner.settings.smarthost == ("relay.example.net", 465)
        assert a.client.auth == ("me@example.org", "s3cret pass")
        assert a.implicit_tls and a.client.require_tls
        assert a.tls_context is not None and a.tls_context.verify_mode == ssl.CERT_REQUIRED
    finally:
        store.close()


def test_build_runner_needs_the_password_file(tmp_path: Path) -> None:
    outbound = {"smarthost": "relay.example.net", "smarthost_username": "me"}
    config = parse_config({**H, "data_dir": str(tmp_path), "outbound": outbound}, base_dir=tmp_path)
    clock = FakeClock()
    with Store.open(config.db_path, create=True, clock=clock) as store:
        router = Router(store, config, clock)
        with pytest.raises(OSError, match="password"):
            build_runner(store, config, clock, router, resolver=FakeResolver())


def test_smarthost_without_tls(tmp_path: Path) -> None:
    store, runner = _runner(
        tmp_path, {"outbound": {"smarthost": "192.0.2.1", "smarthost_tls": "none"}}
    )
    try:
        assert runner.attempt_settings.tls_context is None
        assert not runner.attempt_settings.client.require_tls
    finally:
        store.close()
