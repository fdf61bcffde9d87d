"""Per-domain sender allow and deny lists: patterns, matching, their cache, and the MX policy.

Untrusted input: the envelope sender and the client's IP (matched against the lists, never logged), and
the patterns an admin types (`parse_pattern`: an address, `@domain`, an IP or a CIDR). A denied sender
gets 550 5.7.1 at RCPT, once the recipient's domain is known; an allowed one (allow wins over deny) is
noted in the transaction, so the DNSBL and sender-authentication checks do not refuse it for that
domain. Lists are read per domain and cached, bounded in entries; a domain's entry is dropped when the
store's change log names it (polled at most every `check_interval` seconds), as the alias directory is.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fwdmail import store
from fwdmail.mail.addresses import AddressError, normalize_address, normalize_domain
from fwdmail.policy.contract import Accepted, InboundPolicy, SessionInfo, Transaction
from fwdmail.runtime.context import Context
from fwdmail.runtime.executor import Blocking
from fwdmail.smtp.replies import SENDER_DENIED, SmtpError

__all__ = ["SenderListCache", "SenderListPolicy", "SenderLists", "allowed_domains", "parse_pattern"]

log = logging.getLogger("fwdmail.senderlists")

_ALLOWED_NOTE = "fwdmail.senderlists.allowed"
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_pattern(value: str) -> str:
    """The pattern as stored: a lowercase address, `@domain` (A-label), an IP or a CIDR network.
    Raises AddressError with a message fit to print."""
    text = value.strip()
    if not text:
        raise AddressError("empty sender pattern")
    if text.startswith("@"):
        return "@" + normalize_domain(text[1:])
    if "@" in text:
        return normalize_address(text).lower()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise AddressError(f"invalid sender pattern {value!r}: write an address, @domain, an IP or a CIDR"
                           ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None and (
            net.prefixlen >= 96):
        net = ipaddress.ip_network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def _client_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True)
class _List:
    addresses: frozenset[str]
    domains: frozenset[str]
    networks: tuple[_Network, ...]

    @classmethod
    def of(cls, patterns: Iterable[str]) -> _List:
        addresses, domains, networks = set(), set(), []
        for p in patterns:
            if p.startswith("@"):
                domains.add(p[1:])
            elif "@" in p:
                addresses.add(p)
            else:
                try:
                    networks.append(ipaddress.ip_network(p, strict=False))
                except ValueError:
                    continue
        return cls(frozenset(addresses), frozenset(domains), tuple(networks))

    def matches(self, sender: str, ip: str) -> bool:
        if sender:
            low = sender.lower()
            if low in self.addresses or low.rpartition("@")[2] in self.domains:
                return True
        addr = _client_ip(ip) if self.networks else None
        return addr is not None and any(addr.version == n.version and addr in n for n in self.networks)

    def __len__(self) -> int:
        return len(self.addresses) + len(self.domains) + len(self.networks)


@dataclass(frozen=True)
class SenderLists:
    """One domain's compiled lists."""

    allow: _List
    deny: _List

    @classmethod
    def of(cls, allow: Iterable[str], deny: Iterable[str]) -> SenderLists:
        return cls(_List.of(allow), _List.of(deny))

    def verdict(self, sender: str, ip: str) -> str:
        """"allow", "deny" or "" (neither list names the sender or the client)."""
        if self.allow.matches(sender, ip):
            return "allow"
        return "deny" if self.deny.matches(sender, ip) else ""


_EMPTY = SenderLists.of((), ())


class SenderListCache:
    """Each domain's `SenderLists`, read through the executor and kept until the store's change log
    names the domain; at most `max_entries` patterns in all (least recently used dropped first)."""

    def __init__(self, blocking: Blocking, check_interval: float = 0.2, max_entries: int = 200_000,
                 clock: Callable[[], float] = time.monotonic, allow_ttl: float = 5.0) -> None:
        self.blocking = blocking
        self.check_interval = check_interval
        self.max_entries = max_entries
        self.clock = clock
        self.allow_ttl = allow_ttl
        self._items: OrderedDict[str, SenderLists | None] = OrderedDict()
        self._size = 0
        self._version: int | None = None
        self._polled = float("-inf")
        self._epoch = 0
        self._any_allow: tuple[float, bool] = (float("-inf"), False)

    def _drop(self, domain: str) -> None:
        lists = self._items.pop(domain, None)
        if lists is not None:
            self._size -= 1 + len(lists.allow) + len(lists.deny)

    async def _check(self) -> None:
        if self.clock() - self._polled < self.check_interval:
            return
        self._polled = self.clock()
        version, changed = await self.blocking.db(store.directory_changes, self._version)
        if self._version is not None and version != self._version:
            self._epoch += 1
            self._any_allow = (float("-inf"), False)
            if changed is None:
                self._items.clear()
                self._size = 0
            for name in changed or ():
                self._drop(name)
        self._version = version

    async def get(self, domain: str) -> SenderLists | None:
        """The lists of the hosted `domain` (None: not hosted). Raises the store's error."""
        await self._check()
        if domain in self._items:
            self._items.move_to_end(domain)
            return self._items[domain]
        epoch = self._epoch
        found = await self.blocking.db(store.domain_sender_rules, domain)
        lists = None if found is None else (SenderLists.of(*found) if found != ((), ()) else _EMPTY)
        if epoch == self._epoch:
            self._drop(domain)
            self._items[domain] = lists
            self._size += 1 + (len(lists.allow) + len(lists.deny) if lists else 0)
            while self._size > self.max_entries and self._items:
                self._drop(next(iter(self._items)))
        return lists

    async def any_allow(self) -> bool:
        """Whether some domain has an allow list (re-read at most every `allow_ttl` seconds)."""
        at, known = self._any_allow
        if self.clock() - at < self.allow_ttl:
            return known
        known = await self.blocking.db(store.any_allow_rules)
        self._any_allow = (self.clock(), known)
        return known


def allowed_domains(tx: Transaction) -> frozenset[str]:
    """The recipient domains whose allow list names this transaction's sender or client."""
    found = tx.notes.get(_ALLOWED_NOTE)
    return frozenset(found) if isinstance(found, set) else frozenset()


class SenderListPolicy(InboundPolicy):
    """At RCPT: refuse a sender the recipient domain denies; note one it allows (see `allowed_domains`).
    A list that cannot be read lets the recipient through unlisted (the alias lookup itself needs the
    store, so that case is rare and brief)."""

    def __init__(self, ctx: Context, cache: SenderListCache | None = None) -> None:
        self.cache = cache or SenderListCache(ctx.blocking)

    async def rcpt(self, session: SessionInfo, tx: Transaction, recipient: Accepted) -> SmtpError | None:
        domain = recipient.route.domain.lower()
        if recipient.route.settings is None:  # a bounce to our SRS address: no hosted domain's lists
            return None
        try:
            lists = await self.cache.get(domain)
        except Exception as exc:
            log.warning("cannot read the sender lists: %s", type(exc).__name__)
            return None
        if lists is None:
            return None
        verdict = lists.verdict(tx.sender, session.peer_ip)
        if verdict == "deny":
            return SENDER_DENIED
        if verdict == "allow":
            allowed = tx.notes.setdefault(_ALLOWED_NOTE, set())
            if isinstance(allowed, set):
                allowed.add(domain)
        return None
