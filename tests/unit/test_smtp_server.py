"""Byte transcripts for the sans-I/O SMTP server core (proto.smtp.server)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from homing.proto.smtp import codes
from homing.proto.smtp import server as core

HOST = "mx.local.test"


@dataclass
class Driver:
    """Runs a core with a tiny policy: recipients @local.test are accepted, others refused."""

    settings: core.Settings = field(default_factory=lambda: core.Settings(hostname=HOST))
    conn: core.ServerConnection = field(init=False)
    messages: list[core.MessageReceived] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    closed: str | None = None

    def __post_init__(self) -> None:
        self.conn = core.ServerConnection(self.settings)

    def start(self, early: bytes = b"") -> bytes:
        if early:
            self.conn.receive_data(early)
        self.conn.start()
        return self.pump()

    def send(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        return self.pump()

    def pump(self) -> bytes:
        while True:
            ev = self.conn.next_event()
            self.events.append(ev)
            if ev is core.NEED_DATA:
                break
            if isinstance(ev, core.MailFrom):
                self.conn.respond(codes.SENDER_OK)
            elif isinstance(ev, core.RcptTo):
                mb = ev.args.path.mailbox
                ok = mb is not None and mb.domain == "local.test"
                self.conn.respond(codes.RECIPIENT_OK if ok else codes.RELAY_DENIED)
            elif isinstance(ev, core.MessageReceived):
                self.messages.append(ev)
                self.conn.respond(codes.MESSAGE_ACCEPTED)
            elif isinstance(ev, core.StartTLS):
                self.conn.tls_established()
            elif isinstance(ev, core.Closed):
                self.closed = ev.reason
        return self.conn.data_to_send()


def codes_of(out: bytes) -> list[str]:
    """The final-line reply codes in `out`, e.g. ["250", "354"]."""
    return [c.decode() for c in re.findall(rb"^(\d{3}) ", out, re.MULTILINE)]


def session(**settings: object) -> Driver:
    d = Driver(core.Settings(hostname=HOST, **settings))  # type: ignore[arg-type]
    assert d.start().startswith(b"220 " + HOST.encode())
    return d


def transaction(d: Driver, body: bytes) -> bytes:
    out = d.send(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n")
    assert codes_of(out) == ["250", "250", "250", "354"]
    return d.send(body) if body else b""


def test_greeting_and_ehlo_lists_extensions() -> None:
    d = session(starttls=True)
    out = d.send(b"EHLO client.example\r\n")
    lines = out.decode().split("\r\n")
    assert lines[0] == f"250-{HOST}"
    assert "250-PIPELINING" in lines
    assert "250-SIZE 52428800" in lines
    assert "250-8BITMIME" in lines and "250-SMTPUTF8" in lines and "250-CHUNKING" in lines
    assert "250-ENHANCEDSTATUSCODES" in lines and "250-DSN" in lines
    assert lines[-2] == "250 STARTTLS"


def test_one_message_round_trip_with_dot_stuffing() -> None:
    d = session()
    out = transaction(d, b"Subject: hi\r\n\r\n..leading dot\r\n.\r\n")
    assert out.startswith(b"250 2.0.0 ")
    assert d.messages[0].data == b"Subject: hi\r\n\r\n.leading dot\r\n"
    assert str(d.messages[0].mail.path) == "<a@b.example>"
    assert [str(r.path) for r in d.messages[0].rcpts] == ["<u@local.test>"]


def test_empty_message() -> None:
    d = session()
    assert transaction(d, b".\r\n").startswith(b"250 ")
    assert d.messages[0].data == b""


def test_message_split_across_many_reads() -> None:
    d = session()
    transaction(d, b"")
    body = b"Subject: x\r\n\r\n" + b"line\r\n" * 1000
    for i in range(0, len(body), 7):
        assert d.send(body[i : i + 7]) == b""
    for piece in (b".", b"\r", b"\n"):
        out = d.send(piece)
    assert out.startswith(b"250 ")
    assert d.messages[0].data == body


def test_pipelined_group_gets_replies_in_order() -> None:
    d = session()
    out = d.send(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\n"
        b"RCPT TO:<u@local.test>\r\nDATA\r\n"
    )
    assert codes_of(out) == ["250", "250", "554", "250", "354"]
    assert b"554 5.7.1" in out


def test_data_after_all_recipients_failed_is_554() -> None:
    d = session()
    out = d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n")
    assert codes_of(out)[-1] == "554"
    assert b"5.5.1" in out.splitlines()[-1]


@pytest.mark.parametrize(
    "smuggled",
    [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\n.\r", b"\r.\r\n"],
)
def test_smuggling_terminators_never_make_a_second_message(smuggled: bytes) -> None:
    d = session()
    body = (
        b"Subject: one\r\n\r\ntext"
        + smuggled
        + b"MAIL FROM:<evil@b.example>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nx\r\n.\r\n"
    )
    out = transaction(d, body)
    assert out.startswith(b"554 5.5.2")
    assert d.messages == []
    # The session is still in sync: nothing after the real CRLF.CRLF was taken as commands.
    assert codes_of(d.send(b"NOOP\r\n")) == ["250"]


def test_bare_lf_in_command_is_rejected() -> None:
    d = session()
    out = d.send(b"EHLO c\nNOOP\r\n")
    assert out.startswith(b"500 5.5.2")
    assert codes_of(out) == ["500", "250"]


def test_bare_cr_in_command_is_rejected() -> None:
    d = session()
    assert d.send(b"NO\rOP\r\n").startswith(b"500 5.5.2")


def test_talking_before_greeting_is_dropped() -> None:
    d = Driver()
    out = d.start(early=b"EHLO fast.example\r\n")
    assert out.startswith(b"554 5.5.0")
    assert d.closed == "pregreet"


def test_text_in_same_write_as_data_is_illegal_pipelining() -> None:
    d = session()
    out = d.send(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@local.test>\r\n"
        b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
    )
    assert codes_of(out) == ["250", "250", "250", "554"]
    assert b"554 5.5.0" in out
    assert d.closed is not None
    assert d.messages == []


def test_starttls_discards_pipelined_bytes_and_forgets_state() -> None:
    d = session(starttls=True)
    d.send(b"EHLO c\r\n")
    out = d.send(b"STARTTLS\r\nMAIL FROM:<a@b.example>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"  # the pipelined MAIL is never answered
    assert d.conn.helo is None and d.conn.tls
    out = d.send(b"MAIL FROM:<a@b.example>\r\n")
    assert out.startswith(b"503 5.5.1")  # EHLO again first: state before TLS is gone
    ehlo = d.send(b"EHLO c\r\n")
    assert b"STARTTLS" not in ehlo


def test_command_line_too_long() -> None:
    d = session()
    out = d.send(b"NOOP " + b"x" * 600 + b"\r\n")
    assert out.startswith(b"500 5.5.2")
    assert codes_of(d.send(b"NOOP\r\n")) == ["250"]


def test_commands_pipelined_after_long_line_are_answered() -> None:
    d = session()
    out = d.send(b"NOOP " + b" " * 600 + b"\r\nNOOP\r\n")
    assert codes_of(out) == ["500", "250"]
    out = d.send(b"x" * 5000)
    assert codes_of(out) == ["500"]
    assert codes_of(d.send(b"\r\nNOOP\r\n")) == ["250"]


def test_endless_line_disconnects_with_flat_memory() -> None:
    d = session()
    chunk = b"A" * 8192
    for _ in range(20):
        d.send(chunk)
        assert len(d.conn._buf) <= 8192
        if d.closed:
            break
    assert d.closed is not None


def test_size_param_over_limit_at_mail() -> None:
    d = session(max_message_size=1000)
    out = d.send(b"EHLO c\r\nMAIL FROM:<a@b.example> SIZE=1001\r\n")
    assert codes_of(out)[-1] == "552" and b"5.3.4" in out


def test_malformed_size_param() -> None:
    d = session()
    out = d.send(b"EHLO c\r\nMAIL FROM:<a@b.example> SIZE=abc\r\n")
    assert b"501 5.5.4" in out


def test_oversized_message_is_read_to_end_and_refused() -> None:
    d = session(max_message_size=1000)
    out = transaction(d, b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n")
    out = d.send(b"y" * 78 + b"\r\n" * 1)
    for _ in range(30):
        out = d.send(b"z" * 78 + b"\r\n")
    assert len(d.conn._data) < 2000
    out = d.send(b".\r\n")
    assert out.startswith(b"552 5.3.4")
    assert d.messages == []
    assert codes_of(d.send(b"NOOP\r\n")) == ["250"]


def test_recipient_limit() -> None:
    d = session(max_recipients=2)
    out = d.send(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u1@local.test>\r\n"
        b"RCPT TO:<u2@local.test>\r\nRCPT TO:<u3@local.test>\r\n"
    )
    assert codes_of(out) == ["250", "250", "250", "250", "452"]
    assert b"452 4.5.3" in out


def test_too_many_errors_disconnects() -> None:
    d = session(max_errors=3)
    out = d.send(b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
    assert codes_of(out) == ["500", "500", "421"]
    assert b"421 4.7.0" in out and d.closed is not None


def test_http_request_is_dropped() -> None:
    d = session()
    out = d.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"554 5.7.0")
    assert d.closed is not None


def test_vrfy_never_reveals() -> None:
    d = session()
    assert d.send(b"VRFY root\r\n").startswith(b"252 2.5.0")


def test_sequence_errors() -> None:
    d = session()
    assert d.send(b"MAIL FROM:<a@b.example>\r\n").startswith(b"503 5.5.1")
    assert d.send(b"EHLO c\r\nRCPT TO:<u@local.test>\r\n").endswith(b"\r\n")
    assert codes_of(d.send(b"DATA\r\n")) == ["503"]
    d.send(b"MAIL FROM:<a@b.example>\r\n")
    assert d.send(b"MAIL FROM:<a@b.example>\r\n").startswith(b"503 5.5.1")


def test_rset_and_second_transaction() -> None:
    d = session()
    transaction(d, b"Subject: 1\r\n\r\n.\r\n")
    out = d.send(b"MAIL FROM:<>\r\nRCPT TO:<u@local.test>\r\nRSET\r\nRCPT TO:<u@local.test>\r\n")
    assert codes_of(out) == ["250", "250", "250", "503"]


def test_helo_disables_extension_params() -> None:
    d = session()
    out = d.send(b"HELO c\r\nMAIL FROM:<a@b.example> SIZE=10\r\n")
    assert b"555 5.5.4" in out


def test_quit() -> None:
    d = session()
    out = d.send(b"QUIT\r\n")
    assert out.startswith(b"221 2.0.0")
    assert d.closed == "quit"


def test_bdat_chunks_make_one_message() -> None:
    d = session()
    d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@local.test>\r\n")
    part1 = b"Subject: chunks\r\n\r\n"
    part2 = b"line one\r\n.not stuffed\r\n"
    out = d.send(b"BDAT %d\r\n" % len(part1) + part1 + b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert codes_of(out) == ["250", "250"]
    assert d.messages[0].data == part1 + part2
    assert d.messages[0].chunked


def test_bdat_without_transaction_consumes_chunk() -> None:
    d = session()
    d.send(b"EHLO c\r\n")
    out = d.send(b"BDAT 12 LAST\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    # The 12 octets "NOOP\r\nNOOP\r\n" are chunk data; only the last NOOP is a command.
    assert codes_of(out) == ["503", "250"]


def test_bdat_over_size_limit() -> None:
    d = session(max_message_size=10)
    d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@local.test>\r\n")
    out = d.send(b"BDAT 20 LAST\r\n" + b"x" * 18 + b"\r\n")
    assert out.startswith(b"552 5.3.4")
    assert d.messages == []


def test_data_then_bdat_mix_refused() -> None:
    d = session()
    d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<u@local.test>\r\n")
    d.send(b"BDAT 3\r\nabc")
    assert d.send(b"DATA\r\n").startswith(b"503 5.5.1")


def test_timeout_and_shutdown_replies() -> None:
    d = session()
    d.conn.timed_out()
    assert d.pump().startswith(b"421 4.4.2")
    d2 = session()
    d2.conn.shutdown()
    assert d2.pump().startswith(b"421 4.3.2")


def test_long_text_line_refused() -> None:
    d = session(max_text_line=100)
    out = transaction(d, b"Subject: x\r\n\r\n" + b"a" * 200 + b"\r\n.\r\n")
    assert out.startswith(b"552 5.3.4")


def test_smtputf8_address() -> None:
    d = session()
    out = d.send(
        "EHLO c\r\nMAIL FROM:<jörg@b.example> SMTPUTF8\r\nRCPT TO:<ü@local.test>\r\n".encode()
    )
    assert codes_of(out) == ["250", "250", "250"]
    out = d.send("RSET\r\nMAIL FROM:<jörg@b.example>\r\n".encode())
    assert b"553 5.6.7" in out
