"""The SMTP client core talking to the SMTP server core, in memory (no sockets, no clock).

A tiny pump moves bytes both ways; the server's policy accepts recipients @local.test (except
unknown@ and busy@) and refuses relaying. The server core cannot turn PIPELINING off, so the
one-command-at-a-time case strips it from the EHLO reply on its way to the client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from homing.mail.reply import Reply
from homing.proto.smtp import client as cl
from homing.proto.smtp import codes
from homing.proto.smtp import server as sv
from homing.proto.smtp.grammar import MailArgs, RcptArgs, parse_mail_arg, parse_rcpt_arg

EXT = frozenset({"SIZE", "8BITMIME", "SMTPUTF8", "DSN"})


def mail(text: str = "FROM:<sender@remote.example>") -> MailArgs:
    return parse_mail_arg(text, extensions=EXT)


def rcpt(text: str) -> RcptArgs:
    return parse_rcpt_arg(
        text if text.startswith("TO:") else f"TO:<{text}>", extensions=EXT, utf8=True
    )


def strip_pipelining(data: bytes) -> bytes:
    return data.replace(b"250-PIPELINING\r\n", b"")


@dataclass
class Job:
    rcpts: Sequence[str]
    message: bytes
    sender: str = "FROM:<sender@remote.example>"


@dataclass
class Wire:
    """Runs both cores until the client is closed."""

    jobs: list[Job]
    server_settings: sv.Settings = field(
        default_factory=lambda: sv.Settings(hostname="mx.local.test")
    )
    client_settings: cl.ClientSettings = field(
        default_factory=lambda: cl.ClientSettings("relay.remote.example", tls_available=False)
    )
    to_client: Callable[[bytes], bytes] = lambda data: data
    data_reply: Reply = codes.MESSAGE_ACCEPTED
    """The server's answer to every message."""
    next_jobs: Callable[[cl.TransactionDone], list[Job]] = lambda done: []
    """Called on each TransactionDone: more work for the same connection (e.g. 452 retries)."""
    messages: list[sv.MessageReceived] = field(default_factory=list)
    server_events: list[object] = field(default_factory=list)
    events: list[object] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = cl.ClientConnection(self.client_settings)
        self.server = sv.ServerConnection(self.server_settings)
        self.start_next()

    def start_next(self) -> None:
        if self.jobs:
            job = self.jobs.pop(0)
            self.client.start_transaction(
                mail(job.sender), [rcpt(r) for r in job.rcpts], job.message
            )
        else:
            self.client.quit()

    def run(self) -> Wire:
        self.server.start()
        for _ in range(1000):
            if self.client.closed:
                self.server.receive_data(self.client.data_to_send())
                self.server.receive_data(b"")
                self.pump_server()
                return self
            self.client.receive_data(self.to_client(self.server.data_to_send()))
            if self.server.closed:
                self.client.receive_data(b"")
            self.pump_client()
            self.server.receive_data(self.client.data_to_send())
            self.pump_server()
        raise AssertionError("the cores did not finish")

    def pump_client(self) -> None:
        while (ev := self.client.next_event()) is not cl.NEED_DATA:
            self.events.append(ev)
            if isinstance(ev, cl.NeedStartTLS):
                self.server.tls_established()
                self.client.tls_established()
            elif isinstance(ev, cl.TransactionDone):
                self.jobs[:0] = self.next_jobs(ev)
                self.start_next()

    def pump_server(self) -> None:
        while (ev := self.server.next_event()) is not sv.NEED_DATA:
            self.server_events.append(ev)
            if isinstance(ev, sv.MailFrom):
                self.server.respond(codes.SENDER_OK)
            elif isinstance(ev, sv.RcptTo):
                self.server.respond(self.verdict(ev.args))
            elif isinstance(ev, sv.MessageReceived):
                self.messages.append(ev)
                self.server.respond(self.data_reply)

    @staticmethod
    def verdict(args: RcptArgs) -> Reply:
        mb = args.path.mailbox
        assert mb is not None
        if mb.domain != "local.test":
            return codes.RELAY_DENIED
        if mb.local == "unknown":
            return codes.USER_UNKNOWN
        if mb.local == "busy":
            return codes.TEMP_RECIPIENT
        return codes.RECIPIENT_OK

    def done(self) -> list[cl.TransactionDone]:
        return [e for e in self.events if isinstance(e, cl.TransactionDone)]

    def outcomes(self) -> dict[str, tuple[int, bool]]:
        out: dict[str, tuple[int, bool]] = {}
        for done in self.done():
            for r in done.results:
                assert r.rcpt.path.mailbox is not None
                out[str(r.rcpt.path.mailbox)] = (r.reply.code, r.final)
        return out


MESSAGE = (
    b"From: Sender <sender@remote.example>\n"
    b"Subject: caf\xc3\xa9 test\r\n"
    b"\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b"a line with a bare CR\rinside\r\n"
    b"\xe2\x82\xac 8-bit body\r\n" + b"long " * 300 + b"\r\n.\r\n" + b"the end without a line break"
)
MANY = [f"user{i}@local.test" for i in range(40)]
REFUSED = ["unknown@local.test", "someone@elsewhere.example", "busy@local.test"]


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
def test_delivery_to_many_recipients(chunking: bool, pipelining: bool) -> None:
    wire = Wire(
        [Job(MANY[:20] + REFUSED + MANY[20:], MESSAGE)],
        server_settings=sv.Settings(hostname="mx.local.test", chunking=chunking),
        to_client=(lambda d: d) if pipelining else strip_pipelining,
    ).run()
    (received,) = wire.messages
    assert received.data == cl.prepare_message(MESSAGE)
    assert received.chunked is chunking
    assert [str(r.path) for r in received.rcpts] == [f"<{r}>" for r in MANY]
    assert received.mail.body == "8BITMIME" and received.mail.size == len(received.data)
    assert max(len(line) for line in received.data.split(b"\r\n")) <= 998
    outcomes = wire.outcomes()
    assert all(outcomes[r] == (250, True) for r in MANY)
    assert outcomes["unknown@local.test"] == (550, True)
    assert outcomes["someone@elsewhere.example"] == (554, True)
    assert outcomes["busy@local.test"] == (450, False)
    assert wire.events[-1] == cl.Closed("quit")
    assert wire.server_events[-1] == sv.Closed("quit")
    assert wire.client.extensions.get("PIPELINING") == ("" if pipelining else None)


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_empty_and_dot_only_messages(chunking: bool) -> None:
    wire = Wire(
        [Job(["a@local.test"], b""), Job(["a@local.test"], b".\r\n"), Job(["a@local.test"], b".")],
        server_settings=sv.Settings(hostname="mx.local.test", chunking=chunking),
    ).run()
    assert [m.data for m in wire.messages] == [b"", b".\r\n", b".\r\n"]


def test_starttls_then_delivery() -> None:
    wire = Wire(
        [Job(["a@local.test"], b"Subject: x\r\n\r\nsecret\r\n")],
        server_settings=sv.Settings(hostname="mx.local.test", starttls=True),
        client_settings=cl.ClientSettings("relay.remote.example", require_tls=True),
    ).run()
    assert wire.client.tls and wire.server.tls
    assert [type(e) for e in wire.events] == [cl.NeedStartTLS, cl.TransactionDone, cl.Closed]
    assert len(wire.messages) == 1


def test_require_tls_against_a_server_without_it() -> None:
    wire = Wire(
        [Job(["a@local.test"], b"hi\r\n")],
        client_settings=cl.ClientSettings("relay.remote.example", require_tls=True),
    ).run()
    failure = wire.events[0]
    assert isinstance(failure, cl.SessionFailed) and failure.retry_other_mx
    assert not wire.messages and not any(isinstance(e, sv.MailFrom) for e in wire.server_events)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
def test_several_transactions_reuse_the_connection(pipelining: bool) -> None:
    wire = Wire(
        [
            Job(["a@local.test"], b"first\r\n"),
            Job(["unknown@local.test"], b"nobody takes this\r\n"),  # leaves MAIL open: RSET
            Job(["b@local.test"], b"third\r\n", sender="FROM:<>"),
        ],
        to_client=(lambda d: d) if pipelining else strip_pipelining,
    ).run()
    assert [m.data for m in wire.messages] == [b"first\r\n", b"third\r\n"]
    assert str(wire.messages[1].mail.path) == "<>"
    assert [d.data_reply is not None for d in wire.done()] == [True, False, True]
    # The server counted the refused RCPT, and (pipelined) the DATA that had no recipient.
    assert wire.server.messages == 2 and wire.server.errors == (2 if pipelining else 1)


def test_too_many_recipients_are_retried_in_a_second_transaction() -> None:
    rcpts = [f"u{i}@local.test" for i in range(5)]

    def retry(done: cl.TransactionDone) -> list[Job]:
        later = [str(r.rcpt.path.mailbox) for r in done.results if not r.final]
        return [Job(later, b"hello\r\n")] if later else []

    wire = Wire(
        [Job(rcpts, b"hello\r\n")],
        server_settings=sv.Settings(hostname="mx.local.test", max_recipients=3),
        next_jobs=retry,
    ).run()
    first, second = wire.done()
    assert [r.reply.code for r in first.results] == [250, 250, 250, 452, 452]
    assert [r.reply.code for r in second.results] == [250, 250]
    assert [len(m.rcpts) for m in wire.messages] == [3, 2]


def test_size_limit_is_checked_before_sending() -> None:
    wire = Wire(
        [Job(["a@local.test"], b"x" * 500)],
        server_settings=sv.Settings(hostname="mx.local.test", max_message_size=100),
    ).run()
    result = wire.done()[0].results[0]
    assert result.reply.code == 552 and result.final
    assert not any(isinstance(e, sv.MailFrom) for e in wire.server_events)


@pytest.mark.parametrize("offered", [True, False])
def test_smtputf8(offered: bool) -> None:
    wire = Wire(
        [Job(["δοκιμή@local.test"], "Subject: Καλημέρα\r\n\r\nγεια\r\n".encode())],
        server_settings=sv.Settings(hostname="mx.local.test", smtputf8=offered),
    ).run()
    result = wire.done()[0].results[0]
    if offered:
        assert result.reply.code == 250
        (received,) = wire.messages
        assert received.mail.smtputf8 and received.rcpts[0].path.mailbox is not None
        assert received.rcpts[0].path.mailbox.local == "δοκιμή"
    else:
        assert (result.reply.code, result.reply.enhanced, result.final) == (553, "5.6.7", True)
        assert not wire.messages


@pytest.mark.parametrize("dsn", [True, False])
def test_dsn_parameters_reach_the_server_only_when_offered(dsn: bool) -> None:
    job = Job(
        ["TO:<a@local.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a@local.test"],
        b"hi\r\n",
        sender="FROM:<s@remote.example> RET=HDRS ENVID=QUEUE+2B42",
    )
    wire = Wire([job], server_settings=sv.Settings(hostname="mx.local.test", dsn=dsn)).run()
    (received,) = wire.messages
    r = received.rcpts[0]
    if dsn:
        assert (received.mail.ret, received.mail.envid) == ("HDRS", "QUEUE+42")
        assert r.notify == frozenset({"SUCCESS", "DELAY"}) and r.orcpt == ("rfc822", "a@local.test")
    else:
        assert (received.mail.ret, received.mail.envid, r.notify, r.orcpt) == (
            None,
            None,
            None,
            None,
        )


@pytest.mark.parametrize(
    ("reply", "final"), [(codes.TRANSACTION_FAILED, True), (codes.LOCAL_ERROR, False)]
)
@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_message_refused_by_the_server(reply: Reply, final: bool, chunking: bool) -> None:
    wire = Wire(
        [Job(["a@local.test", "b@local.test"], b"hi\r\n"), Job(["c@local.test"], b"again\r\n")],
        server_settings=sv.Settings(hostname="mx.local.test", chunking=chunking),
        data_reply=reply,
    ).run()
    first, second = wire.done()
    assert [(r.reply, r.final) for r in first.results] == [(reply, final)] * 2
    assert first.data_reply == reply and len(second.results) == 1  # the connection stays usable


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_421_to_the_end_of_data(chunking: bool) -> None:
    wire = Wire(
        [Job(["a@local.test", "unknown@local.test"], b"hi\r\n"), Job(["b@local.test"], b"x\r\n")],
        server_settings=sv.Settings(hostname="mx.local.test", chunking=chunking),
        data_reply=codes.SHUTTING_DOWN,
    ).run()
    (failure,) = [e for e in wire.events if isinstance(e, cl.SessionFailed)]
    # The server did answer, and said "not taken": another MX may be tried at once.
    assert failure.retry_other_mx and failure.reply == codes.SHUTTING_DOWN
    assert wire.jobs  # the second job was never started
    assert [(r.reply.code, r.final) for r in failure.results] == [(421, False), (550, True)]


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_connection_cut_after_the_end_of_data(chunking: bool) -> None:
    client = cl.ClientConnection(cl.ClientSettings("relay.remote.example", tls_available=False))
    server = sv.ServerConnection(sv.Settings(hostname="mx.local.test", chunking=chunking))
    client.start_transaction(mail(), [rcpt("a@local.test")], b"hi\r\n")
    server.start()
    got: list[sv.Event] = []
    while not any(isinstance(e, sv.MessageReceived) for e in got):
        client.receive_data(server.data_to_send())
        while (ev := client.next_event()) is not cl.NEED_DATA:
            raise AssertionError(ev)
        server.receive_data(client.data_to_send())
        while (sev := server.next_event()) is not sv.NEED_DATA:
            got.append(sev)
            if isinstance(sev, sv.MailFrom | sv.RcptTo):
                server.respond(codes.OK)
            elif isinstance(sev, sv.MessageReceived):
                break
    client.receive_data(b"")  # the message is stored, the 250 never makes it back
    failure = client.next_event()
    assert isinstance(failure, cl.SessionFailed)
    assert not failure.retry_other_mx and failure.stage is cl.Stage.END_OF_DATA
    assert client.next_event() == cl.Closed(f"end-of-data: {failure.reply}")
