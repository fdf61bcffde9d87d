"""Keyset pages of an account's domains and aliases, for the API's list endpoints: each page starts after
the last key of the one before, so a page never repeats or skips an entry because of inserts before it
(offset paging does), and reading page n costs the same as page 1.

Untrusted input: the domain name, the limit and the position (the key to start after) come from web
clients; the domain is checked as `tenancy.own_domain` does (another account's is `NotFound`), the limit
bounded, the position only compared with stored keys."""

from __future__ import annotations

from dataclasses import dataclass

from fwdmail import store
from fwdmail.app.tenancy import MAX_PAGE_SIZE, own_domain
from fwdmail.store import AliasRecord, DomainRecord

__all__ = ["MAX_KEY", "AliasesAfter", "DomainsAfter", "aliases_after", "domains_after"]

# A position longer than this is no stored key (a domain name is at most 253 octets, a regex 1,000 or so).
MAX_KEY = 4096


@dataclass(frozen=True)
class AliasesAfter:
    aliases: list[AliasRecord]
    next: tuple[str, str] | None
    """(kind, local) of the page's last alias when more follow, else None."""


@dataclass(frozen=True)
class DomainsAfter:
    domains: list[DomainRecord]
    next: str | None
    """The page's last domain name when more follow, else None."""


def _check(limit: int, *keys: str) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    if sum(len(k) for k in keys) > MAX_KEY:
        raise ValueError("the page position is too long")


@store.reads
def aliases_after(account_email: str, domain: str, after: tuple[str, str], limit: int) -> AliasesAfter:
    """The account's `domain`'s aliases after (kind, local) `after` (("", "") for the first page), at
    most `limit`, in the order of `alias list`."""
    _check(limit, *after)
    record = own_domain(account_email, domain)
    rows = store.alias_page(record.name, after, limit + 1)
    last = rows[limit - 1] if len(rows) > limit else None
    return AliasesAfter(rows[:limit], (last.kind, last.local) if last is not None else None)


@store.reads
def domains_after(account_email: str, after: str, limit: int) -> DomainsAfter:
    """The account's domains named after `after` ("" for the first page), at most `limit`, by name."""
    _check(limit, after)
    rows = store.domain_page(account_email, after, limit + 1)
    return DomainsAfter(rows[:limit], rows[limit - 1].name if len(rows) > limit else None)
