"""Verbs on per-domain sender allow/deny lists and webhook signing keys.

Untrusted input: none parsed here (patterns arrive checked by `fwdmail.policy.senderlists`). A change of
a list bumps the directory version for its domain (`DirectoryChange`), so a running daemon drops what it
cached of that domain's lists, as it does for aliases.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from fwdmail.store.db import reads, snapshot, writing
from fwdmail.store.directory import _bump_directory, _domain
from fwdmail.store.models import Domain, SenderRule, WebhookKey

__all__ = [
    "SENDER_RULE_KINDS", "SenderRuleRecord", "add_sender_rules", "any_allow_rules", "domain_sender_rules",
    "list_sender_rules", "remove_sender_rules", "set_webhook_key", "webhook_key",
]

SENDER_RULE_KINDS = ("allow", "deny")
MAX_RULES_PER_DOMAIN = 10_000


@dataclass(frozen=True)
class SenderRuleRecord:
    domain: str
    kind: str  # allow | deny
    pattern: str
    created_at: dt.datetime


def _check_kind(kind: str) -> None:
    if kind not in SENDER_RULE_KINDS:
        raise ValueError(f"sender list must be allow or deny, got {kind!r}")


def add_sender_rules(domain: str, kind: str, patterns: Sequence[str], now: dt.datetime) -> list[str]:
    """Add `patterns` to the domain's `kind` list; return those that were not there already."""
    _check_kind(kind)
    with writing():
        dom = _domain(domain)
        have = {r.pattern for r in SenderRule.select(SenderRule.pattern)
                .where(SenderRule.domain == dom, SenderRule.kind == kind)}
        new = [p for p in dict.fromkeys(patterns) if p not in have]
        if len(have) + len(new) > MAX_RULES_PER_DOMAIN:
            raise ValueError(f"a domain's {kind} list holds at most {MAX_RULES_PER_DOMAIN} entries")
        if new:
            SenderRule.insert_many([(dom.id, kind, p, now) for p in new],
                                   fields=[SenderRule.domain, SenderRule.kind, SenderRule.pattern,
                                           SenderRule.created_at]).execute()
            _bump_directory([domain])
    return new


def remove_sender_rules(domain: str, kind: str, patterns: Sequence[str]) -> list[str]:
    """Remove `patterns` from the domain's `kind` list; return those that were there."""
    _check_kind(kind)
    with writing():
        dom = _domain(domain)
        where = ((SenderRule.domain == dom) & (SenderRule.kind == kind)
                 & SenderRule.pattern.in_(list(patterns)))
        found = [r.pattern for r in SenderRule.select(SenderRule.pattern).where(where)]
        if found:
            SenderRule.delete().where(where).execute()
            _bump_directory([domain])
    return [p for p in patterns if p in found]


def list_sender_rules(domain: str) -> list[SenderRuleRecord]:
    """The domain's allow and deny entries, allow first, each list in the order added."""
    dom = _domain(domain)
    rows = SenderRule.select().where(SenderRule.domain == dom).order_by(SenderRule.kind, SenderRule.id)
    return [SenderRuleRecord(domain, r.kind, r.pattern, r.created_at) for r in rows]


@reads
def domain_sender_rules(domain: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(allow, deny) patterns of the hosted `domain`, or None if it is not hosted (for the MX)."""
    with snapshot():
        dom = Domain.get_or_none(Domain.name == domain)
        if dom is None:
            return None
        allow: list[str] = []
        deny: list[str] = []
        for r in (SenderRule.select(SenderRule.kind, SenderRule.pattern)
                  .where(SenderRule.domain == dom).order_by(SenderRule.id)):
            (allow if r.kind == "allow" else deny).append(r.pattern)
    return tuple(allow), tuple(deny)


@reads
def any_allow_rules() -> bool:
    """Whether any domain has an allow list (a DNSBL-listed client may then be one of them)."""
    return SenderRule.select(SenderRule.id).where(SenderRule.kind == "allow").exists()


@reads
def webhook_key(domain: str) -> str | None:
    """The domain's webhook signing key, or None if it has none yet."""
    row = WebhookKey.select(WebhookKey.key).join(Domain).where(Domain.name == domain).first()
    return row.key if row else None


def set_webhook_key(domain: str, key: str, now: dt.datetime, replace: bool) -> str:
    """The domain's webhook key: `key` stored if it has none (or `replace`), else the one it has."""
    with writing():
        dom = _domain(domain)
        row = WebhookKey.get_or_none(WebhookKey.domain == dom)
        if row is None:
            WebhookKey.create(domain=dom, key=key, created_at=now)
            return key
        if replace:
            row.key = key
            row.created_at = now
            row.save()
            return key
        return str(row.key)
