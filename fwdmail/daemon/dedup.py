"""In-memory memory of "this destination already accepted this message", and notice rate limits.

Untrusted input: message bytes and destination addresses, kept only as SHA-256 fingerprints, in memory,
bounded in count and time; nothing here is ever written to disk.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["DeliveredMemory", "RateLimiter", "fingerprint", "message_digest", "message_hasher"]


message_hasher = hashlib.sha256
"""Makes the hash of `message_digest`, for a message hashed piece by piece as it arrives."""


def message_digest(message: bytes) -> bytes:
    return message_hasher(message).digest()


def fingerprint(digest: bytes, destination: str) -> bytes:
    """Fingerprint of one message (its `message_digest`) for one destination."""
    return hashlib.sha256(digest + b"\0" + destination.lower().encode("utf-8", "surrogateescape")).digest()


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
    """Fingerprints of (message, destination) pairs a destination accepted, for `ttl` seconds."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._map = _Expiring(ttl, max_entries)
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

    def apply(self, note: bytes) -> None:
        """A change another MX process made (see `tell`)."""
        kind, fp = note[:1], note[1:]
        if kind == b"r":
            self._map.put(fp, time.monotonic())
        elif kind == b"f":
            self._map.discard(fp)


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
