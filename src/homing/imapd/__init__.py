"""The IMAP service (ports 143 and 993): `session` runs proto.imap.server over a net Stream,
with logins through homing.auth and mailboxes in the store."""

from homing.imapd.session import (
    IMAPService,
    IMAPSession,
    MailboxWatcher,
    RecentTracker,
    SessionRegistry,
)

__all__ = ["IMAPService", "IMAPSession", "MailboxWatcher", "RecentTracker", "SessionRegistry"]
