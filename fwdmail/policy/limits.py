"""Per-client abuse limits of the MX, held in memory only: concurrent connections and message rate.

Untrusted input: the client addresses the transport reports. Nothing here is written anywhere; a
restart forgets every counter. IPv6 clients are counted per /64 (what one subscriber gets), IPv4 and
IPv4-mapped IPv6 per address. Every table is bounded.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

import dns.asyncresolver

from fwdmail import store
from fwdmail.auth.resolver import async_resolver
from fwdmail.config import AbuseConfig
from fwdmail.policy import dnsbl
from fwdmail.policy.clients import client_key
from fwdmail.policy.contract import Accepted, InboundPolicy, SessionInfo, Transaction
from fwdmail.policy.senderlists import SenderListCache, allowed_domains
from fwdmail.runtime.context import Context
from fwdmail.runtime.expiring import BoundedMap, OncePerWindow
from fwdmail.runtime.shares import share
from fwdmail.smtp.replies import (
    DNSBL_LISTED,
    DNSBL_LISTED_RCPT,
    RATE_LIMITED,
    TOO_MANY_CONNECTIONS,
    SmtpError,
)

__all__ = ["AbusePolicy", "ConnectionLimiter", "Limits", "Rate", "RecordThrottle", "TokenBuckets",
           "client_key"]

log = logging.getLogger("fwdmail.limits")


class ConnectionLimiter:
    """Concurrent sessions per client."""

    def __init__(self, max_per_client: int) -> None:
        self.max_per_client = max_per_client
        self._open: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        """Count a new session; False (and nothing counted) if the client is at its limit."""
        key = client_key(ip)
        n = self._open.get(key, 0)
        if n >= self.max_per_client:
            return False
        self._open[key] = n + 1
        return True

    def release(self, ip: str) -> None:
        """Forget one session of the client (one per successful `acquire`)."""
        key = client_key(ip)
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)

    def open(self, ip: str) -> int:
        return self._open.get(client_key(ip), 0)


class Rate(enum.Enum):
    ALLOWED = "allowed"
    LIMITED = "limited"
    NEWLY_LIMITED = "newly-limited"  # the first refusal since the client was last allowed


class TokenBuckets:
    """Messages per client: a token bucket of `per_minute` tokens, refilled evenly over a minute; each
    bucket is (tokens, when last seen, whether its last message was refused).

    At most `max_clients` buckets are kept; the least recently seen is forgotten first.
    """

    def __init__(self, per_minute: int, max_clients: int = 100_000) -> None:
        self.capacity = float(per_minute)
        self.refill_per_second = per_minute / 60.0
        self._buckets: BoundedMap[str, tuple[float, float, bool]] = BoundedMap(max_clients)

    def check(self, ip: str, now: float) -> Rate:
        """Take one token for a new message from `ip` at monotonic time `now`."""
        key = client_key(ip)
        tokens, at, limited = self._buckets.get(key) or (self.capacity, now, False)
        tokens = min(self.capacity, tokens + max(0.0, now - at) * self.refill_per_second)
        if tokens >= 1.0:
            self._buckets.set(key, (tokens - 1.0, now, False))
            return Rate.ALLOWED
        self._buckets.set(key, (tokens, now, True))
        return Rate.LIMITED if limited else Rate.NEWLY_LIMITED

    def __len__(self) -> int:
        return len(self._buckets)


class RecordThrottle:
    """Lets an abuse event of one kind from one client be recorded at most once per `window` seconds."""

    def __init__(self, window: float = 600.0, max_entries: int = 10_000) -> None:
        self.window = window
        self._seen = OncePerWindow(window, max_entries)

    def __len__(self) -> int:
        return len(self._seen)

    def first(self, kind: str, ip: str, now: float) -> bool:
        return self._seen.allow(f"{kind}\0{client_key(ip)}", now)


class Limits:
    """The MX's shared limit tables, built from `[abuse]`."""

    def __init__(self, cfg: AbuseConfig, processes: int = 1) -> None:
        """With several MX processes (`[mx] workers`) each enforces its share of every limit."""
        self.cfg = cfg
        self.connections = ConnectionLimiter(share(cfg.max_connections_per_ip, processes))
        self.rate = TokenBuckets(share(cfg.max_messages_per_ip_per_minute, processes))
        self.records = RecordThrottle()


class AbusePolicy(InboundPolicy):
    """The MX's per-client controls: connections and DNSBL at connect, message rate at MAIL FROM.

    Refusals are answered right away; the first of each kind per client in `RecordThrottle.window`
    is recorded as an abuse event with the client's IP (kept 7 days), nothing else is. While some domain
    has a sender allow list (`senders`), a listed client is refused at RCPT instead, for each domain
    whose allow list does not name it or its sender.
    """

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.monotonic,
                 resolver: dns.asyncresolver.Resolver | None = None,
                 senders: SenderListCache | None = None) -> None:
        self.ctx = ctx
        self.senders = senders
        self._listed: dict[tuple[str, int], str] = {}  # sessions whose DNSBL refusal waits for RCPT
        self.cfg = ctx.config.abuse
        self.clock = clock
        self.limits = Limits(self.cfg, ctx.config.mx.workers)
        self.resolver = resolver or async_resolver(ctx.config.dns)
        self._counted: set[tuple[str, int]] = set()

    async def connect(self, session: SessionInfo) -> SmtpError | None:
        ip = session.peer_ip
        if not self.limits.connections.acquire(ip):
            await self._record("too-many-connections", ip,
                               f"more than {self.cfg.max_connections_per_ip} concurrent connections")
            return TOO_MANY_CONNECTIONS
        self._counted.add((ip, session.peer_port))
        if self.cfg.dnsbl_zones:
            zone = await dnsbl.listed(self.resolver, ip, self.cfg.dnsbl_zones, self.ctx.config.dns.timeout)
            if zone is not None:
                await self._record("dnsbl", ip, f"listed in {zone}")
                if await self._may_be_allowed():
                    self._listed[(ip, session.peer_port)] = zone
                    return None
                return DNSBL_LISTED.with_text(DNSBL_LISTED.text.format(zone=zone))
        return None

    async def _may_be_allowed(self) -> bool:
        if self.senders is None:
            return False
        try:
            return await self.senders.any_allow()
        except Exception as exc:
            log.warning("cannot read the sender allow lists: %s", type(exc).__name__)
            return False

    async def rcpt(self, session: SessionInfo, tx: Transaction, recipient: Accepted) -> SmtpError | None:
        zone = self._listed.get((session.peer_ip, session.peer_port))
        if zone is None or recipient.route.domain.lower() in allowed_domains(tx):
            return None
        return DNSBL_LISTED_RCPT.with_text(DNSBL_LISTED_RCPT.text.format(zone=zone))

    def disconnect(self, session: SessionInfo) -> None:
        key = (session.peer_ip, session.peer_port)
        self._listed.pop(key, None)
        if key in self._counted:
            self._counted.discard(key)
            self.limits.connections.release(session.peer_ip)

    async def mail(self, session: SessionInfo, tx: Transaction) -> SmtpError | None:
        rate = self.limits.rate.check(session.peer_ip, self.clock())
        if rate is Rate.ALLOWED:
            return None
        if rate is Rate.NEWLY_LIMITED:
            await self._record("rate-limit", session.peer_ip,
                               f"more than {self.cfg.max_messages_per_ip_per_minute} messages a minute")
        return RATE_LIMITED

    async def _record(self, kind: str, ip: str, detail: str) -> None:
        if not self.limits.records.first(kind, ip, self.clock()):
            return
        log.info("abuse control: %s", kind)
        try:
            await self.ctx.blocking.db(store.record_abuse, store.utcnow(), kind, ip, None, detail)
        except Exception as exc:
            log.warning("could not record an abuse event: %s", type(exc).__name__)
