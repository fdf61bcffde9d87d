"""In-memory memory of "this destination already accepted this message" (or is being sent it right now),
and notice rate limits.

Untrusted input: message bytes and destination addresses, kept only as keyed SHA-256 fingerprints, in memory,
bounded in count and time; nothing here is ever written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["DeliveredMemory", "RateLimiter", "fingerprint", "message_digest", "message_hasher"]


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


class _Expiring:
    """An insertion-ordered map key -> expiry time, bounded in size; oldest entries go first."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._expiry: OrderedDict[bytes | str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        while self._expiry:
            key, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[key]

    def get(self, key: bytes | str, now: float) -> bool:
        self._purge(now)
        expires = self._expiry.get(key)
        return expires is not None and expires > now

    def put(self, key: bytes | str, now: float) -> None:
        self._expiry.pop(key, None)
        self._expiry[key] = now + self.ttl
        while len(self._expiry) > self.max_entries:
            self._expiry.popitem(last=False)

    def discard(self, key: bytes | str) -> None:
        self._expiry.pop(key, None)


class DeliveredMemory:
    """Fingerprints of (message, destination) pairs a destination accepted, for `ttl` seconds, and of
    those being forwarded right now ("in flight"), here or in another MX process.

    A forward `start`s each fingerprint it is about to send and `land`s it when the destination answered;
    a parallel session with the same message `settle`s (waits) until the fingerprints it needs are no
    longer in flight, then finds them `seen` or sends them itself. Another process's marks expire after
    `flight_ttl` seconds, so a process that died cannot hold a fingerprint for ever.
    """

    def __init__(self, ttl: float, max_entries: int, flight_ttl: float = 3600.0) -> None:
        self._map = _Expiring(ttl, max_entries)
        self._remote = _Expiring(flight_ttl, max_entries)
        self._local: set[bytes] = set()
        self._waiters: list[asyncio.Future[None]] = []
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

    def land(self, fp: bytes, delivered: bool, now: float) -> None:
        """The forward of `fp` this process started is over; `delivered`: the destination accepted it."""
        if fp not in self._local:
            return
        self._local.discard(fp)
        if delivered:
            self.remember(fp, now)
        elif self.tell is not None:
            self.tell(b"e" + fp)
        self._wake()

    async def settle(self, timeout: float) -> None:
        """Wait until a forward in flight lands (here or in another process), at most `timeout` seconds."""
        if timeout <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def apply(self, note: bytes) -> None:
        """A change another MX process made (see `tell`)."""
        kind, fp = note[:1], note[1:]
        if kind == b"i":
            self._remote.put(fp, time.monotonic())
            return
        if kind == b"r":
            self._map.put(fp, time.monotonic())
        elif kind == b"f":
            self._map.discard(fp)
        elif kind != b"e":
            return
        self._remote.discard(fp)
        self._wake()


class RateLimiter:
    """At most one event per key per `interval` seconds (keys are opaque, in memory only)."""

    def __init__(self, interval: float, max_keys: int = 10_000) -> None:
        self._map = _Expiring(interval, max_keys)

    def __len__(self) -> int:
        return len(self._map)

    def allow(self, key: str, now: float) -> bool:
        """True (and the key is counted) if no event for `key` happened in the last `interval`."""
        if self._map.get(key, now):
            return False
        self._map.put(key, now)
        return True
