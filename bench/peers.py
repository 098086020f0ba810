"""Throwaway Postfix and Dovecot instances for the side-by-side benchmarks (bench/harness.py).

Each peer runs from a configuration written here into a temporary directory: its own queue,
state, mailboxes and logs, listening on 127.0.0.1 only, on a free port picked at start, so the
machine's own Postfix or Dovecot (if any) is neither used nor disturbed. Mail is delivered as
the unprivileged `nobody` (no system users are created). Each instance is stopped by the PID
of its master process, and any process of its tree still alive after a bounded wait is killed.

Also here: installing the Debian packages the peers need, and CPU accounting of a whole
process tree through /proc (a Postfix or Dovecot master and every daemon it started).
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
MAIL_UID = MAIL_GID = 65534  # nobody/nogroup: owns the peers' mailboxes
DOMAIN = "bench.test"
USER = f"bench@{DOMAIN}"  # the mailbox every scenario delivers to or reads from
PASSWORD = "bench-password-123"


# --- Debian packages -------------------------------------------------------------------------


def debian_installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and result.stdout.endswith("install ok installed")


def ensure_debian(packages: Iterable[str], *, install: bool = True) -> None:
    """Install the missing ones with apt-get (as root). Postfix is preseeded "No configuration":
    the machine's own Postfix stays unconfigured and stopped; only throwaway instances run."""
    missing = sorted({p for p in packages if not debian_installed(p)})
    if not missing:
        return
    if not install or os.geteuid() != 0:
        raise SystemExit(
            f"missing Debian packages: {' '.join(missing)} (run bench/run as root to install "
            f"them, or: apt-get install {' '.join(missing)})"
        )
    print(f"installing Debian packages: {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if "postfix" in missing:
        subprocess.run(
            ["debconf-set-selections"],
            input=b"postfix postfix/main_mailer_type select No configuration\n",
            check=True,
            timeout=60,
        )
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        timeout=900,
        stdout=subprocess.DEVNULL,
    )


# --- /proc accounting ------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent PID, CPU seconds of the process and of its reaped children), None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw.rsplit(")", 1)[1].split()
    # proc(5): field 4 ppid, 14 utime, 15 stime, 16 cutime, 17 cstime (fields[0] is field 3)
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return int(fields[1]), ticks / TICK


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    tree = [root]
    for pid in tree:  # grows while iterating: breadth-first
        tree.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process tree, including children that have exited and been
    reaped (their time is in the parent's cutime/cstime). A child reaped between two reads
    can be missed or counted twice: sample when the tree is quiet (after a run)."""
    total = 0.0
    for pid in process_tree(root):
        stat = _stat(pid)
        if stat is not None:
            total += stat[1]
    return total


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (Postfix and Dovecot cannot take :0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f}s")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def stop_tree(root: int, seconds: float = 20) -> None:
    """SIGTERM the master (which stops its daemons), then SIGKILL whatever of its tree is
    left after `seconds`."""
    tree = process_tree(root)
    try:
        os.kill(root, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
        time.sleep(0.05)
    for pid in tree:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} not written)"


# --- Postfix ---------------------------------------------------------------------------------

# master.cf: Debian's services, none chrooted (the chroot would need copies of /etc files),
# and one smtpd on 127.0.0.1 at a port of our choosing.
POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
local      unix  - n n -  - local
virtual    unix  - n n -  - virtual
lmtp       unix  - - n -  - lmtp
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""

# main.cf: only what a throwaway instance needs; everything else is Postfix's default,
# including its durability (cleanup fsyncs the queue file before smtpd answers 250).
POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
maillog_file_prefixes = {base}
maillog_file = {base}/maillog
myhostname = peer.{domain}
mydomain = {domain}
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
biff = no
append_dot_mydomain = no
smtp_host_lookup = native
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {base}/vmail
virtual_mailbox_maps = texthash:{base}/conf/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
"""


@dataclass
class Postfix:
    """A running throwaway Postfix: smtpd on 127.0.0.1:`port`, mail for USER delivered by
    virtual(8) into the Maildir `maildir`."""

    base: Path
    port: int
    master_pid: int
    maildir: Path

    @classmethod
    def start(cls, base: Path) -> Postfix:
        base.mkdir(parents=True)
        base.chmod(0o755)  # the daemons run as user postfix or nobody
        for sub in ("conf", "queue", "data", "vmail"):
            (base / sub).mkdir()
        os.chown(base / "data", *_postfix_ids())
        os.chown(base / "vmail", MAIL_UID, MAIL_GID)
        port = free_port()
        conf = base / "conf"
        values = {"base": base, "domain": DOMAIN, "uid": MAIL_UID, "gid": MAIL_GID}
        (conf / "main.cf").write_text(POSTFIX_MAIN_CF.format(**values))
        (conf / "master.cf").write_text(POSTFIX_MASTER_CF.format(port=port))
        (conf / "vmailbox").write_text(f"{USER} {DOMAIN}/bench/\n")
        started = subprocess.run(
            ["postfix", "-c", str(conf), "start"], capture_output=True, check=False, timeout=60
        )
        pid_file = base / "queue" / "pid" / "master.pid"  # a fresh directory: never stale
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        if started.returncode != 0 or pid is None:
            if pid is not None:
                stop_tree(pid)
            raise RuntimeError(f"postfix did not start; its log:\n{tail(base / 'maillog')}")
        peer = cls(base, port, pid, base / "vmail" / DOMAIN / "bench")
        try:
            wait_listening(port, 15)
        except RuntimeError:
            peer.stop()
            raise
        return peer

    def delivered(self) -> int:
        """Messages virtual(8) has written into the mailbox so far."""
        try:
            return sum(1 for _ in os.scandir(self.maildir / "new"))
        except FileNotFoundError:
            return 0

    def wait_delivered(self, count: int, seconds: float) -> None:
        """Until `count` messages are in the mailbox (the queue has drained)."""
        deadline = time.monotonic() + seconds
        while self.delivered() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postfix delivered {self.delivered()} of {count} messages in {seconds:.0f}s;"
                    f" its log:\n{tail(self.base / 'maillog')}"
                )
            time.sleep(0.05)  # each look lists the Maildir: keep the harness's own CPU small

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.master_pid)

    def stop(self) -> None:
        stop_tree(self.master_pid)


def _postfix_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postfix")
    return entry.pw_uid, entry.pw_gid


# --- Dovecot ---------------------------------------------------------------------------------

DOVECOT_CONF = """\
# Throwaway Dovecot for bench/harness.py: loopback only, no TLS, one passwd-file user.
instance_name = homing-bench-{tag}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
mail_location = maildir:{base}/mail/%n
default_login_user = dovenull
default_internal_user = dovecot
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/home/%n
}}
{services}"""

# One per protocol: the clear-text listener on 127.0.0.1, the implicit-TLS one off (port 0).
DOVECOT_SERVICE = """\
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
}}
"""


@dataclass
class Dovecot:
    """A running throwaway Dovecot (in the foreground, so its PID is our child's) with one
    user, USER/PASSWORD, whose INBOX is the Maildir `maildir`."""

    base: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    maildir: Path

    @classmethod
    def start(cls, base: Path, protocols: Sequence[str] = ("pop3",)) -> Dovecot:
        base.mkdir(parents=True)
        base.chmod(0o755)
        for sub in ("run", "state", "home", "mail"):
            (base / sub).mkdir()
        maildir = base / "mail" / USER.split("@", maxsplit=1)[0]
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        for path in (base / "home", base / "mail", maildir, *maildir.iterdir()):
            os.chown(path, MAIL_UID, MAIL_GID)
        ports = {protocol: free_port() for protocol in protocols}
        values = {
            "base": base,
            "tag": base.name,
            "protocols": " ".join(protocols),
            "uid": MAIL_UID,
            "gid": MAIL_GID,
            "services": "".join(
                DOVECOT_SERVICE.format(protocol=protocol, port=port)
                for protocol, port in ports.items()
            ),
        }
        conf = base / "dovecot.conf"
        conf.write_text(DOVECOT_CONF.format(**values))
        (base / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        with (base / "stderr.log").open("wb") as err:
            process = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdout=err, stderr=err)
        peer = cls(base, process, ports, maildir)
        try:
            wait_listening(ports[protocols[0]], 15)
        except RuntimeError as exc:
            peer.stop()
            raise RuntimeError(f"{exc}; dovecot log:\n{tail(base / 'dovecot.log')}") from None
        return peer

    def fill_inbox(self, messages: Iterable[bytes]) -> int:
        """Write messages (CRLF line ends) into the INBOX as Dovecot's own delivery would:
        LF line ends on disk, S= (file size) and W= (size with CRLF) in the file name, so
        Dovecot never has to read a file to learn its size. Returns how many were written."""
        stamp = int(time.time())
        count = 0
        for n, message in enumerate(messages):
            data = message.replace(b"\r\n", b"\n")
            name = f"{stamp}.M{n}P{os.getpid()}.bench,S={len(data)},W={len(message)}:2,"
            path = self.maildir / "cur" / name
            path.write_bytes(data)
            os.chown(path, MAIL_UID, MAIL_GID)
            count += 1
        return count

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stop_tree(self.process.pid)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def postfix_version() -> str:
    result = subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


def dovecot_version() -> str:
    result = subprocess.run(["dovecot", "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"
