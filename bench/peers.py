"""Throwaway Postfix and Dovecot instances for the side-by-side benchmarks (bench/harness.py).

Each peer runs from a configuration written here into a temporary directory: its own queue,
state, mailboxes and logs, listening on 127.0.0.1 only, on a free port picked at start, so the
machine's own Postfix or Dovecot (if any) is neither used nor disturbed. Mail is delivered as
the unprivileged `nobody` (no system users are created). Each instance is stopped by the PID
of its master process, and any process of its tree still alive after a bounded wait is killed.

Also here: Postfix's `smtp-sink` as the remote mail exchanger of the relay scenario,
installing the Debian packages the peers need, and CPU and memory accounting of a whole process
tree through /proc (a Postfix or Dovecot master and every daemon it started).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process tree, KiB: RSS summed over its processes (pages shared
    between them, such as libraries, counted once per process), and PSS (each shared page
    divided among the processes that map it, so the sum is what the tree really holds)."""

    rss: int
    pss: int
    processes: int


def _memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) of one process from /proc/PID/smaps_rollup, None if it is gone."""
    rss = pss = 0
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def tree_memory(root: int) -> Memory:
    """Resident memory of `root` and every live descendant (zombies hold none)."""
    rss = pss = processes = 0
    for pid in process_tree(root):
        found = _memory_kib(pid)
        if found is not None and _alive(pid):
            rss, pss, processes = rss + found[0], pss + found[1], processes + 1
    return Memory(rss, pss, processes)


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

# A relaying instance: mail accepted by its smtpd is put on hold (access(5) HOLD), so a
# benchmark can fill the queue first and then release it all at once (`Postfix.release`);
# Postfix's own smtp(8) client then relays everything to `relayhost`.
POSTFIX_RELAY_CF = """\
relayhost = [127.0.0.1]:{port}
smtpd_recipient_restrictions = check_recipient_access static:HOLD
"""

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
FILL_PREFIX = "fill."  # names of the Maildir files `Postfix.fill_maildir` writes


@dataclass
class Postfix:
    """A running throwaway Postfix: smtpd on 127.0.0.1:`port`, mail for each of `mailboxes`
    (USER by default) delivered by virtual(8) into a Maildir of its own; with `relay_port`,
    mail for other domains held on arrival and then relayed to 127.0.0.1:`relay_port`."""

    base: Path
    port: int
    master_pid: int
    maildir: Path  # USER's

    @classmethod
    def start(
        cls, base: Path, *, mailboxes: Sequence[str] = (USER,), relay_port: int | None = None
    ) -> Postfix:
        base.mkdir(parents=True)
        base.chmod(0o755)  # the daemons run as user postfix or nobody
        for sub in ("conf", "queue", "data", "vmail"):
            (base / sub).mkdir()
        os.chown(base / "data", *_postfix_ids())
        os.chown(base / "vmail", MAIL_UID, MAIL_GID)
        port = free_port()
        conf = base / "conf"
        values = {"base": base, "domain": DOMAIN, "uid": MAIL_UID, "gid": MAIL_GID}
        main_cf = POSTFIX_MAIN_CF.format(**values)
        if relay_port is not None:
            main_cf += POSTFIX_RELAY_CF.format(port=relay_port)
        (conf / "main.cf").write_text(main_cf)
        (conf / "master.cf").write_text(POSTFIX_MASTER_CF.format(port=port))
        (conf / "vmailbox").write_text(
            "".join(f"{address} {DOMAIN}/{_local(address)}/\n" for address in mailboxes)
        )
        started = subprocess.run(
            ["postfix", "-c", str(conf), "start"], capture_output=True, check=False, timeout=60
        )
        pid_file = base / "queue" / "pid" / "master.pid"  # a fresh directory: never stale
        pid = int(pid_file.read_text()) if pid_file.exists() else None
        if started.returncode != 0 or pid is None:
            if pid is not None:
                stop_tree(pid)
            raise RuntimeError(f"postfix did not start; its log:\n{tail(base / 'maillog')}")
        peer = cls(base, port, pid, base / "vmail" / DOMAIN / _local(USER))
        try:
            wait_listening(port, 15)
        except RuntimeError:
            peer.stop()
            raise
        return peer

    def maildir_of(self, address: str) -> Path:
        return self.base / "vmail" / DOMAIN / _local(address)

    def delivered(self, address: str = USER) -> int:
        """Messages in the mailbox's new/ so far (what virtual(8) delivered, and any
        `fill_maildir` wrote)."""
        try:
            return sum(1 for _ in os.scandir(self.maildir_of(address) / "new"))
        except FileNotFoundError:
            return 0

    def wait_delivered(self, count: int, seconds: float, address: str = USER) -> None:
        """Until `count` messages are in the mailbox (the queue has drained)."""
        deadline = time.monotonic() + seconds
        while self.delivered(address) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postfix delivered {self.delivered(address)} of {count} messages in "
                    f"{seconds:.0f}s; its log:\n{tail(self.base / 'maillog')}"
                )
            time.sleep(0.05)  # each look lists the Maildir: keep the harness's own CPU small

    def fill_maildir(self, address: str, messages: Iterable[bytes]) -> int:
        """Write messages (CRLF line ends) into the mailbox's new/ as virtual(8) would store
        them (LF line ends, owned by the mail user), named FILL_PREFIX...; returns how many."""
        maildir = self.maildir_of(address)
        new = maildir / "new"
        for sub in (maildir.parent, maildir, new, maildir / "cur", maildir / "tmp"):
            sub.mkdir(exist_ok=True)  # virtual(8), as the mail user, makes its own
            os.chown(sub, MAIL_UID, MAIL_GID)
        existing = sum(1 for entry in os.scandir(new) if entry.name.startswith(FILL_PREFIX))
        count = 0
        for n, message in enumerate(messages, existing):
            path = new / f"{FILL_PREFIX}{n}.bench"
            path.write_bytes(message.replace(b"\r\n", b"\n"))
            os.chown(path, MAIL_UID, MAIL_GID)
            count += 1
        return count

    def trim_maildir(self, address: str) -> int:
        """Remove what virtual(8) delivered to the mailbox, keeping what `fill_maildir`
        wrote; returns how many files went."""
        removed = 0
        for entry in os.scandir(self.maildir_of(address) / "new"):
            if not entry.name.startswith(FILL_PREFIX):
                os.unlink(entry.path)
                removed += 1
        return removed

    def queued(self, queues: Sequence[str] = QUEUES) -> int:
        """Queue files in `queues` (all of them: what is not yet delivered)."""
        total = 0
        for queue in queues:
            for _, _, files in os.walk(self.base / "queue" / queue):
                total += len(files)
        return total

    def wait_queued(self, count: int, seconds: float, queues: Sequence[str] = QUEUES) -> None:
        """Until exactly `count` queue files are in `queues`."""
        deadline = time.monotonic() + seconds
        while (found := self.queued(queues)) != count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postfix has {found} queue files in {', '.join(queues)}, expected "
                    f"{count}, after {seconds:.0f}s; its log:\n{tail(self.base / 'maillog')}"
                )
            time.sleep(0.05)

    def release(self) -> None:
        """What an administrator does to send held mail now: `postsuper -H ALL` (hold to
        deferred queue) and `postqueue -f` (qmgr scans the deferred queue at once)."""
        conf = str(self.base / "conf")
        for command in (["postsuper", "-c", conf, "-H", "ALL"], ["postqueue", "-c", conf, "-f"]):
            done = subprocess.run(command, capture_output=True, timeout=120, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)}: {done.stderr.decode(errors='replace')}")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.master_pid)

    def stop(self) -> None:
        stop_tree(self.master_pid)


def _local(address: str) -> str:
    return address.split("@", maxsplit=1)[0]


def _postfix_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postfix")
    return entry.pw_uid, entry.pw_gid


# --- Dovecot ---------------------------------------------------------------------------------

DOVECOT_CONF = """\
# Throwaway Dovecot for bench/harness.py: loopback only, passwd-file users.
instance_name = homing-bench-{tag}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
{ssl}
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
{services}{extra}"""

# One per protocol: the clear-text listener on 127.0.0.1, and with TLS the implicit-TLS one
# (port 0: off); `login` holds extra settings of the login service.
DOVECOT_SERVICE = """\
service {protocol}-login {{
  inet_listener {protocol} {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener {protocol}s {{
    address = 127.0.0.1
    port = {tls_port}
  }}
{login}}}
"""

DOVECOT_DH = Path("/usr/share/dovecot/dh.pem")  # Debian's, for DHE suites under TLS 1.2


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for `name` (the kind `homing init --dev` makes):
    (certificate, key) PEM files in `directory`, readable by root only."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "7", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


@dataclass
class Dovecot:
    """A throwaway Dovecot (run in the foreground, so its PID is our child's) whose users
    (USER, and any `add_users` adds) share PASSWORD; each one's INBOX is a Maildir.
    `ports` has one clear-text port per protocol ("imap") and, with TLS, one implicit-TLS
    port ("imaps"). `configure` writes it, `run` starts it; it can be stopped and run again."""

    base: Path
    ports: dict[str, int]
    maildir: Path  # USER's
    process: subprocess.Popen[bytes] | None = None
    _filled: int = field(default=0, repr=False)

    @classmethod
    def configure(
        cls,
        base: Path,
        protocols: Sequence[str] = ("pop3",),
        *,
        tls: bool = False,
        login: Mapping[str, str] | None = None,
        extra: str = "",
    ) -> Dovecot:
        """Write the configuration under `base`: `login` settings go into each protocol's
        login service, `extra` (whole settings or sections) at the end."""
        base.mkdir(parents=True)
        base.chmod(0o755)
        for sub in ("run", "state", "home", "mail"):
            (base / sub).mkdir()
        for path in (base / "home", base / "mail"):
            os.chown(path, MAIL_UID, MAIL_GID)
        ports = {protocol: free_port() for protocol in protocols}
        if tls:
            ports |= {f"{protocol}s": free_port() for protocol in protocols}
            cert, key = make_certificate(base, f"peer.{DOMAIN}")
            ssl = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}"
            if DOVECOT_DH.exists():
                ssl += f"\nssl_dh = <{DOVECOT_DH}"
        else:
            ssl = "ssl = no"
        login_lines = "".join(f"  {key} = {value}\n" for key, value in (login or {}).items())
        values = {
            "base": base,
            "tag": base.name,
            "protocols": " ".join(protocols),
            "ssl": ssl,
            "uid": MAIL_UID,
            "gid": MAIL_GID,
            "services": "".join(
                DOVECOT_SERVICE.format(
                    protocol=protocol,
                    port=ports[protocol],
                    tls_port=ports.get(f"{protocol}s", 0),
                    login=login_lines,
                )
                for protocol in protocols
            ),
            "extra": extra,
        }
        (base / "dovecot.conf").write_text(DOVECOT_CONF.format(**values))
        peer = cls(base, ports, base / "mail" / _local(USER))
        peer.add_users([USER])
        return peer

    @classmethod
    def start(
        cls,
        base: Path,
        protocols: Sequence[str] = ("pop3",),
        *,
        tls: bool = False,
        login: Mapping[str, str] | None = None,
        extra: str = "",
    ) -> Dovecot:
        peer = cls.configure(base, protocols, tls=tls, login=login, extra=extra)
        peer.run()
        return peer

    def run(self) -> None:
        """Start Dovecot and wait until it listens."""
        conf = self.base / "dovecot.conf"
        with (self.base / "stderr.log").open("ab") as err:
            self.process = subprocess.Popen(
                ["dovecot", "-F", "-c", str(conf)], stdout=err, stderr=err
            )
        try:
            for port in self.ports.values():
                wait_listening(port, 15)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; dovecot log:\n{tail(self.base / 'dovecot.log')}") from None

    def maildir_of(self, address: str) -> Path:
        return self.base / "mail" / _local(address)

    def add_users(self, addresses: Iterable[str]) -> None:
        """Users with PASSWORD and an empty INBOX (passwd-file is re-read when it changes,
        so a running Dovecot knows them at once)."""
        lines = []
        for address in addresses:
            maildir = self.maildir_of(address)
            for sub in ("cur", "new", "tmp"):
                (maildir / sub).mkdir(parents=True)
            for path in (maildir, *maildir.iterdir()):
                os.chown(path, MAIL_UID, MAIL_GID)
            lines.append(f"{address}:{{PLAIN}}{PASSWORD}\n")
        with (self.base / "passwd").open("a") as passwd:
            passwd.write("".join(lines))

    def fill_inbox(self, messages: Iterable[bytes], address: str = USER) -> int:
        """Write messages (CRLF line ends) into an INBOX as Dovecot's own delivery would:
        LF line ends on disk, S= (file size) and W= (size with CRLF) in the file name, so
        Dovecot never has to read a file to learn its size. Returns how many were written."""
        stamp = int(time.time())
        cur = self.maildir_of(address) / "cur"
        count = 0
        for message in messages:
            data = message.replace(b"\r\n", b"\n")
            self._filled += 1
            name = f"{stamp}.M{self._filled}P{os.getpid()}.bench,S={len(data)},W={len(message)}:2,"
            path = cur / name
            path.write_bytes(data)
            os.chown(path, MAIL_UID, MAIL_GID)
            count += 1
        return count

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return tree_cpu_seconds(self.process.pid)

    def memory(self) -> Memory:
        assert self.process is not None
        return tree_memory(self.process.pid)

    def stop(self) -> None:
        if self.process is None:
            return
        stop_tree(self.process.pid)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


# --- smtp-sink -------------------------------------------------------------------------------

SINK_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


class SmtpSink:
    """Postfix's `smtp-sink` on 127.0.0.1: accepts every message and throws it away, and
    counts (`-c`, one line of counters after each message, read here from its stdout)."""

    def __init__(self, port: int | None = None) -> None:
        path = shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin:/sbin")
        if path is None:
            raise SystemExit("smtp-sink not found (Debian package postfix)")
        self.port = port or free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.process = subprocess.Popen(
            [path, *user, "-c", "-m", "512", f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._messages = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="smtp-sink", daemon=True)
        self._reader.start()
        try:
            wait_listening(self.port, 15)
        except RuntimeError:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        pending = b""
        while chunk := os.read(fd, 65536):
            pending += chunk
            *records, pending = pending.split(b"\r")
            for record in reversed(records):
                if found := SINK_COUNTERS.search(record):
                    with self._lock:
                        self._messages = int(found.group(3))
                    break

    def received(self) -> int:
        """Messages received since the sink started (a "." acknowledged)."""
        with self._lock:
            return self._messages

    def wait_received(self, count: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.received() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"smtp-sink received {self.received()} of {count} messages in {seconds:.0f}s"
                )
            if self.process.poll() is not None:
                raise RuntimeError("smtp-sink exited")
            time.sleep(0.005)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.join(timeout=10)  # it sees the end of the pipe once the sink is gone
        if self.process.stdout is not None:
            self.process.stdout.close()


def postfix_version() -> str:
    result = subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


def dovecot_version() -> str:
    result = subprocess.run(["dovecot", "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"
