"""Verbs on accounts, domains and aliases (the directory the MX and submission resolve against).

Every change bumps `directory_version` and records it as the version of each domain it touched
(`DirectoryChange`), in the same transaction, so a running daemon polls one indexed query
(`directory_changes`) and drops only those domains from its cache. The MX reads one recipient at a time
(`lookup_aliases`: the domain, its exact aliases by indexed key, its regex and catch-all rules).
Callers get plain records, never peewee objects. Writes begin IMMEDIATE on SQLite: they take its write
lock before reading, so a CLI write waits (busy timeout) for the running daemon's writes instead of failing
on a stale read snapshot.

Longer than ~400 lines on purpose: every write here bumps the change log in its own transaction, and the
lookups read what those writes record; kept together, the rule "every change names its domains" is
visible in one file.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import peewee as pw

from fwdmail.store.db import checkpoint, reads, rest_after, snapshot, unique_insert, writing
from fwdmail.store.models import (
    AbuseEvent,
    Account,
    Alias,
    BaseModel,
    DirectoryChange,
    Domain,
    Meta,
    OutboundEmail,
    SmtpErrorLog,
    lookup_key,
)

__all__ = [
    "ALIAS_KINDS", "ALIAS_SOURCES", "ALIAS_STATES", "AccountRecord", "AliasLookup", "AliasRecord",
    "AlreadyExists", "DomainRecord", "NotFound",
    "add_account", "add_alias", "add_domain", "alias_password_hash", "delete_account", "directory_changes",
    "directory_snapshot", "directory_version",
    "get_account", "get_alias", "get_domain", "list_accounts", "list_aliases", "list_domains",
    "load_directory", "lookup_aliases", "lookup_key", "mark_domain_verified",
    "remove_alias", "remove_domain", "set_alias_password",
    "set_alias_state", "update_domain",
]


ALIAS_KINDS = ("exact", "catch-all", "regex")
ALIAS_STATES = ("enabled", "quiet", "tempfail", "reject")
ALIAS_SOURCES = ("store", "dns", "both")  # where the MX finds a domain's aliases (`aliases_from`)


class NotFound(LookupError):
    """The named account, domain, alias or email does not exist."""


class AlreadyExists(ValueError):
    """The account, domain or alias exists already."""


@dataclass(frozen=True)
class AccountRecord:
    id: int
    email: str
    created_at: dt.datetime
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainRecord:
    id: int
    name: str
    account_email: str
    verification_token: str
    dkim_selector: str
    dkim_private_key: str
    retention_days: int
    verified_at: dt.datetime | None
    auth_policy: str
    friendly_from: bool
    require_tls_inbound: bool
    created_at: dt.datetime
    aliases_from: str = "store"  # store | dns | both (ALIAS_SOURCES)


@dataclass(frozen=True)
class AliasRecord:
    id: int
    domain: str
    kind: str
    local: str
    destinations: tuple[str, ...]
    state: str
    has_password: bool
    account_email: str
    created_at: dt.datetime

    @property
    def address(self) -> str:
        """The address as an admin writes it: user@dom, *@dom or /regex/@dom."""
        if self.kind == "regex":
            return f"/{self.local}/@{self.domain}"
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True)
class AliasLookup:
    """What the MX needs of one hosted domain for one recipient (see `lookup_aliases`)."""

    domain: DomainRecord
    exact: dict[str, AliasRecord | None]  # per lookup key asked for: the exact alias, or None
    rules: tuple[AliasRecord, ...] | None  # regex and catch-all aliases by id, if asked for


EVERY_DOMAIN = "*"


def _bump_directory(domains: Iterable[str] | None = None, removed: Iterable[str] = ()) -> None:
    """A new directory version, recorded as the last change of each of `domains` (None: of every
    domain, so readers drop all they cached). Domains `removed` leave no trace of their name here: their
    removal is recorded as a change of every domain. Called inside the caller's transaction."""
    # One statement reads and bumps the counter, so concurrent writers (PostgreSQL) never share a version.
    bumped = (Meta.insert(key="directory_version", value="1")
              .on_conflict(conflict_target=[Meta.key],
                           update={Meta.value: pw.Cast(pw.Cast(Meta.value, "BIGINT") + 1, "TEXT")})
              .returning(Meta.value).execute())
    version = int(next(iter(bumped)).value)
    gone = sorted(set(removed))
    if gone:
        DirectoryChange.delete().where(DirectoryChange.domain.in_(gone)).execute()
        domains = None
    names = [EVERY_DOMAIN] if domains is None else sorted(set(domains))
    if names:
        (DirectoryChange.insert_many([(n, version) for n in names],
                                     fields=[DirectoryChange.domain, DirectoryChange.version])
         .on_conflict(conflict_target=[DirectoryChange.domain], update={DirectoryChange.version: version})
         .execute())


@reads
def directory_version() -> int:
    """A counter bumped by every directory change; cheap to poll."""
    row = Meta.get_or_none(Meta.key == "directory_version")
    return int(row.value) if row else 0


def _account_record(a: Account) -> AccountRecord:
    names = tuple(d.name for d in a.domains.order_by(Domain.name))
    return AccountRecord(a.id, a.email, a.created_at, names)


def _domain_record(d: Domain) -> DomainRecord:
    return DomainRecord(
        d.id, d.name, d.account.email, d.verification_token, d.dkim_selector, d.dkim_private_key,
        d.retention_days, d.verified_at, d.auth_policy, d.friendly_from, d.require_tls_inbound,
        d.created_at, d.aliases_from,
    )


def _alias_record(a: Alias, domain: Domain | None = None, account_email: str | None = None) -> AliasRecord:
    domain = domain or a.domain
    return AliasRecord(
        a.id, domain.name, a.kind, a.local, tuple(json.loads(a.destinations)), a.state,
        a.password_hash is not None, account_email or domain.account.email, a.created_at,
    )


def _account(email: str) -> Account:
    row = Account.get_or_none(Account.email == email)
    if row is None:
        raise NotFound(f"no account {email}")
    return row


def _domain(name: str) -> Domain:
    row = Domain.get_or_none(Domain.name == name)
    if row is None:
        raise NotFound(f"no domain {name}")
    return row


def _alias(domain: str, kind: str, local: str) -> Alias:
    row = (
        Alias.select().join(Domain)
        .where(Domain.name == domain, Alias.kind == kind, Alias.local == local)
        .first()
    )
    if row is None:
        shown = f"/{local}/@{domain}" if kind == "regex" else f"{local}@{domain}"
        raise NotFound(f"no alias {shown}")
    return row


# accounts

def add_account(email: str) -> AccountRecord:
    with writing():
        if Account.get_or_none(Account.email == email):
            raise AlreadyExists(f"account {email} exists already")
        with unique_insert(AlreadyExists, f"account {email} exists already"):
            row = Account.create(email=email)
        _bump_directory(())
    return _account_record(row)


def get_account(email: str) -> AccountRecord:
    return _account_record(_account(email))


def list_accounts() -> list[AccountRecord]:
    return [_account_record(a) for a in Account.select().order_by(Account.email)]


def delete_account(email: str) -> dict[str, int]:
    """Remove an account and everything that hangs off it, then checkpoint the WAL.

    Its mail and logs go first in short transactions (`_delete_in_batches`), so a running daemon's
    writes get the lock between them; then, in one transaction, what is left: the account with its
    domains, keys, aliases and password hashes. Interrupted, it has removed part of the mail and logs;
    running it again removes the rest.
    """
    acct = _account(email)
    domain_ids = [d.id for d in acct.domains]
    names = [d.name for d in acct.domains]
    emails = _delete_in_batches(OutboundEmail, OutboundEmail.domain.in_(domain_ids))
    logs = _delete_in_batches(SmtpErrorLog, SmtpErrorLog.domain.in_(domain_ids)
                              | SmtpErrorLog.domain_name.in_(names))
    _delete_in_batches(AbuseEvent, AbuseEvent.domain.in_(domain_ids))
    with writing():
        acct = _account(email)
        domain_ids = [d.id for d in acct.domains]
        names = [d.name for d in acct.domains]
        counts = {
            "domains": len(domain_ids),
            "aliases": Alias.select().where(Alias.domain.in_(domain_ids)).count(),
            "emails": emails + OutboundEmail.select().where(OutboundEmail.domain.in_(domain_ids)).count(),
            "smtp_error_logs": logs + SmtpErrorLog.delete().where(
                SmtpErrorLog.domain.in_(domain_ids) | SmtpErrorLog.domain_name.in_(names)
            ).execute(),
        }
        AbuseEvent.delete().where(AbuseEvent.domain.in_(domain_ids)).execute()
        acct.delete_instance()
        _bump_directory((), removed=names)
    checkpoint()
    return counts


# A deletion from the CLI removes mail and logs at most this many rows per transaction.
DELETE_BATCH = 500


def _delete_in_batches(model: type[BaseModel], condition: pw.Expression) -> int:
    """Delete the rows of `model` matching `condition`, `DELETE_BATCH` per transaction, resting between
    transactions (`rest_after`) so other writers get the lock; return how many were deleted. Rows that
    arrive meanwhile may be left (the caller's last transaction takes them)."""
    total = 0
    for _ in range(model.select().where(condition).count() // DELETE_BATCH + 1):
        started = time.monotonic()
        with writing():
            ids = [r.id for r in model.select(model.id).where(condition).limit(DELETE_BATCH)]
            deleted = model.delete().where(model.id.in_(ids)).execute() if ids else 0
        total += deleted
        if len(ids) < DELETE_BATCH:
            break
        time.sleep(rest_after(started))
    return total


# domains

def add_domain(name: str, account_email: str, dkim_selector: str, dkim_private_key: str,
               verification_token: str) -> DomainRecord:
    with writing():
        acct = _account(account_email)
        if Domain.get_or_none(Domain.name == name):
            raise AlreadyExists(f"domain {name} exists already")
        with unique_insert(AlreadyExists, f"domain {name} exists already"):
            row = Domain.create(
                name=name, account=acct, dkim_selector=dkim_selector, dkim_private_key=dkim_private_key,
                verification_token=verification_token,
            )
        _bump_directory([name])
    return _domain_record(row)


def get_domain(name: str) -> DomainRecord:
    return _domain_record(_domain(name))


def list_domains(account_email: str | None = None) -> list[DomainRecord]:
    q = Domain.select(Domain, Account).join(Account).order_by(Domain.name)
    if account_email is not None:
        q = q.where(Account.email == account_email)
    return [_domain_record(d) for d in q]


def update_domain(name: str, **changes: object) -> DomainRecord:
    """Set domain settings: retention_days, auth_policy, friendly_from, require_tls_inbound,
    aliases_from."""
    allowed = {"retention_days", "auth_policy", "friendly_from", "require_tls_inbound", "aliases_from"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"cannot set {', '.join(sorted(unknown))} on a domain")
    days = changes.get("retention_days", 0)
    if not isinstance(days, int) or not 0 <= days <= 30:
        raise ValueError(f"retention_days must be between 0 and 30, got {days}")
    if changes.get("aliases_from", "store") not in ALIAS_SOURCES:
        raise ValueError(f"aliases_from must be one of {', '.join(ALIAS_SOURCES)}")
    with writing():
        row = _domain(name)
        for k, v in changes.items():
            setattr(row, k, v)
        row.save()
        _bump_directory([name])
    return _domain_record(row)


def mark_domain_verified(name: str, now: dt.datetime) -> DomainRecord:
    with writing():
        row = _domain(name)
        row.verified_at = now
        row.save()
        _bump_directory([name])
    return _domain_record(row)


def remove_domain(name: str) -> dict[str, int]:
    """Remove a domain with its aliases, key, outbound mail and logs, then checkpoint the WAL (mail and
    logs first, in short transactions, as `delete_account` does)."""
    row = _domain(name)
    emails = _delete_in_batches(OutboundEmail, OutboundEmail.domain == row.id)
    logs = _delete_in_batches(SmtpErrorLog,
                              (SmtpErrorLog.domain == row.id) | (SmtpErrorLog.domain_name == name))
    _delete_in_batches(AbuseEvent, AbuseEvent.domain == row.id)
    with writing():
        row = _domain(name)
        counts = {
            "aliases": row.aliases.count(),
            "emails": emails + row.outbound.count(),
            "smtp_error_logs": logs + SmtpErrorLog.delete().where(
                (SmtpErrorLog.domain == row.id) | (SmtpErrorLog.domain_name == name)
            ).execute(),
        }
        row.delete_instance()
        _bump_directory((), removed=[name])
    checkpoint()
    return counts


# aliases

def add_alias(domain: str, kind: str, local: str, destinations: list[str]) -> AliasRecord:
    if kind not in ALIAS_KINDS:
        raise ValueError(f"alias kind must be one of {', '.join(ALIAS_KINDS)}, got {kind!r}")
    if not 1 <= len(destinations) <= 10:
        raise ValueError(f"an alias needs 1 to 10 destinations, got {len(destinations)}")
    with writing():
        dom = _domain(domain)
        exists = Alias.get_or_none(Alias.domain == dom, Alias.kind == kind, Alias.local == local)
        if exists:
            raise AlreadyExists(f"alias {_alias_record(exists, dom).address} exists already")
        shown = f"/{local}/@{dom.name}" if kind == "regex" else f"{local}@{dom.name}"
        with unique_insert(AlreadyExists, f"alias {shown} exists already"):
            row = Alias.create(domain=dom, kind=kind, local=local, destinations=json.dumps(destinations))
        _bump_directory([domain])
    return _alias_record(row, dom)


def get_alias(domain: str, kind: str, local: str) -> AliasRecord:
    return _alias_record(_alias(domain, kind, local))


def list_aliases(domain: str | None = None) -> list[AliasRecord]:
    q = (
        Alias.select(Alias, Domain, Account).join(Domain).join(Account)
        .order_by(Domain.name, Alias.kind, Alias.local)
    )
    if domain is not None:
        q = q.where(Domain.name == domain)
    return [_alias_record(a, a.domain, a.domain.account.email) for a in q]


def remove_alias(domain: str, kind: str, local: str) -> None:
    with writing():
        _alias(domain, kind, local).delete_instance()
        _bump_directory([domain])
    checkpoint()


def set_alias_state(domain: str, kind: str, local: str, state: str) -> AliasRecord:
    if state not in ALIAS_STATES:
        raise ValueError(f"alias state must be one of {', '.join(ALIAS_STATES)}, got {state!r}")
    with writing():
        row = _alias(domain, kind, local)
        row.state = state
        row.save()
        _bump_directory([domain])
    return _alias_record(row)


def set_alias_password(domain: str, kind: str, local: str, password_hash: str) -> AliasRecord:
    with writing():
        row = _alias(domain, kind, local)
        row.password_hash = password_hash
        row.save()
        _bump_directory([domain])
    return _alias_record(row)


@reads
def alias_password_hash(domain: str, kind: str, local: str) -> str | None:
    """The stored password hash of an alias, or None (for the submission login check)."""
    row = (
        Alias.select(Alias.password_hash).join(Domain)
        .where(Domain.name == domain, Alias.kind == kind, Alias.local == local)
        .first()
    )
    return row.password_hash if row else None


@reads
def load_directory() -> tuple[list[DomainRecord], list[AliasRecord]]:
    """Every domain and alias, for the daemon's in-memory resolver."""
    domains = list_domains()
    return domains, list_aliases()


@reads
def directory_snapshot() -> tuple[int, list[DomainRecord], list[AliasRecord]]:
    """`directory_version` with every domain and alias, all read in one transaction (they agree)."""
    with snapshot():
        version = directory_version()
        domains, aliases = load_directory()
    return version, domains, aliases


# what the MX asks, one recipient at a time

# More domains changed than this since a reader's last poll: it drops its whole cache instead.
MAX_CHANGES = 1000


@reads
def directory_changes(since: int | None) -> tuple[int, list[str] | None]:
    """The directory version now, and the domains changed after version `since`: None when that is
    every domain (or more than `MAX_CHANGES`, or the version went back), [] when `since` is None."""
    with snapshot():
        version = directory_version()
        if since is None or version == since:
            return version, []
        if version < since:
            return version, None
        names = [r.domain for r in DirectoryChange.select(DirectoryChange.domain)
                 .where(DirectoryChange.version > since).limit(MAX_CHANGES + 1)]
    return version, None if len(names) > MAX_CHANGES or EVERY_DOMAIN in names else names


@reads
def lookup_aliases(domain: str, keys: Sequence[str], with_rules: bool = True) -> AliasLookup | None:
    """The hosted `domain` (None if it is not hosted) with its exact aliases whose `lookup_key` is one
    of `keys` (the last added, if several differ only in case) and, if `with_rules`, its regex and
    catch-all aliases. Indexed queries only, read in one transaction."""
    with snapshot():
        row = Domain.select(Domain, Account).join(Account).where(Domain.name == domain).first()
        if row is None:
            return None
        email = row.account.email
        exact: dict[str, AliasRecord | None] = dict.fromkeys(keys)
        if keys:
            for a in (Alias.select().where(Alias.domain == row.id, Alias.kind == "exact",
                                           Alias.lookup.in_(list(keys))).order_by(Alias.id)):
                exact[a.lookup] = _alias_record(a, row, email)
        rules = None
        if with_rules:
            rules = tuple(_alias_record(a, row, email) for a in Alias.select().where(
                Alias.domain == row.id, Alias.kind.in_(("regex", "catch-all"))).order_by(Alias.id))
    return AliasLookup(_domain_record(row), exact, rules)


def set_alias_destinations(domain: str, kind: str, local: str, destinations: list[str]) -> AliasRecord:
    """Replace an alias's destinations (already checked by the caller)."""
    with writing():
        row = _alias(domain, kind, local)
        row.destinations = json.dumps(destinations)
        row.save()
        _bump_directory([domain])
    return _alias_record(row)
