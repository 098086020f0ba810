"""Two-way sync with tools nobody here wrote: Debian's mbsync (isync) and offlineimap3, each
over TLS it verifies against the server's self-signed certificate, between a Homing account
and a local Maildir.

One scenario for both (`run_scenario`): 300 varied messages in three mailboxes (plain, 8-bit,
multipart, attachments up to 2 MB; assorted flags) are synced down; then both sides change: flags
set and cleared on the server (imaplib) and locally (Maildir file names), messages moved
between server mailboxes, deleted on the server and locally, new mail delivered over SMTP and
APPENDed to a new server mailbox, new files and a new folder added locally. After the second
sync the server (UIDs, flags, bytes over IMAP) and the Maildir must hold exactly the expected
messages, nothing lost or doubled, bytes identical (CRLF, minus mbsync's X-TUID); a third sync
must change nothing on either side (same files, same UIDs, same UIDNEXT).
"""

from __future__ import annotations

import itertools
import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from argon2 import PasswordHasher

from homing.mail.mime import parse_message
from homing.store import NewMessage, Store, make_credentials
from tests.integration.conftest import (
    DOMAIN,
    Server,
    module_server,
    module_store,
    require_tool,
)
from tests.integration.syncharness import (
    ImapSide,
    LocalMessage,
    Maildir,
    Model,
    Msg,
    ServerBox,
    check_model,
    corpus,
    from_maildir,
    initial_flags,
    local_listing,
    local_model,
    message_id,
    server_model,
)

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "sync pw"
HOSTNAME = "mx.local.test"  # the name in the certificate `homing init` made
LISTEN = {"imap": ["127.0.0.1:0"], "imaps": ["127.0.0.1:0"], "smtp": ["127.0.0.1:0"]}
#: The starting corpus: 300 messages over three mailboxes, one of them a level down.
START = {"INBOX": ("in", 220), "Lists/debian": ("li", 50), "Archive": ("ar", 30)}
#: Created on the server between the first and second sync (Entwürfe, one level down).
NEW_SERVER_MAILBOX = "Entw&APw-rfe/2024"
ARRIVED = 1_704_103_200  # 2024-01-01 10:00 UTC, the first message's INTERNALDATE
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from module_server(tmp_path_factory, "synctools", {"listen": LISTEN})


@pytest.fixture(scope="module")
def store(server: Server) -> Iterator[Store]:
    yield from module_store(server)


@dataclass
class Account:
    """A fresh account holding the starting corpus, and the state the test expects."""

    address: str
    expected: Model = field(default_factory=dict)


@pytest.fixture
def account(store: Store) -> Account:
    return make_account(store)


def make_account(store: Store) -> Account:
    address = f"sync{next(_names)}@{DOMAIN}"
    acct = store.add_account(
        address, make_credentials(PASSWORD, hasher=FAST, scram_iterations=4096)
    )
    result = Account(address)
    news = []
    for mailbox, (tag, count) in START.items():
        if store.get_mailbox(acct.id, mailbox) is None:
            store.create_mailbox(acct.id, mailbox)
        box = result.expected.setdefault(mailbox, {})
        for n, data in enumerate(corpus(tag, count)):
            flags = initial_flags(n)
            when = ARRIVED + 3600 * n  # hourly through January 2024
            news.append(NewMessage(acct.id, mailbox, b"", data, parse_message(data), flags, when))
            box[message_id(data)] = Msg(flags, data)
    store.deliver(news).result(timeout=30)
    return result


# ---------------------------------------------------------------------------------- the tools


class Tool(Protocol):
    local: Maildir
    #: Whether a message flagged \Deleted (Maildir "T") on either side is expunged on both
    #: in the same run (mbsync's Expunge Both). offlineimap only copies the flag; it
    #: EXPUNGEs a server folder after deleting messages there itself, which would take
    #: such messages along and leave their local files for a later run: not exercised.
    trash_expunges: bool

    def sync(self) -> str: ...

    def check_uids(
        self, server: dict[str, ServerBox], local: dict[str, list[LocalMessage]]
    ) -> None: ...


def run_tool(args: list[str], *, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=45, env=env, stdin=subprocess.DEVNULL
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (args, output)
    return output


class Mbsync:
    """mbsync with one channel over every mailbox (Patterns *), state beside each folder."""

    trash_expunges = True

    def __init__(self, server: Server, user: str, tmp: Path, tls: str, auth: str) -> None:
        self.tool = require_tool("mbsync")
        self.local = Maildir(tmp / "mail", "/")  # SubFolders Verbatim: Lists/debian nests
        self.local.root.mkdir()
        service = "imaps" if tls == "IMAPS" else "imap"
        self.rc = tmp / "mbsyncrc"
        # isync 1.4 (Debian 12) spells it SSLType; 1.5 renamed it TLSType and kept the old
        # name as an alias. CertificateFile: a peer certificate found there is trusted as
        # is (isync socket.c verify_cert_host), which is how a self-signed one is pinned.
        self.rc.write_text(
            f"IMAPAccount homing\nHost 127.0.0.1\nPort {server.address(service)[1]}\n"
            f'User {user}\nPass "{PASSWORD}"\nSSLType {tls}\nCertificateFile {server.cert}\n'
            f"AuthMechs {auth}\nTimeout 20\n\n"
            "IMAPStore far\nAccount homing\n\n"
            f"MaildirStore near\nPath {self.local.root}/\nInbox {self.local.root}/INBOX\n"
            "SubFolders Verbatim\n\n"
            "Channel all\nFar :far:\nNear :near:\nPatterns *\nCreate Both\nExpunge Both\n"
            "SyncState *\nSync All\nCopyArrivalDate yes\n"
        )

    def sync(self) -> str:
        return run_tool([self.tool, "-c", str(self.rc), "-a"])

    def check_uids(
        self, server: dict[str, ServerBox], local: dict[str, list[LocalMessage]]
    ) -> None:
        """The sync state pairs every server UID with one Maildir UID (the ",U=" in a file
        name, mbsync's own numbering) of the same message, and nothing else; and with
        CopyArrivalDate a file's mtime is its message's INTERNALDATE, both ways."""
        for name, box in server.items():
            state = (self.local.folder_path(name) / ".mbsyncstate").read_text()
            header, _, body = state.partition("\n\n")
            assert f"FarUidValidity {box.uidvalidity}\n" in header + "\n", (name, header)
            pairs = [tuple(map(int, line.split()[:2])) for line in body.splitlines()]
            far = {m.uid: m for m in box.messages}
            near = {m.uid: m for m in local[name] if m.uid is not None}
            assert sorted(f for f, _ in pairs) == sorted(far), (name, "far UIDs")
            assert sorted(n for _, n in pairs) == sorted(near), (name, "near UIDs")
            assert len(near) == len(local[name]), (name, "a file without a UID")
            for f, n in pairs:
                assert far[f].mid == near[n].mid, (name, f, n)
                assert far[f].internaldate == near[n].mtime, (name, far[f].mid, "date")


class OfflineImap:
    """offlineimap3, one-shot, its metadata in the test's directory. It connects to
    mx.local.test so that its own check of the certificate's name passes; a small
    launcher resolves that name to 127.0.0.1 inside the offlineimap process only."""

    trash_expunges = False

    def __init__(self, server: Server, user: str, tmp: Path) -> None:
        tool = Path(require_tool("offlineimap")).resolve()
        shebang = tool.read_text().splitlines()[0]
        assert shebang.startswith("#!"), shebang
        self.local = Maildir(tmp / "mail", ".")  # offlineimap's default Maildir separator
        launcher = tmp / "offlineimap-launcher.py"
        launcher.write_text(
            "import runpy, socket, sys\n"
            "real = socket.getaddrinfo\n"
            "def getaddrinfo(host, *args, **kwargs):\n"
            f"    return real('127.0.0.1' if host == {HOSTNAME!r} else host, *args, **kwargs)\n"
            "socket.getaddrinfo = getaddrinfo\n"
            f"sys.path.insert(0, {str(tool.parent)!r})\n"
            "sys.argv[0] = 'offlineimap'\n"
            f"runpy.run_path({str(tool)!r}, run_name='__main__')\n"
        )
        self.command = [shebang[2:].strip(), str(launcher)]
        self.rc = tmp / "offlineimaprc"
        self.rc.write_text(
            f"[general]\naccounts = homing\nmetadata = {tmp / 'metadata'}\n\n"
            "[Account homing]\nlocalrepository = near\nremoterepository = far\n\n"
            f"[Repository near]\ntype = Maildir\nlocalfolders = {self.local.root}\n\n"
            f"[Repository far]\ntype = IMAP\nremotehost = {HOSTNAME}\n"
            f"remoteport = {server.address('imaps')[1]}\nremoteuser = {user}\n"
            f"remotepass = {PASSWORD}\nssl = yes\nsslcacertfile = {server.cert}\n"
            "auth_mechanisms = PLAIN\ntimeout = 20\nmaxconnections = 3\n"
        )

    def sync(self) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        output = run_tool([*self.command, "-c", str(self.rc), "-o", "-u", "basic"], env=env)
        # offlineimap reports a failed folder or message as ERROR and still exits 0.
        assert not re.search(r"^\s*ERROR", output, re.MULTILINE), output
        return output

    def check_uids(
        self, server: dict[str, ServerBox], local: dict[str, list[LocalMessage]]
    ) -> None:
        """Each local file names its message's server UID (",U=")."""
        for name, box in server.items():
            near = {m.uid: m.mid for m in local[name]}
            assert near == {m.uid: m.mid for m in box.messages}, name


# ---------------------------------------------------------------------------- the scenario


@dataclass
class Scenario:
    tool: Tool
    account: Account
    imap: Callable[[], ImapSide]
    smtp: tuple[str, int]
    rounds: list[float] = field(default_factory=list)

    @property
    def expected(self) -> Model:
        return self.account.expected

    def sync(self) -> str:
        start = time.monotonic()
        output = self.tool.sync()
        self.rounds.append(time.monotonic() - start)
        return output

    def check(self, after: str) -> tuple[dict[str, ServerBox], dict[str, list[LocalMessage]]]:
        with self.imap() as imap:
            server = imap.snapshot()
        local = self.tool.local.snapshot()
        check_model(server_model(server), self.expected, f"server after {after}")
        check_model(local_model(local), self.expected, f"Maildir after {after}")
        assert sorted(local) == sorted(server), f"folders after {after}"
        self.tool.check_uids(server, local)
        return server, local

    # ------------------------------------------------------------------ server-side changes

    def change_server(self) -> None:
        inbox, lists = self.expected["INBOX"], self.expected["Lists/debian"]
        with self.imap() as imap:
            for n in range(20):  # \Flagged toggled, \Seen added
                mid = _mid("in", n)
                msg = inbox[mid]
                flip = frozenset({"\\Flagged"})
                imap.store("INBOX", mid, "-FLAGS" if flip <= msg.flags else "+FLAGS", flip)
                imap.store("INBOX", mid, "+FLAGS", frozenset({"\\Seen"}))
                inbox[mid] = Msg((msg.flags ^ flip) | {"\\Seen"}, msg.body)
            for n in range(10):  # every flag cleared
                mid = _mid("li", n)
                imap.store("Lists/debian", mid, "FLAGS", frozenset())
                lists[mid] = Msg(frozenset(), lists[mid].body)
            moved = [_mid("in", n) for n in range(20, 32)]
            imap.move("INBOX", moved, "Archive")
            for mid in moved:
                self.expected["Archive"][mid] = inbox.pop(mid)
            for n in range(32, 38):  # deleted and expunged by this client
                imap.store("INBOX", _mid("in", n), "+FLAGS", frozenset({"\\Deleted"}))
                del inbox[_mid("in", n)]
            imap.expunge("INBOX")
            for n in range(100, 110):  # changed on both sides: \Flagged here, \Seen there
                imap.store("INBOX", _mid("in", n), "+FLAGS", frozenset({"\\Flagged"}))
            for n in range(110, 113):  # deleted on both sides
                imap.store("INBOX", _mid("in", n), "+FLAGS", frozenset({"\\Deleted"}))
            imap.expunge("INBOX")
            if self.tool.trash_expunges:  # flagged only: the tool's Expunge Both removes them
                for n in range(38, 42):
                    imap.store("INBOX", _mid("in", n), "+FLAGS", frozenset({"\\Deleted"}))
                    del inbox[_mid("in", n)]
            # A new mailbox, named in modified UTF-7 (RFC 3501 §5.1.3): "Entwürfe/2024".
            imap.create(NEW_SERVER_MAILBOX)
            new_box = self.expected.setdefault(NEW_SERVER_MAILBOX, {})
            for n, data in enumerate(corpus("pr", 5)):
                flags = frozenset({"\\Seen"}) if n % 2 else frozenset()
                imap.append(NEW_SERVER_MAILBOX, data, flags)
                new_box[message_id(data)] = Msg(flags, data)
        self.deliver_smtp(corpus("smtp", 10))

    def deliver_smtp(self, messages: list[bytes]) -> None:
        """New mail the way it really arrives; the server adds its trace headers in front."""
        with smtplib.SMTP(*self.smtp, timeout=10) as smtp:
            for data in messages:
                smtp.sendmail("sender@remote.example", [self.account.address], data)
        with self.imap() as imap:
            arrived = {m.mid: m.msg for m in imap.box("INBOX").messages}
        for data in messages:
            got = arrived[message_id(data)]
            assert got.body.endswith(data) and len(got.body) > len(data), got.body[:300]
            self.expected["INBOX"][message_id(data)] = got

    # ------------------------------------------------------------------- local-side changes

    def change_local(self) -> None:
        local, inbox, lists = self.tool.local, self.expected["INBOX"], self.expected["Lists/debian"]
        for n in range(60, 80):  # \Seen toggled, \Answered added
            mid = _mid("in", n)
            msg = inbox[mid]
            flags = (msg.flags ^ {"\\Seen"}) | {"\\Answered"}
            local.set_flags("INBOX", mid, flags)
            inbox[mid] = Msg(flags, msg.body)
        for n in range(80, 88):
            local.delete("INBOX", _mid("in", n))
            del inbox[_mid("in", n)]
        for n in range(100, 110):
            mid = _mid("in", n)
            msg = inbox[mid]
            local.set_flags("INBOX", mid, msg.flags | {"\\Seen"})
            inbox[mid] = Msg(msg.flags | {"\\Seen", "\\Flagged"}, msg.body)
        for n in range(110, 113):
            local.delete("INBOX", _mid("in", n))
            del inbox[_mid("in", n)]
        if self.tool.trash_expunges:
            for n in range(88, 92):
                mid = _mid("in", n)
                local.set_flags("INBOX", mid, inbox.pop(mid).flags | {"\\Deleted"})
        for n in range(10, 15):
            local.delete("Lists/debian", _mid("li", n))
            del lists[_mid("li", n)]
        for n in range(15, 20):
            mid = _mid("li", n)
            msg = lists[mid]
            local.set_flags("Lists/debian", mid, msg.flags | {"\\Flagged"})
            lists[mid] = Msg(msg.flags | {"\\Flagged"}, msg.body)
        self.add_local("INBOX", corpus("new", 12))
        self.add_local("Lists/debian", corpus("newli", 3))
        self.add_local("Old Notes", corpus("notes", 4))  # a folder the server lacks

    def add_local(self, mailbox: str, messages: list[bytes]) -> None:
        box = self.expected.setdefault(mailbox, {})
        for n, data in enumerate(messages):
            flags = initial_flags(n) - {"\\Draft"}
            self.tool.local.add(mailbox, data, flags)
            box[message_id(data)] = Msg(flags, from_maildir(data))


def _mid(tag: str, n: int) -> str:
    return f"<{tag}-{n}@sync.test>"


def run_scenario(scenario: Scenario) -> None:
    scenario.sync()
    scenario.check("the first sync")

    scenario.change_server()
    scenario.change_local()
    scenario.sync()
    server, local = scenario.check("changes on both sides")
    # 300, less 6 + 8 + 5 + 3 deleted (+ 4 + 4 flagged \Deleted), plus 5 + 10 + 19 new:
    # the expectation's own bookkeeping, so a slip in it cannot hide a slip in a sync.
    total = sum(len(box) for box in scenario.expected.values())
    assert total == (304 if scenario.tool.trash_expunges else 312)

    scenario.sync()  # nothing left to do
    with scenario.imap() as imap:
        assert imap.snapshot() == server, "the third sync changed the server"
    assert local_listing(scenario.tool.local.snapshot()) == local_listing(local), (
        "the third sync changed the Maildir"
    )
    sys.stderr.write(f"sync rounds: {', '.join(f'{t:.2f} s' for t in scenario.rounds)}\n")


def scenario_for(tool: Tool, server: Server, account: Account) -> Scenario:
    def imap() -> ImapSide:
        return ImapSide(server.address("imaps")[1], server.cert, account.address, PASSWORD)

    return Scenario(tool, account, imap, server.smtp)


# ---------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize(
    ("tls", "auth"),
    [("IMAPS", "PLAIN"), ("STARTTLS", "LOGIN")],  # LOGIN: the IMAP command, not SASL LOGIN
)
def test_mbsync_two_way_sync(
    server: Server, account: Account, tmp_path: Path, tls: str, auth: str
) -> None:
    tool = Mbsync(server, account.address, tmp_path, tls, auth)
    run_scenario(scenario_for(tool, server, account))


def test_offlineimap_two_way_sync(server: Server, account: Account, tmp_path: Path) -> None:
    tool = OfflineImap(server, account.address, tmp_path)
    run_scenario(scenario_for(tool, server, account))
