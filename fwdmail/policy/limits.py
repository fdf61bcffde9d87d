"""Per-client abuse limits of the MX: concurrent connections and message rate.

Untrusted input: the client addresses the transport reports. Held in this process's memory, or with
`[cluster] redis_url` in the shared state every node reads (`SharedLimits`: keyed hashes of the client,
with TTLs). Nothing is written to disk; a restart forgets every local counter. IPv6 clients are counted
per /64 (what one subscriber gets), IPv4 and IPv4-mapped IPv6 per address. Every table is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
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
from fwdmail.runtime.sharedstate import SharedState, SharedUnavailable
from fwdmail.runtime.shares import share
from fwdmail.smtp.replies import (
    DNSBL_LISTED,
    DNSBL_LISTED_RCPT,
    RATE_LIMITED,
    STORE_UNAVAILABLE,
    TOO_MANY_CONNECTIONS,
    SmtpError,
)

__all__ = ["SHARED_UNAVAILABLE_AT_CONNECT", "AbusePolicy", "ConnectionLimiter", "Limits", "Rate",
           "RecordThrottle", "SharedLimits", "TokenBuckets", "client_key"]

log = logging.getLogger("fwdmail.limits")

SHARED_UNAVAILABLE_AT_CONNECT = SmtpError(421, "4.3.0", "Temporary local problem, try again later")


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


class SharedLimits:
    """Connections and message rate per client, shared by every node through `state`.

    Connections: each session holds a lease (a random token) in a set per client, of at most
    `max_per_client` live leases. Leases live `LEASE_TTL` seconds and are renewed every `RENEW_EVERY`
    while their session lives, so the sessions of a node that died stop counting within `LEASE_TTL`
    without a node ever having to sum the others' counts. Messages: a counter per client per minute
    (a fixed window opened by the client's first message), the whole limit shared by every node.
    """

    LEASE_TTL = 90.0
    RENEW_EVERY = 30.0

    def __init__(self, state: SharedState, cfg: AbuseConfig) -> None:
        self.state = state
        self.max_connections = cfg.max_connections_per_ip
        self.per_minute = cfg.max_messages_per_ip_per_minute
        self.held: dict[tuple[str, int], tuple[bytes, bytes]] = {}
        self._renewing: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def acquire(self, peer: tuple[str, int]) -> bool:
        """Take a lease for the session `peer` (ip, port); False if its client holds all of them."""
        if self.max_connections <= 0:
            return True
        key = self.state.key("conn", client_key(peer[0]))
        member = secrets.token_hex(12).encode()
        if not await self.state.lease(key, member, self.max_connections, self.LEASE_TTL):
            return False
        self.held[peer] = (key, member)
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._renew())
        return True

    def release(self, peer: tuple[str, int]) -> None:
        """Give the session's lease back, in the background (on failure it expires by itself)."""
        held = self.held.pop(peer, None)
        if held is None:
            return
        task = asyncio.get_running_loop().create_task(self._release(*held))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, key: bytes, member: bytes) -> None:
        with contextlib.suppress(SharedUnavailable):
            await self.state.release(key, member)

    async def _renew(self) -> None:
        while self.held:
            await asyncio.sleep(self.RENEW_EVERY)
            with contextlib.suppress(SharedUnavailable):
                await self.state.renew(list(self.held.values()), self.LEASE_TTL)

    async def rate(self, ip: str) -> Rate:
        """Count one message from `ip`'s client in its current minute."""
        if self.per_minute <= 0:
            return Rate.ALLOWED
        n = await self.state.count(self.state.key("rate", client_key(ip)), 60.0)
        if n <= self.per_minute:
            return Rate.ALLOWED
        return Rate.NEWLY_LIMITED if n == self.per_minute + 1 else Rate.LIMITED

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing


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
        self.shared = SharedLimits(ctx.shared, self.cfg) if ctx.shared is not None else None
        self.resolver = resolver or async_resolver(ctx.config.dns)
        self._counted: set[tuple[str, int]] = set()

    async def connect(self, session: SessionInfo) -> SmtpError | None:
        ip = session.peer_ip
        if self.shared is not None:
            try:
                acquired = await self.shared.acquire((ip, session.peer_port))
            except SharedUnavailable:
                return SHARED_UNAVAILABLE_AT_CONNECT
        else:
            acquired = self.limits.connections.acquire(ip)
            if acquired:
                self._counted.add((ip, session.peer_port))
        if not acquired:
            await self._record("too-many-connections", ip,
                               f"more than {self.cfg.max_connections_per_ip} concurrent connections")
            return TOO_MANY_CONNECTIONS
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
        if self.shared is not None:
            self.shared.release(key)
        self._listed.pop(key, None)
        if key in self._counted:
            self._counted.discard(key)
            self.limits.connections.release(session.peer_ip)

    async def mail(self, session: SessionInfo, tx: Transaction) -> SmtpError | None:
        if self.shared is not None:
            try:
                rate = await self.shared.rate(session.peer_ip)
            except SharedUnavailable:
                return STORE_UNAVAILABLE
        else:
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
        if self.shared is not None:  # once per window for every node together
            state, window = self.shared.state, self.limits.records.window
            try:
                if not await state.add(state.key("record", kind, client_key(ip)), window):
                    return
            except SharedUnavailable:
                return
        log.info("abuse control: %s", kind)
        try:
            await self.ctx.blocking.db(store.record_abuse, store.utcnow(), kind, ip, None, detail)
        except Exception as exc:
            log.warning("could not record an abuse event: %s", type(exc).__name__)
