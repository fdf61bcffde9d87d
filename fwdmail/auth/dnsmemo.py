"""DNS answers and the SPF results made from them, remembered until the answers expire.

dnspython's cache already keeps answers for their TTL, but asking it still costs a name parse, a
resolution object and a coroutine per lookup, and pyspf re-evaluates the same record for every message
of a busy sender. The memo skips both while every answer involved is fresh, so nothing is answered
that the DNS cache would not have answered too. Only positive answers are kept (a name that appears
is seen at once); nothing outlives MAX_TTL. SPF results are filed under a keyed hash of client IP,
envelope sender and HELO, so they name no sender or client in the clear; answers are filed by DNS name,
as in any DNS cache. All of it lives in memory only, in the process that asked.
"""

from __future__ import annotations

import hashlib
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

Answer = tuple[list[Any], float]  # records, and the time they expire

MAX_ENTRIES = 10_000
MAX_TTL = 300.0


class ExpiringMemo(Generic[K, V]):
    """A bounded map whose entries vanish at their expiry time; when full, the oldest entry goes."""

    def __init__(self, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.time) -> None:
        self._items: dict[K, tuple[float, V]] = {}
        self._max = max_entries
        self._clock = clock

    def get(self, key: K) -> V | None:
        found = self._items.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._items[key]
            return None
        return found[1]

    def put(self, key: K, value: V, expires: float) -> None:
        """Keep `value` until `expires` (a `clock` time), at most MAX_TTL from now; past times are ignored."""
        now = self._clock()
        expires = min(expires, now + MAX_TTL)
        if expires <= now:
            return
        self._items.pop(key, None)
        while len(self._items) >= self._max:
            del self._items[next(iter(self._items))]
        self._items[key] = (expires, value)

    def __len__(self) -> int:
        return len(self._items)


class Memo:
    """The answers (by lowercased name and type) and SPF results of one resolver."""

    def __init__(self, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.time) -> None:
        self.answers: ExpiringMemo[tuple[str, str], Answer] = ExpiringMemo(max_entries, clock)
        self.spf: ExpiringMemo[bytes, object] = ExpiringMemo(max_entries, clock)
        self._salt = os.urandom(16)

    def spf_key(self, client_ip: str, mail_from: str, helo: str) -> bytes:
        """The opaque key of one SPF question."""
        text = "\0".join((client_ip, mail_from, helo)).encode("utf-8", "surrogateescape")
        return hashlib.blake2b(text, key=self._salt, digest_size=16).digest()


_memos: weakref.WeakKeyDictionary[object, Memo] = weakref.WeakKeyDictionary()


def memo_for(resolver: object) -> Memo:
    """The memo of `resolver` (made on first use; it goes when the resolver does)."""
    memo = _memos.get(resolver)
    if memo is None:
        memo = _memos[resolver] = Memo()
    return memo
