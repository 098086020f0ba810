"""SMTP replies as values: a code, an RFC 3463 enhanced status code and text.

A `Reply` is what goes on the wire; errors and policy verdicts carry one, and the
session layer turns it into bytes exactly once (`Reply.to_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply (RFC 5321 §4.2), possibly multi-line.

    `enhanced` is the RFC 3463 status code ("2.0.0") or "" for replies that must not
    carry one (the greeting and the EHLO reply, RFC 2034 §3).
    """

    code: int
    enhanced: str
    text: str
    _wire: bytes = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_wire", self._format())

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)

    def lines(self) -> list[str]:
        """The text lines, each without the code (never empty)."""
        parts = self.text.split("\n")
        return parts or [""]

    def to_bytes(self) -> bytes:
        """The reply as it goes on the wire (formatted once, at construction)."""
        return self._wire

    def _format(self) -> bytes:
        """RFC 5321 §4.2.1: `code-text` on every line but the last, `code text` on the last.

        RFC 2034 §3: with ENHANCEDSTATUSCODES every line carries the enhanced code.
        """
        lines = self.lines()
        out: list[str] = []
        last = len(lines) - 1
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            prefix = f"{self.enhanced} " if self.enhanced else ""
            out.append(f"{self.code}{sep}{prefix}{line}\r\n")
        return "".join(out).encode("utf-8", "replace")

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".replace("  ", " ")
