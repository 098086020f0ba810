"""Configuration loading: the TOML layout, every error path, scalars, rendering, file lookup."""

from __future__ import annotations

import ipaddress
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homing.config import (
    SERVICES,
    Config,
    ConfigError,
    DNSConfig,
    LimitsConfig,
    ListenAddress,
    ListenConfig,
    LogConfig,
    SMTPConfig,
    TLSConfig,
    config_path_from,
    format_duration,
    format_size,
    known_keys,
    load_config,
    parse_config,
    parse_duration,
    parse_listen_address,
    parse_local_domain,
    parse_size,
    render_config,
)

FULL = """
hostname = "Mail.Example.ORG"
domains = ["example.org", "Example.NET", "xn--bcher-kva.de"]
data_dir = "data"

[tls]
cert = "/etc/ssl/mail.pem"
key = "keys/mail.key"

[listen]
smtp = ["0.0.0.0:25", "[::]:25"]
submission = ["127.0.0.1:587"]
submissions = ["[0::1]:465"]
imap = []
imaps = ["192.0.2.1:993"]
pop3 = ["127.0.0.1:0", "127.0.0.2:0"]
pop3s = []

[limits]
message_size = "10MB"
recipients = 500
command_line = "4k"
text_line = 10000
connections_per_ip = 5
connections = 100
command_timeout = "2m"
data_timeout = 600
max_errors = 3

[smtp]
greet_pause = "1.5s"
max_received_headers = 30
banner = "ESMTP ready"

[dns]
nameservers = ["127.0.0.1:5353", "192.0.2.53", "[2001:db8::53]:53"]
timeout = "250ms"

[log]
level = "DEBUG"
"""


def write(tmp_path: Path, text: str, name: str = "homing.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def parse(data: dict[str, Any], base_dir: Path = Path("/srv/homing")) -> Config:
    return parse_config(data, base_dir=base_dir)


def error_of(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return info.value


# --- a good file -----------------------------------------------------------------------------


def test_full_file_loads_every_key(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert config.hostname == "mail.example.org"
    assert config.domains == ("example.org", "example.net", "bücher.de")
    assert config.data_dir == tmp_path / "data"
    assert config.db_path == tmp_path / "data" / "homing.db"
    assert config.config_path == path
    assert config.tls == TLSConfig(
        cert=Path("/etc/ssl/mail.pem"), key=tmp_path / "data" / "keys" / "mail.key"
    )
    assert config.listen.smtp == (ListenAddress("0.0.0.0", 25), ListenAddress("::", 25))
    assert config.listen.submissions == (ListenAddress("::1", 465),)
    assert config.listen.imap == ()
    assert config.listen.pop3 == (ListenAddress("127.0.0.1", 0), ListenAddress("127.0.0.2", 0))
    assert config.limits == LimitsConfig(
        message_size=10_000_000,
        recipients=500,
        command_line=4096,
        text_line=10000,
        connections_per_ip=5,
        connections=100,
        command_timeout=120.0,
        data_timeout=600.0,
        max_errors=3,
    )
    assert config.smtp == SMTPConfig(greet_pause=1.5, max_received_headers=30, banner="ESMTP ready")
    assert config.dns == DNSConfig(
        nameservers=(
            ListenAddress("127.0.0.1", 5353),
            ListenAddress("192.0.2.53", 53),
            ListenAddress("2001:db8::53", 53),
        ),
        timeout=0.25,
    )
    assert config.log == LogConfig(level="debug")


def test_minimal_file_takes_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'hostname = "localhost"\n'))
    assert config.data_dir == tmp_path
    assert config.tls == TLSConfig(tmp_path / "tls/cert.pem", tmp_path / "tls/key.pem")
    assert config.domains == ()
    assert config.listen == ListenConfig()
    assert config.limits == LimitsConfig()
    assert config.smtp == SMTPConfig()
    assert config.dns == DNSConfig()
    assert config.log == LogConfig()


def test_absolute_data_dir_and_tls_follow_it(tmp_path: Path) -> None:
    config = parse({"hostname": "h.example", "data_dir": str(tmp_path / "d")})
    assert config.data_dir == tmp_path / "d"
    assert config.tls.cert == tmp_path / "d" / "tls" / "cert.pem"


def test_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, 'hostname = "h.example"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("homing.toml"))
    assert config.config_path == tmp_path / "homing.toml"
    assert config.data_dir == tmp_path


# --- every error names its key ---------------------------------------------------------------

H = {"hostname": "mail.example.org"}

ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({}, "hostname", "required"),
    ({"hostname": 3}, "hostname", "expected a string"),
    ({"hostname": ""}, "hostname", "empty"),
    ({"hostname": "mail_1.example"}, "hostname", "letters, digits"),
    ({"hostname": "-a.example"}, "hostname", "letters, digits"),
    ({"hostname": "a." + "b" * 64}, "hostname", "letters, digits"),
    ({"hostname": "a." * 130 + "org"}, "hostname", "at most 253"),
    ({"hostname": "mail.example.org."}, "hostname", "must not end with a dot"),
    ({"hostname": "192.0.2.1"}, "hostname", "not an address"),
    ({"hostname": "mäil.example"}, "hostname", "xn--"),
    ({**H, "hostnme": "x"}, "hostnme", "did you mean hostname?"),
    ({**H, "zzz": 1}, "zzz", "the keys here are hostname, domains"),
    ({**H, "domains": "example.org"}, "domains", "array"),
    ({**H, "domains": ["example.org", 5]}, "domains[1]", "expected a string"),
    ({**H, "domains": ["example.org", "exa mple.org"]}, "domains[1]", ""),
    ({**H, "domains": ["example.org", "EXAMPLE.org"]}, "domains[1]", "listed twice"),
    ({**H, "domains": ["[192.0.2.1]"]}, "domains[0]", "not an address"),
    ({**H, "domains": ["10.0.0.1"]}, "domains[0]", "not an address"),
    ({**H, "data_dir": 1}, "data_dir", "path string"),
    ({**H, "data_dir": ""}, "data_dir", "non-empty"),
    ({**H, "data_dir": "~no-such-user-homing/x"}, "data_dir", "no such user"),
    ({**H, "tls": "x"}, "tls", "must be a table"),
    ({**H, "tls": {"certificate": "a"}}, "tls.certificate", "did you mean tls.cert?"),
    ({**H, "tls": {"key": 5}}, "tls.key", "path string"),
    ({**H, "tls": {"cert": ["a"]}}, "tls.cert", "path string"),
    ({**H, "listen": {"smpt": []}}, "listen.smpt", "did you mean listen.smtp?"),
    ({**H, "listen": {"smtp": "0.0.0.0:25"}}, "listen.smtp", "array"),
    ({**H, "listen": {"smtp": [25]}}, "listen.smtp[0]", '"host:port" string'),
    ({**H, "listen": {"imap": ["127.0.0.1:1", ":143"]}}, "listen.imap[1]", "host is required"),
    ({**H, "listen": {"imap": ["localhost:143"]}}, "listen.imap[0]", "IP address"),
    ({**H, "listen": {"imap": ["127.0.0.1"]}}, "listen.imap[0]", "host:port"),
    ({**H, "listen": {"imap": ["127.0.0.1:99999"]}}, "listen.imap[0]", "0 to 65535"),
    ({**H, "listen": {"imap": ["::1:143"]}}, "listen.imap[0]", "brackets"),
    ({**H, "listen": {"imap": ["[::1:143"]}}, "listen.imap[0]", "missing ']'"),
    ({**H, "listen": {"imap": ["[127.0.0.1]:143"]}}, "listen.imap[0]", "only for IPv6"),
    (
        {**H, "listen": {"smtp": ["127.0.0.1:25"], "imap": ["127.0.0.1:25"]}},
        "listen.imap[0]",
        "already used by listen.smtp[0]",
    ),
    (
        {**H, "listen": {"smtp": ["[::]:25"], "pop3": ["[::1]:25"]}},
        "listen.pop3[0]",
        "overlaps listen.smtp[0]",
    ),
    (
        {**H, "listen": {"imap": ["127.0.0.1:143", "127.0.0.1:143"]}},
        "listen.imap[1]",
        "already used by listen.imap[0]",
    ),
    *(
        ({**H, "listen": {service: ["127.0.0.1:1", "nowhere"]}}, f"listen.{service}[1]", "")
        for service in SERVICES
    ),
    ({**H, "limits": []}, "limits", "must be a table"),
    ({**H, "limits": {"message_size": -3}}, "limits.message_size", "non-negative"),
    ({**H, "limits": {"message_size": "1k"}}, "limits.message_size", "at least 64KiB"),
    ({**H, "limits": {"message_size": True}}, "limits.message_size", "size"),
    ({**H, "limits": {"message_size": 1.5}}, "limits.message_size", "size"),
    ({**H, "limits": {"message_size": "5 parsecs"}}, "limits.message_size", "such as"),
    ({**H, "limits": {"message_size": "100.3k"}}, "limits.message_size", "whole number"),
    ({**H, "limits": {"message_size": 2**64}}, "limits.message_size", "at least"),
    ({**H, "limits": {"recipients": 10}}, "limits.recipients", "at least 100"),
    ({**H, "limits": {"recipients": 1000.0}}, "limits.recipients", "must be an integer"),
    ({**H, "limits": {"recipients": "1000"}}, "limits.recipients", "must be an integer"),
    ({**H, "limits": {"command_line": 100}}, "limits.command_line", "from 512 to 1MiB"),
    ({**H, "limits": {"text_line": 999}}, "limits.text_line", "from 1000"),
    ({**H, "limits": {"connections_per_ip": 0}}, "limits.connections_per_ip", "at least 1"),
    ({**H, "limits": {"connections": -1}}, "limits.connections", "at least 1"),
    ({**H, "limits": {"command_timeout": 0}}, "limits.command_timeout", "positive"),
    ({**H, "limits": {"data_timeout": "-5m"}}, "limits.data_timeout", "such as"),
    ({**H, "limits": {"data_timeout": "5 fortnights"}}, "limits.data_timeout", "such as"),
    ({**H, "limits": {"data_timeout": [1]}}, "limits.data_timeout", "got an array"),
    ({**H, "limits": {"max_errors": 0}}, "limits.max_errors", "at least 1"),
    ({**H, "limits": {"max_eror": 0}}, "limits.max_eror", "did you mean limits.max_errors?"),
    ({**H, "smtp": {"greet_pause": "10m"}}, "smtp.greet_pause", "at most 5m"),
    ({**H, "smtp": {"greet_pause": -1}}, "smtp.greet_pause", "non-negative"),
    ({**H, "smtp": {"greet_pause": math.nan}}, "smtp.greet_pause", "finite"),
    ({**H, "smtp": {"max_received_headers": 0}}, "smtp.max_received_headers", "from 1 to"),
    ({**H, "smtp": {"workers": 65}}, "smtp.workers", "from 0 to 64"),
    ({**H, "smtp": {"banner": "a\r\nb"}}, "smtp.banner", "printable ASCII"),
    ({**H, "smtp": {"banner": "x" * 201}}, "smtp.banner", "at most 200"),
    ({**H, "smtp": {"banner": 1}}, "smtp.banner", "must be a string"),
    ({**H, "dns": {"nameservers": ["dns.example"]}}, "dns.nameservers[0]", "IP address"),
    ({**H, "dns": {"nameservers": ["127.0.0.1:0"]}}, "dns.nameservers[0]", "from 1 to"),
    ({**H, "dns": {"timeout": "10m"}}, "dns.timeout", "at most 5m"),
    ({**H, "log": {"level": "loud"}}, "log.level", "debug, info, warning, error"),
    ({**H, "log": {"level": 1}}, "log.level", "must be a string"),
    ({**H, "log": {"lvl": "info"}}, "log.lvl", "unknown key"),
    ({**H, "auth": {"failures_per_ip": 0}}, "auth.failures_per_ip", "at least 1"),
    ({**H, "auth": {"failure_delay": "2m"}}, "auth.failure_delay", "at most 1m"),
    ({**H, "auth": {"lockout": "-1s"}}, "auth.lockout", "such as"),
    ({**H, "pop3": {"idle_timeout": 0}}, "pop3.idle_timeout", "positive"),
    ({**H, "submission": {"from_check": "warn"}}, "submission.from_check", "reject"),
    ({**H, "imap": {"idle_timeout": 0}}, "imap.idle_timeout", "positive"),
    ({**H, "submission": {"grants": ["alice@x.test"]}}, "submission.grants[0]", "ACCOUNT SENDER"),
    ({**H, "submission": {"grants": "x"}}, "submission.grants", "array"),
    ({**H, "submission": {"grants": ["a@x.test b@"]}}, "submission.grants[0]", "not an address"),
    ({**H, "submission": {"hide_client": "no"}}, "submission.hide_client", "true"),
    ({**H, "pop3": {"allow_plaintext_loopback": "yes"}}, "pop3.allow_plaintext_loopback", "true"),
    ({**H, "pop3": {"allow_plaintext_loopback": 1}}, "pop3.allow_plaintext_loopback", "true"),
    ({**H, "imap": {"allow_plaintext_loopback": "yes"}}, "imap.allow_plaintext_loopback", "true"),
]


@pytest.mark.parametrize(("data", "key", "fragment"), ERRORS)
def test_error_names_the_dotted_key(data: dict[str, Any], key: str, fragment: str) -> None:
    error = error_of(data)
    assert error.key == key
    assert str(error).startswith(f"{key}: ")
    assert fragment in str(error)


def test_every_known_key_has_an_error_case() -> None:
    from tests.unit.test_queue_config import ERRORS as QUEUE_ERRORS

    tested = {key.split("[")[0] for _, key, _ in [*ERRORS, *QUEUE_ERRORS]}
    assert set(known_keys()) <= tested


def test_error_message_example_from_the_brief() -> None:
    assert str(error_of({**H, "limits": {"message_size": -3}})) == (
        "limits.message_size: expected a non-negative size, got -3"
    )


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'hostname = "h.example"\n[limits]\nrecipients = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: limits.recipients: must be at least 100, got 1"
    assert info.value.path == path


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'hostname = "h.example"\nlimits = \n')
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        load_config(path)


def test_missing_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


def test_wildcards_of_different_families_and_port_zero_coexist() -> None:
    config = parse(
        {
            **H,
            "listen": {
                "smtp": ["0.0.0.0:25", "[::]:25"],
                "imap": ["127.0.0.1:0"],
                "pop3": ["127.0.0.1:0", "0.0.0.0:0"],
            },
        }
    )
    assert len(config.listen.smtp) == 2


# --- scalars ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("4h", 14400.0),
        ("5d", 432000.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        (" 2 M ", 120.0),
        ("0", 0.0),
        ("12", 12.0),
        (7, 7.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "5w", "-1s", "1e3s", "5 m s", "1h30m", "inf", "nan", "0x10s", "٣s", True, -1]
)
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        (512, 512),
        ("10k", 10240),
        ("10K", 10240),
        ("10KiB", 10240),
        ("10kB", 10000),
        ("10MB", 10_000_000),
        ("50MiB", 52_428_800),
        ("50m", 52_428_800),
        ("2G", 2 * 1024**3),
        ("1GB", 10**9),
        ("1.5MiB", 1_572_864),
        ("7b", 7),
        (" 1 KiB ", 1024),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "10 kibibytes", "-1", "1.5", "0.1k", "1e6", True, -5])
def test_parse_size_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size_and_duration() -> None:
    assert format_size(50 * 1024 * 1024) == "50MiB"
    assert format_size(10_000_000) == "10000000"
    assert format_size(0) == "0"
    assert format_duration(300.0) == "5m"
    assert format_duration(0.0) == "0s"
    assert format_duration(1e-5) == "0.00001s"
    assert format_duration(90.0) == "90s"


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:25", "127.0.0.1", 25),
        ("0.0.0.0:25", "0.0.0.0", 25),
        ("[::1]:25", "::1", 25),
        ("[0:0::1]:25", "::1", 25),
        ("[::]:0", "::", 0),
        ("[2001:DB8::1]:993", "2001:db8::1", 993),
        (" 192.0.2.1:65535 ", "192.0.2.1", 65535),
    ],
)
def test_parse_listen_address(text: str, host: str, port: int) -> None:
    assert parse_listen_address(text) == ListenAddress(host, port)


def test_parse_listen_address_default_port() -> None:
    assert parse_listen_address("192.0.2.1", default_port=53) == ListenAddress("192.0.2.1", 53)
    assert parse_listen_address("[::1]", default_port=53) == ListenAddress("::1", 53)
    with pytest.raises(ValueError, match="host:port"):
        parse_listen_address("192.0.2.1")


@pytest.mark.parametrize(
    "text", [":25", "[::1]", "host:25", "1.2.3.4:x", "1.2.3.4:-1", "[::1]x", "1.2.3:25", "[::1]:"]
)
def test_parse_listen_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_address(text)


def test_parse_local_domain() -> None:
    assert parse_local_domain("Example.ORG") == "example.org"
    assert parse_local_domain("xn--bcher-kva.de") == "bücher.de"
    for bad in ("", "192.0.2.1", "[192.0.2.1]", "a..b", "a b"):
        with pytest.raises(ValueError):
            parse_local_domain(bad)


# --- properties ------------------------------------------------------------------------------


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_duration_round_trips(seconds: float) -> None:
    # Invariant: format_duration writes text parse_duration reads back as the same float.
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=2**70))
def test_size_round_trips(size: int) -> None:
    # Invariant: format_size writes text parse_size reads back as the same integer.
    assert parse_size(format_size(size)) == size


@given(st.text(max_size=30))
def test_scalar_parsers_raise_only_value_error(text: str) -> None:
    # Invariant: arbitrary text gives a value or ValueError, never anything else.
    for parser in (parse_duration, parse_size, parse_listen_address, parse_local_domain):
        try:
            parser(text)
        except ValueError:
            pass


@given(st.ip_addresses(), st.integers(min_value=0, max_value=65535))
def test_listen_address_round_trips(ip: Any, port: int) -> None:
    # Invariant: str(ListenAddress) parses back to an equal value; hosts are canonical.
    address = parse_listen_address(str(ListenAddress(ip.compressed, port)))
    assert address == ListenAddress(str(ip), port)
    assert parse_listen_address(str(address)) == address
    assert ipaddress.ip_address(address.host) == ip


_KEYS = st.sampled_from([*known_keys(), "tls", "listen", "limits", "bogus"])
_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["5m", "10MiB", "127.0.0.1:25", "[::1]:0", "example.org", "info"]),
)
_VALUES = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(max_size=6) | _KEYS.map(lambda k: k.split(".")[-1]), inner, max_size=3
        )
    ),
    max_leaves=8,
)


@given(
    st.dictionaries(_KEYS.map(lambda k: k.split(".")[0]), _VALUES, max_size=6).map(
        lambda d: {"hostname": "h.example", **d}
    )
)
@settings(max_examples=200)
def test_parse_config_raises_only_config_error(data: dict[str, Any]) -> None:
    # Invariant: whatever TOML decodes to, parse_config returns a Config or raises ConfigError
    # whose message starts with a dotted key.
    try:
        parse(data)
    except ConfigError as exc:
        assert exc.key
        assert str(exc).startswith(exc.key.split("[")[0])


# --- rendering -------------------------------------------------------------------------------


def test_render_default_config_round_trips(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'hostname = "localhost"\n'))
    text = render_config(config)
    assert (
        parse_config(tomllib.loads(text), base_dir=tmp_path, config_path=tmp_path / "homing.toml")
        == config
    )


def test_render_full_config_round_trips(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    text = render_config(config)
    again = load_config(write(tmp_path, text, "again.toml"))
    assert again == Config(**{**_fields(config), "config_path": tmp_path / "again.toml"})
    assert 'data_dir = "data"' in text
    assert 'key = "keys/mail.key"' in text
    assert 'cert = "/etc/ssl/mail.pem"' in text
    assert 'message_size = "10000000"' not in text and "message_size = 10000000" in text


def _fields(config: Config) -> dict[str, Any]:
    return {name: getattr(config, name) for name in Config.__dataclass_fields__}


def test_render_has_every_key_with_a_comment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'hostname = "localhost"\n'))
    lines = render_config(config).splitlines()
    for dotted in known_keys():
        name = dotted.rpartition(".")[2]
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name} = "))
        assert lines[index - 1].startswith("# "), dotted
    assert '# largest message accepted (SIZE, RFC 1870) (default: "50MiB")' in lines


def test_render_escapes_strings(tmp_path: Path) -> None:
    config = parse({**H, "smtp": {"banner": 'say "hi" \\ ok'}}, base_dir=tmp_path)
    config = Config(**{**_fields(config), "config_path": tmp_path / "homing.toml"})
    text = render_config(config)
    assert tomllib.loads(text)["smtp"]["banner"] == 'say "hi" \\ ok'


def test_render_without_config_path_writes_absolute_paths(tmp_path: Path) -> None:
    config = parse(H, base_dir=tmp_path)
    data = tomllib.loads(render_config(config))
    assert data["data_dir"] == str(tmp_path)
    assert parse_config(data, base_dir=Path("/elsewhere")) == config


_HOSTS = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True)
_DURATIONS = st.floats(min_value=0.001, max_value=10**7, allow_nan=False)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    base = Path("/srv/homing")
    used: set[int] = set()

    def addresses() -> tuple[ListenAddress, ...]:
        ports = draw(st.lists(st.integers(1, 65535), max_size=2, unique=True))
        fresh = [port for port in ports if port not in used]
        used.update(fresh)
        return tuple(ListenAddress(draw(st.sampled_from(["127.0.0.1", "::1"])), p) for p in fresh)

    return Config(
        hostname=draw(_HOSTS),
        data_dir=base / draw(st.sampled_from([".", "data", "/var/lib/homing"])),
        tls=TLSConfig(base / "c.pem", Path("/k.pem")),
        domains=tuple(draw(st.lists(_HOSTS, max_size=3, unique=True))),
        listen=ListenConfig(**{service: addresses() for service in SERVICES}),
        limits=LimitsConfig(
            message_size=draw(st.integers(65536, 2**40)),
            recipients=draw(st.integers(100, 10**6)),
            command_line=draw(st.integers(512, 1024**2)),
            text_line=draw(st.integers(1000, 64 * 1024**2)),
            connections_per_ip=draw(st.integers(1, 10**6)),
            connections=draw(st.integers(1, 10**6)),
            command_timeout=draw(_DURATIONS),
            data_timeout=draw(_DURATIONS),
            max_errors=draw(st.integers(1, 1000)),
        ),
        smtp=SMTPConfig(
            greet_pause=draw(st.floats(0, 300)),
            max_received_headers=draw(st.integers(1, 1000)),
            banner=draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)),
            workers=draw(st.integers(0, 64)),
        ),
        dns=DNSConfig(
            nameservers=tuple(
                ListenAddress(str(ip), port)
                for ip, port in draw(
                    st.lists(st.tuples(st.ip_addresses(), st.integers(1, 65535)), max_size=2)
                )
            ),
            timeout=draw(st.floats(0.001, 300)),
        ),
        log=LogConfig(level=draw(st.sampled_from(["debug", "info", "warning", "error"]))),
        config_path=base / "homing.toml",
    )


@given(configs())
@settings(max_examples=100)
def test_render_then_parse_is_identity(config: Config) -> None:
    # Invariant: parse(render(c)) == c for every valid config.
    text = render_config(config)
    assert (
        parse_config(
            tomllib.loads(text), base_dir=Path("/srv/homing"), config_path=config.config_path
        )
        == config
    )


# --- finding the file ------------------------------------------------------------------------


def test_config_path_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HOMING_CONFIG", raising=False)
    assert config_path_from(None) == Path("/etc/homing/homing.toml")
    write(tmp_path, "")
    assert config_path_from(None) == Path("homing.toml")
    monkeypatch.setenv("HOMING_CONFIG", "/env/homing.toml")
    assert config_path_from(None) == Path("/env/homing.toml")
    assert config_path_from("/opt/x.toml") == Path("/opt/x.toml")
    monkeypatch.setenv("HOMING_CONFIG", "")
    assert config_path_from(None) == Path("homing.toml")


# --- the operator documentation stays true ---------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_describe_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for dotted in known_keys():
        assert f"`{dotted.rpartition('.')[2]}`" in text, dotted


def test_docs_examples_are_valid(tmp_path: Path) -> None:
    text = DOCS.read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```toml\n")[1:]]
    full = [block for block in blocks if "hostname" in block]
    assert len(full) >= 2
    for block in full:
        config = parse_config(tomllib.loads(block), base_dir=tmp_path)
        assert config.hostname == "mail.example.org"
