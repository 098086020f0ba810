"""Byte transcripts for the sans-I/O SMTP client core (proto.smtp.client).

Each test scripts what the server says and asserts exactly what the client sends in answer.
Every transcript runs twice: server bytes in one piece, and one byte at a time.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from homing.mail.reply import Reply
from homing.proto.smtp import client as core
from homing.proto.smtp.grammar import MailArgs, RcptArgs, parse_mail_arg, parse_rcpt_arg

HELO = "client.example"
EXT = frozenset({"SIZE", "8BITMIME", "SMTPUTF8", "DSN", "AUTH", "REQUIRETLS", "MT-PRIORITY"})

GREET = b"220 mx.example ESMTP ready\r\n"
EHLO = b"EHLO client.example\r\n"
QUIT = b"QUIT\r\n"
BYE = b"221 2.0.0 Bye\r\n"
BASIC = (
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 DSN\r\n"
)
NO_PIPELINING = b"250-mx.example\r\n250-SIZE 10000\r\n250 8BITMIME\r\n"
OK_MAIL = b"250 2.1.0 Sender OK\r\n"
OK_RCPT = b"250 2.1.5 Recipient OK\r\n"
GO = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 OK: queued as 123\r\n"


HI = b"Subject: hi\r\n\r\nHello\r\n"  # Job's default message, 22 octets


def envelope(*rcpts: str, size: int | None = 22, tail: bytes = b"DATA\r\n") -> bytes:
    """What a pipelining client writes: MAIL, every RCPT, then `tail`."""
    params = b"" if size is None else b" SIZE=%d" % size
    lines = [b"MAIL FROM:<a@b.example>" + params + b"\r\n"]
    lines += [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]
    return b"".join(lines) + tail


def ehlo_reply(*keywords: str) -> bytes:
    lines = ["mx.example", *keywords]
    return b"".join(
        f"250{' ' if i == len(lines) - 1 else '-'}{line}\r\n".encode()
        for i, line in enumerate(lines)
    )


def mail(text: str = "FROM:<a@b.example>") -> MailArgs:
    return parse_mail_arg(text, extensions=EXT)


def rcpt(text: str, *, utf8: bool = False) -> RcptArgs:
    return parse_rcpt_arg(
        text if text.startswith("TO:") else f"TO:<{text}>", extensions=EXT, utf8=utf8
    )


@dataclass
class Job:
    rcpts: Sequence[str]
    message: bytes = b"Subject: hi\r\n\r\nHello\r\n"
    sender: str = "FROM:<a@b.example>"
    needs_8bit: bool | None = None
    needs_smtputf8: bool | None = None


@dataclass
class Client:
    """A test driver: starts each job when the previous one is done, then QUITs."""

    settings: core.ClientSettings = field(
        default_factory=lambda: core.ClientSettings(HELO, tls_available=False)
    )
    jobs: list[Job] = field(default_factory=list)
    auto_quit: bool = True
    auto_tls: bool = True
    events: list[object] = field(default_factory=list)
    conn: core.ClientConnection = field(init=False)

    def __post_init__(self) -> None:
        self.conn = core.ClientConnection(self.settings)
        self.next_job()

    def next_job(self) -> None:
        if self.jobs:
            job = self.jobs.pop(0)
            self.conn.start_transaction(
                mail(job.sender),
                [rcpt(r, utf8=True) for r in job.rcpts],
                job.message,
                needs_8bit=job.needs_8bit,
                needs_smtputf8=job.needs_smtputf8,
            )
        elif self.auto_quit:
            self.conn.quit()

    def feed(self, data: bytes, *, bytewise: bool = False) -> bytes:
        pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        out = b""
        for piece in pieces or [b""]:
            self.conn.receive_data(piece)
            out += self.pump()
        return out

    def pump(self) -> bytes:
        while (ev := self.conn.next_event()) is not core.NEED_DATA:
            self.events.append(ev)
            if isinstance(ev, core.NeedStartTLS) and self.auto_tls:
                self.conn.tls_established()
            elif isinstance(ev, core.TransactionDone):
                self.next_job()
        return self.conn.data_to_send()

    def converse(self, script: Sequence[tuple[bytes, bytes]], *, bytewise: bool = False) -> None:
        for i, (server, expected) in enumerate(script):
            assert self.feed(server, bytewise=bytewise) == expected, f"step {i}: {server!r}"

    def of(self, kind: type[object]) -> list[object]:
        return [e for e in self.events if isinstance(e, kind)]

    def done(self) -> list[core.TransactionDone]:
        return [e for e in self.events if isinstance(e, core.TransactionDone)]

    def failed(self) -> core.SessionFailed:
        (failure,) = [e for e in self.events if isinstance(e, core.SessionFailed)]
        assert isinstance(self.events[-1], core.Closed)
        return failure


def outcome(result: core.RecipientResult) -> tuple[str, int, bool]:
    mb = result.rcpt.path.mailbox
    assert mb is not None
    return (f"{mb.local}@{mb.domain}", result.reply.code, result.final)


@pytest.fixture(params=[False, True], ids=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def settings(**kw: object) -> core.ClientSettings:
    kw.setdefault("tls_available", False)
    return core.ClientSettings(HELO, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- happy paths


def test_pipelined_delivery_with_dot_stuffing_and_line_ending_repair(bytewise: bool) -> None:
    body = b"Subject: hi\n\n.leading dot\r\n..two\rbare CR\r\n."
    c = Client(jobs=[Job(["x@d.example", "y@d.example"], body)])
    wire = b"Subject: hi\r\n\r\n..leading dot\r\n...two\r\nbare CR\r\n..\r\n.\r\n"
    c.converse(
        [
            (GREET, EHLO),
            (
                BASIC,
                b"MAIL FROM:<a@b.example> SIZE=48\r\nRCPT TO:<x@d.example>\r\n"
                b"RCPT TO:<y@d.example>\r\nDATA\r\n",
            ),
            (OK_MAIL + OK_RCPT + OK_RCPT + GO, wire),
            (QUEUED, QUIT),
            (BYE, b""),
        ],
        bytewise=bytewise,
    )
    (done,) = c.done()
    assert [outcome(r) for r in done.results] == [
        ("x@d.example", 250, True),
        ("y@d.example", 250, True),
    ]
    assert done.data_reply == Reply(250, "2.0.0", "OK: queued as 123")
    assert c.events[-1] == core.Closed("quit")
    assert c.conn.closed and c.conn.esmtp and not c.conn.tls


def test_ehlo_refused_falls_back_to_helo_one_command_at_a_time(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example", "y@d.example"], b"Subject: x\r\n\r\nhi\r\n")])
    c.converse(
        [
            (b"220 old.example SMTP Sendmail 8.6 ready\r\n", EHLO),
            (b"500 Command unrecognized\r\n", b"HELO client.example\r\n"),
            (b"250 old.example Hello\r\n", b"MAIL FROM:<a@b.example>\r\n"),
            (b"250 ok\r\n", b"RCPT TO:<x@d.example>\r\n"),
            (b"250\r\n", b"RCPT TO:<y@d.example>\r\n"),
            (b"550 No such user\r\n", b"DATA\r\n"),
            (b"354 go ahead\r\n", b"Subject: x\r\n\r\nhi\r\n.\r\n"),
            (b"250 OK\r\n", QUIT),
            (b"221 closing\r\n", b""),
        ],
        bytewise=bytewise,
    )
    (done,) = c.done()
    assert [outcome(r) for r in done.results] == [
        ("x@d.example", 250, True),
        ("y@d.example", 550, True),
    ]
    assert done.data_reply == Reply(250, "", "OK")
    assert done.results[1].reply == Reply(550, "", "No such user")
    assert not c.conn.esmtp and c.conn.extensions == {}


def test_rcpt_replies_452_temporary_550_final_and_552_temporary(bytewise: bool) -> None:
    c = Client(jobs=[Job(["a@d.example", "b@d.example", "c@d.example", "d@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (
                BASIC,
                b"".join(
                    [b"MAIL FROM:<a@b.example> SIZE=22\r\n"]
                    + [f"RCPT TO:<{x}@d.example>\r\n".encode() for x in "abcd"]
                )
                + b"DATA\r\n",
            ),
            (
                OK_MAIL
                + OK_RCPT
                + b"452 4.5.3 Too many recipients\r\n"
                + b"550 5.1.1 No such user\r\n"
                + b"552 5.2.2 Mailbox full\r\n"
                + GO,
                b"Subject: hi\r\n\r\nHello\r\n.\r\n",
            ),
            (QUEUED, QUIT),
        ],
        bytewise=bytewise,
    )
    (done,) = c.done()
    assert [outcome(r) for r in done.results] == [
        ("a@d.example", 250, True),
        ("b@d.example", 452, False),
        ("c@d.example", 550, True),
        ("d@d.example", 552, False),  # RFC 5321 §4.5.3.1.10
    ]
    assert done.results[2].reply == Reply(550, "5.1.1", "No such user")


@pytest.mark.parametrize(
    ("reply", "final"), [(b"554 5.7.1 Rejected\r\n", True), (b"451 4.3.0 Later\r\n", False)]
)
def test_data_command_refused_after_rcpts(reply: bytes, final: bool, bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example", "y@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (
                BASIC,
                envelope("x@d.example", "y@d.example"),
            ),
            (OK_MAIL + OK_RCPT + b"550 5.1.1 Unknown\r\n" + reply, QUIT),
        ],
        bytewise=bytewise,
    )
    (done,) = c.done()
    code = int(reply[:3])
    assert [outcome(r) for r in done.results] == [
        ("x@d.example", code, final),
        ("y@d.example", 550, True),
    ]
    assert done.data_reply is not None and done.data_reply.code == code


@pytest.mark.parametrize(
    ("reply", "final"),
    [(b"554 5.6.0 Content rejected\r\n", True), (b"451 4.7.1 Greylisted\r\n", False)],
)
def test_final_dot_refused(reply: bytes, final: bool) -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (BASIC, b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<x@d.example>\r\nDATA\r\n"),
            (OK_MAIL + OK_RCPT + GO, b"Subject: hi\r\n\r\nHello\r\n.\r\n"),
            (reply, QUIT),
        ]
    )
    (done,) = c.done()
    assert [outcome(r) for r in done.results] == [("x@d.example", int(reply[:3]), final)]


def test_mail_refused_in_a_pipelined_group_decides_every_recipient(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example", "y@d.example"]), Job(["z@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (
                BASIC,
                envelope("x@d.example", "y@d.example"),
            ),
            # The replies to the rest of the group are consumed before the next transaction.
            (b"550 5.7.1 Sender rejected\r\n503 5.5.1 Need MAIL\r\n", b""),
            (
                b"503 5.5.1 Need MAIL\r\n554 5.5.1 No valid recipients\r\n",
                # MAIL failed, so there is nothing to RSET.
                b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<z@d.example>\r\nDATA\r\n",
            ),
        ],
        bytewise=bytewise,
    )
    (done,) = c.done()
    assert [outcome(r) for r in done.results] == [
        ("x@d.example", 550, True),
        ("y@d.example", 550, True),
    ]
    assert done.data_reply is None


def test_mail_refused_without_pipelining_sends_no_rcpt(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (NO_PIPELINING, b"MAIL FROM:<a@b.example> SIZE=22\r\n"),
            (b"451 4.3.0 Try later\r\n", QUIT),
        ],
        bytewise=bytewise,
    )
    assert [outcome(r) for r in c.done()[0].results] == [("x@d.example", 451, False)]


def test_354_although_every_rcpt_failed_gets_an_empty_message(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example"]), Job(["y@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (BASIC, b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<x@d.example>\r\nDATA\r\n"),
            (OK_MAIL + b"550 5.1.1 Unknown\r\n" + GO, b".\r\n"),  # RFC 2920 §3.1
            (
                b"554 5.5.1 No valid recipients\r\n",
                b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<y@d.example>\r\nDATA\r\n",
            ),
        ],
        bytewise=bytewise,
    )
    (done,) = c.done()
    assert [outcome(r) for r in done.results] == [("x@d.example", 550, True)]
    assert done.data_reply is None


# ----------------------------------------------------------------------------- failures


def test_421_greeting_fails_the_session_without_quit(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse([(b"421 4.3.2 mx.example busy, try later\r\n", b"")], bytewise=bytewise)
    failure = c.failed()
    assert failure.reply == Reply(421, "4.3.2", "mx.example busy, try later")
    assert failure.stage is core.Stage.GREETING and failure.retry_other_mx
    assert [outcome(r) for r in failure.results] == [("x@d.example", 421, False)]
    assert c.conn.closed and c.conn.timeout is None


def test_554_greeting_is_answered_with_quit(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse([(b"554-mx.example no service\r\n554 5.7.1 go away\r\n", QUIT)], bytewise=bytewise)
    failure = c.failed()
    assert failure.reply == Reply(554, "", "mx.example no service\n5.7.1 go away")
    assert failure.retry_other_mx and failure.results[0].final is False


def test_ehlo_and_helo_both_refused() -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (b"502 5.5.1 no\r\n", b"HELO client.example\r\n"),
            (b"550 5.7.1 go away\r\n", QUIT),
        ]
    )
    assert c.failed().stage is core.Stage.HELO


def test_ehlo_temporary_failure_does_not_fall_back() -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse([(GREET, EHLO), (b"451 4.3.0 later\r\n", QUIT)])
    assert c.failed().stage is core.Stage.EHLO


def test_connection_lost_before_the_transaction_retries_elsewhere(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse([(GREET, EHLO), (b"250-mx.example\r\n", b"")], bytewise=bytewise)
    c.feed(b"")
    failure = c.failed()
    assert failure.reply == core.CONNECTION_LOST
    assert failure.stage is core.Stage.EHLO and failure.retry_other_mx
    assert [outcome(r) for r in failure.results] == [("x@d.example", 451, False)]


def test_connection_lost_after_the_final_dot_defers(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example", "y@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (
                BASIC,
                envelope("x@d.example", "y@d.example"),
            ),
            (
                OK_MAIL + OK_RCPT + b"550 5.1.1 Unknown\r\n" + GO,
                b"Subject: hi\r\n\r\nHello\r\n.\r\n",
            ),
            (b"", b""),
        ],
        bytewise=bytewise,
    )
    failure = c.failed()
    assert failure.stage is core.Stage.END_OF_DATA and not failure.retry_other_mx
    assert failure.reply.code == 451 and failure.reply.text.endswith("may have been delivered")
    assert [outcome(r) for r in failure.results] == [
        ("x@d.example", 451, False),
        ("y@d.example", 550, True),
    ]


def test_421_to_the_final_dot_is_an_answer_not_an_uncertainty() -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (BASIC, b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<x@d.example>\r\nDATA\r\n"),
            (OK_MAIL + OK_RCPT + GO, b"Subject: hi\r\n\r\nHello\r\n.\r\n"),
            (b"421 4.3.2 Shutting down\r\n", b""),
        ]
    )
    failure = c.failed()
    assert failure.retry_other_mx and failure.reply == Reply(421, "4.3.2", "Shutting down")
    assert [outcome(r) for r in failure.results] == [("x@d.example", 421, False)]


def test_421_in_the_middle_of_the_rcpt_replies() -> None:
    c = Client(jobs=[Job(["x@d.example", "y@d.example", "z@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (NO_PIPELINING, b"MAIL FROM:<a@b.example> SIZE=22\r\n"),
            (OK_MAIL, b"RCPT TO:<x@d.example>\r\n"),
            (b"550 5.1.1 Unknown\r\n", b"RCPT TO:<y@d.example>\r\n"),
            (b"421 4.4.2 Timeout\r\n", b""),
        ]
    )
    failure = c.failed()
    assert failure.stage is core.Stage.RCPT and failure.retry_other_mx
    assert [outcome(r) for r in failure.results] == [
        ("x@d.example", 550, True),
        ("y@d.example", 421, False),
        ("z@d.example", 421, False),
    ]


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello there\r\n",
        b"2500 wrong\r\n",
        b"25 short\r\n",
        b"250-first\r\n251 second\r\n",  # RFC 5321 §4.2.1: one code per reply
        b"650 no such class\r\n",
        b"250" + b"x" * 9000,
    ],
)
def test_garbled_reply_is_a_protocol_failure(garbage: bytes) -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (BASIC, b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<x@d.example>\r\nDATA\r\n"),
        ]
    )
    assert c.feed(garbage) == b""
    failure = c.failed()
    assert failure.reply.code == 451 and failure.reply.enhanced == "4.5.0"
    assert failure.stage is core.Stage.MAIL and failure.retry_other_mx


@pytest.mark.parametrize(
    ("replies", "stage"),
    [
        (b"354 go\r\n", core.Stage.MAIL),  # a 3xx where only 2xx/4xx/5xx make sense
        (OK_MAIL + OK_RCPT + b"250 OK\r\n", core.Stage.DATA),  # DATA's only positive is 354
    ],
)
def test_replies_of_the_wrong_class_are_a_protocol_failure(
    replies: bytes, stage: core.Stage
) -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (BASIC, b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<x@d.example>\r\nDATA\r\n"),
        ]
    )
    assert c.feed(replies) == b""
    failure = c.failed()
    assert failure.stage is stage and failure.reply.enhanced == "4.5.0"


def test_idle_connection_421_and_close() -> None:
    c = Client(auto_quit=False)
    c.converse([(GREET, EHLO), (BASIC, b"")])
    assert c.conn.idle and c.conn.timeout is None
    c.feed(b"421 4.4.2 Idle too long\r\n")
    failure = c.failed()
    assert failure.stage is core.Stage.IDLE and failure.results == ()
    c2 = Client(auto_quit=False)
    c2.converse([(GREET, EHLO), (BASIC, b""), (b"", b"")])
    assert c2.events == [core.Closed("connection closed by server")]


def test_unsolicited_reply_when_idle_is_a_protocol_failure() -> None:
    c = Client(auto_quit=False)
    c.converse([(GREET, EHLO), (BASIC, b""), (b"250 surprise\r\n", b"")])
    assert c.failed().reply.enhanced == "4.5.0"


def test_rset_refused_ends_the_session() -> None:
    c = Client(jobs=[Job(["x@d.example"]), Job(["y@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (NO_PIPELINING, b"MAIL FROM:<a@b.example> SIZE=22\r\n"),
            (OK_MAIL, b"RCPT TO:<x@d.example>\r\n"),
            (b"550 5.1.1 Unknown\r\n", b"RSET\r\n"),
            (b"500 what\r\n", QUIT),
        ]
    )
    failure = c.failed()
    assert failure.stage is core.Stage.RSET
    assert [outcome(r) for r in failure.results] == [("y@d.example", 500, False)]


# ----------------------------------------------------------------------------- TLS


def tls_settings(**kw: object) -> core.ClientSettings:
    return core.ClientSettings(HELO, tls_available=True, **kw)  # type: ignore[arg-type]


def test_starttls_discards_what_came_before_the_handshake_and_says_ehlo_again() -> None:
    c = Client(settings=tls_settings(), jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (ehlo_reply("PIPELINING", "STARTTLS"), b"STARTTLS\r\n"),
            # CVE-2011-0411 class: a reply injected in clear after the 220 must not count.
            (b"220 2.0.0 Ready to start TLS\r\n250 2.1.0 injected\r\n", EHLO),
            (
                ehlo_reply("PIPELINING", "STARTTLS", "SIZE 100"),
                b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<x@d.example>\r\nDATA\r\n",
            ),
        ]
    )
    assert c.of(core.NeedStartTLS) == [core.NeedStartTLS()]
    assert c.conn.tls and "STARTTLS" in c.conn.extensions  # offered again: not used twice


def test_bytes_arriving_while_the_handshake_is_pending_are_discarded() -> None:
    c = Client(settings=tls_settings(), jobs=[Job(["x@d.example"])], auto_tls=False)
    c.converse([(GREET, EHLO), (ehlo_reply("STARTTLS"), b"STARTTLS\r\n"), (b"220 go\r\n", b"")])
    assert c.conn.timeout is core.Timeout.COMMAND
    assert c.feed(b"250 2.1.0 injected\r\n") == b""
    c.conn.tls_established()
    assert c.pump() == EHLO
    c.converse([(ehlo_reply("SIZE 100"), b"MAIL FROM:<a@b.example> SIZE=22\r\n")])


def test_tls_required_but_not_offered_defers() -> None:
    c = Client(settings=tls_settings(require_tls=True), jobs=[Job(["x@d.example"])])
    c.converse([(GREET, EHLO), (BASIC, QUIT)])
    failure = c.failed()
    assert failure.reply == core.TLS_NOT_OFFERED
    assert failure.stage is core.Stage.STARTTLS and failure.retry_other_mx
    assert [outcome(r) for r in failure.results] == [("x@d.example", 451, False)]


def test_tls_required_without_a_context_defers() -> None:
    c = Client(settings=settings(require_tls=True), jobs=[Job(["x@d.example"])])
    c.converse([(GREET, EHLO), (ehlo_reply("STARTTLS"), QUIT)])
    assert "no TLS client context" in c.failed().reply.text


def test_tls_required_and_starttls_refused_defers() -> None:
    c = Client(settings=tls_settings(require_tls=True), jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (ehlo_reply("STARTTLS"), b"STARTTLS\r\n"),
            (b"454 4.7.0 TLS not available\r\n", QUIT),
        ]
    )
    assert c.failed().reply == Reply(454, "4.7.0", "TLS not available")


def test_opportunistic_tls_refused_goes_on_in_clear() -> None:
    c = Client(settings=tls_settings(), jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (ehlo_reply("STARTTLS", "PIPELINING"), b"STARTTLS\r\n"),
            (
                b"454 4.7.0 TLS not available\r\n",
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@d.example>\r\nDATA\r\n",
            ),
        ]
    )
    assert not c.conn.tls


def test_tls_handshake_failure() -> None:
    c = Client(settings=tls_settings(), jobs=[Job(["x@d.example"])], auto_tls=False)
    c.converse([(GREET, EHLO), (ehlo_reply("STARTTLS"), b"STARTTLS\r\n"), (b"220 go\r\n", b"")])
    c.conn.tls_failed()
    assert c.pump() == b""  # the stream is broken: no QUIT
    failure = c.failed()
    assert failure.reply == core.TLS_FAILED and failure.stage is core.Stage.TLS
    assert failure.retry_other_mx


def test_server_closes_during_the_handshake_wait() -> None:
    c = Client(settings=tls_settings(), jobs=[Job(["x@d.example"])], auto_tls=False)
    c.converse(
        [(GREET, EHLO), (ehlo_reply("STARTTLS"), b"STARTTLS\r\n"), (b"220 go\r\n", b""), (b"", b"")]
    )
    assert c.failed().stage is core.Stage.TLS


# ----------------------------------------------------------------------------- AUTH


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def test_auth_plain_to_a_smarthost_after_tls(bytewise: bool) -> None:
    c = Client(settings=tls_settings(auth=("user", "sécret")), jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (ehlo_reply("STARTTLS", "AUTH LOGIN"), b"STARTTLS\r\n"),  # AUTH before TLS ignored
            (b"220 2.0.0 go\r\n", EHLO),
            (
                ehlo_reply("PIPELINING", "AUTH=LOGIN", "AUTH PLAIN CRAM-MD5"),
                b"AUTH PLAIN " + plain("user", "sécret") + b"\r\n",
            ),
            (
                b"235 2.7.0 Authentication successful\r\n",
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@d.example>\r\nDATA\r\n",
            ),
        ],
        bytewise=bytewise,
    )
    assert c.conn.authenticated and c.conn.extensions["AUTH"] == "LOGIN PLAIN CRAM-MD5"


def test_auth_mail_parameter_is_passed_only_when_authenticated() -> None:
    c = Client(
        settings=tls_settings(auth=("u", "p")),
        jobs=[Job(["x@d.example"], sender="FROM:<a@b.example> AUTH=a@b.example")],
    )
    c.converse(
        [
            (GREET, EHLO),
            (ehlo_reply("STARTTLS"), b"STARTTLS\r\n"),
            (b"220 go\r\n", EHLO),
            (ehlo_reply("AUTH PLAIN"), b"AUTH PLAIN " + plain("u", "p") + b"\r\n"),
            (b"235 ok\r\n", b"MAIL FROM:<a@b.example> AUTH=a@b.example\r\n"),
        ]
    )
    c2 = Client(jobs=[Job(["x@d.example"], sender="FROM:<a@b.example> AUTH=a@b.example")])
    c2.converse([(GREET, EHLO), (ehlo_reply("AUTH PLAIN"), b"MAIL FROM:<a@b.example>\r\n")])


def test_auth_with_long_credentials_waits_for_the_challenge() -> None:
    password = "p" * 600
    c = Client(settings=tls_settings(auth=("user", password)), jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (ehlo_reply("STARTTLS"), b"STARTTLS\r\n"),
            (b"220 go\r\n", EHLO),
            (ehlo_reply("AUTH PLAIN"), b"AUTH PLAIN\r\n"),  # RFC 4954 §4: no initial response
            (b"334 \r\n", plain("user", password) + b"\r\n"),
            (b"235 2.7.0 ok\r\n", b"MAIL FROM:<a@b.example>\r\n"),
        ]
    )


@pytest.mark.parametrize(
    ("ehlo", "reply", "expected"),
    [
        (
            ehlo_reply("AUTH PLAIN"),
            b"535 5.7.8 Bad credentials\r\n",
            Reply(535, "5.7.8", "Bad credentials"),
        ),
        (ehlo_reply("AUTH PLAIN"), b"334 more?\r\n", None),
        (ehlo_reply("AUTH LOGIN"), b"", core.AUTH_NOT_OFFERED),
    ],
)
def test_auth_failures(ehlo: bytes, reply: bytes, expected: Reply | None) -> None:
    c = Client(settings=tls_settings(auth=("u", "p")), jobs=[Job(["x@d.example"])])
    c.converse([(GREET, EHLO), (ehlo_reply("STARTTLS"), b"STARTTLS\r\n"), (b"220 go\r\n", EHLO)])
    c.feed(ehlo)
    if reply:
        c.feed(reply)
    failure = c.failed()
    assert failure.stage is core.Stage.AUTH and failure.retry_other_mx
    if expected is not None:
        assert failure.reply == expected
    else:
        assert failure.reply.enhanced == "4.5.0"


def test_auth_never_sends_credentials_in_clear() -> None:
    c = Client(settings=settings(auth=("u", "p")), jobs=[Job(["x@d.example"])])
    c.converse([(GREET, EHLO), (ehlo_reply("AUTH PLAIN"), QUIT)])
    assert c.failed().reply == core.AUTH_NEEDS_TLS


# ----------------------------------------------------------------------------- extensions


def test_size_over_the_server_limit_fails_without_sending(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example"], b"x" * 100)])
    c.converse([(GREET, EHLO), (ehlo_reply("PIPELINING", "SIZE 50"), QUIT)], bytewise=bytewise)
    (done,) = c.done()
    assert done.results[0].reply.code == 552 and done.results[0].reply.enhanced == "5.3.4"
    assert done.results[0].final and done.data_reply is None


def test_size_zero_means_no_limit() -> None:
    c = Client(jobs=[Job(["x@d.example"], b"x" * 100)])
    c.converse([(GREET, EHLO), (ehlo_reply("SIZE 0"), b"MAIL FROM:<a@b.example> SIZE=102\r\n")])


def test_smtputf8_needed_and_not_offered_is_553_5_6_7() -> None:
    utf8_header = b"Subject: caf\xc3\xa9\r\n\r\nhi\r\n"
    c = Client(
        jobs=[
            Job(["δοκιμή@d.example"]),  # a non-ASCII local part has no ASCII form
            Job(["x@d.example"], utf8_header, sender="FROM:<a@b.example> SMTPUTF8"),
            Job(["x@παράδειγμα.example"], sender="FROM:<a@b.example> SMTPUTF8"),
            # Raw UTF-8 in a header that never asked for SMTPUTF8 goes as it came (as Postfix).
            Job(["x@d.example"], utf8_header),
        ]
    )
    c.converse(
        [(GREET, EHLO), (NO_PIPELINING, b"MAIL FROM:<a@b.example> SIZE=22 BODY=8BITMIME\r\n")]
    )
    for done in c.done():
        assert done.results[0].reply.code == 553 and done.results[0].reply.enhanced == "5.6.7"
        assert done.results[0].final
    assert len(c.done()) == 3


def test_smtputf8_requested_but_not_needed_is_dropped() -> None:
    c = Client(jobs=[Job(["x@d.example"], sender="FROM:<a@b.example> SMTPUTF8")])
    c.converse([(GREET, EHLO), (NO_PIPELINING, b"MAIL FROM:<a@b.example> SIZE=22\r\n")])


def test_smtputf8_offered_is_used_and_addresses_keep_u_labels() -> None:
    c = Client(jobs=[Job(["δοκιμή@παράδειγμα.example"], needs_8bit=False)])
    c.converse(
        [
            (GREET, EHLO),
            (
                ehlo_reply("SMTPUTF8", "8BITMIME"),
                b"MAIL FROM:<a@b.example> SMTPUTF8\r\n",
            ),
            (OK_MAIL, "RCPT TO:<δοκιμή@παράδειγμα.example>\r\n".encode()),
        ]
    )


def test_idn_domain_without_smtputf8_goes_as_a_labels() -> None:
    c = Client(jobs=[Job(["x@παράδειγμα.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (
                ehlo_reply("PIPELINING"),
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@xn--hxajbheg2az3al.example>\r\nDATA\r\n",
            ),
        ]
    )


def test_8bit_message_to_a_server_without_8bitmime_is_refused_5_6_3() -> None:
    c = Client(jobs=[Job(["x@d.example"], b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n")])
    c.converse([(GREET, EHLO), (ehlo_reply("PIPELINING"), QUIT)])
    result = c.done()[0].results[0]
    assert result.reply == core.CONVERSION_REQUIRED and result.final


def test_8bit_message_gets_body_8bitmime() -> None:
    c = Client(jobs=[Job(["x@d.example"], b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n")])
    c.converse(
        [(GREET, EHLO), (ehlo_reply("8BITMIME"), b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\n")]
    )


def test_helo_only_server_cannot_take_8bit() -> None:
    c = Client(jobs=[Job(["x@d.example"], b"Subject: x\r\n\r\n\xff\r\n")])
    c.converse([(GREET, EHLO), (b"502 no\r\n", b"HELO client.example\r\n"), (b"250 hi\r\n", QUIT)])
    assert c.done()[0].results[0].reply.enhanced == "5.6.3"


DSN_MAIL = "FROM:<a@b.example> RET=HDRS ENVID=id+2Bx"
DSN_RCPT = "TO:<x@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@d.example"


def test_dsn_parameters_are_passed_when_dsn_is_offered() -> None:
    c = Client(jobs=[Job([DSN_RCPT], sender=DSN_MAIL)])
    c.converse(
        [
            (GREET, EHLO),
            (
                BASIC,
                b"MAIL FROM:<a@b.example> SIZE=22 RET=HDRS ENVID=id+2Bx\r\n"
                b"RCPT TO:<x@d.example> NOTIFY=FAILURE,SUCCESS ORCPT=rfc822;x@d.example\r\n"
                b"DATA\r\n",
            ),
        ]
    )


def test_dsn_parameters_are_dropped_when_dsn_is_not_offered() -> None:
    c = Client(jobs=[Job([DSN_RCPT], sender=DSN_MAIL)])
    c.converse(
        [
            (GREET, EHLO),
            (
                ehlo_reply("PIPELINING"),
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@d.example>\r\nDATA\r\n",
            ),
        ]
    )


def test_other_parameters_only_when_their_extension_is_offered() -> None:
    job = Job(["x@d.example"], sender="FROM:<a@b.example> MT-PRIORITY=3")
    c = Client(jobs=[job])
    c.converse(
        [(GREET, EHLO), (ehlo_reply("MT-PRIORITY"), b"MAIL FROM:<a@b.example> MT-PRIORITY=3\r\n")]
    )
    c = Client(jobs=[Job(["x@d.example"], sender="FROM:<a@b.example> MT-PRIORITY=3")])
    c.converse([(GREET, EHLO), (ehlo_reply("SIZE"), b"MAIL FROM:<a@b.example> SIZE=22\r\n")])


def test_requiretls_is_never_dropped_silently() -> None:
    c = Client(jobs=[Job(["x@d.example"], sender="FROM:<a@b.example> REQUIRETLS")])
    c.converse([(GREET, EHLO), (ehlo_reply("REQUIRETLS"), QUIT)])  # offered, but no TLS here
    assert c.done()[0].results[0].reply == core.REQUIRETLS_NOT_OFFERED


# ----------------------------------------------------------------------------- BDAT


def test_bdat_small_message_is_pipelined_with_the_envelope(bytewise: bool) -> None:
    body = b"Subject: x\r\n\r\n.dot stays\r\n"
    c = Client(jobs=[Job(["x@d.example", "y@d.example"], body)])
    c.converse(
        [
            (GREET, EHLO),
            (
                ehlo_reply("PIPELINING", "CHUNKING", "8BITMIME"),
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@d.example>\r\nRCPT TO:<y@d.example>\r\n"
                b"BDAT 26 LAST\r\n" + body,
            ),
            (OK_MAIL + OK_RCPT + b"550 5.1.1 no\r\n", b""),
            (b"250 2.0.0 Message accepted\r\n", QUIT),
        ],
        bytewise=bytewise,
    )
    (done,) = c.done()
    assert [outcome(r) for r in done.results] == [
        ("x@d.example", 250, True),
        ("y@d.example", 550, True),
    ]
    assert done.data_reply == Reply(250, "2.0.0", "Message accepted")


def test_bdat_large_message_waits_for_the_rcpt_replies() -> None:
    body = b"x" * 50 + b"\r\n"
    s = settings(pipeline_bdat_limit=10)
    c = Client(settings=s, jobs=[Job(["x@d.example"], body), Job(["y@d.example"], body)])
    c.converse(
        [
            (GREET, EHLO),
            (
                ehlo_reply("PIPELINING", "CHUNKING"),
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@d.example>\r\n",
            ),
            (OK_MAIL + OK_RCPT, b"BDAT 52 LAST\r\n" + body),
            (b"250 2.0.0 OK\r\n", b"MAIL FROM:<a@b.example>\r\nRCPT TO:<y@d.example>\r\n"),
            (OK_MAIL + b"550 5.1.1 no\r\n", QUIT),  # nothing accepted: the message is not sent
        ]
    )
    assert [r.results[0].reply.code for r in c.done()] == [250, 550]


def test_bdat_without_pipelining(bytewise: bool) -> None:
    c = Client(jobs=[Job(["x@d.example"], b"")])
    c.converse(
        [
            (GREET, EHLO),
            (ehlo_reply("CHUNKING"), b"MAIL FROM:<a@b.example>\r\n"),
            (OK_MAIL, b"RCPT TO:<x@d.example>\r\n"),
            (OK_RCPT, b"BDAT 0 LAST\r\n"),
            (b"250 OK\r\n", QUIT),
        ],
        bytewise=bytewise,
    )
    assert c.done()[0].results[0].final


def test_bdat_refused_then_the_next_transaction_starts_with_rset() -> None:
    c = Client(jobs=[Job(["x@d.example"]), Job(["y@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (
                ehlo_reply("PIPELINING", "CHUNKING"),
                envelope("x@d.example", size=None, tail=b"BDAT 22 LAST\r\n" + HI),
            ),
            (
                OK_MAIL + OK_RCPT + b"452 4.3.1 Out of disk\r\n",
                b"RSET\r\n" + envelope("y@d.example", size=None, tail=b"BDAT 22 LAST\r\n" + HI),
            ),
        ]
    )
    assert [outcome(r) for r in c.done()[0].results] == [("x@d.example", 452, False)]


def test_connection_lost_after_bdat_last_defers() -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (
                ehlo_reply("PIPELINING", "CHUNKING"),
                envelope("x@d.example", size=None, tail=b"BDAT 22 LAST\r\n" + HI),
            ),
            (OK_MAIL, b""),
            (b"", b""),
        ]
    )
    failure = c.failed()
    # The RCPT reply never came, but the whole message went: it may have been delivered.
    assert failure.stage is core.Stage.END_OF_DATA and not failure.retry_other_mx
    assert [outcome(r) for r in failure.results] == [("x@d.example", 451, False)]


def test_prefer_chunking_off_uses_data() -> None:
    c = Client(settings=settings(prefer_chunking=False), jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (
                ehlo_reply("PIPELINING", "CHUNKING"),
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@d.example>\r\nDATA\r\n",
            ),
        ]
    )


# ----------------------------------------------------------------------------- reuse


def test_several_transactions_on_one_connection(bytewise: bool) -> None:
    c = Client(jobs=[Job(["a@d.example"]), Job(["b@d.example"]), Job(["c@d.example"])])
    group = b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<%s@d.example>\r\nDATA\r\n"
    text = b"Subject: hi\r\n\r\nHello\r\n.\r\n"
    c.converse(
        [
            (GREET, EHLO),
            (BASIC, group % b"a"),
            (OK_MAIL + OK_RCPT + GO, text),
            (QUEUED, group % b"b"),  # after a final dot no RSET is needed
            (
                OK_MAIL + b"550 5.1.1 no\r\n" + b"554 5.5.1 No valid recipients\r\n",
                b"RSET\r\n" + group % b"c",
            ),
            (b"250 2.0.0 reset\r\n" + OK_MAIL + OK_RCPT + GO, text),
            (QUEUED, QUIT),
            (BYE, b""),
        ],
        bytewise=bytewise,
    )
    assert [outcome(d.results[0]) for d in c.done()] == [
        ("a@d.example", 250, True),
        ("b@d.example", 550, True),
        ("c@d.example", 250, True),
    ]


def test_rset_without_pipelining_waits_for_its_reply() -> None:
    c = Client(jobs=[Job(["a@d.example"]), Job(["b@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (NO_PIPELINING, b"MAIL FROM:<a@b.example> SIZE=22\r\n"),
            (OK_MAIL, b"RCPT TO:<a@d.example>\r\n"),
            (OK_RCPT, b"DATA\r\n"),
            (b"451 4.3.0 later\r\n", b"RSET\r\n"),
            (b"250 ok\r\n", b"MAIL FROM:<a@b.example> SIZE=22\r\n"),
        ]
    )


def test_start_transaction_after_idle() -> None:
    c = Client(auto_quit=False)
    c.converse([(GREET, EHLO), (ehlo_reply("PIPELINING"), b"")])
    assert c.conn.idle
    c.conn.start_transaction(mail(), [rcpt("x@d.example")], b"hi\r\n")
    assert c.pump() == b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@d.example>\r\nDATA\r\n"
    assert not c.conn.idle


# ----------------------------------------------------------------------------- replies


def test_reply_parsing_multiline_enhanced_codes_bare_lf_and_controls() -> None:
    c = Client(jobs=[Job(["x@d.example", "y@d.example"])])
    c.converse(
        [
            (b"220-mx.example first\n220-second line\r\n220 last\r\n", EHLO),
            (
                ehlo_reply("PIPELINING", "ENHANCEDSTATUSCODES"),
                envelope("x@d.example", "y@d.example", size=None),
            ),
            (
                OK_MAIL
                + b"550-5.1.1 The mailbox\r\n"
                + b"550-5.1.1 does not exist\t\x07here\r\n"
                + b"550 5.1.1 bye\r\n"
                + b"550 5.1.1\r\n"
                + b"554 no valid recipients\r\n",
                QUIT,
            ),
        ]
    )
    assert c.conn.greeting == Reply(220, "", "mx.example first\nsecond line\nlast")
    results = c.done()[0].results
    assert results[0].reply == Reply(550, "5.1.1", "The mailbox\ndoes not exist ?here\nbye")
    assert results[1].reply == Reply(550, "5.1.1", "")


def test_enhanced_code_of_another_class_is_left_in_the_text() -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (NO_PIPELINING, b"MAIL FROM:<a@b.example> SIZE=22\r\n"),
            (b"550 4.1.1 odd\r\n", QUIT),
        ]
    )
    assert c.done()[0].results[0].reply == Reply(550, "", "4.1.1 odd")


# ----------------------------------------------------------------------------- wire text


def test_long_lines_are_folded_on_the_wire() -> None:
    body = b"Subject: " + b"s" * 1200 + b"\r\n\r\n." + b"b" * 997 + b"\r\n"
    c = Client(jobs=[Job(["x@d.example"], body)])
    c.converse(
        [
            (GREET, EHLO),
            (
                ehlo_reply("PIPELINING"),
                b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@d.example>\r\nDATA\r\n",
            ),
        ]
    )
    wire = c.feed(OK_MAIL + OK_RCPT + GO)
    lines = wire.split(b"\r\n")
    assert max(len(line) for line in lines) == 998
    assert lines[0] == b"Subject: " + b"s" * 989 and lines[1] == b" " + b"s" * 211
    assert lines[3] == b".." + b"b" * 996 and lines[4] == b" b"  # the stuffed dot is counted
    assert wire.endswith(b"\r\n.\r\n")


def test_helpers() -> None:
    assert core.normalize_line_endings(b"") == b""
    assert core.normalize_line_endings(b"a") == b"a\r\n"
    assert core.normalize_line_endings(b"a\r\r\nb\n\rc") == b"a\r\n\r\nb\r\n\r\nc\r\n"
    clean = b"a\r\nb\r\n"
    assert core.normalize_line_endings(clean) is clean
    assert core.fold_long_lines(b"abcdef\r\n.abc\r\n", 3) == b"abc\r\n de\r\n f\r\n.a\r\n bc\r\n"
    assert core.dot_stuff(b"") == b".\r\n"
    assert core.dot_stuff(b".a\r\nb\r\n..\r\n") == b"..a\r\nb\r\n...\r\n.\r\n"
    assert core.prepare_message(b"x" * 5, 4) == b"xxxx\r\n x\r\n"


# ----------------------------------------------------------------------------- timeouts


def test_timeout_follows_the_awaited_reply() -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    seen = [c.conn.timeout]
    steps = [
        (GREET, EHLO),
        (NO_PIPELINING, b"MAIL FROM:<a@b.example> SIZE=22\r\n"),
        (OK_MAIL, b"RCPT TO:<x@d.example>\r\n"),
        (OK_RCPT, b"DATA\r\n"),
        (GO, b"Subject: hi\r\n\r\nHello\r\n.\r\n"),
        (QUEUED, QUIT),
    ]
    for step in steps:
        c.converse([step])
        seen.append(c.conn.timeout)
    T = core.Timeout
    assert seen == [
        T.INITIAL,
        T.COMMAND,
        T.MAIL,
        T.RCPT,
        T.DATA_INIT,
        T.DATA_TERMINATION,
        T.COMMAND,
    ]
    assert T.DATA_INIT.seconds == 120 and T.DATA_BLOCK.seconds == 180
    assert T.DATA_TERMINATION.seconds == 600 and T.INITIAL.seconds == 300


def test_timed_out_waiting_for_rcpt_retries_elsewhere() -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (NO_PIPELINING, b"MAIL FROM:<a@b.example> SIZE=22\r\n"),
            (OK_MAIL, b"RCPT TO:<x@d.example>\r\n"),
        ]
    )
    c.conn.timed_out()
    assert c.pump() == b""
    failure = c.failed()
    assert (
        failure.reply == core.TIMED_OUT
        and failure.stage is core.Stage.RCPT
        and failure.retry_other_mx
    )


def test_timed_out_after_the_final_dot_defers() -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    c.converse(
        [
            (GREET, EHLO),
            (BASIC, b"MAIL FROM:<a@b.example> SIZE=22\r\nRCPT TO:<x@d.example>\r\nDATA\r\n"),
        ]
    )
    c.feed(OK_MAIL + OK_RCPT + GO)
    c.conn.timed_out()
    c.pump()
    failure = c.failed()
    assert not failure.retry_other_mx and failure.stage is core.Stage.END_OF_DATA
    assert "may have been delivered" in failure.results[0].reply.text


def test_timed_out_waiting_for_221_just_closes() -> None:
    c = Client()
    c.converse([(GREET, EHLO), (BASIC, QUIT)])
    c.conn.timed_out()
    c.pump()
    assert c.events == [core.Closed("timeout")]
    c.conn.timed_out()  # no-op once closed
    c.conn.receive_data(b"221 bye\r\n")
    assert c.conn.next_event() is core.NEED_DATA


# ----------------------------------------------------------------------------- driver errors


def test_quit_requested_before_the_greeting_waits_for_setup() -> None:
    c = Client(auto_quit=False)
    c.conn.quit()
    c.converse([(GREET, EHLO), (BASIC, QUIT), (b"", b"")])
    assert c.events == [core.Closed("quit")]


def test_driver_misuse_raises() -> None:
    c = Client(jobs=[Job(["x@d.example"])])
    with pytest.raises(RuntimeError):
        c.conn.start_transaction(mail(), [rcpt("y@d.example")], b"")
    with pytest.raises(RuntimeError):
        c.conn.quit()
    with pytest.raises(RuntimeError):
        c.conn.tls_established()
    with pytest.raises(RuntimeError):
        c.conn.tls_failed()
    idle = Client(auto_quit=False)
    with pytest.raises(ValueError, match="recipient"):
        idle.conn.start_transaction(mail(), [], b"")
    idle.converse([(b"421 no\r\n", b"")])
    with pytest.raises(RuntimeError):
        idle.conn.start_transaction(mail(), [rcpt("y@d.example")], b"")
    idle.conn.quit()  # no-op once closed


@pytest.mark.parametrize(
    "kw",
    [
        {"helo_name": ""},
        {"helo_name": "a b"},
        {"helo_name": "é.example"},
        {"max_line": 1},
        {"max_line": 999},
        {"pipeline_bdat_limit": -1},
    ],
)
def test_settings_are_validated(kw: dict[str, object]) -> None:
    args: dict[str, object] = {"helo_name": HELO, **kw}
    with pytest.raises(ValueError):
        core.ClientSettings(**args)  # type: ignore[arg-type]


def test_envelope_with_a_line_break_is_refused_not_sent() -> None:
    bad = MailArgs(path=mail().path, extra={"X-EVIL": "a\r\nRSET"})
    c = Client(auto_quit=False)
    c.converse([(GREET, EHLO), (ehlo_reply("X-EVIL"), b"")])
    c.conn.start_transaction(bad, [rcpt("x@d.example")], b"hi\r\n")
    assert c.pump() == b""
    assert c.done()[0].results[0].reply == core.BAD_ENVELOPE


def test_odd_ehlo_lines_are_skipped_or_merged() -> None:
    c = Client(auto_quit=False)
    odd = ehlo_reply("", "x_y junk", "size 100", "AUTH=LOGIN", "AUTH PLAIN", "-dash")
    c.converse([(GREET, EHLO), (odd, b"")])
    assert c.conn.extensions == {"SIZE": "100", "AUTH": "LOGIN PLAIN"}


def test_endless_multiline_reply_is_a_protocol_failure() -> None:
    c = Client(auto_quit=False)
    c.converse([(GREET + b"".join([b"250-" + b"x" * 8000 + b"\r\n"] * 9), EHLO)])
    assert c.failed().reply.text == "Reply too long"


def test_no_transaction_once_quit_is_sent() -> None:
    c = Client()
    c.converse([(GREET, EHLO), (BASIC, QUIT)])
    with pytest.raises(RuntimeError):
        c.conn.start_transaction(mail(), [rcpt("x@d.example")], b"")


def test_a_garbled_goodbye_just_closes() -> None:
    c = Client()
    c.converse([(GREET, EHLO), (BASIC, QUIT), (b"what?\r\n", b"")])
    assert c.events == [core.Closed("quit")]


def test_malformed_reply_text_shows_the_line() -> None:
    c = Client()
    c.converse([(b"HTTP/1.1 400 Bad Request\r\n", b"")])
    assert c.failed().reply.text == "Malformed reply from server: HTTP/1.1 400 Bad Request"
