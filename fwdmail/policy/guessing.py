"""Budgets against guessing and against write floods, per client network and for the whole process.

Untrusted input: the client addresses the transport reports and how many invalid SRS recipients and
error-log-worthy refusals each sends. Clients are counted per network (IPv4 /24, IPv6 /64, what one
party easily holds) under a keyed hash made with a key drawn at start: no address is kept in the clear,
nothing here is written anywhere, a restart forgets every counter, and every table is bounded. With
`[cluster] redis_url` the invalid-SRS counts are those of every node (`SrsGuard.shared`): keyed hashes
under the cluster's key, each counter living one window.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter

from fwdmail.policy.clients import network
from fwdmail.runtime.expiring import BoundedMap
from fwdmail.runtime.sharedstate import SharedState
from fwdmail.smtp.replies import SmtpError

__all__ = ["ClientKeys", "RowGate", "SrsGuard", "Window", "network"]

_MAX_CLIENTS = 100_000
_MAX_REPLIES = 50  # distinct replies counted one by one; the rest are lumped by code


def _tally(counts: Counter[tuple[int, str, str]], error: SmtpError) -> None:
    key = (error.code, error.enhanced_code, error.text)
    if key not in counts and len(counts) >= _MAX_REPLIES:
        key = (error.code, error.enhanced_code, "(other replies)")
    counts[key] += 1


class ClientKeys:
    """Keyed hashes of client networks, under a key that lives only in this process's memory."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def __call__(self, ip: str) -> bytes:
        return hashlib.blake2b(network(ip).encode("utf-8", "replace"), key=self._key, digest_size=16).digest()


class Window:
    """Counts per key in fixed windows of `length` seconds, each opened by the key's first count.

    At most `max_keys` keys are kept (the least recently counted is forgotten first), so memory is
    bounded whatever the number of clients; forgetting one only gives it a fresh budget, which the
    process-wide budget still bounds.
    """

    def __init__(self, limit: int, length: float, max_keys: int = _MAX_CLIENTS) -> None:
        self.limit = limit
        self.length = length
        self._counts: BoundedMap[bytes, tuple[float, int]] = BoundedMap(max_keys)

    def __len__(self) -> int:
        return len(self._counts)

    def _current(self, key: bytes, now: float) -> tuple[float, int]:
        start, count = self._counts.get(key) or (now, 0)
        return (now, 0) if now - start >= self.length else (start, count)

    def full(self, key: bytes, now: float) -> bool:
        """Whether `key` has used its whole budget in its current window."""
        return self._current(key, now)[1] >= self.limit

    def count(self, key: bytes, now: float) -> bool:
        """Count one for `key`; True if that used up its budget."""
        start, count = self._current(key, now)
        self._counts.set(key, (start, count + 1))
        return count + 1 >= self.limit

    def ends(self, key: bytes, now: float) -> float:
        """When the current window of `key` ends (`now` if it has none)."""
        start, count = self._current(key, now)
        return start + self.length if count else now


_ALL = b"\0all"


class SrsGuard:
    """Invalid SRS recipients, counted per client network and for the whole process.

    Each refused SRS recipient (bad hash, expired, malformed) counts once for its client and once in
    total. A client past `per_client` in a window has every further RCPT of that session refused, and
    its SRS recipients tempfailed until its window ends; past `total`, every SRS recipient from anyone
    is tempfailed until the process-wide window ends, the correct ones too: the hash is not even
    checked, so no answer tells a right guess from a wrong one.
    """

    def __init__(self, per_client: int, total: int, window: float, keys: ClientKeys,
                 shared: SharedState | None = None) -> None:
        """With `shared`, the budgets are those of every node (`check` and `count` use it)."""
        self.keys = keys
        self.clients = Window(per_client, window)
        self.all = Window(total, window, max_keys=1)
        self.shared = shared
        self._sessions: BoundedMap[tuple[str, int], bool] = BoundedMap(_MAX_CLIENTS)

    def session_blocked(self, peer: tuple[str, int]) -> bool:
        return peer in self._sessions

    def locked(self, ip: str, now: float) -> bool:
        """Whether SRS recipients from `ip` are tempfailed now (its budget, or everyone's, is used up)."""
        return self.all.full(_ALL, now) or self.clients.full(self.keys(ip), now)

    def invalid(self, peer: tuple[str, int], now: float) -> None:
        """Count one invalid SRS recipient from the session `peer` (ip, port)."""
        self.all.count(_ALL, now)
        if self.clients.count(self.keys(peer[0]), now):
            self._sessions.set(peer, True)

    def end_session(self, peer: tuple[str, int]) -> None:
        self._sessions.pop(peer)

    async def check(self, ip: str, now: float) -> bool:
        """`locked`, across nodes when shared (raises `SharedUnavailable` when that state is gone)."""
        if self.shared is None:
            return self.locked(ip, now)
        total = await self.shared.read(self.shared.key("srs-all"))
        if total >= self.all.limit:
            return True
        return await self.shared.read(self.shared.key("srs", network(ip))) >= self.clients.limit

    async def count(self, peer: tuple[str, int], now: float) -> None:
        """`invalid`, across nodes when shared (raises `SharedUnavailable` when that state is gone)."""
        if self.shared is None:
            self.invalid(peer, now)
            return
        await self.shared.count(self.shared.key("srs-all"), self.all.length)
        if await self.shared.count(self.shared.key("srs", network(peer[0])), self.clients.length) \
                >= self.clients.limit:
            self._sessions.set(peer, True)


class RowGate:
    """Which error-log rows are written one by one: at most `per_client` a minute per client network
    and `total` a minute in all. The rest, and the refusals no row may name, are counted by reply."""

    def __init__(self, per_client: int, total: int, keys: ClientKeys) -> None:
        self.keys = keys
        self.per_client = per_client
        self.total = total
        self.start = 0.0
        self._written = 0
        self._clients: dict[bytes, int] = {}
        self.withheld: Counter[tuple[int, str, str]] = Counter()
        self.not_hosted: Counter[tuple[int, str, str]] = Counter()

    def _roll(self, now: float) -> None:
        if now - self.start >= 60.0:
            self.start, self._written = now, 0
            self._clients.clear()

    def admit(self, ip: str | None, error: SmtpError, now: float) -> bool:
        """True if a row for `error` from `ip` (None: no client known) may be written now."""
        self._roll(now)
        key = self.keys(ip) if ip is not None else None
        used = self._clients.get(key, 0) if key is not None else 0
        if self._written >= self.total or used >= self.per_client:
            _tally(self.withheld, error)
            return False
        self._written += 1
        if key is not None:
            self._clients[key] = used + 1
        return True

    def count(self, error: SmtpError, now: float) -> None:
        """Count a refusal of something not hosted here, which no row may name."""
        self._roll(now)
        _tally(self.not_hosted, error)

    def take(self) -> tuple[Counter[tuple[int, str, str]], Counter[tuple[int, str, str]]]:
        """The counts so far (withheld, not hosted), starting both afresh."""
        out = self.withheld, self.not_hosted
        self.withheld, self.not_hosted = Counter(), Counter()
        return out
