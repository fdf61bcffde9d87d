"""What an account may change on its own domains, aliases and API tokens from the "My Account" pages
(beside `app.tenancy`, which the API shares): every function takes the account the caller proved to be,
and another account's domain, alias or token is `NotFound`, as one that does not exist.

Untrusted input: domain and alias names, destinations, states, retention days, search text and token
ids from web forms; validated here as the admin commands validate them."""

from __future__ import annotations

import datetime as dt
import itertools

from fwdmail import store
from fwdmail.app import aliases, domains
from fwdmail.app.tenancy import AliasPage, own_alias, own_domain
from fwdmail.store import AliasRecord, DomainRecord, NotFound

__all__ = [
    "MAX_SEARCH",
    "mark_own_verified",
    "own_api_tokens",
    "own_login_alias",
    "revoke_own_api_token",
    "search_own_aliases",
    "set_own_alias_destinations",
    "set_own_alias_password",
    "set_own_alias_state",
    "set_own_retention",
]

MAX_SEARCH = 200
MAX_LISTED = 200


def set_own_retention(account_email: str, name: str, days: int) -> DomainRecord:
    """The domain's body retention (Advanced Settings), 0–30 days."""
    record = own_domain(account_email, name)
    if not 0 <= days <= 30:
        raise ValueError("retention must be between 0 and 30 days")
    return domains.set_domain(record.name, retention_days=days)


def mark_own_verified(account_email: str, name: str, now: dt.datetime) -> DomainRecord:
    record = own_domain(account_email, name)
    return store.mark_domain_verified(record.name, now)


@store.reads
def search_own_aliases(account_email: str, domain: str, search: str, limit: int = MAX_LISTED) -> AliasPage:
    """Up to `limit` aliases of the account's `domain` whose address or a destination contains `search`
    (all of them for an empty search), in the CLI's order."""
    record = own_domain(account_email, domain)
    text = search.strip()[:MAX_SEARCH] or None
    rows = list(itertools.islice(store.iter_aliases(record.name, text), limit + 1))
    return AliasPage(rows[:limit], len(rows) > limit)


def _shown(alias: AliasRecord) -> str:
    return f"/{alias.local}/@{alias.domain}" if alias.kind == "regex" else f"{alias.local}@{alias.domain}"


def set_own_alias_destinations(account_email: str, domain: str, alias: str, destinations: list[str],
                               ) -> AliasRecord:
    """Replace the destinations of the account's alias, checked as `alias add` checks them."""
    found = own_alias(account_email, domain, alias)
    _, dests = aliases.check_alias(_shown(found), destinations)
    return store.set_alias_destinations(found.domain, found.kind, found.local, dests)


def set_own_alias_state(account_email: str, domain: str, alias: str, state: str) -> AliasRecord:
    """Enable the account's alias, or disable it in one of the modes (quiet, tempfail, reject)."""
    return aliases.set_alias_state(_shown(own_alias(account_email, domain, alias)), state)


@store.reads
def own_login_alias(account_email: str, domain: str, alias: str) -> AliasRecord:
    """The account's alias that may get an SMTP password (exact or catch-all)."""
    found = own_alias(account_email, domain, alias)
    if found.kind == "regex":
        raise ValueError("regex aliases cannot log in: give an exact or catch-all alias")
    return found


def set_own_alias_password(account_email: str, domain: str, alias: str, password_hash: str) -> AliasRecord:
    """Store a new SMTP password hash (hashed by the caller on the hashing pool)."""
    found = own_login_alias(account_email, domain, alias)
    return store.set_alias_password(found.domain, found.kind, found.local, password_hash)


@store.reads
def own_api_tokens(account_email: str) -> list[tuple[int, dt.datetime]]:
    return store.list_api_tokens(account_email)


def revoke_own_api_token(account_email: str, token_id: int) -> None:
    if not store.revoke_api_token(account_email, token_id):
        raise NotFound("no such token")
