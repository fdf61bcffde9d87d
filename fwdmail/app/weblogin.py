"""Failed web logins, counted as for submission: per client network (IPv4 /24, IPv6 /64), per account
name and in total, in memory only. While a count is full, a login is refused before its password is
hashed, so guessing costs no CPU.

Untrusted input: the client's address and the login name a web client typed. Both are kept only as keyed
hashes (a key made at start), never written anywhere."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict, deque

from fwdmail.app.httplog import client_network

__all__ = ["LoginLimits", "client_net"]

# The defaults of `[http] login_failures_*`.
PER_CLIENT_PER_HOUR = 20
PER_ACCOUNT_PER_HOUR = 10
TOTAL_PER_MINUTE = 60
MAX_KEYS = 10_000


def client_net(address: str) -> str:
    """The network a client is counted by: its IPv4 /24 or IPv6 /64 ("" for no address)."""
    return client_network(address, v6_prefix=64)


class _Window:
    """At most `limit` events per key in any `seconds`; at most `max_keys` keys (least recent dropped)."""

    def __init__(self, limit: int, seconds: float, max_keys: int) -> None:
        self.limit = limit
        self.seconds = seconds
        self.max_keys = max_keys
        self._times: OrderedDict[bytes, deque[float]] = OrderedDict()

    def _recent(self, key: bytes, now: float) -> deque[float]:
        times = self._times.get(key) or deque(maxlen=self.limit)
        while times and times[0] <= now - self.seconds:
            times.popleft()
        return times

    def full(self, key: bytes, now: float) -> bool:
        return len(self._recent(key, now)) >= self.limit

    def add(self, key: bytes, now: float) -> None:
        times = self._recent(key, now)
        self._times.pop(key, None)
        self._times[key] = times
        times.append(now)
        while len(self._times) > self.max_keys:
            self._times.popitem(last=False)


class LoginLimits:
    """Failed web logins per client network, per account name and in total (monotonic seconds)."""

    def __init__(self, per_client_per_hour: int = PER_CLIENT_PER_HOUR,
                 per_account_per_hour: int = PER_ACCOUNT_PER_HOUR, total_per_minute: int = TOTAL_PER_MINUTE,
                 max_keys: int = MAX_KEYS) -> None:
        self._clients = _Window(per_client_per_hour, 3600.0, max_keys)
        self._accounts = _Window(per_account_per_hour, 3600.0, max_keys)
        self._total = _Window(total_per_minute, 60.0, 1)
        self._key = secrets.token_bytes(32)

    def _mac(self, kind: bytes, value: str) -> bytes:
        return hmac.digest(self._key, kind + b"\0" + value.strip().lower().encode("utf-8", "replace"),
                           hashlib.sha256)

    def allows(self, client: str, name: str, now: float) -> bool:
        return not (self._total.full(b"", now) or self._clients.full(self._mac(b"c", client_net(client)), now)
                    or self._accounts.full(self._mac(b"a", name), now))

    def failed(self, client: str, name: str, now: float) -> None:
        self._total.add(b"", now)
        self._clients.add(self._mac(b"c", client_net(client)), now)
        self._accounts.add(self._mac(b"a", name), now)
