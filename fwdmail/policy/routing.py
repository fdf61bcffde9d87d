"""Alias resolution: which destinations a recipient of a hosted domain forwards to.

Untrusted input: recipient addresses from RCPT TO (already parsed by `fwdmail.mail.addresses`). Resolution
(`resolve`) is pure and in memory, against a `Directory`; the MX gets one per recipient from the
directory cache (`policy/directory.py`).
Regex aliases are admin-written patterns matched against client-chosen local parts, on the event loop.
`alias add` refuses a pattern that backtracks on adversarial probes (`slow_probe`); one stored before
that check (or slow on inputs no probe tried) runs with the `regex` module under a small time budget
per RCPT, and `RegexBudget` caps the total per transaction, per client and for all clients per minute:
once spent, RCPTs needing a regex get a 4xx at once instead of more matching.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field

import regex

from fwdmail import store
from fwdmail.config import MxConfig
from fwdmail.mail.addresses import Address, AddressError, is_webhook, parse_address, parse_webhook_url
from fwdmail.policy.clients import client_key
from fwdmail.runtime.expiring import BoundedMap
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError

__all__ = ["MAX_DESTINATIONS", "Directory", "Meter", "RegexBudget", "Route", "resolve",
           "slow_probe"]

log = logging.getLogger("fwdmail.routing")

MAX_DESTINATIONS = 10
_GROUP_REF = re.compile(r"\$(\d)")
MATCH_TIMEOUT = 0.01  # seconds the regex aliases of a domain may take, together, on one local part
PROBE_BUDGET = 0.001  # seconds `alias add` lets a new pattern take on one adversarial probe
_LOCAL_MAX = 64  # octets in a local part (RFC 5321 4.5.3.1.1); `parse_address` enforces it


@dataclass(frozen=True)
class Route:
    """Where one accepted recipient goes. `destinations` is empty when the alias is quiet-disabled."""

    alias: str  # the alias as the admin wrote it (user@dom, *@dom, /re/@dom) or the SRS address
    domain: str
    destinations: tuple[str, ...]
    account_email: str = ""
    discard: bool = False
    settings: store.DomainRecord | None = field(default=None, compare=False, repr=False)  # its hosted domain


@dataclass(frozen=True)
class _DomainAliases:
    exact: dict[str, store.AliasRecord] = field(default_factory=dict)
    regex: list[tuple[regex.Pattern[str], store.AliasRecord]] = field(default_factory=list)
    catch_all: store.AliasRecord | None = None


@dataclass(frozen=True)
class Directory:
    """An immutable snapshot of hosted domains and their aliases."""

    domains: dict[str, _DomainAliases]
    version: int = 0
    settings: dict[str, store.DomainRecord] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, domains: Iterable[store.DomainRecord], aliases: Iterable[store.AliasRecord],
              version: int = 0) -> Directory:
        settings = {d.name: d for d in domains}
        by_domain: dict[str, _DomainAliases] = {name: _DomainAliases() for name in settings}
        for a in sorted(aliases, key=lambda a: a.id):
            entry = by_domain.setdefault(a.domain, _DomainAliases())
            if a.kind == "exact":
                entry.exact[store.lookup_key(a.local)] = a
            else:
                by_domain[a.domain] = _with_rule(entry, a)
        return cls(by_domain, version, settings)

    def hosts(self, domain: str) -> bool:
        return domain.lower() in self.domains


def _with_rule(entry: _DomainAliases, alias: store.AliasRecord) -> _DomainAliases:
    """`entry` with the regex or catch-all `alias` (added in id order) taken in."""
    if alias.kind == "regex":
        try:
            entry.regex.append((regex.compile(alias.local, regex.IGNORECASE), alias))
        except regex.error:
            log.warning("a regex alias of %s does not compile; ignored", alias.domain)
    elif alias.kind == "catch-all":
        return _DomainAliases(entry.exact, entry.regex, alias)
    return entry


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for a in addresses:
        seen.setdefault(a if is_webhook(a) else a.lower(), a)
    return tuple(seen.values())[:MAX_DESTINATIONS]


def _valid(addresses: Iterable[str]) -> list[str]:
    out = []
    for a in addresses:
        try:
            out.append(parse_webhook_url(a) if is_webhook(a) else str(parse_address(a)))
        except AddressError:
            continue
    return out


def _with_tag(destination: str, tag: str) -> str:
    if is_webhook(destination):
        return destination
    local, _, domain = destination.rpartition("@")
    return f"{local}+{tag}@{domain}"


def _substitute(destination: str, match: regex.Match[str]) -> str:
    def group(m: re.Match[str]) -> str:
        n = int(m.group(1))
        if n == 0 or n > (match.re.groups or 0):
            return ""
        return match.group(n) or ""

    return _GROUP_REF.sub(group, destination)


class _Spent(Exception):
    """The regex budget of the transaction, the client or all clients is spent."""


class _Buckets:
    """Seconds of matching per key, refilled evenly up to `per_minute` over a minute. A charge comes
    after the work, so a bucket may go below zero; it must refill to a whole lookup's time before the
    next match.
    At most `max_keys` keys are kept, the least recently charged forgotten first."""

    def __init__(self, per_minute: float, max_keys: int) -> None:
        self.capacity = per_minute
        self.refill = per_minute / 60.0
        self._state: BoundedMap[bytes, tuple[float, float]] = BoundedMap(max_keys)

    def left(self, key: bytes, now: float) -> float:
        tokens, at = self._state.get(key) or (self.capacity, now)
        return min(self.capacity, tokens + max(0.0, now - at) * self.refill)

    def charge(self, key: bytes, seconds: float, now: float) -> None:
        self._state.set(key, (self.left(key, now) - seconds, now))

    def __len__(self) -> int:
        return len(self._state)


_TX_NOTE = "regex-seconds"


class RegexBudget:
    """Event-loop time regex aliases may take: `match_timeout` per RCPT, `per_transaction` per MAIL
    transaction, `per_client_per_minute` per client (IPv4 address or IPv6 /64, held as a keyed hash)
    and `per_minute` for all clients together. A lookup starts only with a whole `match_timeout` left in
    each, so a client past its budget gets one slow lookup per `match_timeout` of refill, no more.
    Times are seconds; `clock` is monotonic."""

    def __init__(self, match_timeout: float = MATCH_TIMEOUT, per_transaction: float = 0.05,
                 per_client_per_minute: float = 0.1, per_minute: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = 100_000) -> None:
        self.match_timeout = match_timeout
        self.per_transaction = per_transaction
        self.clock = clock
        self.clients = _Buckets(per_client_per_minute, max_clients)
        self.total = _Buckets(per_minute, 1)
        self._client_key = client_key
        self._secret = secrets.token_bytes(32)

    @classmethod
    def of(cls, cfg: MxConfig) -> RegexBudget:
        return cls(cfg.regex_match_timeout, cfg.regex_seconds_per_transaction,
                   cfg.regex_seconds_per_ip_per_minute, cfg.regex_seconds_per_minute)

    def meter(self, ip: str, tx_notes: MutableMapping[str, object]) -> Meter:
        """The meter for one RCPT of the client at `ip`, in the transaction that owns `tx_notes`."""
        key = hmac.digest(self._secret, self._client_key(ip).encode("utf-8", "replace"), hashlib.sha256)
        return Meter(self, key, tx_notes)


@dataclass
class Meter:
    """What one RCPT may spend on regex matching, and where what it spent is charged."""

    budget: RegexBudget
    client: bytes
    tx_notes: MutableMapping[str, object]

    def _tx_spent(self) -> float:
        spent = self.tx_notes.get(_TX_NOTE, 0.0)
        return spent if isinstance(spent, float) else 0.0

    def allowance(self) -> float:
        """Seconds this lookup may match for: `match_timeout` (or a smaller budget's whole size) if the
        transaction, the client and all clients each have that much left, else 0 (refuse unmatched)."""
        b, now = self.budget, self.budget.clock()
        need = min(b.match_timeout, b.per_transaction, b.clients.capacity, b.total.capacity)
        left = min(b.per_transaction - self._tx_spent(), b.clients.left(self.client, now),
                   b.total.left(b"", now))
        return need if left >= need else 0.0

    def charge(self, seconds: float) -> None:
        b, now = self.budget, self.budget.clock()
        self.tx_notes[_TX_NOTE] = self._tx_spent() + seconds
        b.clients.charge(self.client, seconds, now)
        b.total.charge(b"", seconds, now)


def _search(patterns: list[tuple[regex.Pattern[str], store.AliasRecord]], local: str,
            meter: Meter | None) -> tuple[store.AliasRecord, list[str]] | None:
    """The first regex alias matching `local`. Raises _Spent without matching when the meter allows no
    time, TimeoutError when the patterns together take longer than it allows."""
    limit = meter.allowance() if meter is not None else MATCH_TIMEOUT
    if limit <= 0:
        raise _Spent
    start = time.perf_counter()
    deadline = start + limit
    try:
        for pattern, alias in patterns:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            m = pattern.search(local, timeout=left)
            if m is not None:
                return alias, [_substitute(d, m) for d in alias.destinations]
        return None
    finally:
        if meter is not None:
            meter.charge(time.perf_counter() - start)


def _match(aliases: _DomainAliases, local: str,
           meter: Meter | None = None) -> tuple[store.AliasRecord, list[str]] | None:
    """Exact, then plus-addressing (tag kept), then regex ($n substituted), then catch-all.

    Raises TimeoutError or _Spent when the regex aliases cannot be matched within `meter` (or, without
    one, `MATCH_TIMEOUT`)."""
    key = local.lower()
    hit = aliases.exact.get(key)
    if hit is not None:
        return hit, list(hit.destinations)
    base, plus, tag = local.partition("+")
    if plus and base and tag:
        hit = aliases.exact.get(base.lower())
        if hit is not None:
            return hit, [_with_tag(d, tag) for d in hit.destinations]
    if aliases.regex:
        found = _search(aliases.regex, local, meter)
        if found is not None:
            return found
    if aliases.catch_all is not None:
        return aliases.catch_all, list(aliases.catch_all.destinations)
    return None


def resolve(directory: Directory, address: Address, meter: Meter | None = None) -> Route | SmtpError:
    """The route of `address`, or the SMTP error to answer its RCPT with. Regex aliases are matched
    within `meter` (see `RegexBudget`); without one, within `MATCH_TIMEOUT` and uncounted."""
    aliases = directory.domains.get(address.domain.lower())
    settings = directory.settings.get(address.domain.lower())
    if aliases is None:
        return replies.RELAY_DENIED
    try:
        found = _match(aliases, address.local, meter)
    except _Spent:
        return replies.REGEX_BUDGET_SPENT
    except TimeoutError:
        log.warning("the regex aliases of %s took too long to match a recipient", address.domain)
        return replies.ALIAS_LOOKUP_TIMEOUT
    if found is None:
        return replies.NO_SUCH_USER
    alias, destinations = found
    if alias.state == "tempfail":
        return replies.ALIAS_TEMPFAIL
    if alias.state == "reject":
        return replies.ALIAS_REJECTED
    if alias.state == "quiet":
        return Route(alias.address, alias.domain, (), alias.account_email, discard=True, settings=settings)
    targets = _unique(_valid(destinations))
    if not targets:
        return replies.NO_SUCH_USER
    return Route(alias.address, alias.domain, targets, alias.account_email, settings=settings)


# checking a pattern before it is stored

_PROBE_ENDS = ("", "!", "0", "a", "-", ".")
_LITERAL_RUN = re.compile(r"[^\W_]{2,}")


def _repeat(unit: str) -> str:
    """`unit` repeated to fill a local part, less one octet for the end."""
    return unit * ((_LOCAL_MAX - 1) // max(1, len(unit.encode("utf-8"))))


def _probes(pattern: str) -> Iterable[str]:
    """Local parts that make backtracking patterns work hardest: one character (or a literal of the
    pattern, or a pair of common characters) repeated to the longest local part, then an end that may
    fail the match."""
    chars = list(dict.fromkeys("a0-._+!" + "".join(c for c in pattern if c.isprintable() and c != " ")))
    units = chars[:48] + _LITERAL_RUN.findall(pattern)[:8]
    units += [x + y for i, x in enumerate(chars[:6]) for y in chars[i + 1:6]]
    for unit in units:
        body = _repeat(unit)
        for end in _PROBE_ENDS:
            yield body + end


def slow_probe(pattern: str, budget: float = PROBE_BUDGET, attempts: int = 3) -> str | None:
    """A local part on which `pattern` (as the MX matches it) takes longer than `budget` seconds, every
    one of `attempts` times (so a scheduling hiccup does not refuse a sane pattern), or None."""
    compiled = regex.compile(pattern, regex.IGNORECASE)
    for probe in _probes(pattern):
        for _ in range(attempts):
            try:
                compiled.search(probe, timeout=budget)
                break
            except TimeoutError:
                continue
        else:
            return probe
    return None
