"""The one mailbox store: accounts, domains, aliases, mailboxes, messages, flags, UID/MODSEQ
and change notifications, on SQLite with group commit. See `sqlitestore` for the model and
`writer` for how writes are committed."""

from homing.store.bodies import BodyStore, SqliteBodyStore
from homing.store.errors import (
    AlreadyExists,
    InUse,
    InvalidName,
    NotFound,
    SchemaTooNew,
    StoreClosed,
    StoreError,
)
from homing.store.model import (
    Account,
    Change,
    FetchRow,
    FlagChanges,
    MailboxInfo,
    MessageInfo,
    MetaRow,
    NewMessage,
    StoredMessage,
    StoreStats,
)
from homing.store.names import address_key, domain_key
from homing.store.passwords import Credentials, make_credentials, saslprep, verify_password
from homing.store.schema import SCHEMA_VERSION
from homing.store.spool import (
    NewQueued,
    QueuedRecipient,
    QueueEntry,
    QueueRecipient,
    QueueUpdate,
    RecipientUpdate,
    Spool,
)
from homing.store.sqlitestore import DEFAULT_MAILBOXES, Store

__all__ = [
    "DEFAULT_MAILBOXES",
    "SCHEMA_VERSION",
    "Account",
    "AlreadyExists",
    "BodyStore",
    "Change",
    "Credentials",
    "FetchRow",
    "FlagChanges",
    "InUse",
    "InvalidName",
    "MailboxInfo",
    "MessageInfo",
    "MetaRow",
    "NewMessage",
    "NewQueued",
    "NotFound",
    "QueueEntry",
    "QueueRecipient",
    "QueueUpdate",
    "QueuedRecipient",
    "RecipientUpdate",
    "SchemaTooNew",
    "Spool",
    "SqliteBodyStore",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreStats",
    "StoredMessage",
    "address_key",
    "domain_key",
    "make_credentials",
    "saslprep",
    "verify_password",
]
