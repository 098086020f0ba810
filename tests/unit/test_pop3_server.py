"""Byte transcripts for the sans-I/O POP3 server core (proto.pop3.server)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pytest

from homing.proto import sasl
from homing.proto.pop3 import server as core
from tests.unit.test_sasl import ScramClient

PASSWORD = "s3cret pass"
SCRAM_KEYS = sasl.scram_derive(PASSWORD, b"0123456789abcdef", 4096)
MESSAGES = {
    101: b"Subject: one\r\nFrom: a@example.org\r\n\r\nline 1\r\n.dotted\r\nline 3\r\n",
    102: b"Subject: two\r\n\r\n..two dots\r\n.\r\nafter a lone dot\r\n",
    105: b"Subject: three\r\n\r\nbody\r\n",
}
TLS = core.Settings(tls_active=True)


@dataclass
class Driver:
    """Runs a core against a fake maildrop: user "alice" with three messages."""

    settings: core.Settings = field(default_factory=lambda: TLS)
    messages: dict[int, bytes] = field(default_factory=lambda: dict(MESSAGES))
    locked: bool = False
    update_ok: bool = True
    conn: core.ServerConnection = field(init=False)
    events: list[object] = field(default_factory=list)
    expunged: list[int] = field(default_factory=list)
    ahead: list[list[int]] = field(default_factory=list)
    """`queued_retrievals(8)` at each Retrieve event."""

    def __post_init__(self) -> None:
        self.conn = core.ServerConnection(
            self.settings, nonce=lambda: "SERVERNONCE", scram_secret=b"k"
        )

    def start(self) -> bytes:
        self.conn.start()
        return self.pump()

    def send(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        return self.pump()

    def pump(self) -> bytes:
        conn = self.conn
        while True:
            ev = conn.next_event()
            self.events.append(ev)
            if ev is core.NEED_DATA:
                break
            if isinstance(ev, core.StartTLS):
                conn.tls_established()
            elif isinstance(ev, core.CheckPassword):
                if ev.user == "alice" and ev.password == PASSWORD:
                    self._login()
                else:
                    conn.login_failed()
            elif isinstance(ev, core.NeedScramKeys):
                conn.scram_keys(SCRAM_KEYS if ev.user == "alice" else None)
            elif isinstance(ev, core.Authenticated):
                self._login()
            elif isinstance(ev, core.Retrieve):
                self.ahead.append(conn.queued_retrievals(8))
                data = self.messages.get(ev.uid)
                if data is None:
                    conn.retrieve_failed()
                else:
                    conn.send_message(data)
            elif isinstance(ev, core.Update):
                self.expunged.extend(ev.deleted_uids)
                conn.update_done(self.update_ok)
        return conn.data_to_send()

    def _login(self) -> None:
        if self.locked:
            self.conn.login_failed(in_use=True)
            return
        snapshot = [(uid, len(data)) for uid, data in self.messages.items()]
        self.conn.logged_in(snapshot, uidls=[f"77.{uid}" for uid in self.messages])

    def of(self, kind: type) -> list[object]:
        return [e for e in self.events if isinstance(e, kind)]


def session(**settings: object) -> Driver:
    d = Driver(core.Settings(**settings))  # type: ignore[arg-type]
    assert d.start() == b"+OK Homing POP3 server ready\r\n"
    return d


def logged_in() -> Driver:
    d = session(tls_active=True)
    out = d.send(f"USER alice\r\nPASS {PASSWORD}\r\n".encode())
    assert out == b"+OK Send PASS\r\n+OK Logged in, 3 messages (135 octets)\r\n"
    return d


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# ------------------------------------------------------------------------------ transcripts

TRANSCRIPTS: list[tuple[str, dict[str, object], list[tuple[bytes, bytes]]]] = [
    (
        "capa before TLS: no USER, no SASL, STLS offered",
        {"starttls": True},
        [
            (
                b"CAPA\r\n",
                b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
                b"PIPELINING\r\nEXPIRE NEVER\r\nSTLS\r\nIMPLEMENTATION Homing\r\n.\r\n",
            ),
            (b"USER alice\r\n", b"-ERR [AUTH] Plaintext authentication disallowed without TLS\r\n"),
            (b"PASS x\r\n", b"-ERR Send USER first\r\n"),
            (b"AUTH PLAIN\r\n", b"-ERR [AUTH] Plaintext authentication disallowed without TLS\r\n"),
            (b"AUTH\r\n", b"+OK Available mechanisms\r\n.\r\n"),
        ],
    ),
    (
        "STLS, with pipelined commands discarded unanswered, then CAPA changes",
        {"starttls": True},
        [
            (b"STLS\r\nUSER alice\r\nCAPA\r\n", b"+OK Begin TLS negotiation\r\n"),
            (
                b"CAPA\r\n",
                b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
                b"PIPELINING\r\nEXPIRE NEVER\r\nUSER\r\nSASL SCRAM-SHA-256 PLAIN LOGIN\r\n"
                b"IMPLEMENTATION Homing\r\n.\r\n",
            ),
            (b"STLS\r\n", b"-ERR TLS already active\r\n"),
        ],
    ),
    (
        "STLS not offered",
        {},
        [
            (b"STLS\r\n", b"-ERR STLS not available\r\n"),
            (b"STLS now\r\n", b"-ERR Syntax error in arguments\r\n"),
        ],
    ),
    (
        "plaintext allowed: USER/PASS without TLS, wrong password",
        {"allow_plaintext_auth": True},
        [
            (b"user alice\r\n", b"+OK Send PASS\r\n"),
            (b"pass nope\r\n", b"-ERR [AUTH] Authentication failed\r\n"),
            (b"PASS nope\r\n", b"-ERR Send USER first\r\n"),
            (
                b"USER alice\r\nNOOP\r\nPASS x\r\n",
                b"+OK Send PASS\r\n-ERR Not logged in\r\n-ERR Send USER first\r\n",
            ),
        ],
    ),
    (
        "commands before login get -ERR and no data",
        {"tls_active": True, "max_errors": 50},
        [
            (b"STAT\r\n", b"-ERR Not logged in\r\n"),
            (b"LIST\r\n", b"-ERR Not logged in\r\n"),
            (b"RETR 1\r\n", b"-ERR Not logged in\r\n"),
            (b"TOP 1 0\r\n", b"-ERR Not logged in\r\n"),
            (b"UIDL\r\n", b"-ERR Not logged in\r\n"),
            (b"DELE 1\r\n", b"-ERR Not logged in\r\n"),
            (b"NOOP\r\n", b"-ERR Not logged in\r\n"),
            (b"APOP alice 0123456789abcdef0123456789abcdef\r\n", b"-ERR APOP not supported\r\n"),
            (b"HELO\r\n", b"-ERR Unknown command\r\n"),
            (b"\r\n", b"-ERR Unknown command\r\n"),
            (b"L\xc4\xb1ST\r\n", b"-ERR Unknown command\r\n"),  # "lıst".upper() == "LIST"
            (b"\xff\xfe\r\n", b"-ERR Command is not valid UTF-8\r\n"),
        ],
    ),
    (
        "AUTH PLAIN with and without initial response, bare LF lines",
        {"tls_active": True},
        [
            (b"AUTH PLAIN\n", b"+ \r\n"),
            (b"*\n", b"-ERR Authentication cancelled\r\n"),
            (b"AUTH PLAIN !!!!\r\n", b"-ERR Invalid authentication data\r\n"),
            (
                b"AUTH PLAIN " + b64(b"root\0alice\0" + PASSWORD.encode()) + b"\r\n",
                b"-ERR [AUTH] Authorization identity not permitted\r\n",
            ),
            (
                b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n",
                b"-ERR [AUTH] Authentication failed\r\n",
            ),
            (b"AUTH CRAM-MD5\r\n", b"-ERR Unsupported authentication mechanism\r\n"),
            (b"AUTH PLAIN a b\r\n", b"-ERR Syntax error in arguments\r\n"),
            (b"AUTH PLAIN\r\n", b"+ \r\n"),
            (
                b64(b"alice\0alice\0" + PASSWORD.encode()) + b"\r\n",
                b"+OK Logged in, 3 messages (135 octets)\r\n",
            ),
            (b"AUTH PLAIN\r\n", b"-ERR Already logged in\r\n"),
            (b"USER alice\r\n", b"-ERR Already logged in\r\n"),
        ],
    ),
    (
        "AUTH LOGIN, and the AUTH listing",
        {"tls_active": True, "mechanisms": ("PLAIN", "LOGIN")},
        [
            (b"AUTH\r\n", b"+OK Available mechanisms\r\nPLAIN\r\nLOGIN\r\n.\r\n"),
            (b"AUTH SCRAM-SHA-256\r\n", b"-ERR Unsupported authentication mechanism\r\n"),
            (b"AUTH login\r\n", b"+ VXNlcm5hbWU6\r\n"),
            (b"YWxpY2U=\r\n", b"+ UGFzc3dvcmQ6\r\n"),
            (b64(PASSWORD.encode()) + b"\r\n", b"+OK Logged in, 3 messages (135 octets)\r\n"),
        ],
    ),
    (
        "AUTH LOGIN with initial response, cancelled at the password",
        {"tls_active": True},
        [
            (b"AUTH LOGIN YWxpY2U=\r\n", b"+ UGFzc3dvcmQ6\r\n"),
            (b"*\r\n", b"-ERR Authentication cancelled\r\n"),
            (b"STAT\r\n", b"-ERR Not logged in\r\n"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("settings", "exchanges"), [t[1:] for t in TRANSCRIPTS], ids=[t[0] for t in TRANSCRIPTS]
)
def test_transcript(settings: dict[str, object], exchanges: list[tuple[bytes, bytes]]) -> None:
    d = session(**settings)
    for sent, expected in exchanges:
        assert d.send(sent) == expected, sent


def test_transaction_commands() -> None:
    d = logged_in()
    assert d.send(b"STAT\r\n") == b"+OK 3 135\r\n"
    assert d.send(b"LIST\r\n") == b"+OK 3 messages (135 octets)\r\n1 62\r\n2 49\r\n3 24\r\n.\r\n"
    assert d.send(b"LIST 2\r\n") == b"+OK 2 49\r\n"
    assert (
        d.send(b"UIDL\r\n")
        == b"+OK 3 messages (135 octets)\r\n1 77.101\r\n2 77.102\r\n3 77.105\r\n.\r\n"
    )
    assert d.send(b"uidl 3\r\n") == b"+OK 3 77.105\r\n"
    assert d.send(b"NOOP\r\n") == b"+OK\r\n"
    assert d.send(b"DELE 1\r\n") == b"+OK Message 1 deleted\r\n"
    assert d.send(b"DELE 1\r\n") == b"-ERR Message already deleted\r\n"
    assert d.send(b"RETR 1\r\n") == b"-ERR Message already deleted\r\n"
    assert d.send(b"TOP 1 0\r\n") == b"-ERR Message already deleted\r\n"
    assert d.send(b"LIST 1\r\n") == b"-ERR Message already deleted\r\n"
    assert d.send(b"STAT\r\n") == b"+OK 2 73\r\n"
    assert d.send(b"LIST\r\n") == b"+OK 2 messages (73 octets)\r\n2 49\r\n3 24\r\n.\r\n"
    assert d.send(b"RSET\r\n") == b"+OK Maildrop has 3 messages (135 octets)\r\n"
    assert d.send(b"STAT\r\n") == b"+OK 3 135\r\n"
    assert d.send(b"DELE 3\r\nDELE 1\r\n") == b"+OK Message 3 deleted\r\n+OK Message 1 deleted\r\n"
    assert d.of(core.Update) == []
    assert d.send(b"QUIT\r\n") == b"+OK Bye, 2 messages deleted\r\n"
    assert d.of(core.Update) == [core.Update((101, 105))]
    assert d.expunged == [101, 105]
    assert d.conn.closed and d.of(core.Closed) == [core.Closed("quit")]


def test_retr_byte_stuffs_and_terminates() -> None:
    d = logged_in()
    assert d.send(b"RETR 1\r\n") == (
        b"+OK 62 octets\r\nSubject: one\r\nFrom: a@example.org\r\n\r\nline 1\r\n..dotted\r\n"
        b"line 3\r\n.\r\n"
    )
    assert d.send(b"RETR 2\r\n") == (
        b"+OK 49 octets\r\nSubject: two\r\n\r\n...two dots\r\n..\r\nafter a lone dot\r\n.\r\n"
    )
    assert d.of(core.Retrieve) == [core.Retrieve(1, 101, None), core.Retrieve(2, 102, None)]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (b"0", b"Subject: one\r\nFrom: a@example.org\r\n\r\n"),
        (b"1", b"Subject: one\r\nFrom: a@example.org\r\n\r\nline 1\r\n"),
        (b"2", b"Subject: one\r\nFrom: a@example.org\r\n\r\nline 1\r\n..dotted\r\n"),
        (
            b"99999999999",
            b"Subject: one\r\nFrom: a@example.org\r\n\r\nline 1\r\n..dotted\r\nline 3\r\n",
        ),
    ],
)
def test_top(lines: bytes, expected: bytes) -> None:
    d = logged_in()
    out = d.send(b"TOP 1 " + lines + b"\r\n")
    assert out == b"+OK Top of message follows\r\n" + expected + b".\r\n"
    assert d.of(core.Retrieve)[-1] == core.Retrieve(1, 101, int(lines))


@pytest.mark.parametrize(
    ("message", "top", "wire"),
    [
        (b"", None, b""),
        (b"no final line end", None, b"no final line end\r\n"),
        (b".starts with a dot", None, b"..starts with a dot\r\n"),
        (b"bare\nline\rends\r\n.\n", None, b"bare\r\nline\r\nends\r\n..\r\n"),
        (b"Header: only\r\n", 0, b"Header: only\r\n"),
        (b"\r\nbody first\r\nsecond\r\n", 1, b"\r\nbody first\r\n"),
        (b"H: v\r\n\r\n.a\r\n.b\r\n", 5, b"H: v\r\n\r\n..a\r\n..b\r\n"),
    ],
)
def test_message_normalising(message: bytes, top: int | None, wire: bytes) -> None:
    d = logged_in()
    d.messages[101] = message
    out = d.send(b"RETR 1\r\n" if top is None else b"TOP 1 %d\r\n" % top)
    assert out.split(b"\r\n", 1)[1] == wire + b".\r\n"


@pytest.mark.parametrize(
    ("message", "ready"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", True),
        (b"\r\n", True),
        (b"a\r\n\r\n\r\n", True),
        (b"a\r\nb. c.\r\n", True),
        (b"", False),  # no final CRLF
        (b"a\r\nb", False),
        (b"a\r\nb\r", False),
        (b"a\nb\r\n", False),  # bare LF
        (b"\nb\r\n", False),
        (b"a\rb\r\n", False),  # bare CR
        (b"a\r\r\n", False),
        (b"a\n\r\n", False),
        (b".a\r\n", False),  # a line starting with "."
        (b"a\r\n.\r\n", False),
        (b"a\r\n..b\r\n", False),
    ],
)
def test_wire_ready(message: bytes, ready: bool) -> None:
    """Only a message that normalising and byte-stuffing would leave alone is sent as is."""
    assert core._wire_ready(message) is ready
    if ready:
        assert core._stuff(core._normalise(message)) == message


def test_queued_retrievals_name_pipelined_messages() -> None:
    d = logged_in()
    d.send(
        b"RETR 1\r\nRETR 3\r\nNOOP\r\nTOP 2 5\r\nretr 3\r\nRETR 9\r\nRETR x\r\n"
        b"DELE 3\r\nRETR 3\r\nRETR 2"
    )
    # At each Retrieve, the complete RETR/TOP lines behind it (not yet handled: DELE 3 is not
    # yet done), without out-of-range numbers, syntax errors or the unfinished last line.
    assert d.ahead == [[105, 102, 105, 105], [102, 105, 105], [105, 105], [105]]
    assert d.of(core.Retrieve) == [
        core.Retrieve(1, 101, None),
        core.Retrieve(3, 105, None),
        core.Retrieve(2, 102, 5),
        core.Retrieve(3, 105, None),
    ]
    d.send(b"\r\n")
    assert d.ahead[-1] == [] and d.of(core.Retrieve)[-1] == core.Retrieve(2, 102, None)


def test_queued_retrievals_skip_deleted_and_stop_at_the_limit() -> None:
    d = logged_in()
    d.send(b"DELE 2\r\nRETR 1\r\nRETR 2\r\nRETR 3\r\n")
    assert d.ahead[0] == [105]
    conn = logged_in().conn
    conn.receive_data(b"RETR 1\r\nRETR 2\r\nTOP 3 0\r\n")
    assert conn.next_event() == core.Retrieve(1, 101, None)
    assert conn.queued_retrievals(1) == [102]
    assert conn.queued_retrievals(0) == []
    assert conn.queued_retrievals(5) == [102, 105]


def test_queued_retrievals_only_in_transaction() -> None:
    d = session(tls_active=True)
    d.conn.receive_data(b"RETR 1\r\n")
    assert d.conn.queued_retrievals(8) == []


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"RETR 0", b"-ERR No such message"),
        (b"RETR 4", b"-ERR No such message"),
        (b"RETR 4294967296", b"-ERR No such message"),
        (b"RETR 99999999999999999999999", b"-ERR Syntax error in arguments"),
        (b"RETR -1", b"-ERR Syntax error in arguments"),
        (b"RETR +1", b"-ERR Syntax error in arguments"),
        (b"RETR \xd9\xa1", b"-ERR Syntax error in arguments"),  # ARABIC-INDIC DIGIT ONE
        (b"RETR", b"-ERR Syntax error in arguments"),
        (b"RETR 1 2", b"-ERR Syntax error in arguments"),
        (b"TOP 1 -1", b"-ERR Syntax error in arguments"),
        (b"TOP 1", b"-ERR Syntax error in arguments"),
        (b"TOP 0 1", b"-ERR No such message"),
        (b"DELE x", b"-ERR Syntax error in arguments"),
        (b"LIST 1 2", b"-ERR Syntax error in arguments"),
        (b"UIDL 0", b"-ERR No such message"),
        (b"STAT 1", b"-ERR Syntax error in arguments"),
        (b"NOOP x", b"-ERR Syntax error in arguments"),
        (b"XTND XMIT", b"-ERR Unknown command"),
        (b"STLS", b"-ERR Already logged in"),
        (b"PASS x", b"-ERR Already logged in"),
        (b"APOP a b", b"-ERR Already logged in"),
    ],
)
def test_bad_transaction_commands(command: bytes, reply: bytes) -> None:
    d = logged_in()
    assert d.send(command + b"\r\n") == reply + b"\r\n"
    assert d.of(core.Retrieve) == []
    assert d.send(b"STAT\r\n") == b"+OK 3 135\r\n"  # nothing changed


def test_retrieve_failure_is_temporary() -> None:
    d = logged_in()
    del d.messages[102]
    assert d.send(b"RETR 2\r\n") == b"-ERR [SYS/TEMP] Message unavailable, try again later\r\n"
    assert d.conn.errors == 0


def test_update_failure() -> None:
    d = logged_in()
    d.update_ok = False
    assert d.send(b"DELE 2\r\nQUIT\r\n") == (
        b"+OK Message 2 deleted\r\n-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
    )
    assert d.conn.closed


def test_quit_in_authorization_closes_without_update() -> None:
    d = session()
    assert d.send(b"QUIT\r\n") == b"+OK Bye\r\n"
    assert d.of(core.Update) == [] and d.of(core.Closed) == [core.Closed("quit")]
    assert d.send(b"NOOP\r\n") == b""


def test_dropped_connection_in_transaction_deletes_nothing() -> None:
    d = logged_in()
    assert d.send(b"DELE 1\r\nDELE 2\r\n") == b"+OK Message 1 deleted\r\n+OK Message 2 deleted\r\n"
    assert d.send(b"") == b""
    assert d.of(core.Update) == []
    assert d.of(core.Closed) == [core.Closed("peer closed the connection")]


def test_timeout_and_shutdown_do_not_update() -> None:
    d = logged_in()
    d.send(b"DELE 1\r\n")
    d.conn.timed_out()
    assert d.pump() == b"-ERR Autologout; idle for too long\r\n"
    assert d.of(core.Update) == [] and d.of(core.Closed) == [core.Closed("timeout")]
    d = logged_in()
    d.conn.shutdown()
    assert d.pump() == b"-ERR [SYS/TEMP] Server shutting down\r\n"
    assert d.of(core.Update) == []


def test_pipelined_session_in_one_read() -> None:
    d = session(tls_active=True)
    out = d.send(f"CAPA\r\nUSER alice\r\nPASS {PASSWORD}\r\nSTAT\r\nDELE 3\r\nQUIT\r\n".encode())
    assert out.count(b"\r\n.\r\n") == 1  # the CAPA list
    assert out.endswith(
        b"+OK Send PASS\r\n+OK Logged in, 3 messages (135 octets)\r\n+OK 3 135\r\n"
        b"+OK Message 3 deleted\r\n+OK Bye, 1 messages deleted\r\n"
    )
    assert d.expunged == [105]


def test_split_reads_byte_by_byte() -> None:
    d = session(tls_active=True)
    out = b""
    for byte in f"USER alice\r\nPASS {PASSWORD}\r\nRETR 3\r\n".encode():
        out += d.send(bytes([byte]))
    assert out.endswith(b"+OK 24 octets\r\nSubject: three\r\n\r\nbody\r\n.\r\n")


def test_password_keeps_its_spaces() -> None:
    d = session(tls_active=True)
    assert d.send(b"USER alice\r\nPASS  s3cret pass\r\n").endswith(
        b"-ERR [AUTH] Authentication failed\r\n"
    )
    assert d.send(b"USER  alice \r\nPASS s3cret pass\r\n").endswith(
        b"+OK Logged in, 3 messages (135 octets)\r\n"
    )
    checks = d.of(core.CheckPassword)
    assert [c.password for c in checks] == [" s3cret pass", "s3cret pass"]  # type: ignore[attr-defined]
    assert "s3cret" not in repr(checks[0])


def test_in_use_maildrop() -> None:
    d = session(tls_active=True)
    d.locked = True
    out = d.send(f"USER alice\r\nPASS {PASSWORD}\r\n".encode())
    assert out.endswith(b"-ERR [IN-USE] Maildrop already locked by another session\r\n")
    out = d.send(b"AUTH PLAIN " + b64(b"\0alice\0" + PASSWORD.encode()) + b"\r\n")
    assert out == b"-ERR [IN-USE] Maildrop already locked by another session\r\n"
    assert d.conn.state is core.State.AUTHORIZATION
    d.locked = False
    assert d.send(f"USER alice\r\nPASS {PASSWORD}\r\n".encode()).endswith(b"(135 octets)\r\n")


def test_temporary_login_failure() -> None:
    d2 = session(tls_active=True)
    d2.conn.receive_data(b"USER alice\r\nPASS x\r\n")
    ev = d2.conn.next_event()
    assert isinstance(ev, core.CheckPassword)
    with pytest.raises(RuntimeError):
        d2.conn.next_event()  # the verdict comes first
    with pytest.raises(RuntimeError):
        d2.conn.send_message(b"x")  # and it must be the right one
    d2.conn.login_failed(temporary=True)
    assert d2.conn.data_to_send().endswith(
        b"-ERR [SYS/TEMP] Temporary failure, try again later\r\n"
    )


# ------------------------------------------------------------------------------ SCRAM


def scram_session(client: ScramClient, *, initial: bool) -> tuple[Driver, bytes]:
    d = session(tls_active=True)
    if initial:
        out = d.send(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n")
    else:
        assert d.send(b"AUTH SCRAM-SHA-256\r\n") == b"+ \r\n"
        out = d.send(b64(client.first()) + b"\r\n")
    assert out.startswith(b"+ ") and out.endswith(b"\r\n")
    server_first = base64.b64decode(out[2:-2])
    assert server_first.startswith(f"r={client.nonce}SERVERNONCE,".encode())
    return d, d.send(b64(client.final(server_first)) + b"\r\n")


@pytest.mark.parametrize("initial", [True, False])
def test_scram_login(initial: bool) -> None:
    client = ScramClient("alice", PASSWORD)
    d, out = scram_session(client, initial=initial)
    # RFC 5034 §4: no data with +OK, so the server signature is a last challenge.
    assert out.startswith(b"+ ") and client.verify(base64.b64decode(out[2:-2]))
    assert d.of(core.Authenticated) == []
    assert d.send(b"\r\n") == b"+OK Logged in, 3 messages (135 octets)\r\n"
    assert d.of(core.Authenticated) == [core.Authenticated("alice", None, "SCRAM-SHA-256")]


def test_scram_final_challenge_needs_an_empty_answer() -> None:
    d, _ = scram_session(ScramClient("alice", PASSWORD), initial=True)
    assert d.send(b"QUIT\r\n") == b"-ERR Invalid authentication data\r\n"
    assert d.of(core.Authenticated) == [] and d.conn.state is core.State.AUTHORIZATION
    d, _ = scram_session(ScramClient("alice", PASSWORD), initial=True)
    assert d.send(b"*\r\n") == b"-ERR Authentication cancelled\r\n"


@pytest.mark.parametrize("user", ["alice", "mallory"])
def test_scram_wrong_password_or_unknown_user_look_alike(user: str) -> None:
    d, out = scram_session(ScramClient(user, "guess"), initial=True)
    assert out == b"-ERR [AUTH] Authentication failed\r\n"
    assert d.of(core.NeedScramKeys) == [core.NeedScramKeys(user)]


def test_scram_garbage_client_first() -> None:
    d = session(tls_active=True)
    assert (
        d.send(b"AUTH SCRAM-SHA-256 " + b64(b"garbage") + b"\r\n")
        == b"-ERR Invalid authentication data\r\n"
    )
    assert d.send(b"AUTH SCRAM-SHA-256 " + b64(b"p=tls-unique,,n=a,r=b") + b"\r\n") == (
        b"-ERR [AUTH] Authentication failed\r\n"
    )


# ------------------------------------------------------------------------------ limits


def test_command_line_limit_is_255_octets() -> None:
    d = logged_in()
    assert d.send(b"NOOP" + b" " * 249 + b"\r\n") == b"+OK\r\n"  # 255 with CRLF
    assert d.send(b"NOOP" + b" " * 250 + b"\r\nSTAT\r\n") == b"-ERR Line too long\r\n+OK 3 135\r\n"
    assert d.send(b"X" * 300) == b"-ERR Line too long\r\n"
    assert d.send(b"Y" * 300 + b"\r\nNOOP\r\n") == b"+OK\r\n"


def test_auth_lines_may_be_long() -> None:
    d = session(tls_active=True)
    big = b64(b"\0alice\0" + b"p" * 5000)
    assert d.send(b"AUTH PLAIN " + big + b"\r\n") == b"-ERR [AUTH] Authentication failed\r\n"
    assert (
        d.send(b"AUTH PLAIN\r\n" + big + b"\r\n") == b"+ \r\n-ERR [AUTH] Authentication failed\r\n"
    )
    out = d.send(b"AUTH PLAIN\r\n" + b"A" * 13000 + b"\r\nNOOP\r\n")
    assert out == b"+ \r\n-ERR Authentication response too long\r\n-ERR Not logged in\r\n"


def test_endless_line_closes() -> None:
    d = session()
    for _ in range(70):
        d.send(b"Z" * 1024)
    assert d.conn.closed
    assert d.of(core.Closed) == [core.Closed("endless line")]


def test_too_many_errors_closes() -> None:
    d = session(max_errors=10)
    out = d.send(b"BOGUS\r\n" * 12)
    assert out == b"-ERR Unknown command\r\n" * 10 + b"-ERR Too many errors, closing connection\r\n"
    assert d.of(core.Closed) == [core.Closed("too many errors")]


def test_failed_logins_count_as_errors() -> None:
    d = session(tls_active=True, max_errors=3)
    out = d.send(b"USER a\r\nPASS b\r\n" * 3)
    assert out.endswith(
        b"-ERR [AUTH] Authentication failed\r\n-ERR Too many errors, closing connection\r\n"
    )
    assert d.conn.closed


# ------------------------------------------------------------------------------ adapter contract


def test_logged_in_validates_the_snapshot() -> None:
    d = session(tls_active=True)
    d.conn.receive_data(f"USER alice\r\nPASS {PASSWORD}\r\n".encode())
    assert isinstance(d.conn.next_event(), core.CheckPassword)
    with pytest.raises(ValueError, match="UIDL"):
        d.conn.logged_in([(1, 10)], uidls=["has space"])
    with pytest.raises(ValueError, match="unique"):
        d.conn.logged_in([(1, 10), (2, 10)], uidls=["a", "a"])
    with pytest.raises(ValueError, match="one UIDL per message"):
        d.conn.logged_in([(1, 10), (2, 10)], uidls=["a"])
    d.conn.logged_in([(7, 10)])  # default UIDL is the uid
    d.conn.receive_data(b"UIDL\r\n")
    assert d.conn.next_event() is core.NEED_DATA
    assert d.conn.data_to_send().endswith(b"+OK 1 messages (10 octets)\r\n1 7\r\n.\r\n")


def test_verdicts_after_close_are_ignored() -> None:
    d = logged_in()
    d.conn.receive_data(b"RETR 1\r\n")
    assert isinstance(d.conn.next_event(), core.Retrieve)
    d.conn.receive_data(b"")
    d.conn.send_message(b"late")
    assert d.conn.data_to_send() == b""
    assert d.conn.next_event() == core.Closed("peer closed the connection")
    assert d.conn.next_event() is core.NEED_DATA


def test_settings_refuse_unknown_mechanisms() -> None:
    with pytest.raises(ValueError, match="CRAM-MD5"):
        core.Settings(mechanisms=("CRAM-MD5",))


def test_start_twice_and_tls_outside_stls_are_bugs() -> None:
    d = session()
    with pytest.raises(RuntimeError):
        d.conn.start()
    with pytest.raises(RuntimeError):
        d.conn.tls_established()
