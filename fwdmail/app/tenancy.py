"""What an account may do to its own domains and aliases (the web API's work): every function takes the
account the caller proved to be, and another account's domain or alias is `NotFound`, worded as for one
that does not exist.

Untrusted input: domain names, alias names, destinations and paging values from web clients; they are
validated here (`AddressError`, `ValueError`) as the admin commands validate them."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Any

from fwdmail import store
from fwdmail.app import accounts, aliases, domains
from fwdmail.mail.addresses import AddressError, normalize_domain, parse_alias_spec
from fwdmail.runtime import keys
from fwdmail.store import AliasRecord, AlreadyExists, DomainRecord, NotFound

__all__ = [
    "MAX_PAGE_SIZE",
    "UNAVAILABLE",
    "AddressError",
    "AliasPage",
    "AlreadyExists",
    "NotFound",
    "PreparedDomain",
    "add_own_alias",
    "add_prepared_domain",
    "delete_own_account",
    "list_own_domains",
    "own_alias",
    "own_aliases",
    "own_domain",
    "prepare_domain",
    "record_own_verification",
    "remove_own_alias",
    "remove_own_domain",
    "set_own_alias_password",
    "set_own_domain",
    "store_reachable",
    "update_own_alias",
]

# The store as a whole failing (locked, full, gone): the caller answers "try later", not "bad input".
UNAVAILABLE: tuple[type[Exception], ...] = (store.StoreError, store.DatabaseFailure)

MAX_PAGE_SIZE = 100
MAX_PAGE = 100_000


@store.reads
def store_reachable() -> bool:
    """One cheap read: the store answers."""
    store.directory_version()
    return True


def _owned(account_email: str, record: DomainRecord, shown: str) -> DomainRecord:
    if record.account_email != account_email:
        raise NotFound(f"no domain {shown}")
    return record


@store.reads
def own_domain(account_email: str, name: str) -> DomainRecord:
    """The account's domain `name`; `NotFound` for a domain that is missing or someone else's."""
    domain = normalize_domain(name)
    try:
        record = store.get_domain(domain)
    except NotFound:
        raise NotFound(f"no domain {domain}") from None
    return _owned(account_email, record, domain)


@store.reads
def list_own_domains(account_email: str) -> list[DomainRecord]:
    return store.list_domains(account_email)


@dataclass(frozen=True)
class PreparedDomain:
    """A domain to add with its new key material (made on a CPU thread, away from the store's)."""

    name: str
    account_email: str
    selector: str
    dkim_key: str
    token: str


def prepare_domain(account_email: str, name: str, now: dt.datetime) -> PreparedDomain:
    """Check the name and make the DKIM key (slow: RSA-2048); nothing is stored yet."""
    return PreparedDomain(normalize_domain(name), account_email, keys.new_selector(now),
                          keys.generate_dkim_key(), keys.new_token())


def add_prepared_domain(prepared: PreparedDomain) -> DomainRecord:
    return store.add_domain(prepared.name, prepared.account_email, prepared.selector, prepared.dkim_key,
                            prepared.token)


def remove_own_domain(account_email: str, name: str) -> dict[str, int]:
    record = own_domain(account_email, name)
    return domains.remove_domain(record.name)


@dataclass(frozen=True)
class AliasPage:
    aliases: list[AliasRecord]
    more: bool


@store.reads
def own_aliases(account_email: str, domain: str, page: int, limit: int) -> AliasPage:
    """Page `page` (from 1) of `limit` aliases of the account's `domain`, in the CLI's order."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    if not 1 <= page <= MAX_PAGE:
        raise ValueError(f"page must be between 1 and {MAX_PAGE}")
    record = own_domain(account_email, domain)
    rows = list(itertools.islice(store.iter_aliases(record.name), (page - 1) * limit, page * limit + 1))
    return AliasPage(rows[:limit], len(rows) > limit)


def _spec(account_email: str, domain: str, alias: str) -> tuple[DomainRecord, str, str]:
    record = own_domain(account_email, domain)
    if "@" in alias and not alias.startswith("/"):
        raise ValueError("give the alias without its domain (user, * or /regex/)")
    spec = parse_alias_spec(f"{alias}@{record.name}")
    return record, spec.kind, spec.local


@store.reads
def own_alias(account_email: str, domain: str, alias: str) -> AliasRecord:
    record, kind, local = _spec(account_email, domain, alias)
    return store.get_alias(record.name, kind, local)


def add_own_alias(account_email: str, domain: str, address: str, destinations: list[str]) -> AliasRecord:
    """Add an alias to the account's `domain`: `address` is its name (user, *, /regex/) or a full address
    in that domain."""
    record = own_domain(account_email, domain)
    full = address if "@" in address.rsplit("/", 1)[-1] else f"{address}@{record.name}"
    spec = parse_alias_spec(full)
    if spec.domain != record.name:
        raise ValueError(f"the alias must be in {record.name}")
    return aliases.add_alias(full, destinations)


def remove_own_alias(account_email: str, domain: str, alias: str) -> str:
    record, kind, local = _spec(account_email, domain, alias)
    store.get_alias(record.name, kind, local)
    shown = f"/{local}/@{record.name}" if kind == "regex" else f"{local}@{record.name}"
    return aliases.remove_alias(shown)


def set_own_domain(account_email: str, name: str, settings: dict[str, Any]) -> DomainRecord:
    """Change the account's domain settings as `fwdmail domain set` does (names as its options)."""
    record = own_domain(account_email, name)
    return domains.set_domain(record.name, **settings)


def record_own_verification(account_email: str, name: str, checks: list[domains.RecordCheck],
                            now: dt.datetime) -> domains.Verification:
    """Store the outcome of `domains.check_records` for the account's domain (still its own)."""
    record = own_domain(account_email, name)
    return domains.record_verification(record.name, checks, now)


def update_own_alias(account_email: str, domain: str, alias: str, destinations: list[str] | None,
                     state: str | None) -> AliasRecord:
    """Replace the alias's destinations and/or set its state (enabled, or a disable mode); every value is
    checked before anything is written."""
    record, kind, local = _spec(account_email, domain, alias)
    if state is not None and state not in aliases.ALIAS_STATES:
        raise ValueError(f"state must be one of {', '.join(aliases.ALIAS_STATES)}")
    current = store.get_alias(record.name, kind, local)
    if destinations is not None:
        _, dests = aliases.check_alias(current.address, destinations)
        current = store.set_alias_destinations(record.name, kind, local, dests)
    if state is not None:
        current = store.set_alias_state(record.name, kind, local, state)
    return current


def set_own_alias_password(account_email: str, domain: str, alias: str, password_hash: str) -> AliasRecord:
    """Store a new SMTP password hash (made by the caller away from the store's thread)."""
    record, kind, local = _spec(account_email, domain, alias)
    if kind == "regex":
        raise ValueError("regex aliases cannot log in: give an exact or catch-all alias")
    return store.set_alias_password(record.name, kind, local, password_hash)


def delete_own_account(account_email: str, confirm: str) -> dict[str, int]:
    """Delete the account with everything it owns, as `fwdmail account delete` does, once `confirm` is
    its address."""
    if confirm.strip().lower() != account_email.lower():
        raise ValueError("'confirm' must be the account's email address")
    return accounts.delete_account(account_email)
