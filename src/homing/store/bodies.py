"""Where message bytes live: a small interface, and the default backend (SQLite BLOBs).

The `bodies` table always holds a body's metadata, reference count and parse results; a
`BodyStore` holds only the bytes, keyed by the `bodies.id`. All three calls run inside the
writer's (or a reader's) transaction on `conn`, so the SQLite backend commits bytes and
metadata atomically. A file or object-storage backend would write (and fsync) in `put`
before the transaction commits, and delete in `release` only after it has.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol


class BodyStore(Protocol):
    def put(self, conn: sqlite3.Connection, body_id: int, data: bytes) -> None:
        """Store the bytes of a new body."""
        ...

    def get(self, conn: sqlite3.Connection, body_id: int) -> bytes | None:
        """The bytes of a body, or None if the body does not exist."""
        ...

    def release(self, conn: sqlite3.Connection, body_id: int) -> None:
        """The last reference to a body went away: reclaim its bytes."""
        ...

    def check(self, conn: sqlite3.Connection) -> list[str]:
        """Consistency problems between `bodies` and the stored bytes (for tests)."""
        ...


class SqliteBodyStore:
    """Bodies as BLOBs in the `body_data` table of the same database (the default)."""

    def put(self, conn: sqlite3.Connection, body_id: int, data: bytes) -> None:
        conn.execute("INSERT INTO body_data (id, data) VALUES (?, ?)", (body_id, data))

    def get(self, conn: sqlite3.Connection, body_id: int) -> bytes | None:
        row = conn.execute("SELECT data FROM body_data WHERE id = ?", (body_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def release(self, conn: sqlite3.Connection, body_id: int) -> None:
        conn.execute("DELETE FROM body_data WHERE id = ?", (body_id,))

    def check(self, conn: sqlite3.Connection) -> list[str]:
        problems = [
            f"body {bid} has no data"
            for (bid,) in conn.execute(
                "SELECT b.id FROM bodies b LEFT JOIN body_data d ON d.id = b.id WHERE d.id IS NULL"
            )
        ]
        problems += [
            f"body {bid}: size {size} but {length} bytes stored"
            for bid, size, length in conn.execute(
                "SELECT b.id, b.size, length(d.data) FROM bodies b JOIN body_data d ON d.id = b.id"
                " WHERE length(d.data) != b.size"
            )
        ]
        return problems
