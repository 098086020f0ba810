"""The live sessions of one service in a process, so shutdown can reach the idle ones at once.

Shared by the SMTP, POP3 and IMAP adapters: each session registers itself while it runs and
answers `interrupt_if_idle()` with its protocol's goodbye (421 4.3.2, -ERR [SYS/TEMP], BYE);
sessions in the middle of a message or an update finish it first and then see `draining`.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Interruptible(Protocol):
    def interrupt_if_idle(self) -> None: ...


S = TypeVar("S", bound=Interruptible)


class SessionRegistry(Generic[S]):
    def __init__(self) -> None:
        self.sessions: set[S] = set()
        self.draining = False

    def drain(self) -> None:
        """Stop: wake every session waiting for a command; the others finish first."""
        self.draining = True
        for session in list(self.sessions):
            session.interrupt_if_idle()
