"""Aliases, the addresses that forward: add, list, remove, enable/disable, SMTP password.

Arguments arrive as the admin typed them (an alias spec, destinations, a regex); they are validated here
and raise `AddressError`, `ValueError`, `NotFound` or `AlreadyExists` with a message fit to print. A regex
that backtracks on adversarial local parts is refused before it reaches the MX.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from fwdmail import store
from fwdmail.app.domains import get_domain
from fwdmail.mail.addresses import SUBSTITUTION, AliasSpec, parse_alias_spec, parse_destinations
from fwdmail.policy.routing import PROBE_BUDGET, slow_probe
from fwdmail.runtime import keys
from fwdmail.store import AliasRecord

__all__ = [
    "ALIAS_STATES", "AliasRecord", "NewPassword", "add_alias", "check_alias", "iter_aliases", "list_aliases",
    "new_alias_password", "remove_alias", "set_alias_state",
]

ALIAS_STATES = store.ALIAS_STATES


@dataclass(frozen=True)
class NewPassword:
    """A freshly generated SMTP password, in clear only here (it is stored hashed)."""

    alias: AliasRecord
    password: str


def _shown(probe: str) -> str:
    return repr(probe if len(probe) <= 12 else f"{probe[:6]}…{probe[-4:]}")


def add_alias(address: str, destinations: list[str]) -> AliasRecord:
    """Add an alias (checked as `check_alias` says)."""
    spec, dests = check_alias(address, destinations)
    return store.add_alias(spec.domain, spec.kind, spec.local, dests)


def check_alias(address: str, destinations: list[str]) -> tuple[AliasSpec, list[str]]:
    """Parse an alias and its destinations; refuses a forward to itself, `$N` beyond the regex's groups
    and a regex that backtracks on adversarial local parts (it would cost the MX's event loop on every
    such RCPT)."""
    spec = parse_alias_spec(address)
    dests = parse_destinations(destinations)
    groups = re.compile(spec.local).groups if spec.kind == "regex" else 0
    probe = slow_probe(spec.local) if spec.kind == "regex" else None
    if probe is not None:
        raise ValueError(f"regex /{spec.local}/ backtracks: matching the {len(probe)}-character local part "
                         f"{_shown(probe)} takes over {PROBE_BUDGET * 1000:g} ms; rewrite it without "
                         "nested or overlapping repetition such as (a+)+ or (a|a)*")
    for dest in dests:
        used = [int(m[1:]) for m in SUBSTITUTION.findall(dest)]
        if used and spec.kind != "regex":
            raise ValueError("$1..$9 substitutions are only for /regex/ aliases")
        if used and max(used) > groups:
            raise ValueError(f"{dest} uses ${max(used)} but the pattern has {groups} group(s)")
        if spec.kind == "exact" and dest.lower() == spec.address:
            raise ValueError(f"alias {spec.address} cannot forward to itself")
    return spec, dests


def list_aliases(domain: str | None = None) -> list[AliasRecord]:
    """All aliases, or those of `domain` (which must exist)."""
    return store.list_aliases(get_domain(domain).name if domain is not None else None)


def iter_aliases(domain: str | None = None, search: str | None = None) -> Iterator[AliasRecord]:
    """The aliases (of `domain`, which must exist; whose address or a destination contains `search`),
    read from the store a page at a time: memory stays flat however many there are."""
    name = get_domain(domain).name if domain is not None else None
    if search is not None and not search.strip():
        raise ValueError("empty --search text")
    return store.iter_aliases(name, search.strip() if search else None)


def remove_alias(address: str) -> str:
    """Remove an alias; return its address as stored."""
    spec = parse_alias_spec(address)
    store.remove_alias(spec.domain, spec.kind, spec.local)
    store.settle_deleted(f"alias {spec.address}", ("alias",))
    return spec.address


def set_alias_state(address: str, state: str) -> AliasRecord:
    if state not in ALIAS_STATES:
        raise ValueError(f"state must be one of {', '.join(ALIAS_STATES)}")
    spec = parse_alias_spec(address)
    return store.set_alias_state(spec.domain, spec.kind, spec.local, state)


def new_alias_password(address: str) -> NewPassword:
    """Generate, hash and store a new SMTP password; return it (shown once, never stored in clear)."""
    spec = parse_alias_spec(address)
    if spec.kind == "regex":
        raise ValueError("regex aliases cannot log in: give an exact or catch-all alias")
    password = keys.generate_password()
    record = store.set_alias_password(spec.domain, spec.kind, spec.local, keys.hash_password(password))
    return NewPassword(record, password)
