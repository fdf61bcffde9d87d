"""Bounded in-memory maps for short-term memory: recently used keys, keys that expire, once-per-window gates.

Untrusted input: keys derived from what clients send (keyed hashes, client networks, fingerprints); the
callers choose them, these only bound how many are held and for how long. Nothing is written anywhere.
Times are monotonic seconds passed in by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["BoundedMap", "ExpiringSet", "OncePerWindow"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """key -> value, at most `max_keys` of them: setting a key makes it the newest, and past the bound
    the oldest set is forgotten first."""

    __slots__ = ("_items", "max_keys")

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K) -> V | None:
        """The value of `key`, without making it the newest."""
        return self._items.get(key)

    def set(self, key: K, value: V) -> None:
        items = self._items
        items.pop(key, None)
        items[key] = value
        while len(items) > self.max_keys:
            items.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def drop_oldest_while(self, expired: V) -> None:
        """Forget the oldest entries while their value is at most `expired` (values that grow with
        insertion order, e.g. expiry times, so the first one kept ends the scan)."""
        items = self._items
        while items:
            key, value = next(iter(items.items()))
            if value > expired:  # type: ignore[operator]
                break
            del items[key]


class ExpiringSet:
    """Keys remembered for `ttl` seconds each, at most `max_entries` (the oldest go first)."""

    __slots__ = ("_expiry", "ttl")

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self._expiry: BoundedMap[bytes | str, float] = BoundedMap(max_entries)

    @property
    def max_entries(self) -> int:
        return self._expiry.max_keys

    def __len__(self) -> int:
        return len(self._expiry)

    def get(self, key: bytes | str, now: float) -> bool:
        """Whether `key` was put less than `ttl` seconds before `now`."""
        self._expiry.drop_oldest_while(now)
        expires = self._expiry.get(key)
        return expires is not None and expires > now

    def put(self, key: bytes | str, now: float) -> None:
        self._expiry.set(key, now + self.ttl)

    def discard(self, key: bytes | str) -> None:
        self._expiry.pop(key)


class OncePerWindow:
    """A gate letting at most one event per key through every `interval` seconds (at most `max_keys`
    keys remembered)."""

    __slots__ = ("_seen",)

    def __init__(self, interval: float, max_keys: int = 10_000) -> None:
        self._seen = ExpiringSet(interval, max_keys)

    def __len__(self) -> int:
        return len(self._seen)

    def allow(self, key: str, now: float) -> bool:
        """True (and the key is counted) if no event for `key` went through in the last `interval`."""
        if self._seen.get(key, now):
            return False
        self._seen.put(key, now)
        return True
