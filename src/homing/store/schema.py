"""The SQLite schema, its versioned migrations, and the connection settings.

The schema version is `PRAGMA user_version`. `MIGRATIONS[i]` takes a database from version
i to i + 1 and runs in one transaction together with the version bump, so a crash leaves
either the old or the new schema. A database whose version is above `SCHEMA_VERSION` was
written by a newer Homing and is refused (`SchemaTooNew`): an older program must not write
data it does not understand.

`PRAGMA application_id` marks the file as a Homing store, so pointing Homing at some other
SQLite database is an error rather than a migration.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from homing.store.errors import NotFound, SchemaTooNew, StoreError

#: "Hmng" as a big-endian 32-bit integer.
APPLICATION_ID = 0x486D6E67
#: How long a connection waits for another one's write lock (the CLI while `serve` runs).
BUSY_TIMEOUT_MS = 30_000
#: The WAL file is truncated back to this size after a checkpoint.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024

_V1 = (
    # Store-wide counters: last_uidvalidity keeps UIDVALIDITY unique across all mailboxes.
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "INSERT INTO meta (key, value) VALUES ('last_uidvalidity', 0)",
    """CREATE TABLE domains (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    )""",
    """CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE RESTRICT,
        key TEXT NOT NULL UNIQUE,
        address TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        password_hash TEXT NOT NULL,
        scram_salt BLOB NOT NULL,
        scram_iterations INTEGER NOT NULL,
        scram_stored_key BLOB NOT NULL,
        scram_server_key BLOB NOT NULL
    )""",
    "CREATE INDEX accounts_domain ON accounts(domain_id)",
    """CREATE TABLE aliases (
        id INTEGER PRIMARY KEY,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE RESTRICT,
        alias TEXT NOT NULL,
        target_key TEXT NOT NULL,
        target TEXT NOT NULL,
        UNIQUE (alias, target_key)
    )""",
    "CREATE INDEX aliases_domain ON aliases(domain_id)",
    # messages/unseen/size are kept by the triggers below, so STATUS never counts rows.
    """CREATE TABLE mailboxes (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        special_use TEXT,
        uidvalidity INTEGER NOT NULL UNIQUE CHECK (uidvalidity BETWEEN 1 AND 4294967295),
        uidnext INTEGER NOT NULL DEFAULT 1 CHECK (uidnext BETWEEN 1 AND 4294967296),
        highestmodseq INTEGER NOT NULL DEFAULT 1 CHECK (highestmodseq >= 1),
        subscribed INTEGER NOT NULL DEFAULT 0,
        messages INTEGER NOT NULL DEFAULT 0,
        unseen INTEGER NOT NULL DEFAULT 0,
        size INTEGER NOT NULL DEFAULT 0,
        UNIQUE (account_id, name)
    )""",
    # One row per distinct message body; `refcount` counts the messages rows using it.
    # The bytes live in the body store (`body_data` for the SQLite one).
    """CREATE TABLE bodies (
        id INTEGER PRIMARY KEY,
        refcount INTEGER NOT NULL CHECK (refcount >= 0),
        size INTEGER NOT NULL,
        envelope BLOB NOT NULL,
        bodystructure BLOB NOT NULL,
        body_nx BLOB NOT NULL,
        partmap BLOB NOT NULL,
        message_id TEXT,
        subject TEXT,
        has_8bit INTEGER NOT NULL
    )""",
    """CREATE TABLE body_data (
        id INTEGER PRIMARY KEY REFERENCES bodies(id) ON DELETE CASCADE,
        data BLOB NOT NULL
    )""",
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL CHECK (uid BETWEEN 1 AND 4294967295),
        modseq INTEGER NOT NULL,
        flags INTEGER NOT NULL DEFAULT 0,
        keywords TEXT NOT NULL DEFAULT '',
        internaldate REAL NOT NULL,
        size INTEGER NOT NULL,
        body_id INTEGER NOT NULL REFERENCES bodies(id),
        prefix BLOB NOT NULL,
        UNIQUE (mailbox_id, uid)
    )""",
    "CREATE INDEX messages_body ON messages(body_id)",
    "CREATE INDEX messages_modseq ON messages(mailbox_id, modseq)",
    # Expunged UIDs with the MODSEQ of their expunge, for QRESYNC VANISHED (RFC 7162 §3.2.10).
    """CREATE TABLE expunged (
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID""",
    "CREATE INDEX expunged_modseq ON expunged(mailbox_id, modseq)",
    """CREATE TRIGGER messages_insert AFTER INSERT ON messages BEGIN
        UPDATE mailboxes SET messages = messages + 1, size = size + NEW.size,
            unseen = unseen + (NEW.flags & 1 = 0)
        WHERE id = NEW.mailbox_id;
    END""",
    """CREATE TRIGGER messages_delete AFTER DELETE ON messages BEGIN
        UPDATE mailboxes SET messages = messages - 1, size = size - OLD.size,
            unseen = unseen - (OLD.flags & 1 = 0)
        WHERE id = OLD.mailbox_id;
    END""",
    """CREATE TRIGGER messages_move AFTER UPDATE OF mailbox_id ON messages
    WHEN OLD.mailbox_id != NEW.mailbox_id BEGIN
        UPDATE mailboxes SET messages = messages - 1, size = size - OLD.size,
            unseen = unseen - (OLD.flags & 1 = 0)
        WHERE id = OLD.mailbox_id;
        UPDATE mailboxes SET messages = messages + 1, size = size + NEW.size,
            unseen = unseen + (NEW.flags & 1 = 0)
        WHERE id = NEW.mailbox_id;
    END""",
    """CREATE TRIGGER messages_seen AFTER UPDATE OF flags ON messages
    WHEN OLD.mailbox_id = NEW.mailbox_id AND (OLD.flags & 1) != (NEW.flags & 1) BEGIN
        UPDATE mailboxes SET unseen = unseen + (NEW.flags & 1 = 0) - (OLD.flags & 1 = 0)
        WHERE id = NEW.mailbox_id;
    END""",
)

_V2 = (
    # App passwords (`homing account app-password`): extra passwords of an account, each
    # revocable on its own, with the same credential columns as `accounts`.
    """CREATE TABLE app_passwords (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        last_used REAL,
        password_hash TEXT NOT NULL,
        scram_salt BLOB NOT NULL,
        scram_iterations INTEGER NOT NULL,
        scram_stored_key BLOB NOT NULL,
        scram_server_key BLOB NOT NULL,
        UNIQUE (account_id, name)
    )""",
    # Per-installation secrets, made once here and never shown: "scram" keys the fake SCRAM
    # verifiers of unknown users, which must stay the same across restarts (RFC 5802 §9).
    """CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID""",
    "INSERT INTO secrets (name, value) VALUES ('scram', randomblob(32))",
)

_V3 = (
    # The outbound queue (homing.store.spool): one row per (accepted message, destination
    # domain); its body is a `bodies` row, counted in `refcount` like a message's.
    """CREATE TABLE queue (
        id INTEGER PRIMARY KEY,
        entry TEXT NOT NULL UNIQUE,
        queue_id TEXT NOT NULL,
        domain TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        envid TEXT,
        ret TEXT CHECK (ret IN ('FULL', 'HDRS')),
        smtputf8 INTEGER NOT NULL DEFAULT 0,
        body_8bit INTEGER NOT NULL DEFAULT 0,
        body_id INTEGER NOT NULL REFERENCES bodies(id),
        prefix BLOB NOT NULL,
        size INTEGER NOT NULL,
        created REAL NOT NULL,
        next_attempt REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_attempt REAL,
        warned INTEGER NOT NULL DEFAULT 0,
        held INTEGER NOT NULL DEFAULT 0,
        bounce INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    )""",
    "CREATE INDEX queue_due ON queue(held, next_attempt)",
    "CREATE INDEX queue_queue_id ON queue(queue_id)",
    "CREATE INDEX queue_body ON queue(body_id)",
    """CREATE TABLE queue_rcpts (
        entry_id INTEGER NOT NULL REFERENCES queue(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        address TEXT NOT NULL,
        notify TEXT,
        orcpt TEXT,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'deferred', 'delivered', 'failed')),
        reply_code INTEGER,
        reply_status TEXT,
        reply_text TEXT,
        remote_mta TEXT,
        updated REAL,
        PRIMARY KEY (entry_id, idx)
    ) WITHOUT ROWID""",
)

#: MIGRATIONS[i] upgrades schema version i to i + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path, *, create: bool = False, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's pragmas."""
    mode = "ro" if readonly else ("rwc" if create else "rw")
    uri = f"{path.resolve().as_uri()}?mode={mode}"
    try:
        conn = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
            cached_statements=256,
        )
    except sqlite3.OperationalError as exc:
        raise NotFound(f"cannot open store {path}: {exc}") from exc
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def prepare(conn: sqlite3.Connection, path: Path, *, create: bool) -> None:
    """Check the file is a Homing store of a version we know, and migrate it up to date."""
    fresh = conn.execute("PRAGMA page_count").fetchone()[0] == 0
    if fresh:
        if not create:
            raise NotFound(f"{path} is not an initialised Homing store")
        # Must precede the first table: auto_vacuum cannot be switched on afterwards
        # without a full VACUUM.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    # Persistent in the file; cheap to repeat. Needs no other connection in a transaction.
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: cannot switch to WAL journal mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id != APPLICATION_ID:
        raise StoreError(f"{path} is not a Homing store (application_id {app_id:#x})")
    migrate(conn, path)


def schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def check_version(version: int, path: Path) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, but this Homing knows only up to "
            f"{SCHEMA_VERSION}: upgrade Homing to open it"
        )


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations the database lacks, each in its own transaction."""
    if schema_version(conn) == SCHEMA_VERSION:
        return  # the common case takes no write lock
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = schema_version(conn)
            check_version(version, path)
            if version == SCHEMA_VERSION:
                conn.execute("COMMIT")
                return
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
