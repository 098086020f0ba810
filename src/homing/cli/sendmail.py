"""`homing sendmail`: the sendmail command line that cron, mailx, PHP and scripts expect.

    homing sendmail [-t] [-i | -oi] [-f SENDER] [-F NAME] [RECIPIENT ...] < message

Install it as /usr/sbin/sendmail with a two-line wrapper (docs/cli.md). The message is read from
standard input and written straight into the store and queue (no network hop, no running
server needed). Exit codes follow sysexits(3) as sendmail's do: 0 ok, 64 usage, 65 bad message,
67 unknown recipient, 75 temporary failure.
"""

from __future__ import annotations

import email.policy
import getpass
import os
import sys
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser

import click

from homing.cli._common import State, binary_stream, open_store, pass_state
from homing.clock import SystemClock
from homing.mail.trace import header_section
from homing.smtpd.inject import inject
from homing.store import StoreError

EX_USAGE, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL = 64, 65, 67, 75
_IGNORED = {"-odi", "-odb", "-odq", "-oem", "-oee", "-oep", "-om", "-v", "-bm", "-Am", "-Ac", "-U"}


@dataclass
class Options:
    extract: bool = False  # -t
    dot_ends: bool = True  # a line "." ends input unless -i / -oi
    sender: str | None = None
    full_name: str | None = None
    recipients: list[str] = field(default_factory=list)


def parse_args(args: list[str]) -> Options:
    """sendmail's flags: the ones programs really use; others are ignored, as Postfix does."""
    opts = Options()
    it = iter(args)
    for arg in it:
        if arg == "--":
            opts.recipients.extend(it)
            break
        if arg == "-t":
            opts.extract = True
        elif arg in ("-i", "-oi"):
            opts.dot_ends = False
        elif arg in ("-f", "-r", "-F"):
            value = next(it, None)
            if value is None:
                raise click.UsageError(f"{arg} needs a value")
            opts = _set(opts, arg, value)
        elif arg[:2] in ("-f", "-r", "-F") and len(arg) > 2:
            opts = _set(opts, arg[:2], arg[2:])
        elif arg in _IGNORED or arg.startswith(("-o", "-B", "-N", "-R", "-V", "-X")):
            continue
        elif arg.startswith("-"):
            raise click.UsageError(f"unsupported option {arg}")
        else:
            opts.recipients.extend(a.strip() for a in arg.split(",") if a.strip())
    return opts


def _set(opts: Options, flag: str, value: str) -> Options:
    if flag == "-F":
        opts.full_name = value
    else:
        opts.sender = "" if value in ("<>", "") else value.strip("<>")
    return opts


def read_message(stream: object, *, dot_ends: bool) -> bytes:
    """Read stdin, end at a lone "." line unless -i, and turn every line end into CRLF."""
    raw = binary_stream(stream).read()  # type: ignore[arg-type]
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if dot_ends and b"." in lines:
        lines = lines[: lines.index(b".")]
    return b"".join(line.rstrip(b"\r") + b"\r\n" for line in lines)


def extract_recipients(message: bytes) -> tuple[list[str], bytes]:
    """-t: recipients from To, Cc and Bcc; Bcc is removed from the message."""
    head = header_section(message)
    parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(head + b"\r\n")
    found: list[str] = []
    for name in ("To", "Cc", "Bcc"):
        for value in parsed.get_all(name) or []:
            found.extend(a.addr_spec for a in getattr(value, "addresses", ()) if a.addr_spec)
    if parsed.get_all("Bcc"):
        kept = _drop_field(head, b"bcc")
        message = kept + message[len(head) :]
    return found, message


def _drop_field(head: bytes, name: bytes) -> bytes:
    out: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = line.split(b":", 1)[0].strip().lower() == name
        if not skipping:
            out.append(line)
    return b"\r\n".join(out)


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_state
def sendmail(state: State, args: tuple[str, ...]) -> None:
    """Send a message read from standard input, as sendmail does.

    \b
    homing sendmail [-t] [-i | -oi] [-f SENDER] [-F NAME] [RECIPIENT ...] < message
      -t         recipients from To, Cc and Bcc (Bcc is removed)
      -i, -oi    a line with a single "." does not end the message
      -f SENDER  envelope sender (default $USER@hostname); -f '<>' for none
      -F NAME    full name for the From header added when there is none
    Exit status (sysexits): 0 ok, 64 usage, 67 unknown recipient, 75 try later.
    """
    if "--help" in args:
        click.echo(click.get_current_context().get_help())
        return
    try:
        opts = parse_args(list(args))
    except click.UsageError as err:
        click.echo(f"sendmail: {err.message}", err=True)
        sys.exit(EX_USAGE)
    message = read_message(sys.stdin, dot_ends=opts.dot_ends)
    recipients = list(opts.recipients)
    if opts.extract:
        extracted, message = extract_recipients(message)
        recipients += extracted
    if not recipients:
        click.echo("sendmail: no recipients", err=True)
        sys.exit(EX_USAGE)
    config = state.config()
    user = getpass.getuser() if os.environ.get("USER") is None else os.environ["USER"]
    sender = opts.sender if opts.sender is not None else f"{user}@{config.hostname}"
    try:
        with open_store(config) as store:
            result = inject(
                store,
                config,
                SystemClock(),
                sender=sender,
                recipients=recipients,
                message=message,
                local_user=user,
                full_name=opts.full_name,
            )
    except StoreError as err:
        click.echo(f"sendmail: cannot store the message: {err}", err=True)
        sys.exit(EX_TEMPFAIL)
    for address, reason in result.refused:
        click.echo(f"sendmail: {address}: {reason}", err=True)
    if result.refused:
        temporary = all("not available" in reason for _, reason in result.refused)
        sys.exit(EX_TEMPFAIL if temporary else EX_NOUSER)
