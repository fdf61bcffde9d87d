"""A domain's sender allow/deny lists and its webhook signing key, as the admin commands change them.

Arguments arrive as the admin typed them: patterns are checked by `policy.senderlists.parse_pattern`
and refused with a message fit to print (`AddressError`, `ValueError`, `NotFound`).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from fwdmail import store
from fwdmail.app import now
from fwdmail.mail.addresses import normalize_domain
from fwdmail.policy.senderlists import parse_pattern
from fwdmail.store import SenderRuleRecord

__all__ = ["ListChange", "SenderRuleRecord", "change_list", "sender_rules", "webhook_key"]

MAX_PATTERNS_PER_COMMAND = 1000


@dataclass(frozen=True)
class ListChange:
    domain: str
    kind: str
    changed: list[str]  # added (or removed) patterns
    unchanged: list[str]  # there already (or not there)


def change_list(domain: str, kind: str, patterns: Sequence[str], remove: bool = False) -> ListChange:
    """Add `patterns` to (or remove them from) the domain's `kind` ("allow" or "deny") list."""
    name = normalize_domain(domain)
    if not patterns:
        raise ValueError("give at least one pattern: an address, @domain, an IP or a CIDR")
    if len(patterns) > MAX_PATTERNS_PER_COMMAND:
        raise ValueError(f"at most {MAX_PATTERNS_PER_COMMAND} patterns at once")
    parsed = list(dict.fromkeys(parse_pattern(p) for p in patterns))
    if remove:
        changed = store.remove_sender_rules(name, kind, parsed)
    else:
        changed = store.add_sender_rules(name, kind, parsed, now())
    return ListChange(name, kind, changed, [p for p in parsed if p not in changed])


def sender_rules(domain: str) -> list[SenderRuleRecord]:
    return store.list_sender_rules(normalize_domain(domain))


def webhook_key(domain: str, rotate: bool = False) -> str:
    """The key the domain's webhook POSTs are signed with (made on first use); `rotate`: a new one."""
    return store.set_webhook_key(normalize_domain(domain), new_webhook_key(), now(), rotate)


def new_webhook_key() -> str:
    return secrets.token_hex(32)
