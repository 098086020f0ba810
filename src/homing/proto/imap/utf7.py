"""Modified UTF-7: IMAP4rev1 mailbox names (RFC 3501 §5.1.3, RFC 9051 Appendix A.1).

Printable US-ASCII except "&" (0x20-0x25, 0x27-0x7e) stands for itself and "&" is written "&-".
Every other character (controls, DEL, non-ASCII) goes into a run of modified base64: UTF-16BE,
base64 with "," for "/" and no "=" padding, between "&" and "-".

`decode` is strict: it accepts only the one canonical form `encode` produces, so that
`encode(decode(b)) == b` for every `b` it accepts and two different wire names never decode to
the same mailbox. It rejects, with `UTF7Error`:

* octets outside printable ASCII (8-bit or control characters sent as they are);
* an "&" run without its closing "-" ("&Jjo!"), or with characters outside the modified base64
  alphabet;
* base64 that does not decode to whole UTF-16 code units, leaves non-zero padding bits, or holds
  an unpaired surrogate;
* base64 encoding a printable ASCII character, "&" included ("&AGE-" for "a");
* a null shift: a base64 run right after another ("&U,BTFw-&ZeVnLIqe-" must be
  "&U,BTF2XlZyyKng-").
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["UTF7Error", "decode", "encode"]


class UTF7Error(ValueError):
    """Text that is not canonical modified UTF-7 (or, for `encode`, holds a lone surrogate)."""


# Characters that cannot stand for themselves: "&" alone, or a run of non-printables.
_SHIFTED = re.compile(r"&|[^\x20-\x7e]+")
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_MODIFIED_BASE64 = re.compile(rb"[A-Za-z0-9+,]+")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]")


def encode(text: str) -> bytes:
    """`text` in modified UTF-7 (ASCII bytes). Raises UTF7Error for an unpaired surrogate."""
    try:
        return _SHIFTED.sub(_shift, text).encode("ascii")
    except UnicodeEncodeError as exc:  # a lone surrogate cannot become UTF-16
        raise UTF7Error("text holds an unpaired surrogate") from exc


def _shift(match: re.Match[str]) -> str:
    run = match.group()
    if run == "&":
        return "&-"
    encoded = base64.b64encode(run.encode("utf-16-be")).rstrip(b"=").replace(b"/", b",")
    return "&" + encoded.decode("ascii") + "-"


def decode(data: bytes) -> str:
    """The text that the canonical modified UTF-7 `data` stands for; UTF7Error otherwise."""
    if _NOT_PRINTABLE.search(data) is not None:
        raise UTF7Error("modified UTF-7 holds only printable ASCII")
    if b"&" not in data:
        return data.decode("ascii")
    out: list[str] = []
    pos = 0
    run_end = -1  # where the last base64 run's "-" ended
    while True:
        amp = data.find(b"&", pos)
        if amp < 0:
            out.append(data[pos:].decode("ascii"))
            return "".join(out)
        out.append(data[pos:amp].decode("ascii"))
        end = data.find(b"-", amp + 1)
        if end < 0:
            raise UTF7Error("unterminated base64 run")
        if end == amp + 1:  # "&-" is "&"
            out.append("&")
            pos = end + 1
            continue
        if amp == run_end:
            raise UTF7Error("null shift: a base64 run right after another")
        out.append(_decode_run(data[amp + 1 : end]))
        pos = run_end = end + 1


def _decode_run(run: bytes) -> str:
    if _MODIFIED_BASE64.fullmatch(run) is None:
        raise UTF7Error("character outside the modified base64 alphabet")
    padding = -len(run) % 4
    if padding == 3:
        raise UTF7Error("base64 run of impossible length")
    try:
        raw = binascii.a2b_base64(run.replace(b",", b"/") + b"=" * padding, strict_mode=True)
    except binascii.Error as exc:
        raise UTF7Error("invalid base64") from exc
    if len(raw) % 2:
        raise UTF7Error("base64 run is not whole UTF-16 code units")
    # Non-zero bits after the last code unit ("&AOl-" for "é") would decode to the same
    # text as the canonical run; re-encoding catches every such alias.
    if base64.b64encode(raw).rstrip(b"=").replace(b"/", b",") != run:
        raise UTF7Error("non-canonical base64 run")
    try:
        text = raw.decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise UTF7Error("unpaired surrogate in base64 run") from exc
    if _PRINTABLE_ASCII.search(text) is not None:
        raise UTF7Error("base64 run encodes printable ASCII")
    return text
