"""Alias resolution: which destinations a recipient of a hosted domain forwards to.

Untrusted input: recipient addresses from RCPT TO (already parsed by `fwdmail.addresses`). Resolution is
pure and in memory, against a `Directory` snapshot that `DirectoryCache` reloads when the store's
directory version changes (CLI edits are seen within `check_interval` seconds, without a restart).
Regex aliases are admin-written patterns matched against client-chosen local parts, so they run with the
`regex` module under a time budget: a pattern that backtracks catastrophically costs one 451, not the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import regex

from .. import store
from ..addresses import Address, AddressError, parse_address
from . import replies
from .executor import Blocking
from .replies import SmtpError

__all__ = ["MAX_DESTINATIONS", "Directory", "DirectoryCache", "Route", "resolve"]

log = logging.getLogger("fwdmail.routing")

MAX_DESTINATIONS = 10
_GROUP_REF = re.compile(r"\$(\d)")
_REGEX_BUDGET = 0.1  # seconds the regex aliases of a domain may take, together, to match one local part


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
                entry.exact[a.local.lower()] = a
            elif a.kind == "regex":
                try:
                    entry.regex.append((regex.compile(a.local, regex.IGNORECASE), a))
                except regex.error:
                    log.warning("a regex alias of %s does not compile; ignored", a.domain)
            elif a.kind == "catch-all":
                by_domain[a.domain] = _DomainAliases(entry.exact, entry.regex, a)
        return cls(by_domain, version, settings)

    def hosts(self, domain: str) -> bool:
        return domain.lower() in self.domains


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


def _match(aliases: _DomainAliases, local: str) -> tuple[store.AliasRecord, list[str]] | None:
    """Exact, then plus-addressing (tag kept), then regex ($n substituted), then catch-all.

    Raises TimeoutError when the regex aliases together take longer than `_REGEX_BUDGET`."""
    key = local.lower()
    hit = aliases.exact.get(key)
    if hit is not None:
        return hit, list(hit.destinations)
    base, plus, tag = local.partition("+")
    if plus and base and tag:
        hit = aliases.exact.get(base.lower())
        if hit is not None:
            return hit, [_with_tag(d, tag) for d in hit.destinations]
    deadline = time.monotonic() + _REGEX_BUDGET
    for pattern, alias in aliases.regex:
        m = pattern.search(local, timeout=max(deadline - time.monotonic(), 0.001))
        if m is not None:
            return alias, [_substitute(d, m) for d in alias.destinations]
    if aliases.catch_all is not None:
        return aliases.catch_all, list(aliases.catch_all.destinations)
    return None


def resolve(directory: Directory, address: Address) -> Route | SmtpError:
    """The route of `address`, or the SMTP error to answer its RCPT with."""
    aliases = directory.domains.get(address.domain.lower())
    settings = directory.settings.get(address.domain.lower())
    if aliases is None:
        return replies.RELAY_DENIED
    try:
        found = _match(aliases, address.local)
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


class DirectoryCache:
    """The current `Directory`, re-checked against the store at most every `check_interval` seconds."""

    def __init__(self, blocking: Blocking, check_interval: float = 0.2,
                 clock: Callable[[], float] = time.monotonic, max_wait: float = 2.0) -> None:
        self.blocking = blocking
        self.check_interval = check_interval
        self.clock = clock
        self.max_wait = max_wait
        self._directory: Directory | None = None
        self._checked = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

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
