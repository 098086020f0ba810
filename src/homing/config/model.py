"""The configuration model: frozen dataclasses, one docstring per field.

Built once by `config.load` from the TOML file, validated there, and passed in to
every component that needs it (never a global). Sizes are bytes, durations seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")

#: Services whose listeners speak TLS from the first byte (RFC 8314).
IMPLICIT_TLS_SERVICES = frozenset({"submissions", "imaps", "pop3s"})


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One "host:port" listening address. Port 0 asks the OS for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """`[listen]`: the addresses of each service; an empty list turns the service off."""

    smtp: tuple[ListenAddress, ...] = ()
    """Port 25: mail from the Internet for local domains (no relay, no AUTH)."""
    submission: tuple[ListenAddress, ...] = ()
    """Port 587: mail from users' clients, STARTTLS then AUTH (RFC 6409)."""
    submissions: tuple[ListenAddress, ...] = ()
    """Port 465: submission over implicit TLS (RFC 8314)."""
    imap: tuple[ListenAddress, ...] = ()
    """Port 143: IMAP with STARTTLS."""
    imaps: tuple[ListenAddress, ...] = ()
    """Port 993: IMAP over implicit TLS."""
    pop3: tuple[ListenAddress, ...] = ()
    """Port 110: POP3 with STLS."""
    pop3s: tuple[ListenAddress, ...] = ()
    """Port 995: POP3 over implicit TLS."""

    def for_service(self, service: str) -> tuple[ListenAddress, ...]:
        value: tuple[ListenAddress, ...] = getattr(self, service)
        return value


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """`[tls]`: the certificate chain and key every TLS listener presents."""

    cert: Path
    """PEM certificate chain (leaf first). Relative paths are relative to the data directory."""
    key: Path
    """PEM private key for `cert`."""


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """`[limits]`: resource limits on every connection."""

    message_size: int = 50 * 1024 * 1024
    """Largest message accepted, in bytes, advertised as SIZE (RFC 1870). 50 MiB."""
    recipients: int = 1000
    """Recipients per message; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8 asks for at least 100)."""
    command_line: int = 512
    """Longest SMTP command line including CRLF (RFC 5321 §4.5.3.1.4); longer gets 500 5.5.2."""
    text_line: int = 65536
    """Longest line inside a message. RFC 5321 §4.5.3.1.6 says 1000, but real mail breaks it often,
    so the default only stops abuse; longer lines make the message fail with 552 5.3.4."""
    connections_per_ip: int = 20
    """Simultaneous connections from one IP address, per service; more get 421 4.7.0."""
    connections: int = 2000
    """Simultaneous connections in all; more are refused with 421 4.7.0."""
    command_timeout: float = 300.0
    """Seconds to wait for a complete command line (RFC 5321 §4.5.3.2.7: 5 minutes)."""
    data_timeout: float = 300.0
    """Seconds without any message data before the session is dropped with 421 4.4.2."""
    max_errors: int = 20
    """Protocol errors and unknown commands in one session before 421 4.7.0 and disconnect."""


@dataclass(frozen=True, slots=True)
class SMTPConfig:
    """`[smtp]`: behaviour of the receiving SMTP server (port 25)."""

    greet_pause: float = 0.0
    """Seconds to wait before the greeting; a client that talks first is dropped with 554 5.5.0.
    0 still catches bytes that are already waiting when the greeting is sent."""
    max_received_headers: int = 50
    """More Received headers than this is a loop (RFC 5321 §6.3): 554 5.4.0."""
    banner: str = "ESMTP Homing"
    """Text after the hostname in the 220 greeting."""
    workers: int = 0
    """Worker processes that serve port 25 (`homing.workers`); 0: the main process does."""


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """`[auth]`: brute-force protection for every login (SMTP AUTH, IMAP, POP3).

    Failures are counted per client IP (IPv6 per /64) and per account over a sliding minute.
    The first three are answered at once; each one after that waits `failure_delay` longer
    (at most ten times it). An IP reaching `failures_per_ip` in a minute is locked out for
    `lockout`; accounts are never locked (that would let anyone lock a user out)."""

    failures_per_ip: int = 10
    """Failed logins from one IP within a minute that lock it out."""
    failure_delay: float = 1.0
    """Extra wait added to the answer of each failure after the third."""
    lockout: float = 300.0
    """How long a locked-out IP's logins are refused without being checked."""


@dataclass(frozen=True, slots=True)
class POP3Config:
    """`[pop3]`: the POP3 server (ports 110 and 995)."""

    idle_timeout: float = 600.0
    """Seconds without a command before the session is closed without deleting anything
    (RFC 1939 §3: the autologout timer is at least 10 minutes)."""
    allow_plaintext_loopback: bool = False
    """Allow USER/PASS and AUTH without TLS from loopback addresses (127.0.0.0/8, ::1), e.g.
    for a local fetch script. Elsewhere a password never crosses the network unencrypted."""


@dataclass(frozen=True, slots=True)
class IMAPConfig:
    """`[imap]`: the IMAP server (ports 143 and 993)."""

    idle_timeout: float = 1800.0
    """Seconds without a command before the session is closed (RFC 9051 §5.4: the
    inactivity autologout timer is at least 30 minutes). A client in IDLE is never timed
    out: it hears "* OK Still here" every two minutes instead."""
    allow_plaintext_loopback: bool = False
    """Allow LOGIN and AUTHENTICATE without TLS from loopback addresses (127.0.0.0/8, ::1),
    e.g. for a local webmail or sync script. Elsewhere passwords only travel under TLS."""


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    """`[submission]`: mail from your users' programs (ports 587 and 465, RFC 6409)."""

    from_check: str = "reject"
    """"reject": the From header must name only addresses the account owns (550 5.7.1
    otherwise); "off": any From is passed on (the envelope sender is always checked)."""
    hide_client: bool = False
    """Leave the client's IP address and HELO name out of the Received header."""
    grants: tuple[tuple[str, str], ...] = ()
    """(account, sender) pairs: the account may also use sender as MAIL FROM and From; sender
    is an address or "*@domain"."""


@dataclass(frozen=True, slots=True)
class DNSConfig:
    """`[dns]`: how Homing resolves names (MX, A/AAAA)."""

    nameservers: tuple[ListenAddress, ...] = ()
    """"host:port" of DNS servers to ask instead of the system resolver (/etc/resolv.conf)."""
    timeout: float = 5.0
    """Seconds before one DNS query is abandoned (the lookup is then deferred, never guessed)."""


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """`[outbound]`: how mail for remote domains is sent (the SMTP client)."""

    port: int = 25
    """Port of the remote mail exchangers (25; another value is for tests and odd networks)."""
    helo_name: str = ""
    """Name sent in EHLO/HELO; empty means `hostname`."""
    require_tls: bool = False
    """Never send mail in clear: a server without STARTTLS is deferred instead. Off by
    default: opportunistic TLS (RFC 7435) is used whenever a server offers it."""
    ipv6: bool = True
    """Connect to IPv6 addresses of mail exchangers (turn off on hosts without IPv6)."""
    connect_timeout: float = 30.0
    """Seconds to wait for a TCP connection to a mail exchanger before trying the next."""
    max_mx: int = 5
    """Mail exchangers tried at most per delivery attempt (RFC 5321 §5.1)."""
    max_sessions_per_attempt: int = 2
    """SMTP sessions that get past the greeting, at most, per delivery attempt (as Postfix's
    smtp_mx_session_limit); connections that fail earlier do not count."""
    smarthost: str = ""
    """Send all outbound mail through this relay host (name or IP address) instead of
    looking up MX records; empty: deliver directly."""
    smarthost_port: int = 587
    """Port of the smarthost."""
    smarthost_tls: str = "starttls"
    """"starttls" (required), "implicit" (TLS from the first byte, port 465),
    "opportunistic" (STARTTLS when offered) or "none"."""
    smarthost_tls_verify: bool = True
    """Check the smarthost's certificate against the system's CAs and its name."""
    smarthost_username: str = ""
    """AUTH PLAIN user name for the smarthost (RFC 4954); empty: no AUTH."""
    smarthost_password_file: str = ""
    """File holding the smarthost password (first line); relative to data_dir."""

    def password_path(self, data_dir: Path) -> Path | None:
        if not self.smarthost_password_file:
            return None
        path = Path(self.smarthost_password_file).expanduser()
        return path if path.is_absolute() else data_dir / path


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """`[queue]`: when queued mail is retried, when its sender is warned, when it is returned."""

    first_retry: float = 15 * 60.0
    """Wait after the first failed attempt; also the shortest wait between two attempts."""
    max_interval: float = 3600.0
    """Longest wait between two attempts (the wait grows x1.5 per attempt up to this)."""
    warn_after: float = 4 * 3600.0
    """Send the sender one delay warning (DSN) after this long in the queue; 0: never."""
    give_up_after: float = 5 * 86400.0
    """Return the message to its sender (failure DSN) after this long in the queue."""
    concurrency: int = 20
    """Delivery connections open at the same time, all destinations together."""
    destination_concurrency: int = 5
    """...of which to one destination domain at most."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """`[log]`: what goes to standard error."""

    level: str = "info"
    """One of debug, info, warning, error."""


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of one Homing instance."""

    hostname: str
    """This server's name: greeting, EHLO reply, Received headers. Must resolve to it for others."""
    data_dir: Path
    """Where the store (homing.db), certificates and run files live."""
    tls: TLSConfig
    domains: tuple[str, ...] = ()
    """Local domains, always served (more can be added at run time with `homing domain add`)."""
    listen: ListenConfig = field(default_factory=ListenConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    imap: IMAPConfig = field(default_factory=IMAPConfig)
    pop3: POP3Config = field(default_factory=POP3Config)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    log: LogConfig = field(default_factory=LogConfig)
    config_path: Path | None = None
    """The file this was loaded from, if any (not a TOML key)."""

    @property
    def db_path(self) -> Path:
        return self.data_dir / "homing.db"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"
