"""TOML → `Config`: parsing, validation and the commented file `homing init` writes.

Theory of operation: one table per TOML section (`_SECTIONS`) lists every key with its kind
(integer, size, duration, choice, text, address list), its allowed range and a one-line comment.
`parse_config` walks the tables to validate a decoded TOML document, and `render_config` walks the
same tables to write a file, so the two cannot drift apart: whatever `render_config` writes parses
back to the same `Config`. The top-level keys and `[tls]` hold paths and are handled beside the
tables because they resolve relative to the config file and the data directory.

Every problem raises `ConfigError` whose message starts with the full dotted key
(`limits.message_size`, `listen.smtp[1]`), so the operator knows exactly what to fix.
Nothing here touches the network or reads the clock: hostnames are checked for syntax only.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from homing.config.model import (
    SERVICES,
    AuthConfig,
    Config,
    DNSConfig,
    IMAPConfig,
    LimitsConfig,
    ListenAddress,
    ListenConfig,
    LogConfig,
    OutboundConfig,
    POP3Config,
    QueueConfig,
    SMTPConfig,
    SubmissionConfig,
    TLSConfig,
)
from homing.mail.address import AddressError, parse_domain, parse_mailbox

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "ENV_CONFIG",
    "ConfigError",
    "config_path_from",
    "format_duration",
    "format_size",
    "known_keys",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_listen_address",
    "parse_local_domain",
    "parse_size",
    "render_config",
]

#: Environment variable naming the configuration file when `--config` is not given.
ENV_CONFIG = "HOMING_CONFIG"

#: Where the configuration file is looked for, in order, when neither `--config` nor
#: $HOMING_CONFIG names one. The first that exists wins; if none exists, the last is reported.
DEFAULT_CONFIG_PATHS = (Path("homing.toml"), Path("/etc/homing/homing.toml"))

DEFAULT_CERT = Path("tls/cert.pem")
DEFAULT_KEY = Path("tls/key.pem")
DNS_PORT = 53
#: Upper bound of every integer (the store keeps numbers as signed 64-bit integers).
_INT_MAX = 2**63 - 1


class ConfigError(Exception):
    """A configuration problem an operator must fix; the message names the dotted key.

    `key` is the dotted key (None for problems with the file as a whole), `problem` the
    explanation, `path` the file it came from when known.
    """

    def __init__(self, problem: str, *, key: str | None = None, path: Path | None = None) -> None:
        self.problem = problem
        self.key = key
        self.path = path
        parts = [str(part) for part in (path, key) if part is not None]
        super().__init__(": ".join([*parts, problem]))

    def with_path(self, path: Path) -> ConfigError:
        return ConfigError(self.problem, key=self.key, path=path)


# --------------------------------------------------------------------------------------------
# Scalar parsers (public: also used by the CLI and tests). They raise ValueError; parse_config
# turns that into a ConfigError naming the key.

_DURATION_UNITS = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
# A decimal number and an optional unit, blanks allowed around both ("5m", " 1.5 MiB ").
_NUMBER_UNIT_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*\Z", re.ASCII | re.IGNORECASE)

# SI prefixes are powers of 1000, IEC prefixes powers of 1024; a bare letter (k, M, G) means
# 1024, as in nginx and most daemons' configuration files.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def _shown(value: object) -> str:
    """repr() for error messages, shortened so a huge value cannot flood the terminal."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _reject_bool(value: object) -> None:
    # TOML booleans decode to bool, which Python also counts as int.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")


def parse_duration(value: str | int | float) -> float:
    """Seconds from "30s", "5m", "4h", "5d", "250ms", or a plain number of seconds.

    Raises ValueError for anything else, including negative and non-finite values.
    """
    _reject_bool(value)
    exact: Fraction | float
    if isinstance(value, int | float):
        exact = value
    elif isinstance(value, str):
        match = _NUMBER_UNIT_RE.match(value)
        unit = (match.group(2).lower() or "s") if match else ""
        if match is None or unit not in _DURATION_UNITS:
            raise ValueError(f"expected a duration such as 30s, 5m, 4h or 5d, got {_shown(value)}")
        # Exact arithmetic, one rounding at the end: "0.1s" is the float nearest 0.1.
        exact = Fraction(match.group(1)) * _DURATION_UNITS[unit]
    else:
        raise ValueError(f"expected a duration, got {type(value).__name__}")
    try:
        seconds = float(exact)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a finite, non-negative duration, got {_shown(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest unit string that `parse_duration` reads back as exactly `seconds`."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"cannot format duration {seconds!r}")
    if seconds == int(seconds):
        whole = int(seconds)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if whole and whole % size == 0:
                return f"{whole // size}{unit}"
        return f"{whole}s"
    # repr() is the shortest decimal that reads back as exactly this float; written out
    # without an exponent, which the duration syntax does not have.
    return f"{format(Decimal(repr(seconds)), 'f')}s"


def parse_size(value: str | int) -> int:
    """Bytes from "50MiB", "10MB", "512", "10k"; k/M/G alone mean KiB/MiB/GiB.

    Units are case-insensitive. Fractions are allowed if they give a whole number of bytes
    ("1.5MiB"). Raises ValueError for anything else, including negative values.
    """
    _reject_bool(value)
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _NUMBER_UNIT_RE.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _SIZE_UNITS:
            raise ValueError(
                f"expected a size such as 512, 10k, 10MB or 50MiB, got {_shown(value)}"
            )
        exact = Fraction(match.group(1)) * _SIZE_UNITS[unit]
        if exact.denominator != 1:
            raise ValueError(f"{_shown(value)} is not a whole number of bytes")
        size = exact.numerator
    else:
        raise ValueError(f"expected a size, got {type(value).__name__}")
    if size < 0:
        raise ValueError(f"expected a non-negative size, got {_shown(value)}")
    return size


def format_size(size: int) -> str:
    """The shortest IEC string that `parse_size` reads back as exactly `size` ("50MiB")."""
    if size < 0:
        raise ValueError(f"cannot format size {size!r}")
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def parse_listen_address(text: str, *, default_port: int | None = None) -> ListenAddress:
    """ "127.0.0.1:25", "[::1]:25", "0.0.0.0:25" or "[::]:25" → ListenAddress.

    The host must be an IP address (IPv6 in brackets); host names are refused because binding
    would need a DNS lookup at start-up and would be ambiguous with several addresses. Use
    0.0.0.0 and [::] for "every address". The port is 0-65535 (0: any free port). With
    `default_port`, the ":port" part may be left out. The host comes back in canonical form
    ("::1", never "0::1"), so equal addresses compare equal.
    """
    if not isinstance(text, str):
        raise ValueError(f'expected a "host:port" string, got {type(text).__name__}')
    host, port_text = _split_host_port(text.strip())
    if port_text is None:
        if default_port is None:
            raise ValueError(f'expected "host:port" (for example 127.0.0.1:25), got {_shown(text)}')
        port = default_port
    elif not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(
            f"port must be a number from 0 to 65535, got {_shown(port_text)} in {_shown(text)}"
        )
    else:
        port = int(port_text)
    if not host:
        raise ValueError(
            "a host is required (0.0.0.0 for every IPv4 address, [::] for IPv6), "
            f"got {_shown(text)}"
        )
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be an IP address, got {_shown(host)}") from None
    return ListenAddress(host=str(address), port=port)


def _split_host_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in {_shown(text)}")
        host, rest = text[1:end], text[end + 1 :]
        if ":" not in host:
            raise ValueError(f"brackets are only for IPv6 addresses, got {_shown(text)}")
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"expected ':port' after ']' in {_shown(text)}")
        return host, rest[1:]
    if text.count(":") > 1:
        raise ValueError(f"write IPv6 addresses in brackets, as [::1]:25; got {_shown(text)}")
    host, sep, port = text.partition(":")
    return host, port if sep else None


# --------------------------------------------------------------------------------------------
# Names

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z", re.ASCII | re.IGNORECASE)


def _check_hostname(value: object) -> str:
    """A host name in LDH syntax (RFC 1123 §2.1, RFC 5321 §4.1.2 Domain), lowercased.

    ASCII only: the name goes into the greeting, before any SMTPUTF8 negotiation, and into the
    EHLO a peer may not understand U-labels in; write an internationalized name as A-labels.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    if not value:
        raise ValueError("must not be empty")
    if not value.isascii():
        raise ValueError(
            f"must be ASCII; write an internationalized name in its xn-- form, got {_shown(value)}"
        )
    if value.endswith("."):
        raise ValueError(f"must not end with a dot, got {_shown(value)}")
    if len(value) > 253:
        raise ValueError(f"a DNS name is at most 253 characters, got {len(value)}")
    labels = value.split(".")
    for label in labels:
        if not _LABEL_RE.match(label):
            raise ValueError(
                "each dot-separated part must be 1-63 letters, digits or inner hyphens, "
                f"got {_shown(value)}"
            )
    # RFC 3696 §2: a top-level domain is never all-numeric, which also rules out IP addresses.
    if labels[-1].isdigit():
        raise ValueError(f"must be a domain name, not an address: {_shown(value)}")
    return value.lower()


def parse_local_domain(text: str) -> str:
    """A domain Homing can serve mail for, in the canonical form addresses use.

    The syntax and normalisation are those of `homing.mail.address.parse_domain` (lower case,
    A-labels turned into U-labels), so `domains` compares equal to the domain of a parsed
    recipient; address literals and all-numeric names (IP addresses) are refused.
    Raises ValueError.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {_type_name(text)}")
    domain = parse_domain(text)
    if domain.startswith("[") or domain.rpartition(".")[2].isdigit():
        raise ValueError(f"must be a domain name, not an address: {_shown(text)}")
    return domain


# --------------------------------------------------------------------------------------------
# Kinds of keys: each parses a raw TOML value (raising ValueError) and renders a value as TOML.


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


class _Scalar:
    """A key holding one value: `check` raises ValueError, `parse` names the key."""

    __slots__ = ()

    def check(self, raw: object) -> Any:
        raise NotImplementedError

    def parse(self, key: str, raw: object) -> Any:
        try:
            return self.check(raw)
        except ValueError as exc:
            raise ConfigError(str(exc), key=key) from None


@dataclass(frozen=True, slots=True)
class _Integer(_Scalar):
    minimum: int
    maximum: int = _INT_MAX

    def check(self, raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"must be an integer, got {_type_name(raw)}")
        return _in_range(raw, self.minimum, self.maximum)

    def render(self, value: int) -> str:
        return str(value)


@dataclass(frozen=True, slots=True)
class _Size(_Scalar):
    minimum: int
    maximum: int = _INT_MAX

    def check(self, raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ValueError(f"must be a size such as 50MiB or 1048576, got {_type_name(raw)}")
        return _in_range(parse_size(raw), self.minimum, self.maximum, format_size)

    def render(self, value: int) -> str:
        text = format_size(value)
        return text if text.isdigit() else _toml_string(text)


@dataclass(frozen=True, slots=True)
class _Duration(_Scalar):
    positive: bool = True
    maximum: float | None = None

    def check(self, raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError(f"must be a duration such as 30s or 5m, got {_type_name(raw)}")
        seconds = parse_duration(raw)
        if self.positive and seconds <= 0:
            raise ValueError(f"must be a positive duration, got {_shown(raw)}")
        if self.maximum is not None and seconds > self.maximum:
            raise ValueError(f"must be at most {format_duration(self.maximum)}, got {_shown(raw)}")
        return seconds

    def render(self, value: float) -> str:
        return _toml_string(format_duration(value))


@dataclass(frozen=True, slots=True)
class _Choice(_Scalar):
    choices: tuple[str, ...]

    def check(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string, got {_type_name(raw)}")
        value = raw.lower()
        if value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}; got {_shown(raw)}")
        return value

    def render(self, value: str) -> str:
        return _toml_string(value)


@dataclass(frozen=True, slots=True)
class _Text(_Scalar):
    """A single line of printable ASCII that goes on the wire (SMTP greeting text)."""

    maximum: int

    def check(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"must be a string, got {_type_name(raw)}")
        if not all(" " <= char <= "~" for char in raw):
            raise ValueError(f"must be printable ASCII on one line, got {_shown(raw)}")
        if len(raw) > self.maximum:
            raise ValueError(f"must be at most {self.maximum} characters, got {len(raw)}")
        return raw

    def render(self, value: str) -> str:
        return _toml_string(value)


@dataclass(frozen=True, slots=True)
class _Boolean(_Scalar):
    """true or false (TOML booleans only: "yes" and 1 are mistakes, not booleans)."""

    def check(self, raw: object) -> bool:
        if not isinstance(raw, bool):
            raise ValueError(f"must be true or false, got {_type_name(raw)}")
        return raw

    def render(self, value: bool) -> str:
        return "true" if value else "false"


@dataclass(frozen=True, slots=True)
class _Addresses:
    """An array of "host:port" strings; each item's errors name it as key[index]."""

    default_port: int | None = None
    any_port: bool = True
    """Port 0 (any free port) makes sense for listeners, not for servers we connect to."""

    def parse(self, key: str, raw: object) -> tuple[ListenAddress, ...]:
        if not isinstance(raw, list):
            raise ConfigError(
                f'must be an array of "host:port" strings, got {_type_name(raw)}', key=key
            )
        addresses = []
        for index, item in enumerate(raw):
            item_key = f"{key}[{index}]"
            if not isinstance(item, str):
                raise ConfigError(
                    f'must be a "host:port" string, got {_type_name(item)}', key=item_key
                )
            try:
                address = parse_listen_address(item, default_port=self.default_port)
            except ValueError as exc:
                raise ConfigError(str(exc), key=item_key) from None
            if address.port == 0 and not self.any_port:
                raise ConfigError(f"port must be from 1 to 65535, got {item!r}", key=item_key)
            addresses.append(address)
        return tuple(addresses)

    def render(self, value: tuple[ListenAddress, ...]) -> str:
        return "[" + ", ".join(_toml_string(str(address)) for address in value) + "]"


@dataclass(frozen=True, slots=True)
class _Grants:
    """An array of "ACCOUNT SENDER" strings: the account may also send as SENDER, an address
    or "*@domain" (every address of the domain)."""

    def parse(self, key: str, raw: object) -> tuple[tuple[str, str], ...]:
        if not isinstance(raw, list):
            raise ConfigError(
                f'must be an array of "account sender" strings, got {_type_name(raw)}', key=key
            )
        grants = []
        for index, item in enumerate(raw):
            item_key = f"{key}[{index}]"
            parts = item.split() if isinstance(item, str) else []
            if len(parts) != 2:
                raise ConfigError(
                    f'must be "ACCOUNT SENDER" (e.g. "alice@x.org *@x.org"), got {item!r}',
                    key=item_key,
                )
            account, sender = parts
            try:
                account = str(parse_mailbox(account))
                pattern = sender.lower()
                if pattern.startswith("*@"):
                    pattern = "*@" + parse_domain(pattern[2:])
                else:
                    pattern = str(parse_mailbox(sender)).lower()
            except AddressError as exc:
                raise ConfigError(f"not an address: {exc.reason}", key=item_key) from None
            grants.append((account.lower(), pattern))
        return tuple(grants)

    def render(self, value: tuple[tuple[str, str], ...]) -> str:
        return "[" + ", ".join(_toml_string(f"{a} {s}") for a, s in value) + "]"


@dataclass(frozen=True, slots=True)
class _Host(_Scalar):
    """A host name (as `hostname`), or "" for "not set"; with `literal`, an IP address too
    (IPv6 with or without brackets)."""

    literal: bool = False

    def check(self, raw: object) -> str:
        if raw == "":
            return ""
        if self.literal and isinstance(raw, str):
            inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
            try:
                return str(ipaddress.ip_address(inner))
            except ValueError:
                pass
        return _check_hostname(raw)

    def render(self, value: str) -> str:
        return _toml_string(value)


@dataclass(frozen=True, slots=True)
class _PathText(_Scalar):
    """A file name, kept as written ("" for none); resolved by its user."""

    def check(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise ValueError(f"must be a path string, got {_type_name(raw)}")
        if "\x00" in raw or not raw.isprintable():
            raise ValueError(f"must be a printable path, got {_shown(raw)}")
        return raw

    def render(self, value: str) -> str:
        return _toml_string(value)


_Kind = (
    _Integer
    | _Size
    | _Duration
    | _Choice
    | _Text
    | _Boolean
    | _Addresses
    | _Grants
    | _Host
    | _PathText
)


def _in_range(
    value: int,
    minimum: int,
    maximum: int,
    show: Callable[[int], str] = str,
) -> int:
    if value < minimum or (maximum is not None and value > maximum):
        bound = (
            f"at least {show(minimum)}"
            if maximum == _INT_MAX
            else f"from {show(minimum)} to {show(maximum)}"
        )
        raise ValueError(f"must be {bound}, got {show(value)}")
    return value


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    kind: _Kind
    comment: str


@dataclass(frozen=True, slots=True)
class _Section:
    name: str
    model: type[Any]
    keys: tuple[_Key, ...]
    comment: str

    def key(self, name: str) -> _Key:
        return next(key for key in self.keys if key.name == name)


_MiB = 1024 * 1024

_LISTEN = _Section(
    "listen",
    ListenConfig,
    tuple(
        _Key(service, _Addresses(), comment)
        for service, comment in (
            ("smtp", "mail from other servers for the local domains (port 25)"),
            ("submission", "mail from your users' programs, STARTTLS then AUTH (587, RFC 6409)"),
            ("submissions", "submission over implicit TLS (465, RFC 8314)"),
            ("imap", "IMAP with STARTTLS (143)"),
            ("imaps", "IMAP over implicit TLS (993)"),
            ("pop3", "POP3 with STLS (110)"),
            ("pop3s", "POP3 over implicit TLS (995)"),
        )
    ),
    'Listening addresses per service, "IP:port" ("[IPv6]:port"); [] turns a service off.',
)
assert tuple(key.name for key in _LISTEN.keys) == SERVICES

_SECTIONS = (
    _LISTEN,
    _Section(
        "limits",
        LimitsConfig,
        (
            # RFC 5321 §4.5.3.1.7: a server must accept message content of at least 64K octets.
            _Key("message_size", _Size(64 * 1024), "largest message accepted (SIZE, RFC 1870)"),
            # RFC 5321 §4.5.3.1.8: at least 100 recipients must be buffered.
            _Key("recipients", _Integer(100), "recipients per message (RFC 5321 minimum: 100)"),
            # RFC 5321 §4.5.3.1.4: 512 octets; RFC 4954 §4 lets AUTH lines reach 12288.
            _Key("command_line", _Size(512, _MiB), "longest SMTP command line, with CRLF"),
            # RFC 5321 §4.5.3.1.6: 1000 octets including CRLF.
            _Key("text_line", _Size(1000, 64 * _MiB), "longest line inside a message"),
            _Key("connections_per_ip", _Integer(1), "simultaneous connections from one IP"),
            _Key("connections", _Integer(1), "simultaneous connections in all"),
            _Key("command_timeout", _Duration(), "idle time allowed while waiting for a command"),
            _Key("data_timeout", _Duration(), "idle time allowed inside message data"),
            _Key("max_errors", _Integer(1), "protocol errors in one session before disconnect"),
        ),
        "Resource limits on every connection. Sizes: 512, 10k, 10MB, 50MiB; durations: 30s, 5m.",
    ),
    _Section(
        "smtp",
        SMTPConfig,
        (
            _Key(
                "greet_pause",
                _Duration(positive=False, maximum=300.0),
                "wait before the greeting; clients that talk first are dropped",
            ),
            _Key(
                "max_received_headers",
                _Integer(1, 1000),
                "more Received headers than this is a mail loop (RFC 5321 §6.3)",
            ),
            _Key("banner", _Text(200), "text after the hostname in the 220 greeting"),
            _Key(
                "workers",
                _Integer(0, 64),
                "worker processes that serve port 25 instead of the main process (0: none)",
            ),
        ),
        "The receiving SMTP server (port 25).",
    ),
    _Section(
        "auth",
        AuthConfig,
        (
            _Key("failures_per_ip", _Integer(1), "failed logins from one IP in a minute: lockout"),
            _Key(
                "failure_delay",
                _Duration(positive=False, maximum=60.0),
                "added to the answer of each failed login after the third",
            ),
            _Key("lockout", _Duration(positive=False), "how long a locked-out IP is refused"),
        ),
        "Brute-force protection for every login (SMTP AUTH, IMAP, POP3).",
    ),
    _Section(
        "imap",
        IMAPConfig,
        (
            # RFC 9051 §5.4: an inactivity autologout timer of at least 30 minutes.
            _Key("idle_timeout", _Duration(), "idle time before a session is closed (RFC: 30m)"),
            _Key(
                "allow_plaintext_loopback",
                _Boolean(),
                "allow passwords without TLS from 127.0.0.1 and ::1",
            ),
        ),
        "The IMAP server (ports 143 and 993).",
    ),
    _Section(
        "pop3",
        POP3Config,
        (
            # RFC 1939 §3: an autologout timer of at least 10 minutes.
            _Key("idle_timeout", _Duration(), "idle time before a session is closed (RFC: 10m)"),
            _Key(
                "allow_plaintext_loopback",
                _Boolean(),
                "allow passwords without TLS from 127.0.0.1 and ::1",
            ),
        ),
        "The POP3 server (ports 110 and 995).",
    ),
    _Section(
        "submission",
        SubmissionConfig,
        (
            _Key(
                "from_check",
                _Choice(("reject", "off")),
                "reject: the From header must name only the account's own addresses",
            ),
            _Key("hide_client", _Boolean(), "leave the client's IP out of the Received header"),
            _Key(
                "grants",
                _Grants(),
                'extra senders: "ACCOUNT SENDER", SENDER an address or "*@domain"',
            ),
        ),
        "Mail from your users' programs (ports 587 and 465).",
    ),
    _Section(
        "dns",
        DNSConfig,
        (
            _Key(
                "nameservers",
                _Addresses(default_port=DNS_PORT, any_port=False),
                'resolvers to ask ("IP" or "IP:port"); [] uses /etc/resolv.conf',
            ),
            _Key("timeout", _Duration(maximum=300.0), "time before one DNS query is abandoned"),
        ),
        "How MX, A and AAAA records are looked up.",
    ),
    _Section(
        "outbound",
        OutboundConfig,
        (
            _Key("port", _Integer(1, 65535), "port of remote mail exchangers"),
            _Key("helo_name", _Host(), 'name sent in EHLO ("" means hostname)'),
            _Key("require_tls", _Boolean(), "defer rather than send in clear (no STARTTLS)"),
            _Key("ipv6", _Boolean(), "connect to IPv6 addresses of mail exchangers"),
            _Key("connect_timeout", _Duration(maximum=600.0), "time allowed to connect"),
            _Key("max_mx", _Integer(1, 100), "mail exchangers tried per attempt"),
            _Key(
                "max_sessions_per_attempt",
                _Integer(1, 100),
                "SMTP sessions past the greeting per attempt",
            ),
            _Key("smarthost", _Host(literal=True), 'relay all mail through this host ("": off)'),
            _Key("smarthost_port", _Integer(1, 65535), "port of the smarthost"),
            _Key(
                "smarthost_tls",
                _Choice(("starttls", "implicit", "opportunistic", "none")),
                "starttls, implicit, opportunistic or none",
            ),
            _Key("smarthost_tls_verify", _Boolean(), "check the smarthost's certificate"),
            _Key("smarthost_username", _Text(255), 'AUTH PLAIN user ("": no AUTH)'),
            _Key(
                "smarthost_password_file",
                _PathText(),
                "file with the smarthost password, relative to data_dir",
            ),
        ),
        "Mail to remote domains: MX lookup, SMTP client, optional smarthost.",
    ),
    _Section(
        "queue",
        QueueConfig,
        (
            _Key("first_retry", _Duration(), "wait after the first failed attempt"),
            _Key("max_interval", _Duration(), "longest wait between two attempts"),
            _Key(
                "warn_after",
                _Duration(positive=False),
                "delay warning to the sender after this long (0: never)",
            ),
            _Key("give_up_after", _Duration(), "return the message to its sender after this long"),
            _Key(
                "concurrency",
                _Integer(1, 10000),
                "delivery connections open at the same time, all domains together",
            ),
            _Key(
                "destination_concurrency",
                _Integer(1, 100),
                "delivery connections open to one domain at the same time",
            ),
        ),
        "Retries, delay warnings and bounces of queued outbound mail.",
    ),
    _Section(
        "log",
        LogConfig,
        (
            _Key(
                "level",
                _Choice(("debug", "info", "warning", "error")),
                "debug, info, warning, error",
            ),
        ),
        "Logging to standard error.",
    ),
)

_TOP_LEVEL_KEYS = ("hostname", "domains", "data_dir", "tls", *(s.name for s in _SECTIONS))
_TLS_KEYS = ("cert", "key")


# --------------------------------------------------------------------------------------------
# Parsing


def load_config(path: Path) -> Config:
    """Read and validate the TOML file at `path`.

    Relative `data_dir` is resolved against the file's directory; relative `tls.cert` and
    `tls.key` against the data directory. Raises ConfigError (with `path` set) on any problem,
    including a missing or unreadable file.
    """
    path = path.expanduser()
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("no such file", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None
    absolute = path.absolute()
    try:
        return parse_config(data, base_dir=absolute.parent, config_path=absolute)
    except ConfigError as exc:
        raise exc.with_path(path) from None


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path, config_path: Path | None = None
) -> Config:
    """Validate a decoded TOML document and build the Config.

    `base_dir` is what a relative `data_dir` is relative to (normally the config file's
    directory), and the data directory when `data_dir` is absent.
    """
    _check_keys("", data, _TOP_LEVEL_KEYS)
    if "hostname" not in data:
        raise ConfigError(
            "required (this server's DNS name, e.g. mail.example.org)", key="hostname"
        )
    hostname = _with_key("hostname", _check_hostname, data["hostname"])
    domains = _parse_domains(data.get("domains", []))
    data_dir = _parse_path("data_dir", data.get("data_dir", "."), base_dir)
    tls = _parse_tls(_table(data, "tls"), data_dir)
    sections: dict[str, Any] = {}
    for section in _SECTIONS:
        sections[section.name] = _parse_section(section, _table(data, section.name))
    _check_listen_conflicts(sections["listen"])
    _check_queue(sections["queue"])
    return Config(
        hostname=hostname,
        data_dir=data_dir,
        tls=tls,
        domains=domains,
        config_path=config_path,
        **sections,
    )


def _with_key(key: str, parse: Any, raw: object) -> Any:
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_keys(prefix: str, table: Mapping[str, Any], known: Sequence[str]) -> None:
    for name in table:
        if name not in known:
            hint = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.5)
            if hint:
                problem = f"unknown key (did you mean {_dotted(prefix, hint[0])}?)"
            else:
                problem = f"unknown key; the keys here are {', '.join(known)}"
            raise ConfigError(problem, key=_dotted(prefix, name))


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"must be a table ([{name}]), got {_type_name(table)}", key=name)
    return table


def _parse_domains(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"must be an array of domain names, got {_type_name(raw)}", key="domains")
    domains: list[str] = []
    for index, item in enumerate(raw):
        domain = _with_key(f"domains[{index}]", parse_local_domain, item)
        if domain in domains:
            raise ConfigError(
                f"{domain} is listed twice (also domains[{domains.index(domain)}])",
                key=f"domains[{index}]",
            )
        domains.append(domain)
    return tuple(domains)


def _parse_path(key: str, raw: object, base: Path) -> Path:
    if not isinstance(raw, str):
        raise ConfigError(f"must be a path string, got {_type_name(raw)}", key=key)
    if not raw or "\x00" in raw:
        raise ConfigError(f"must be a non-empty path, got {_shown(raw)}", key=key)
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # "~name/..." for a user that does not exist
        raise ConfigError(f"cannot expand {_shown(raw)}: no such user", key=key) from None
    # Path("a") / "." is "a": a data_dir of "." is the config file's own directory.
    return path if path.is_absolute() else base / path


def _parse_tls(table: Mapping[str, Any], data_dir: Path) -> TLSConfig:
    _check_keys("tls", table, _TLS_KEYS)
    cert = _parse_path("tls.cert", table.get("cert", str(DEFAULT_CERT)), data_dir)
    key = _parse_path("tls.key", table.get("key", str(DEFAULT_KEY)), data_dir)
    return TLSConfig(cert=cert, key=key)


def _parse_section(section: _Section, table: Mapping[str, Any]) -> Any:
    _check_keys(section.name, table, [key.name for key in section.keys])
    values: dict[str, Any] = {}
    for key in section.keys:
        if key.name not in table:
            continue
        values[key.name] = key.kind.parse(f"{section.name}.{key.name}", table[key.name])
    return section.model(**values)


def _check_listen_conflicts(listen: ListenConfig) -> None:
    """Refuse two listeners that could not both bind.

    Exact duplicates conflict, and so does a wildcard (0.0.0.0 or ::) with any other address of
    the same family on the same port: IPv6 listeners are bound IPV6_V6ONLY (asyncio does so),
    so 0.0.0.0:25 and [::]:25 coexist. Port 0 asks the OS for a free port and never conflicts.
    """
    seen: list[tuple[str, ListenAddress]] = []
    for service in SERVICES:
        for index, address in enumerate(listen.for_service(service)):
            key = f"listen.{service}[{index}]"
            for other_key, other in seen:
                if address.port != 0 and _overlaps(address, other):
                    how = "is already used by" if address == other else "overlaps"
                    raise ConfigError(f"{address} {how} {other_key} ({other})", key=key)
            seen.append((key, address))


def _check_queue(queue: QueueConfig) -> None:
    if queue.max_interval < queue.first_retry:
        raise ConfigError(
            f"must be at least queue.first_retry ({format_duration(queue.first_retry)}), "
            f"got {format_duration(queue.max_interval)}",
            key="queue.max_interval",
        )


def _overlaps(first: ListenAddress, second: ListenAddress) -> bool:
    if first.port != second.port:
        return False
    a, b = ipaddress.ip_address(first.host), ipaddress.ip_address(second.host)
    if a.version != b.version:
        return False
    return a == b or a.is_unspecified or b.is_unspecified


# --------------------------------------------------------------------------------------------
# Finding the file


def config_path_from(option: str | os.PathLike[str] | None) -> Path:
    """The configuration file to use.

    In order: the `--config` option; $HOMING_CONFIG when set and non-empty; ./homing.toml if it
    exists; /etc/homing/homing.toml (returned even if missing, so the error names it).
    """
    if option:
        return Path(option).expanduser()
    from_env = os.environ.get(ENV_CONFIG, "")
    if from_env:
        return Path(from_env).expanduser()
    for candidate in DEFAULT_CONFIG_PATHS[:-1]:
        if candidate.is_file():
            return candidate
    return DEFAULT_CONFIG_PATHS[-1]


# --------------------------------------------------------------------------------------------
# Rendering

_HEADER = """\
# Homing configuration. Every key is present; its comment gives the default.
# Full reference: docs/configuration.md. A relative data_dir is relative to this file's
# directory; relative tls paths are relative to data_dir.
# Sizes: 512, 10k (KiB), 10MB (10^6), 50MiB. Durations: 250ms, 30s, 5m, 4h, 5d.
"""


def render_config(config: Config) -> str:
    """A commented homing.toml holding `config`, one comment line per key.

    Paths inside the config file's directory (or data_dir) are written relative, so the whole
    directory can be moved. `parse_config` of the output, with `base_dir` the directory of
    `config.config_path`, gives back an equal Config.
    """
    config_dir = config.config_path.parent if config.config_path is not None else None
    lines = [_HEADER]
    lines += _comment_and_value(
        "this server's DNS name: greeting, EHLO, Received headers (required)",
        "hostname",
        _toml_string(config.hostname),
    )
    lines += _comment_and_value(
        "local domains: mail for them is delivered here (`homing domain add` adds more)",
        "domains",
        "[" + ", ".join(_toml_string(domain) for domain in config.domains) + "]",
    )
    lines += _comment_and_value(
        "store (homing.db), certificates, run files (default: this file's directory)",
        "data_dir",
        _toml_string(_relative_text(config.data_dir, config_dir)),
    )
    lines += ["", "# TLS certificate chain (leaf first) and private key, PEM.", "[tls]"]
    lines += _comment_and_value(
        f'certificate chain, leaf first (default: "{DEFAULT_CERT}")',
        "cert",
        _toml_string(_relative_text(config.tls.cert, config.data_dir)),
    )
    lines += _comment_and_value(
        f'private key of the certificate (default: "{DEFAULT_KEY}")',
        "key",
        _toml_string(_relative_text(config.tls.key, config.data_dir)),
    )
    for section in _SECTIONS:
        values = getattr(config, section.name)
        defaults = section.model()
        lines += ["", f"# {section.comment}", f"[{section.name}]"]
        for key in section.keys:
            default = key.kind.render(getattr(defaults, key.name))
            comment = f"{key.comment} (default: {default})"
            value = key.kind.render(getattr(values, key.name))
            lines += _comment_and_value(comment, key.name, value)
    return "\n".join(lines) + "\n"


def _comment_and_value(comment: str, name: str, value: str) -> list[str]:
    return [f"# {comment}", f"{name} = {value}"]


def _relative_text(path: Path, base: Path | None) -> str:
    if base is None:
        return str(path)
    if path == base:
        return "."
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n"}
_TOML_ESCAPES |= {"\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string (TOML 1.0 §String): quote, backslash and control characters escaped."""

    def escape(char: str) -> str:
        if char in _TOML_ESCAPES:
            return _TOML_ESCAPES[char]
        if char < " " or char == "\x7f":
            return f"\\u{ord(char):04x}"
        return char

    return '"' + "".join(escape(char) for char in text) + '"'


def known_keys() -> tuple[str, ...]:
    """Every dotted key Homing reads, in file order (documentation and tests use it)."""
    keys = ["hostname", "domains", "data_dir", *(f"tls.{name}" for name in _TLS_KEYS)]
    for section in _SECTIONS:
        keys += [f"{section.name}.{key.name}" for key in section.keys]
    return tuple(keys)
