"""The store's exceptions: one base class, a subclass per thing a caller reacts to.

Callers never see `sqlite3` exceptions: anything the database raises that is not one of
these is wrapped in a plain `StoreError` (with the original as `__cause__`), so the API
stays free of SQLite-only assumptions.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every store error; also raised as-is for unexpected database failures."""


class NotFound(StoreError):
    """The domain, account, alias, mailbox or store file named does not exist."""


class AlreadyExists(StoreError):
    """The domain, account or mailbox to be created (or renamed to) exists already."""


class InvalidName(StoreError, ValueError):
    """A mailbox name, address, domain, flag or special-use attribute is not acceptable."""


class SchemaTooNew(StoreError):
    """The database was written by a newer Homing; this version refuses to open it."""


class InUse(StoreError):
    """The object cannot be removed while others depend on it (a domain with accounts)."""


class StoreClosed(StoreError):
    """Work was submitted after `Store.close()`."""
