"""Aliases from DNS: a domain set `--aliases-from dns|both` publishes its aliases in `forward-email=` TXT
records (Forward Email's syntax, `mail.forwardemail_txt`), read at RCPT time.

Untrusted input: the TXT answers of whatever DNS server the resolver asks (the domain's owner controls
them), including regex patterns matched on the event loop. Only domains verified in the store (the
`fwdmail-verification` record) are served, so nobody can point a domain at the MX and use it without
its owner's consent. Answers are read through the daemon's resolver (`auth.lookup`) and cached per
domain for their TTL (at least `MIN_TTL`, at most `auth.dnsmemo.MAX_TTL`; "no records" for the
negative TTL), in a cache bounded in entries and estimated bytes. A DNS failure (SERVFAIL, timeout) is
`DNS_ALIASES_TEMPFAIL` (451 4.4.3), never a 5xx, and is not cached (it is logged once a minute per
domain at most). Regex entries pass the same backtracking refusal as `alias add` (`routing.slow_probe`,
off the loop, remembered per pattern); a pattern that fails it is skipped like any bad entry; at most
`MAX_REGEX` are read per domain, and a load checks new patterns for at most `PROBE_SECONDS` (the rest
wait for a later load). Parsing runs off the loop too (`offload`).
Nothing here logs an address: counts and the domain only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import regex

from fwdmail import store
from fwdmail.auth.dnsmemo import MAX_TTL
from fwdmail.auth.lookup import Offload, TempFail, lookup
from fwdmail.mail.addresses import Address, parse_webhook_url
from fwdmail.mail.forwardemail_txt import TxtAliases, parse_records
from fwdmail.policy.directory import _PATTERN_BYTES, _Lru, _record_bytes
from fwdmail.policy.routing import Directory, Meter, Route, _DomainAliases, resolve, slow_probe
from fwdmail.runtime.expiring import BoundedMap
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError

__all__ = ["DnsAliases", "accept_webhook_url"]

log = logging.getLogger("fwdmail.routing")

MIN_TTL = 1.0  # seconds a positive answer is kept at least, whatever its TTL
MAX_REGEX = 50  # regex entries read per domain; more are skipped
PROBE_SECONDS = 0.5  # CPU seconds one load may spend checking new patterns for backtracking
_PROBED_PATTERNS = 10_000  # patterns whose backtracking check is remembered
_WARN_EVERY = 60.0  # seconds between two log lines about one domain's DNS failing

# How a URL destination is read: as `alias add` reads one (https:// only; a bad one is skipped and
# counted). None would refuse every URL entry (counted; an alias left with only URLs answers 550 rather
# than fall to the catch-all).
accept_webhook_url: Callable[[str], str] | None = parse_webhook_url


@dataclass(frozen=True)
class _Entry:
    """What is cached of one domain's records."""

    aliases: _DomainAliases
    skipped: int


def _size(entry: _Entry) -> int:
    a = entry.aliases
    size = 300 + sum(_record_bytes(r) for r in a.exact.values())
    size += sum(_PATTERN_BYTES + _record_bytes(r) for _, r in a.regex)
    return size + (_record_bytes(a.catch_all) if a.catch_all is not None else 0)


def _build(texts: list[bytes], settings: store.DomainRecord, probed: Callable[[str], bool | None],
           ) -> tuple[_Entry, TxtAliases, dict[str, bool]]:
    """The routing table of one domain's TXT `texts`: parsed, regex patterns compiled and checked for
    backtracking (`probed` tells those checked already: True for refused; the patterns checked now are
    returned). Runs off the loop."""
    parsed = parse_records(texts, settings.name, settings.account_email, accept_webhook_url)
    exact: dict[str, store.AliasRecord] = {}
    rules: list[tuple[regex.Pattern[str], store.AliasRecord]] = []
    catch_all = None
    skipped = parsed.skipped
    learned: dict[str, bool] = {}
    deadline = time.monotonic() + PROBE_SECONDS
    for alias in parsed.aliases:
        if alias.kind == "exact":
            exact[alias.local] = alias
        elif alias.kind == "catch-all":
            catch_all = alias
        elif len(rules) >= MAX_REGEX:
            skipped += 1
        else:
            refused = probed(alias.local)
            if refused is None and time.monotonic() > deadline:
                refused = True  # not checked in this load's time: skipped now, checked on a later load
            elif refused is None:
                try:
                    refused = slow_probe(alias.local) is not None
                except (regex.error, RecursionError, OverflowError):
                    refused = True
                learned[alias.local] = refused
            if refused:
                skipped += 1
            else:
                rules.append((regex.compile(alias.local, regex.IGNORECASE), alias))
    return _Entry(_DomainAliases(exact, rules, catch_all), skipped), parsed, learned


class DnsAliases:
    """The DNS side of routing for domains set `--aliases-from dns|both`: `route` answers one recipient
    from the domain's records, cached (see the module docstring). `offload` runs the regex checks off
    the loop (the executor's `cpu`). Times are seconds; `clock` is monotonic."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, offload: Offload,
                 max_entries: int = 10_000, max_bytes: int = 8 * 1024 * 1024, negative_ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.resolver = resolver
        self.offload = offload
        self.negative_ttl = negative_ttl
        self.clock = clock
        self._cache = _Lru(max_entries, max_bytes)
        self._probed: BoundedMap[str, bool] = BoundedMap(_PROBED_PATTERNS)
        self._warned: BoundedMap[str, float] = BoundedMap(max_entries)  # domain -> when last logged
        self._loading: dict[tuple[str, str], asyncio.Task[_Entry | SmtpError]] = {}
        self.lookups = 0  # DNS questions asked (for tests and metrics)

    @property
    def entries(self) -> int:
        return len(self._cache)

    @property
    def bytes(self) -> int:
        return self._cache.bytes

    async def route(self, settings: store.DomainRecord, address: Address,
                    meter: Meter | None = None) -> Route | SmtpError:
        """`resolve` for `address` against the records of its domain `settings` (hosted, set to take
        aliases from DNS): a refusal when the domain is not verified or DNS fails for now."""
        if settings.verified_at is None:
            return replies.DNS_ALIASES_UNVERIFIED
        entry = await self._entry(settings)
        if isinstance(entry, SmtpError):
            return entry
        domain = settings.name
        return resolve(Directory({domain: entry.aliases}, 0, {domain: settings}), address, meter)

    async def _entry(self, settings: store.DomainRecord) -> _Entry | SmtpError:
        key = (settings.name, settings.account_email)
        found, cached = self._cache.get(key, self.clock())
        if found and isinstance(cached, _Entry):
            return cached
        task = self._loading.get(key)
        if task is None:  # one question per domain at a time, however many RCPTs wait for it
            task = asyncio.get_running_loop().create_task(self._load(settings, key))
            self._loading[key] = task
            task.add_done_callback(lambda t: self._loaded(key, t))
        return await asyncio.shield(task)

    def _loaded(self, key: tuple[str, str], task: asyncio.Task[_Entry | SmtpError]) -> None:
        self._loading.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter was cancelled

    async def _load(self, settings: store.DomainRecord, key: tuple[str, str]) -> _Entry | SmtpError:
        self.lookups += 1
        records, expires = await lookup(self.resolver, settings.name, "TXT")
        if isinstance(records, TempFail):
            now = self.clock()
            last = self._warned.get(settings.name)
            if last is None or now - last >= _WARN_EVERY:
                self._warned.set(settings.name, now)
                log.warning("the aliases of %s cannot be read from DNS for now", settings.name)
            return replies.DNS_ALIASES_TEMPFAIL
        texts = [b"".join(r.strings) for r in records if hasattr(r, "strings")]
        entry, parsed, learned = await self.offload(_build, texts, settings, self._probed.get)
        for pattern, refused in learned.items():
            self._probed.set(pattern, refused)
        if entry.skipped or parsed.webhooks_refused:
            log.info("aliases of %s from DNS: %d read, %d bad entries skipped, %d webhook URLs refused",
                     settings.name, len(parsed.aliases), entry.skipped, parsed.webhooks_refused)
        now = self.clock()
        ttl = min(max(expires - time.time(), MIN_TTL), MAX_TTL) if records else self.negative_ttl
        if ttl > 0:
            self._cache.put(key, entry, _size(entry), now + ttl)
        return entry
