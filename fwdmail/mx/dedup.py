"""Memory of "this destination already accepted this message" (or is being sent it right now): in this
process (`DeliveredMemory`) and, with `[cluster] redis_url`, across nodes (`SharedDelivered`).

Untrusted input: message bytes and destination addresses, kept only as keyed SHA-256 fingerprints (in the
shared state hashed once more under the cluster's key), bounded in count and time, every shared key with
a TTL; nothing here is ever written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fwdmail.runtime.expiring import ExpiringSet
from fwdmail.runtime.sharedstate import SharedState

__all__ = ["DeliveredMemory", "SharedDelivered", "fingerprint", "message_digest", "message_hasher"]


message_hasher = hashlib.sha256
"""Makes the hash of `message_digest`, for a message hashed piece by piece as it arrives."""


def message_digest(message: bytes) -> bytes:
    return message_hasher(message).digest()


def fingerprint(digest: bytes, destination: str, key: bytes = b"") -> bytes:
    """Fingerprint of one message (its `message_digest`) for one destination, keyed with `key` (the MX
    passes one derived from its secret, the same in every MX process), so that the memory cannot tell
    whether a given message went to a given address without the key."""
    data = digest + b"\0" + destination.lower().encode("utf-8", "surrogateescape")
    return hmac.new(key, data, hashlib.sha256).digest()


@dataclass
class _Waiter:
    """A session waiting for forwards in flight of `fps`; `delivered`: those that landed accepted."""

    fps: frozenset[bytes]
    woken: asyncio.Future[None]
    delivered: set[bytes] = field(default_factory=set)


class DeliveredMemory:
    """Fingerprints of (message, destination) pairs a destination accepted, for `ttl` seconds, and of
    those being forwarded right now ("in flight"), here or in another MX process.

    A forward `start`s each fingerprint it is about to send and `land`s it when the destination answered;
    a parallel session with the same message `settle`s (waits) until the fingerprints it needs land, and
    learns which were delivered. Only that session learns it: what is `remember`ed (so that a later retry
    is not delivered twice) is the MX's decision. Another process's marks expire after `flight_ttl`
    seconds, so a process that died cannot hold a fingerprint for ever.
    """

    def __init__(self, ttl: float, max_entries: int, flight_ttl: float = 3600.0) -> None:
        self._map = ExpiringSet(ttl, max_entries)
        self._remote = ExpiringSet(flight_ttl, max_entries)
        self._local: set[bytes] = set()
        self._waiters: list[_Waiter] = []
        self.tell: Callable[[bytes], None] | None = None
        """Set when MX processes share the memory: called with each change, for the other processes."""

    def __len__(self) -> int:
        return len(self._map)

    def seen(self, fp: bytes, now: float) -> bool:
        return self._map.get(fp, now)

    def remember(self, fp: bytes, now: float) -> None:
        self._map.put(fp, now)
        if self.tell is not None:
            self.tell(b"r" + fp)

    def forget(self, fp: bytes) -> None:
        if self.tell is not None and self._map.get(fp, time.monotonic()):
            self.tell(b"f" + fp)
        self._map.discard(fp)

    def flying(self, fp: bytes, now: float) -> bool:
        """Whether a session (in this process or another) is forwarding this fingerprint now."""
        return fp in self._local or self._remote.get(fp, now)

    def start(self, fp: bytes) -> None:
        """This process starts forwarding `fp` (it must not be `flying`)."""
        self._local.add(fp)
        if self.tell is not None:
            self.tell(b"i" + fp)

    def land(self, fp: bytes, delivered: bool) -> None:
        """The forward of `fp` this process started is over; `delivered`: the destination accepted it."""
        if fp not in self._local:
            return
        self._local.discard(fp)
        if self.tell is not None:
            self.tell((b"d" if delivered else b"e") + fp)
        self._landed(fp, delivered)

    async def settle(self, fps: list[bytes], timeout: float) -> set[bytes]:
        """Wait until one of `fps` in flight lands (here or in another process), at most `timeout`
        seconds; the fingerprints among them that landed delivered meanwhile."""
        waiter = _Waiter(frozenset(fps), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter.woken, max(timeout, 0))
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return waiter.delivered

    def _landed(self, fp: bytes, delivered: bool) -> None:
        for w in self._waiters:
            if fp in w.fps:
                if delivered:
                    w.delivered.add(fp)
                if not w.woken.done():
                    w.woken.set_result(None)

    def apply(self, note: bytes) -> None:
        """A change another MX process made (see `tell`)."""
        kind, fp = note[:1], note[1:]
        if kind == b"r":
            self._map.put(fp, time.monotonic())
        elif kind == b"f":
            self._map.discard(fp)
        elif kind == b"i":
            self._remote.put(fp, time.monotonic())
        elif kind in (b"d", b"e"):
            self._remote.discard(fp)
            self._landed(fp, kind == b"d")


class SharedDelivered:
    """The retry memory every node shares: what matters across nodes is "this digest was delivered to
    this destination" (kept `ttl` seconds after a deferral, so a sender's retry on another node skips the
    destinations that accepted) and "a node is forwarding it now" (a mark of at most `flight_ttl`
    seconds, turned into "delivered" when it lands accepted, so a session on another node waiting on it
    learns the outcome). Methods raise `SharedUnavailable` when the shared state is gone."""

    POLL = 0.2

    def __init__(self, state: SharedState, ttl: float, flight_ttl: float) -> None:
        self.state = state
        self.ttl = ttl
        self.flight_ttl = flight_ttl

    def _done(self, fp: bytes) -> bytes:
        return self.state.key("dlv", fp)

    def _flight(self, fp: bytes) -> bytes:
        return self.state.key("fly", fp)

    async def seen(self, fps: list[bytes]) -> set[bytes]:
        """Those of `fps` a destination accepted (remembered after a deferral)."""
        values = await self.state.get_many([self._done(fp) for fp in fps])
        return {fp for fp, v in zip(fps, values, strict=True) if v is not None}

    async def claim(self, fp: bytes, deadline: float) -> str:
        """"mine" (this session forwards `fp` now), "delivered" (a session on some node just forwarded
        it, accepted), or "busy" (one still is at `deadline`, a monotonic time)."""
        key = self._flight(fp)
        while True:
            if await self.state.add(key, self.flight_ttl):
                return "mine"
            mark = await self.state.get(key)
            if mark == b"d":
                return "delivered"
            if time.monotonic() >= deadline:
                return "busy"
            if mark is not None:  # None: it landed undelivered meanwhile, so try to take it at once
                await asyncio.sleep(min(self.POLL, max(0.0, deadline - time.monotonic())))

    async def land(self, fp: bytes, delivered: bool) -> None:
        """The forward of `fp` this session claimed is over."""
        if delivered:
            await self.state.put(self._flight(fp), self.flight_ttl, b"d")
        else:
            await self.state.delete(self._flight(fp))

    async def remember(self, fps: list[bytes]) -> None:
        for fp in fps:
            await self.state.put(self._done(fp), self.ttl)

    async def forget(self, fps: list[bytes]) -> None:
        await self.state.delete(*(self._done(fp) for fp in fps))
