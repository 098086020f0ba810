"""`homing init`: create a data directory with a config file, a certificate and a database.

The steps run in an order that leaves nothing half-made: the certificate first, then the
database with the domains, and homing.toml last. If any step fails, everything this run
created is removed again, so the command can simply be repeated.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from homing.cli._common import UserError, relative_to_cwd
from homing.config import SERVICES, Config, parse_config, render_config
from homing.store import Store

CONFIG_NAME = "homing.toml"
DB_NAME = "homing.db"
CERT_NAME = Path("tls/cert.pem")
KEY_NAME = Path("tls/key.pem")

#: --dev: loopback only, unprivileged ports (the standard port plus 2000 or so).
DEV_PORTS = {
    "smtp": 2525,
    "submission": 2587,
    "submissions": 2465,
    "imap": 2143,
    "imaps": 2993,
    "pop3": 2110,
    "pop3s": 2995,
}
#: Production: the IANA ports on every IPv4 and IPv6 address.
STANDARD_PORTS = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
}
assert tuple(DEV_PORTS) == tuple(STANDARD_PORTS) == SERVICES


def listen_table(dev: bool) -> dict[str, list[str]]:
    """The [listen] table `homing init` writes."""
    if dev:
        return {service: [f"127.0.0.1:{port}"] for service, port in DEV_PORTS.items()}
    return {
        service: [f"0.0.0.0:{port}", f"[::]:{port}"] for service, port in STANDARD_PORTS.items()
    }


def default_hostname(dev: bool) -> str:
    """ "localhost" with --dev; otherwise this machine's fully-qualified name (as Postfix does).

    A name without a dot, or a localhost name, cannot be this server's public name; the
    operator must then say which name other servers know it by.
    """
    if dev:
        return "localhost"
    name = socket.getfqdn()
    if "." not in name or name.startswith("localhost"):
        raise UserError(
            f"this machine's name {name!r} is not a fully-qualified DNS name; "
            "give the name other servers know it by with --hostname (e.g. mail.example.org)"
        )
    return name


@click.command()
@click.option(
    "--data",
    "data_option",
    required=True,
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory to create; homing.toml, homing.db and tls/ go here.",
)
@click.option(
    "--domain",
    "domains",
    required=True,
    multiple=True,
    metavar="DOMAIN",
    help="A local domain (mail for it is delivered here). Repeat for more.",
)
@click.option(
    "--hostname",
    metavar="HOST",
    help="This server's DNS name. Default: the machine's FQDN; 'localhost' with --dev.",
)
@click.option(
    "--dev",
    is_flag=True,
    help="Listen on 127.0.0.1 only, on ports 2525/2587/2465 (SMTP), 2143/2993 (IMAP), "
    "2110/2995 (POP3).",
)
def init(data_option: Path, domains: Sequence[str], hostname: str | None, dev: bool) -> None:
    """Create a new Homing setup in DIR.

    Writes DIR/homing.toml (every setting, commented), a self-signed certificate in DIR/tls/
    and the database DIR/homing.db holding the domains. Refuses to touch an existing setup.
    """
    data_dir = data_option.expanduser().absolute()
    config_path = data_dir / CONFIG_NAME
    for existing in (config_path, data_dir / DB_NAME):
        if existing.exists():
            raise UserError(f"{existing} already exists; refusing to overwrite an existing setup")
    raw: dict[str, Any] = {
        "hostname": hostname if hostname is not None else default_hostname(dev),
        "domains": list(domains),
        "data_dir": ".",
        "listen": listen_table(dev),
    }
    config = parse_config(raw, base_dir=data_dir, config_path=config_path)
    created: list[Path] = []
    try:
        _make_directory(data_dir, 0o750, created)
        reused = _make_certificate(config, created)
        _make_store(config, created)
        _write_new_file(config_path, render_config(config).encode("utf-8"), 0o640)
        created.append(config_path)
    except BaseException:
        _remove(created)
        raise
    _report(config, reused_certificate=reused, dev=dev)


def _make_directory(path: Path, mode: int, created: list[Path]) -> None:
    missing = [parent for parent in (path, *path.parents) if not parent.exists()]
    path.mkdir(parents=True, exist_ok=True)
    if path in missing:
        path.chmod(mode)  # mkdir's mode is filtered by the umask; this is exact.
    created.extend(reversed(missing))


def _make_certificate(config: Config, created: list[Path]) -> bool:
    """A self-signed certificate for the hostname, unless the operator put one there already."""
    cert, key = config.tls.cert, config.tls.key
    if cert.exists() and key.exists():
        return True
    if cert.exists() or key.exists():
        present, absent = (cert, key) if cert.exists() else (key, cert)
        raise UserError(f"{present} exists but {absent} does not; provide both or neither")
    _make_directory(cert.parent, 0o700, created)
    from homing.net.tls import generate_self_signed

    created += [cert, key]
    # Writes the key 0600 and the certificate 0644, each atomically.
    generate_self_signed(config.hostname, cert, key)
    return False


def _make_store(config: Config, created: list[Path]) -> None:
    db = config.db_path
    created += [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    store = Store.open(db, create=True)
    try:
        for domain in config.domains:
            store.add_domain(domain)
    finally:
        store.close()


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite, even if another `homing init` raced us here.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _remove(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass  # best effort; the original error is what the operator needs to see


def _report(config: Config, *, reused_certificate: bool, dev: bool) -> None:
    certificate = (
        "existing, kept" if reused_certificate else "self-signed; replace it for production"
    )
    config_arg = relative_to_cwd(config.config_path) if config.config_path else ""
    first = config.domains[0]
    listening = "127.0.0.1, development ports" if dev else "all addresses, standard ports"
    lines = [
        f"Created Homing setup in {config.data_dir}",
        f"  configuration  {config.config_path}",
        f"  database       {config.db_path}",
        f"  certificate    {config.tls.cert} ({certificate})",
        f"  hostname       {config.hostname}",
        f"  domains        {', '.join(config.domains)}",
        f"  listening      {listening}",
        "Next:",
        f"  homing --config {config_arg} account add postmaster@{first}",
        f"  homing --config {config_arg} serve",
    ]
    click.echo("\n".join(lines))
