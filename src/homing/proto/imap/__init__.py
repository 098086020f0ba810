"""Sans-I/O IMAP: command framing and grammar (grammar.py), command values and their wire form
(types.py), modified UTF-7 mailbox names (utf7.py)."""

from homing.proto.imap.grammar import (
    MAX_NESTING,
    NEED_DATA,
    CommandReader,
    ContinuationRequest,
    IMAPParseError,
    Limits,
    NeedData,
    RawCommand,
    RawLiteral,
    TooBig,
    is_idle_done,
    parse_command,
    parse_sasl_response,
)
from homing.proto.imap.types import Command, FormatError, SequenceSet, format_command

__all__ = [
    "MAX_NESTING",
    "NEED_DATA",
    "Command",
    "CommandReader",
    "ContinuationRequest",
    "FormatError",
    "IMAPParseError",
    "Limits",
    "NeedData",
    "RawCommand",
    "RawLiteral",
    "SequenceSet",
    "TooBig",
    "format_command",
    "is_idle_done",
    "parse_command",
    "parse_sasl_response",
]
