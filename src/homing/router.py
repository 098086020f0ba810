"""Where each recipient goes, and local delivery (the MDA).

Resolution order for an address in a local domain (first match wins):
  1. an account with that exact address;
  2. an alias with that exact address (expanded recursively, cycles and depth bounded);
  3. plus-addressing: `user+tag@domain` tried as `user@domain` (1 and 2);
  4. `postmaster@domain` (RFC 5321 §4.5.1 requires it): the domain's oldest account;
  5. the domain's catch-all alias `@domain`.
Anything else in a local domain is unknown (550 5.1.1); other domains are remote.

Delivery prepends Return-Path, Delivered-To and Received to each copy, refuses loops
(RFC 5321 §6.3), parses the message once (mail.mime) and hands all copies to the store in one
group-committed transaction, together with the outbound queue entries (one per remote
domain, with this hop's Received field) for remote recipients and remote alias targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from homing.clock import Clock
from homing.config.model import Config
from homing.mail import trace
from homing.mail.address import AddressError, Mailbox, parse_mailbox
from homing.mail.mime import parse_message
from homing.mail.reply import Reply
from homing.proto.smtp import codes
from homing.proto.smtp.grammar import MailArgs, RcptArgs
from homing.store import (
    Account,
    NewMessage,
    NewQueued,
    QueueRecipient,
    Store,
    StoredMessage,
)

_MAX_ALIAS_DEPTH = 10
_MAX_EXPANSION = 1000


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where one envelope recipient goes. `reply` is the RCPT verdict for it."""

    reply: Reply
    accounts: tuple[Account, ...] = ()
    remote: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.reply.is_positive


@dataclass(slots=True)
class Envelope:
    """An accepted message's envelope, as the MDA and the queue need it."""

    mail_from: str  # "" for the null reverse-path
    rcpts: list[tuple[str, Resolution]] = field(default_factory=list)
    mail: MailArgs | None = None  # the MAIL parameters (DSN RET/ENVID, SMTPUTF8, BODY)
    rcpt_args: list[RcptArgs] = field(default_factory=list)  # parallel to rcpts (NOTIFY, ORCPT)


class Router:
    """Routes recipients and delivers locally. One per process, shared by every session."""

    def __init__(self, store: Store, config: Config, clock: Clock) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self._config_domains = frozenset(d.lower() for d in config.domains)
        # Remote recipients and alias targets go to the outbound queue (store.spool), which
        # a running server's queue runner delivers. False would answer 450 for aliases with
        # only remote targets (and refuse relaying), for a set-up without outbound mail.
        self.forwarding = True

    # -------------------------------------------------------------------------- routing

    def is_local_domain(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return domain in self._config_domains or self.store.has_domain(domain)

    def resolve(self, mailbox: Mailbox) -> Resolution:
        """The verdict for one RCPT: local accounts, remote targets, unknown or relay denied."""
        if not mailbox.domain:
            return self._postmaster_anywhere(mailbox)
        if not self.is_local_domain(mailbox.domain):
            return Resolution(codes.RELAY_DENIED)
        accounts: dict[int, Account] = {}
        remote: list[str] = []
        if not self._expand(mailbox, accounts, remote, depth=0, seen=set()):
            return Resolution(codes.USER_UNKNOWN)
        if any(a.disabled for a in accounts.values()) and not any(
            not a.disabled for a in accounts.values()
        ):
            return Resolution(codes.MAILBOX_DISABLED)
        if remote and not self.forwarding:
            if not accounts:
                return Resolution(codes.TEMP_RECIPIENT.with_text("Forwarding is not available yet"))
            remote = []
        live = tuple(a for a in accounts.values() if not a.disabled)
        return Resolution(codes.RECIPIENT_OK, live, tuple(remote))

    def _postmaster_anywhere(self, mailbox: Mailbox) -> Resolution:
        # RFC 5321 §4.1.1.3: "RCPT TO:<Postmaster>" without a domain must be accepted.
        if mailbox.local.lower() != "postmaster":
            return Resolution(codes.ADDRESS_SYNTAX)
        for domain in [*self._config_domains, *self.store.list_domains()]:
            res = self.resolve(Mailbox("postmaster", domain))
            if res.accepted:
                return res
        return Resolution(codes.USER_UNKNOWN)

    def _expand(
        self,
        mailbox: Mailbox,
        accounts: dict[int, Account],
        remote: list[str],
        *,
        depth: int,
        seen: set[str],
    ) -> bool:
        """Add where `mailbox` goes to `accounts`/`remote`; False if it goes nowhere."""
        key = mailbox.key()
        if key in seen or depth > _MAX_ALIAS_DEPTH or len(seen) > _MAX_EXPANSION:
            return key in seen  # a cycle back to an address already handled is not a failure
        seen.add(key)
        if not self.is_local_domain(mailbox.domain):
            remote.append(str(mailbox))
            return True
        for candidate in self._candidates(mailbox):
            account = self.store.get_account(candidate)
            if account is not None:
                accounts[account.id] = account
                return True
            targets = self.store.alias_targets(candidate)
            if targets:
                return self._expand_targets(targets, accounts, remote, depth=depth, seen=seen)
        if mailbox.local.lower() == "postmaster":
            first = self.store.list_accounts(mailbox.domain)
            if first:
                oldest = min(first, key=lambda a: (a.created, a.id))
                accounts[oldest.id] = oldest
                return True
        catch_all = self.store.alias_targets("@" + mailbox.domain)
        if catch_all:
            return self._expand_targets(catch_all, accounts, remote, depth=depth, seen=seen)
        return False

    def _expand_targets(
        self,
        targets: Sequence[str],
        accounts: dict[int, Account],
        remote: list[str],
        *,
        depth: int,
        seen: set[str],
    ) -> bool:
        found = False
        for target in targets:
            try:
                mailbox = parse_mailbox(target)
            except AddressError:
                continue
            found |= self._expand(mailbox, accounts, remote, depth=depth + 1, seen=seen)
        return found

    @staticmethod
    def _candidates(mailbox: Mailbox) -> list[str]:
        """The exact address, then without a +tag (plus-addressing)."""
        key = mailbox.key()
        local = mailbox.local
        if "+" in local and not local.startswith("+"):
            base = local.split("+", 1)[0]
            return [key, Mailbox(base, mailbox.domain).key()]
        return [key]

    # -------------------------------------------------------------------------- delivery

    def loop_check(self, message: bytes, envelope: Envelope) -> Reply | None:
        """RFC 5321 §6.3: too many Received fields, or our own Delivered-To for a recipient."""
        headers = trace.header_section(message)
        if trace.count_received(headers) > self.config.smtp.max_received_headers:
            return codes.LOOP_DETECTED.with_text("Too many Received headers: mail loop")
        seen = trace.delivered_to(headers)
        if seen:
            for _, res in envelope.rcpts:
                for account in res.accounts:
                    if account.address.lower() in seen:
                        return codes.LOOP_DETECTED.with_text(
                            f"Mail loop: already delivered to {account.address}"
                        )
        return None

    def owns(self, account: Account, mailbox: Mailbox) -> bool:
        """May `account` send as `mailbox`? Its own address, its plus-addresses, aliases that
        point straight at it (a catch-all does not make every address its own), and what
        `[submission] grants` gives it."""
        own = account.address.lower()
        for grantee, sender in self.config.submission.grants:
            if grantee == own and sender in (mailbox.key(), f"*@{mailbox.domain}"):
                return True  # [submission] grants in the configuration
        for candidate in self._candidates(mailbox):
            if candidate == own:
                return True
            if any(t.lower() == own for t in self.store.alias_targets(candidate)):
                return True
        return False

    def deliver(
        self, message: bytes, envelope: Envelope, info: trace.TraceInfo
    ) -> Future[list[StoredMessage]]:
        """One copy per local account and one queue entry per remote domain, in one group
        commit; the future resolves after fsync."""
        now = self.clock.now()
        copies = self._copies(message, envelope, info, now)
        return self.store.deliver(copies, self.queue_entries(message, envelope, info, now))

    def _copies(
        self, message: bytes, envelope: Envelope, info: trace.TraceInfo, now: float
    ) -> list[NewMessage]:
        copies: list[NewMessage] = []
        if not any(res.accounts for _, res in envelope.rcpts):
            return copies
        parsed = parse_message(message)
        done: set[int] = set()
        for rcpt, res in envelope.rcpts:
            for account in res.accounts:
                if account.id in done:
                    continue  # one copy per account, however many aliases led there
                done.add(account.id)
                prefix = (
                    trace.return_path(envelope.mail_from)
                    + trace.delivered_to_header(account.address)
                    + trace.received(info, rcpt, now)
                )
                copies.append(
                    NewMessage(
                        account_id=account.id,
                        mailbox="INBOX",
                        prefix=prefix,
                        body=message,
                        parsed=parsed,
                        internaldate=now,
                    )
                )
        return copies

    def queue_entries(
        self, message: bytes, envelope: Envelope, info: trace.TraceInfo, now: float
    ) -> list[NewQueued]:
        """The outbound queue entries for the remote recipients of `envelope` (and remote
        alias targets), one per destination domain, each recipient once.

        NOTIFY and ORCPT come from the RCPT parameters (RFC 3461 §5.2.7: an alias target
        carries the original recipient as ORCPT when none was given), RET, ENVID, SMTPUTF8
        and BODY from MAIL's. The body is `message` itself, shared with the local copies;
        this hop's Received field is the entry's prefix ("for" only with one recipient).
        """
        by_domain: dict[str, list[QueueRecipient]] = {}
        seen: set[str] = set()
        for n, (rcpt, res) in enumerate(envelope.rcpts):
            args = envelope.rcpt_args[n] if n < len(envelope.rcpt_args) else None
            for target in res.remote:
                key = target.lower()
                if key in seen:
                    continue
                seen.add(key)
                orcpt = args.orcpt[1] if args is not None and args.orcpt is not None else None
                if orcpt is None and key != rcpt.lower():
                    orcpt = rcpt
                notify = args.notify if args is not None else None
                domain = target.rpartition("@")[2].lower()
                by_domain.setdefault(domain, []).append(QueueRecipient(target, notify, orcpt))
        mail = envelope.mail
        body_8bit = (mail.body == "8BITMIME") if mail is not None else False
        entries: list[NewQueued] = []
        for domain, rcpts in by_domain.items():
            single = rcpts[0].address if len(rcpts) == 1 else None
            entries.append(
                NewQueued(
                    queue_id=info.queue_id,
                    mail_from=envelope.mail_from,
                    recipients=tuple(rcpts),
                    domain=domain,
                    body=message,
                    envid=mail.envid if mail is not None else None,
                    ret=mail.ret if mail is not None else None,
                    smtputf8=mail.smtputf8 if mail is not None else False,
                    body_8bit=body_8bit or not message.isascii(),
                    prefix=trace.received(info, single, now),
                )
            )
        return entries

    def dsn_delivery(self, message: bytes, to: str) -> tuple[list[NewMessage], list[NewQueued]]:
        """The store writes that deliver a DSN (from <>) to `to`: local copies if `to` is
        ours, else a queue entry (the queue runner's `DSNSink`). Nothing if `to` is a local
        address that no longer exists: there is nobody to tell."""
        try:
            mailbox = parse_mailbox(to)
        except AddressError:
            return [], []
        queue_id = trace.new_queue_id()
        info = trace.TraceInfo(
            helo=self.config.hostname,
            client_ip="127.0.0.1",
            hostname=self.config.hostname,
            queue_id=queue_id,
            protocol="local",
            hidden=True,
        )
        if mailbox.domain and not self.is_local_domain(mailbox.domain):
            res = Resolution(codes.RECIPIENT_OK, remote=(str(mailbox),))
        else:
            res = self.resolve(mailbox)
            if not res.accepted:
                return [], []
        envelope = Envelope(mail_from="", rcpts=[(str(mailbox), res)])
        now = self.clock.now()
        return (
            self._copies(message, envelope, info, now),
            self.queue_entries(message, envelope, info, now),
        )
