"""The one exception a SMTP core lets escape: a protocol error that carries its wire reply."""

from __future__ import annotations

from homing.mail.reply import Reply


class SMTPProtocolError(Exception):
    """A fault in what the peer sent (or, with `ours=True`, in what we could do).

    `reply` is what goes on the wire; `close` says the session must end after it.
    """

    def __init__(self, reply: Reply, *, close: bool = False, ours: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.close = close
        self.ours = ours
