"""Alias resolution: which destinations a recipient of a hosted domain forwards to.

Untrusted input: recipient addresses from RCPT TO (already parsed by `fwdmail.mail.addresses`). Resolution
(`resolve`) is pure and in memory, against a `Directory`. The MX gets one per recipient from
`DirectoryCache.route`: the recipient's domain (settings, regex and catch-all rules) and its exact aliases,
read by indexed queries on the store's read connection and kept in a cache bounded in entries and bytes
("no such alias" and "not hosted" only briefly). Every `check_interval` seconds the cache asks the store
which domains changed and drops those alone, so CLI edits are seen without a restart and no process holds
the whole directory. The cache's keys come from the client: its bounds, not the client, decide its size.
Regex aliases are admin-written patterns matched against client-chosen local parts, on the event loop.
`alias add` refuses a pattern that backtracks on adversarial probes (`slow_probe`); one stored before
that check (or slow on inputs no probe tried) runs with the `regex` module under a small time budget
per RCPT, and `RegexBudget` caps the total per transaction, per client and for all clients per minute:
once spent, RCPTs needing a regex get a 4xx at once instead of more matching.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field

import regex

from fwdmail import store
from fwdmail.config import MxConfig
from fwdmail.mail.addresses import Address, AddressError, parse_address
from fwdmail.policy.clients import client_key
from fwdmail.runtime.executor import Blocking
from fwdmail.runtime.expiring import BoundedMap
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError

__all__ = ["MAX_DESTINATIONS", "Directory", "DirectoryCache", "Meter", "RegexBudget", "Route", "resolve",
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
        seen.setdefault(a.lower(), a)
    return tuple(seen.values())[:MAX_DESTINATIONS]


def _valid(addresses: Iterable[str]) -> list[str]:
    out = []
    for a in addresses:
        try:
            out.append(str(parse_address(a)))
        except AddressError:
            continue
    return out


def _with_tag(destination: str, tag: str) -> str:
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


@dataclass(frozen=True)
class _Rules:
    """What is cached of one hosted domain: its settings and its regex and catch-all rules."""

    settings: store.DomainRecord
    rules: _DomainAliases


_RECORD_BYTES = 600  # an AliasRecord, its tuple and its strings' headers, roughly (CPython, 64-bit)
_PATTERN_BYTES = 4096  # a compiled pattern, roughly


def _record_bytes(a: store.AliasRecord) -> int:
    return _RECORD_BYTES + len(a.local) + len(a.domain) + len(a.account_email) + sum(
        60 + len(d) for d in a.destinations)


def _rules_bytes(r: _Rules) -> int:
    d = r.settings
    size = 1000 + len(d.name) + len(d.account_email) + len(d.verification_token) + len(d.dkim_selector)
    size += len(d.dkim_private_key)
    size += sum(_PATTERN_BYTES + _record_bytes(a) for _, a in r.rules.regex)
    return size + (_record_bytes(r.rules.catch_all) if r.rules.catch_all is not None else 0)


_Key = tuple[str, str | None]  # (domain, None) for the domain, (domain, lookup key) for an exact alias


class _Lru:
    """Cache entries, least recently used dropped first past `max_entries` or `max_bytes` (estimated),
    each expiring at its own time; indexed by domain so a change drops one domain's entries alone."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[_Key, tuple[object, int, float]] = OrderedDict()
        self._by_domain: dict[str, set[_Key]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: _Key, now: float) -> tuple[bool, object]:
        """(True, value) if `key` is cached and not expired, else (False, None)."""
        item = self._items.get(key)
        if item is None:
            return False, None
        if item[2] <= now:
            self._drop(key)
            return False, None
        self._items.move_to_end(key)
        return True, item[0]

    def put(self, key: _Key, value: object, size: int, expires: float) -> None:
        self._drop(key)
        if size > self.max_bytes:
            return
        self._items[key] = (value, size, expires)
        self._by_domain.setdefault(key[0], set()).add(key)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: _Key) -> None:
        item = self._items.pop(key, None)
        if item is None:
            return
        self.bytes -= item[1]
        keys = self._by_domain.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_domain[key[0]]

    def drop_domain(self, domain: str) -> None:
        for key in list(self._by_domain.get(domain, ())):
            self._drop(key)

    def clear(self) -> None:
        self._items.clear()
        self._by_domain.clear()
        self.bytes = 0


@store.reads
def _read_domain(domain: str, keys: Sequence[str],
                 with_rules: bool) -> tuple[store.AliasLookup | None, _Rules | None]:
    """`store.lookup_aliases`, with the domain's patterns compiled (on the read thread, off the loop)."""
    found = store.lookup_aliases(domain, keys, with_rules)
    if found is None or found.rules is None:
        return found, None
    rules = _DomainAliases()
    for a in found.rules:
        rules = _with_rule(rules, a)
    return found, _Rules(found.domain, rules)


def _exact_keys(local: str) -> list[str]:
    """The lookup keys `_match` may ask for: the local part, and the part before a plus tag."""
    keys = [store.lookup_key(local)]
    base, plus, tag = local.partition("+")
    if plus and base and tag:
        keys.append(store.lookup_key(base))
    return keys


class DirectoryCache:
    """Per-recipient lookups (`route`, `hosts`) against the store, through a bounded cache whose domains
    are dropped when they change: the store is asked which changed at most every `check_interval`
    seconds, and a lookup waits for that question at most `max_wait` seconds (a database thread held up
    serves the cache meanwhile). `get` is the older whole snapshot, for tools and tests; the MX does not
    use it. Times are seconds on `clock`."""

    def __init__(self, blocking: Blocking, check_interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic, max_wait: float = 2.0,
                 max_entries: int = 100_000, max_bytes: int = 32 * 1024 * 1024,
                 negative_ttl: float = 5.0) -> None:
        self.blocking = blocking
        self.check_interval = check_interval
        self.clock = clock
        self.max_wait = max_wait
        self.negative_ttl = negative_ttl
        self._directory: Directory | None = None
        self._checked = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None
        self._cache = _Lru(max_entries, max_bytes)
        self._version: int | None = None
        self._epoch = 0  # bumped whenever entries are dropped for a change: a lookup begun before keeps
        self._polled = float("-inf")  # its answer out of the cache
        self._polling: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, blocking: Blocking, cfg: MxConfig) -> DirectoryCache:
        return cls(blocking, max_entries=cfg.directory_cache_max_entries,
                   max_bytes=cfg.directory_cache_max_bytes, negative_ttl=cfg.directory_negative_ttl)

    @property
    def entries(self) -> int:
        return len(self._cache)

    @property
    def bytes(self) -> int:
        """The estimated size of what is cached."""
        return self._cache.bytes

    @property
    def version(self) -> int | None:
        """The directory version the cache last saw."""
        return self._version

    async def route(self, address: Address, meter: Meter | None = None) -> Route | SmtpError:
        """`resolve` for `address` against what the store says now (changes older than
        `check_interval` seen). Raises the store's error when it cannot be read."""
        domain = address.domain.lower()
        return resolve(await self._directory_for(domain, _exact_keys(address.local)), address, meter)

    async def hosts(self, domain: str) -> bool:
        """Whether `domain` is hosted."""
        return bool((await self._directory_for(domain.lower(), [])).domains)

    async def _directory_for(self, domain: str, keys: list[str]) -> Directory:
        """A `Directory` holding `domain` (if hosted) with its exact aliases under `keys` alone."""
        await self._check()
        now = self.clock()
        found, cached = self._cache.get((domain, None), now)
        if found and cached is None:
            return Directory({}, self._version or 0)
        exact: dict[str, store.AliasRecord] = {}
        missing = []
        for key in keys:
            hit, record = self._cache.get((domain, key), now)
            if not hit:
                missing.append(key)
            elif isinstance(record, store.AliasRecord):
                exact[key] = record
        rules = cached if isinstance(cached, _Rules) else None
        if rules is None or missing:
            epoch = self._epoch
            looked, loaded = await self.blocking.db(_read_domain, domain, missing, rules is None)
            keep = epoch == self._epoch
            now = self.clock()
            negative = now + self.negative_ttl
            if looked is None:
                if keep:
                    self._cache.put((domain, None), None, 200 + len(domain), negative)
                return Directory({}, self._version or 0)
            rules = loaded or rules
            if keep and loaded is not None:
                self._cache.put((domain, None), loaded, _rules_bytes(loaded), float("inf"))
            for key, record in looked.exact.items():
                if record is not None:
                    exact[key] = record
                if keep:
                    size = 200 + len(key) + (_record_bytes(record) if record is not None else 0)
                    self._cache.put((domain, key), record, size, float("inf") if record else negative)
            if rules is None:  # evicted while this lookup waited: the domain's rules once more
                return await self._directory_for(domain, keys)
        aliases = _DomainAliases(exact, rules.rules.regex, rules.rules.catch_all)
        return Directory({domain: aliases}, self._version or 0, {domain: rules.settings})

    async def _check(self) -> None:
        """Drop the domains changed since the last check, if that was `check_interval` ago or more."""
        if self._version is not None and self.clock() - self._polled < self.check_interval:
            return
        if self._polling is None or self._polling.done():
            self._polling = asyncio.get_running_loop().create_task(self._poll())
        if self._version is None:
            await asyncio.shield(self._polling)
        else:
            await asyncio.wait([self._polling], timeout=self.max_wait)

    async def _poll(self) -> None:
        try:
            version, changed = await self.blocking.db(store.directory_changes, self._version)
        except Exception:
            if self._version is None:
                raise
            log.warning("directory change check failed; using what is cached", exc_info=True)
        else:
            if self._version is not None and version != self._version:
                self._epoch += 1
                if changed is None:
                    self._cache.clear()
                for name in changed or ():
                    self._cache.drop_domain(name)
            self._version = version
        self._polled = self.clock()

    def _fresh(self) -> bool:
        return self._directory is not None and self.clock() - self._checked < self.check_interval

    async def get(self) -> Directory:
        """The snapshot; raises the store's error only if no snapshot was ever loaded.

        A refresh held up on the database thread (behind writes waiting out another process's long
        transaction) is waited for at most `max_wait` seconds; the previous snapshot serves meanwhile.
        """
        if self._fresh():
            assert self._directory is not None
            return self._directory
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        if self._directory is None:
            await asyncio.shield(self._refreshing)
        else:
            await asyncio.wait([self._refreshing], timeout=self.max_wait)
        assert self._directory is not None
        return self._directory

    async def _refresh(self) -> None:
        try:
            version = await self.blocking.db(store.directory_version)
            if self._directory is None or version != self._directory.version:
                version, domains, aliases = await self.blocking.db(store.directory_snapshot)
                self._directory = Directory.build(domains, aliases, version)
        except Exception:
            if self._directory is None:
                raise
            log.warning("directory reload failed; using the previous snapshot", exc_info=True)
        self._checked = self.clock()
