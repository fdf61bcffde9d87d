"""Who a submission session logged in as, and the login protection around the password check.

Untrusted input: login names and passwords a submission client sends, and the address of the client.
Failed logins are counted in memory only, per client (IPv4 address or IPv6 /64; never written
anywhere), per login name (as a keyed hash) and in total (with `[cluster] redis_url`, in the state every
node shares: keyed hashes under the cluster's key, each with a TTL); passwords verified a short while ago are
remembered as keyed hashes, so a client that logs in again does not cost another password hash.
`PasswordCheck` looks a login up in the store and verifies its password on the bounded hashing pool
(`Blocking.hash`), so guesses from many addresses are refused instead of taking the CPU the MX needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fwdmail import store
from fwdmail.config import SubmissionConfig
from fwdmail.mail.addresses import AddressError, parse_address, parse_alias_spec
from fwdmail.policy.clients import client_key
from fwdmail.runtime import keys
from fwdmail.runtime.executor import Blocking, Busy
from fwdmail.runtime.sharedstate import SharedState, SharedUnavailable

__all__ = ["AuthLimiter", "FailureBudget", "Login", "LoginCache", "PasswordCheck"]


@dataclass(frozen=True)
class Login:
    """Who a submission session logged in as: an exact alias, or a catch-all (any address of its domain)."""

    alias_id: int
    domain: str
    kind: str
    local: str

    def may_send_as(self, address: str) -> bool:
        try:
            addr = parse_address(address)
        except AddressError:
            return False
        if addr.domain != self.domain:
            return False
        return self.kind == "catch-all" or addr.local.lower() == self.local


class AuthLimiter:
    """Failed logins per client, in memory only: `max_failures` within `window` seconds locks the client
    out for `lockout` seconds. A client is an IPv4 address or an IPv6 /64 (`limits.client_key`). Times
    are monotonic seconds; at most `max_entries` clients are remembered."""

    def __init__(self, max_failures: int, lockout: float, window: float = 3600.0,
                 max_entries: int = 100_000, shared: SharedState | None = None) -> None:
        """With `shared`, failures and lockouts are those of every node (`is_blocked`, `count_failure`):
        failures counted in a fixed `window` opened by the first, a lockout a mark of `lockout` seconds."""
        self.shared = shared
        self.max_failures = max_failures
        self.lockout = lockout
        self.window = window
        self.max_entries = max_entries
        self._failures: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, ip: str) -> AsyncIterator[None]:
        """Check one login of `ip`'s client at a time, so parallel guesses cannot outrun the count.
        Remembers a client only while one of its logins is being checked."""
        ip = client_key(ip)
        lock, users = self._turns.get(ip) or (asyncio.Lock(), 0)
        self._turns[ip] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._turns[ip]
            if users == 1:
                del self._turns[ip]
            else:
                self._turns[ip] = (lock, users - 1)

    def blocked(self, ip: str, now: float) -> bool:
        ip = client_key(ip)
        until = self._locked.get(ip)
        if until is None:
            return False
        if now < until:
            return True
        del self._locked[ip]
        return False

    def failed(self, ip: str, now: float) -> bool:
        """Count one failed login; True if the client is now locked out."""
        ip = client_key(ip)
        times = self._failures.pop(ip, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.max_failures:
            self._locked[ip] = now + self.lockout
            self._trim(self._locked)
            return True
        self._failures[ip] = times  # re-inserted: dict order is least recently failed first
        self._trim(self._failures)
        return False

    def _trim(self, table: dict[str, Any]) -> None:
        while len(table) > self.max_entries:
            del table[next(iter(table))]

    async def is_blocked(self, ip: str, now: float) -> bool:
        """`blocked`, across nodes when shared (raises `SharedUnavailable` when that state is gone)."""
        if self.shared is None:
            return self.blocked(ip, now)
        return await self.shared.get(self.shared.key("lock", client_key(ip))) is not None

    async def count_failure(self, ip: str, now: float) -> bool:
        """`failed`, across nodes when shared (raises `SharedUnavailable` when that state is gone)."""
        if self.shared is None:
            return self.failed(ip, now)
        client = client_key(ip)
        counter = self.shared.key("fail", client)
        if await self.shared.count(counter, self.window) < self.max_failures:
            return False
        await self.shared.put(self.shared.key("lock", client), self.lockout)
        await self.shared.delete(counter)
        return True


class _Windows:
    """At most `limit` events per key in any `window` seconds; at most `max_keys` keys, the least
    recently counted forgotten first."""

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._times: OrderedDict[bytes, deque[float]] = OrderedDict()

    def _recent(self, key: bytes, now: float) -> deque[float] | None:
        times = self._times.get(key)
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def full(self, key: bytes, now: float) -> bool:
        times = self._recent(key, now)
        return times is not None and len(times) >= self.limit

    def add(self, key: bytes, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            times = deque(maxlen=self.limit)
        self._times.pop(key, None)
        self._times[key] = times
        times.append(now)
        while len(self._times) > self.max_keys:
            self._times.popitem(last=False)


class FailureBudget:
    """Failed logins from all clients together: at most `per_alias_per_hour` for one login name (many
    addresses guessing one password) and `total_per_minute` in all. A login that needs a password check
    while either is spent is refused before hashing. Names are held as keyed hashes, in memory only."""

    def __init__(self, total_per_minute: int, per_alias_per_hour: int, max_aliases: int = 10_000,
                 shared: SharedState | None = None) -> None:
        """With `shared`, the budgets are those of every node, each a fixed window opened by its first
        failure (`may_try`, `count_failure`)."""
        self._total = _Windows(total_per_minute, 60.0, 1)
        self._aliases = _Windows(per_alias_per_hour, 3600.0, max_aliases)
        self._key = secrets.token_bytes(32)
        self.shared = shared

    def _name(self, username: bytes) -> bytes:
        return hmac.digest(self._key, username.strip().lower(), hashlib.sha256)

    def allows(self, username: bytes, now: float) -> bool:
        return not self._total.full(b"", now) and not self._aliases.full(self._name(username), now)

    def failed(self, username: bytes, now: float) -> None:
        self._total.add(b"", now)
        self._aliases.add(self._name(username), now)

    def _shared_keys(self, state: SharedState, username: bytes) -> tuple[bytes, bytes]:
        return state.key("authall"), state.key("authname", username.strip().lower())

    async def may_try(self, username: bytes, now: float) -> bool:
        """`allows`, across nodes when shared (raises `SharedUnavailable` when that state is gone)."""
        if self.shared is None:
            return self.allows(username, now)
        total, name = self._shared_keys(self.shared, username)
        return (await self.shared.read(total) < self._total.limit
                and await self.shared.read(name) < self._aliases.limit)

    async def count_failure(self, username: bytes, now: float) -> None:
        """`failed`, across nodes when shared (raises `SharedUnavailable` when that state is gone)."""
        if self.shared is None:
            self.failed(username, now)
            return
        total, name = self._shared_keys(self.shared, username)
        await self.shared.count(total, self._total.window)
        await self.shared.count(name, self._aliases.window)


class LoginCache:
    """Passwords verified recently, so a client that logs in again with the same password (a new session
    per message is common) does not cost another scrypt.

    Kept in memory only, per alias: the stored password hash it was verified against and an HMAC-SHA256 of
    the password under a key made at start. An entry holds for `ttl` seconds (monotonic) and only while
    the stored hash is the same, so a changed password or a removed alias is never let in by it. A wrong
    password never matches and gets the full scrypt, so the cache does not shorten a guess. The login
    name that verified it is kept as a keyed hash, so `known` can tell a remembered password from a guess
    without the store.
    """

    def __init__(self, ttl: float = 900.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)
        self._entries: dict[int, tuple[str, bytes, float]] = {}
        self._names: dict[bytes, int] = {}  # keyed hash of the login name -> alias id

    def _mac(self, password: str) -> bytes:
        return hmac.digest(self._key, password.encode(), hashlib.sha256)

    def _name(self, name: bytes) -> bytes:
        return hmac.digest(self._key, b"name\0" + name.lower(), hashlib.sha256)

    def known(self, name: bytes, password: str, now: float) -> bool:
        """Whether `password` is the one remembered for login `name`: worth a look at the store (which
        `verified` needs) even when guesses are over their budget. No store, no hash, here."""
        entry = self._entries.get(self._names.get(self._name(name), -1))
        return entry is not None and now < entry[2] and hmac.compare_digest(entry[1], self._mac(password))

    def verified(self, alias_id: int, stored_hash: str, password: str, now: float) -> bool:
        entry = self._entries.get(alias_id)
        if entry is None:
            return False
        known_hash, mac, until = entry
        if now >= until or known_hash != stored_hash:
            del self._entries[alias_id]
            return False
        return hmac.compare_digest(mac, self._mac(password))

    def remember(self, alias_id: int, stored_hash: str, password: str, now: float, name: bytes = b"") -> None:
        self._entries.pop(alias_id, None)
        self._entries[alias_id] = (stored_hash, self._mac(password), now + self.ttl)
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
        if name:
            self._names.pop(self._name(name), None)
            self._names[self._name(name)] = alias_id
            while len(self._names) > self.max_entries:
                del self._names[next(iter(self._names))]


class PasswordCheck:
    """Logins checked against the store, within the failure budget (`FailureBudget`) and helped by the
    cache of passwords verified recently (`LoginCache`). Hashing runs on `blocking`'s hashing pool."""

    def __init__(self, blocking: Blocking, cfg: SubmissionConfig, shared: SharedState | None = None) -> None:
        self.blocking = blocking
        self.logins = LoginCache()
        self.failures = FailureBudget(cfg.auth_failures_total_per_minute,
                                      cfg.auth_failures_per_alias_per_hour, shared=shared)
        self._dummy_hash: str | None = None

    async def check(self, username: bytes, password: bytes) -> Login | None:
        """The alias these credentials log in as, or None (counted against `failures`). Costs one scrypt,
        unless the same password of the alias was verified a short while ago (`LoginCache`). When the
        failure budget of the name or of all names is spent, only such a remembered password is looked
        up; anything else raises `Busy` without a database query or a hash, as does a full hashing pool
        (and shared budgets that cannot be read)."""
        try:
            spec = parse_alias_spec(username.decode("utf-8"))
            secret = password.decode("utf-8")
        except (UnicodeDecodeError, AddressError):
            spec, secret = None, ""
        name = spec.address.encode("utf-8") if spec is not None else username
        try:
            allowed = await self.failures.may_try(name, time.monotonic())
        except SharedUnavailable:
            raise Busy from None
        if not allowed and not self.logins.known(name, secret, time.monotonic()):
            raise Busy
        record = None
        if spec is not None and spec.kind in ("exact", "catch-all"):
            record = await self.blocking.db(store.login_record, spec.domain, spec.kind, spec.local)
        encoded = record.password_hash if record else None
        if record is not None and encoded is not None and self.logins.verified(
                record.alias_id, encoded, secret, time.monotonic()):
            return Login(record.alias_id, record.domain, record.kind, record.local)
        if not allowed:
            raise Busy
        if encoded is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.blocking.hash(keys.hash_password, secrets.token_hex(16))
            encoded = self._dummy_hash
        ok = await self.blocking.hash(keys.verify_password, secret, encoded)
        if not ok or record is None or record.password_hash is None:
            try:
                await self.failures.count_failure(name, time.monotonic())
            except SharedUnavailable:
                raise Busy from None
            return None
        self.logins.remember(record.alias_id, record.password_hash, secret, time.monotonic(), name)
        return Login(record.alias_id, record.domain, record.kind, record.local)
