"""The directory cache: each MX process's bounded view of the aliases, read per recipient.

Untrusted input: recipient addresses from RCPT TO (parsed) decide which keys are looked up. The cache
reads one domain's settings, regex and catch-all rules and the recipient's exact aliases by indexed queries
on the store's read connection, and keeps them in a cache bounded in entries and bytes ("no such alias" and
"not hosted" only briefly). Every `check_interval` seconds it asks the store which domains changed and
drops those alone, so CLI edits are seen without a restart and no process holds the whole directory. The
keys come from the client: the cache's bounds, not the client, decide its size. Resolution itself is
`routing.resolve`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fwdmail import store
from fwdmail.config import MxConfig
from fwdmail.mail.addresses import Address
from fwdmail.policy.routing import (
    Directory,
    Meter,
    Route,
    _DomainAliases,
    _with_rule,
    resolve,
)
from fwdmail.runtime.executor import Blocking
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError


class AliasSource(Protocol):
    """Aliases kept outside the store (`policy.dnsaliases.DnsAliases`: a domain's TXT records)."""

    async def route(self, settings: store.DomainRecord, address: Address,
                    meter: Meter | None = None) -> Route | SmtpError: ...

__all__ = ["AliasSource", "DirectoryCache"]

log = logging.getLogger("fwdmail.routing")


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
    each expiring at its own time. A change drops a domain's entries (or all) in O(1), on the event loop:
    each entry carries the invalidation count at the time it was put, and one put before its domain's
    last drop (or the last clear) is stale, removed when next asked for or evicted as the oldest. Freeing
    tens of thousands of entries at once took ~12 ms (a stall every session felt); now none are freed
    at a change, and the bounds still count stale entries until they go."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[_Key, tuple[object, int, float, int]] = OrderedDict()
        self._stamp = 0  # invalidations so far
        self._cleared = 0  # the stamp of the last `clear`
        self._dropped: dict[str, int] = {}  # domain -> the stamp of its last `drop_domain` since then
        self._max_dropped = max(1000, max_entries // 10)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: _Key, now: float) -> tuple[bool, object]:
        """(True, value) if `key` is cached, not expired and not stale, else (False, None)."""
        item = self._items.get(key)
        if item is None:
            return False, None
        if item[2] <= now or item[3] < self._cleared or item[3] < self._dropped.get(key[0], 0):
            self._drop(key)
            return False, None
        self._items.move_to_end(key)
        return True, item[0]

    def put(self, key: _Key, value: object, size: int, expires: float) -> None:
        self._drop(key)
        if size > self.max_bytes:
            return
        self._items[key] = (value, size, expires, self._stamp)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: _Key) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.bytes -= item[1]

    def drop_domain(self, domain: str) -> None:
        """Make every entry of `domain` put so far stale."""
        if len(self._dropped) >= self._max_dropped:
            self.clear()
            return
        self._stamp += 1
        self._dropped[domain] = self._stamp

    def clear(self) -> None:
        """Make every entry put so far stale."""
        self._stamp += 1
        self._cleared = self._stamp
        self._dropped.clear()


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
                 negative_ttl: float = 5.0, dns: AliasSource | None = None) -> None:
        self.blocking = blocking
        self.dns = dns  # domains set `--aliases-from dns|both` are answered from DNS through it
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
    def of(cls, blocking: Blocking, cfg: MxConfig, dns: AliasSource | None = None) -> DirectoryCache:
        return cls(blocking, max_entries=cfg.directory_cache_max_entries,
                   max_bytes=cfg.directory_cache_max_bytes, negative_ttl=cfg.directory_negative_ttl,
                   dns=dns)

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
        `check_interval` seen). Raises the store's error when it cannot be read.

        A domain set `--aliases-from dns` is answered from its TXT records alone; one set `both` from
        the store first, and from DNS only when the store has no alias for the name (its catch-all
        included): the store wins."""
        domain = address.domain.lower()
        directory = await self._directory_for(domain, _exact_keys(address.local))
        settings = directory.settings.get(domain)
        source = settings.aliases_from if settings is not None else "store"
        if source == "store" or settings is None or self.dns is None:
            return resolve(directory, address, meter)
        if source == "both":
            found = resolve(directory, address, meter)
            if found is not replies.NO_SUCH_USER:
                return found
        return await self.dns.route(settings, address, meter)

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
