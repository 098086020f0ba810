"""Port 25 end to end: Python's smtplib and raw sockets against a real `homing serve`."""

from __future__ import annotations

import email.policy
import signal
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from tests.integration.conftest import DOMAIN, Server

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def simple_message(
    subject: str = "hello", to: str = ALICE, body: str = "Hi there.\n"
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@remote.example"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}.{time.monotonic_ns()}@remote.example>"
    msg.set_content(body)
    return msg


def client(server: Server) -> smtplib.SMTP:
    host, port = server.smtp
    return smtplib.SMTP(host, port, local_hostname="client.remote.example", timeout=10)


OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_raw_sockets() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


class Raw:
    """A line-level SMTP client over a plain socket, for what smtplib refuses to send."""

    def __init__(self, server: Server, *, greeting: bool = True) -> None:
        self.sock = socket.create_connection(server.smtp, timeout=10)
        OPEN.append(self.sock)
        self.buf = b""
        if greeting:
            assert self.reply().startswith(b"220 ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One complete (possibly multi-line) reply, or b"" at EOF."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:  # the server closed with our bytes unread
                    chunk = b""
                if not chunk:
                    return b"".join(lines) + self.buf
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line + b"\r\n")
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return True

    def close(self) -> None:
        self.sock.close()


def test_smtplib_delivers_with_trace_headers(server: Server) -> None:
    with client(server) as smtp:
        refused = smtp.send_message(simple_message("trace"), "sender@remote.example", [ALICE])
        assert refused == {}
    assert server.mailbox_count(ALICE) == 1
    raw = server.message(ALICE, 1)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"Return-Path: <sender@remote.example>\r\n")
    assert b"Delivered-To: alice@local.test\r\n" in head
    assert b"Received: from client.remote.example ([127.0.0.1])" in head
    assert b"by mx.local.test (Homing) with ESMTP id " in head
    assert b"Subject: trace" in head
    assert raw.endswith(b"Hi there.\r\n")


def test_relay_is_denied_and_unknown_users_refused(server: Server) -> None:
    with client(server) as smtp:
        smtp.ehlo()
        smtp.mail("sender@remote.example")
        code, text = smtp.rcpt("someone@elsewhere.example")
        assert (code, text[:5]) == (554, b"5.7.1")
        code, text = smtp.rcpt(f"nobody@{DOMAIN}")
        assert (code, text[:5]) == (550, b"5.1.1")


@pytest.mark.parametrize(
    "path",
    [
        f"<@{DOMAIN}:victim@elsewhere.example>",
        f"<victim%elsewhere.example@{DOMAIN}>",
        f"<elsewhere.example!victim@{DOMAIN}>",
        f'<"victim@elsewhere.example"@{DOMAIN}>',
        "<victim@elsewhere.example.>",
    ],
)
def test_relay_hacks_never_relay(server: Server, path: str) -> None:
    raw = Raw(server)
    raw.send(b"EHLO c\r\nMAIL FROM:<a@remote.example>\r\n")
    assert raw.reply().startswith(b"250")
    assert raw.reply().startswith(b"250")
    raw.send(f"RCPT TO:{path}\r\n".encode())
    reply = raw.reply()
    assert reply[:1] in (b"5", b"4"), reply
    raw.send(b"DATA\r\n")
    assert raw.reply()[:3] in (b"554", b"503")
    raw.close()


def test_aliases_catch_all_and_plus_addressing(server: Server) -> None:
    server.cli("alias", "add", f"team@{DOMAIN}", ALICE, BOB)
    server.cli("alias", "add", f"@{DOMAIN}", BOB)
    with client(server) as smtp:
        smtp.send_message(simple_message("team"), "s@remote.example", [f"team@{DOMAIN}"])
        smtp.send_message(simple_message("plus"), "s@remote.example", [f"alice+news@{DOMAIN}"])
        smtp.send_message(simple_message("catch"), "s@remote.example", [f"whoever@{DOMAIN}"])
        # Two routes to one account: still one copy.
        smtp.send_message(
            simple_message("dedupe"), "s@remote.example", [ALICE, f"alice+x@{DOMAIN}"]
        )
    assert server.mailbox_count(ALICE) == 3
    assert server.mailbox_count(BOB) == 2
    plus = server.message(ALICE, 2)
    assert b"Delivered-To: alice@local.test" in plus and b"for <alice+news@local.test>" in plus


def test_postmaster_is_always_accepted(server: Server) -> None:
    with client(server) as smtp:
        smtp.ehlo()
        smtp.mail("s@remote.example")
        assert smtp.rcpt(f"postmaster@{DOMAIN}")[0] == 250
        assert smtp.rcpt("Postmaster")[0] == 250


def test_loops_are_refused(server: Server) -> None:
    looped = simple_message("loop")
    looped["Delivered-To"] = ALICE
    many = simple_message("hops")
    for i in range(51):
        many["Received"] = f"from h{i}.example by h{i + 1}.example; Sun, 29 Nov 2026 10:00:00 +0000"
    with client(server) as smtp:
        for msg in (looped, many):
            with pytest.raises(smtplib.SMTPDataError) as err:
                smtp.send_message(msg, "s@remote.example", [ALICE])
            assert err.value.smtp_code == 554
            assert err.value.smtp_error.startswith(b"5.4.0")
    assert server.mailbox_count(ALICE) == 0


def test_starttls_then_delivery_records_tls(server: Server) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with client(server) as smtp:
        smtp.starttls(context=ctx)
        smtp.send_message(simple_message("tls"), "s@remote.example", [ALICE])
    raw = server.message(ALICE, 1)
    assert b"with ESMTPS id" in raw
    assert b"version=TLSv1.3" in raw


def test_starttls_pipelined_plaintext_is_discarded(server: Server) -> None:
    raw = Raw(server)
    raw.send(b"EHLO c\r\n")
    assert b"STARTTLS" in raw.reply()
    raw.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
    assert raw.reply().startswith(b"220 2.0.0")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(raw.sock, server_hostname="mx.local.test")
    OPEN.append(tls)
    tls.settimeout(10)
    tls.sendall(b"NOOP\r\n")
    # The injected MAIL was never answered: the first reply over TLS is the NOOP's.
    assert tls.recv(4096).startswith(b"250 2.0.0")
    tls.sendall(b"MAIL FROM:<a@remote.example>\r\n")
    assert tls.recv(4096).startswith(b"503 5.5.1")  # EHLO needed again after TLS
    tls.close()


def test_illegal_pipelining_and_http(server: Server) -> None:
    raw = Raw(server)
    raw.send(b"EHLO c\r\nMAIL FROM:<a@remote.example>\r\nRCPT TO:<alice@local.test>\r\n")
    for _ in range(3):
        assert raw.reply().startswith(b"250")
    raw.send(b"DATA\r\nSubject: early\r\n\r\nbody\r\n.\r\n")
    assert raw.reply().startswith(b"554 5.5.0")
    assert raw.closed()
    http = Raw(server)
    http.send(b"GET / HTTP/1.1\r\nHost: mx\r\n\r\n")
    assert http.reply().startswith(b"554 5.7.0")
    assert http.closed()
    assert server.mailbox_count(ALICE) == 0


def test_long_lines_and_endless_stream(server: Server) -> None:
    raw = Raw(server)
    raw.send(b"NOOP " + b"x" * 600 + b"\r\n")
    assert raw.reply().startswith(b"500 5.5.2")
    raw.send(b"NOOP\r\n")
    assert raw.reply().startswith(b"250")
    raw.sock.settimeout(10)
    try:
        for _ in range(200):
            raw.send(b"y" * 4096)
    except (BrokenPipeError, ConnectionResetError):
        pass
    replies = []
    while reply := raw.reply():  # ends only when the server drops the connection
        replies.append(reply)
    # Told (unless the reset overtook the reply), then dropped.
    assert all(r.startswith(b"500 5.5.2") for r in replies)


def test_oversized_message_is_refused_and_session_goes_on(make_server: object) -> None:
    srv: Server = make_server({"limits": {"message_size": 65536}})  # type: ignore[operator]
    srv.add_account(ALICE)
    with client(srv) as smtp:
        smtp.ehlo()
        assert smtp.mail("s@remote.example", ["SIZE=70000"])[0] == 552
        smtp.rset()
        # Without SIZE= the server only knows at the end: it reads it all, then refuses.
        assert smtp.mail("s@remote.example")[0] == 250
        assert smtp.rcpt(ALICE)[0] == 250
        big = simple_message("big", body="x" * 70000).as_bytes(policy=email.policy.SMTP)
        code, text = smtp.data(big)
        assert (code, text[:5]) == (552, b"5.3.4")
        smtp.send_message(simple_message("small"), "s@remote.example", [ALICE])
    assert srv.mailbox_count(ALICE) == 1


def test_pregreet_and_idle_timeout(make_server: object) -> None:
    srv: Server = make_server({"smtp": {"greet_pause": 0.5}, "limits": {"command_timeout": 1.0}})  # type: ignore[operator]
    early = Raw(srv, greeting=False)
    early.send(b"EHLO hasty.example\r\n")
    assert early.reply().startswith(b"554 5.5.0")
    assert early.closed()
    idle = Raw(srv)
    start = time.monotonic()
    assert idle.reply().startswith(b"421 4.4.2")
    assert time.monotonic() - start < 5


def test_connections_per_ip_are_capped(make_server: object) -> None:
    srv: Server = make_server({"limits": {"connections_per_ip": 2}})  # type: ignore[operator]
    first, second = Raw(srv), Raw(srv)
    third = Raw(srv, greeting=False)
    assert third.reply().startswith(b"421 4.7.0")
    for r in (first, second, third):
        r.close()


def test_too_many_errors(server: Server) -> None:
    raw = Raw(server)
    for _ in range(19):
        raw.send(b"WHAT\r\n")
        assert raw.reply().startswith(b"500 5.5.2")
    raw.send(b"WHAT\r\n")
    assert raw.reply().startswith(b"421 4.7.0")
    assert raw.closed()


def test_sigterm_lets_open_transaction_finish(server: Server) -> None:
    idle = Raw(server)
    busy = Raw(server)
    busy.send(b"EHLO c\r\n")
    busy.reply()
    for line in (
        b"MAIL FROM:<a@remote.example>\r\n",
        b"RCPT TO:<alice@local.test>\r\n",
        b"DATA\r\n",
    ):
        busy.send(line)
        assert busy.reply()[:1] in (b"2", b"3")
    busy.send(b"Subject: during shutdown\r\n\r\nstill ")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert idle.reply().startswith(b"421 4.3.2")
    busy.send(b"arriving\r\n.\r\n")
    assert busy.reply().startswith(b"250 2.0.0")
    assert busy.reply().startswith(b"421 4.3.2")
    assert server.stop() == 0
    assert server.mailbox_count(ALICE) == 1


def _starttls_certificate(server: Server) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with client(server) as smtp:
        smtp.starttls(context=ctx)
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        return der


def test_sighup_reloads_the_certificate(server: Server) -> None:
    from homing.net.tls import generate_self_signed

    before = _starttls_certificate(server)
    tls_dir = server.data / "tls"
    generate_self_signed("renewed.local.test", tls_dir / "cert.pem", tls_dir / "key.pem")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while b"reloaded TLS certificate" not in server.log().encode() and time.monotonic() < deadline:
        time.sleep(0.05)
    after = _starttls_certificate(server)
    assert after != before
    assert b"renewed.local.test" in after
    # Accounts added while running need no reload at all.
    server.add_account(f"carol@{DOMAIN}")
    with client(server) as smtp:
        smtp.send_message(simple_message("new user"), "s@remote.example", [f"carol@{DOMAIN}"])
    assert server.mailbox_count(f"carol@{DOMAIN}") == 1
