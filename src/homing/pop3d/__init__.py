"""The POP3 service (ports 110 and 995): `session` runs proto.pop3.server over a net Stream,
with logins through homing.auth and the maildrop in the store."""

from homing.pop3d.session import (
    Maildrops,
    POP3Session,
    SessionRegistry,
    settings_for,
    uidl,
)

__all__ = ["Maildrops", "POP3Session", "SessionRegistry", "settings_for", "uidl"]
