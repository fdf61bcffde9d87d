"""In-memory memory of "this destination already accepted this message" (or is being sent it right now).

Untrusted input: message bytes and destination addresses, kept only as keyed SHA-256 fingerprints, in memory,
bounded in count and time; nothing here is ever written to disk.
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

__all__ = ["DeliveredMemory", "fingerprint", "message_digest", "message_hasher"]


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
