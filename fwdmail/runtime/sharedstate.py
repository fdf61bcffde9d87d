"""Short-term state every node shares (`[cluster] redis_url`): counters in windows, marks that expire,
leases on live sessions. Two backends with one API: `MemoryState` (this process only) and `RedisState`.

Untrusted input: the key parts callers pass are derived from what clients send (addresses, client
networks, message digests). They never reach a backend in the clear: every key is a prefix and an
HMAC-SHA256 of its parts under a key every node shares (kept in the database, `store.meta_once`), and
every key is written with a TTL, so nothing outlives its window. Every Redis call is bounded by the
socket timeouts of `[cluster]`; a Redis that is gone or slow raises `SharedUnavailable`, which callers
turn into a 4xx reply. Redis replies are trusted only as far as their types are checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import time
from typing import Any

from fwdmail import store
from fwdmail.config import ClusterConfig
from fwdmail.runtime.expiring import BoundedMap

__all__ = ["KEY_SECRET", "MemoryState", "PersistentRedis", "RedisState", "SharedState",
           "SharedUnavailable", "open_shared"]

log = logging.getLogger("fwdmail.cluster")

KEY_SECRET = "cluster_key"
"""The `Meta` fact holding the key of the keyed hashes (hex), made by the first node to start."""


class SharedUnavailable(Exception):
    """The shared state cannot be read or written now (Redis gone, slow or refusing)."""


class _NoScript(Exception):
    """The server does not have a script (yet, or any more after a restart)."""


class PersistentRedis(Exception):
    """The Redis server writes its data to disk (RDB snapshots or AOF) and that was not allowed."""


class SharedState:
    """Primitives over keys made by `key`; TTLs in seconds (at least one millisecond is kept)."""

    def __init__(self, secret: bytes, prefix: str = "fwdmail:") -> None:
        self._secret = secret
        self.prefix = prefix.encode()

    def key(self, kind: str, *parts: bytes | str) -> bytes:
        """The backend key for `parts` of one `kind`: the prefix, the kind, and a keyed hash of them."""
        mac = hmac.new(self._secret, kind.encode(), hashlib.sha256)
        for part in parts:
            raw = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
            mac.update(len(raw).to_bytes(4, "big") + raw)
        return self.prefix + kind.encode() + b":" + mac.hexdigest()[:40].encode()

    async def count(self, key: bytes, window: float) -> int:
        """Add one to the counter `key` and return it; a new counter lives `window` seconds (a fixed
        window opened by its first count)."""
        raise NotImplementedError

    async def read(self, key: bytes) -> int:
        """The counter `key` (0 when absent or expired)."""
        raise NotImplementedError

    async def add(self, key: bytes, ttl: float, value: bytes = b"1") -> bool:
        """Set `key` for `ttl` seconds unless it is set; True if this call set it."""
        raise NotImplementedError

    async def put(self, key: bytes, ttl: float, value: bytes = b"1") -> None:
        raise NotImplementedError

    async def get(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        return [await self.get(k) for k in keys]

    async def delete(self, *keys: bytes) -> None:
        raise NotImplementedError

    async def lease(self, key: bytes, member: bytes, limit: int, ttl: float) -> bool:
        """Hold one of at most `limit` leases under `key` as `member` for `ttl` seconds; False (and
        nothing held) if `limit` live leases are held already. Each lease expires on its own."""
        raise NotImplementedError

    async def renew(self, leases: list[tuple[bytes, bytes]], ttl: float) -> None:
        """Extend held leases (key, member) to `ttl` seconds from now."""
        raise NotImplementedError

    async def release(self, key: bytes, member: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class MemoryState(SharedState):
    """This process's memory; at most `max_keys` keys (the oldest set is dropped first)."""

    def __init__(self, secret: bytes, prefix: str = "fwdmail:", max_keys: int = 100_000,
                 clock: Any = time.monotonic) -> None:
        super().__init__(secret, prefix)
        self.clock = clock
        self._values: BoundedMap[bytes, tuple[float, Any]] = BoundedMap(max_keys)

    def _live(self, key: bytes) -> Any:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            self._values.pop(key)
            return None
        return entry[1]

    async def count(self, key: bytes, window: float) -> int:
        n = self._live(key)
        if isinstance(n, int):
            until = self._values.get(key)[0]  # type: ignore[index]
            self._values.set(key, (until, n + 1))
            return n + 1
        self._values.set(key, (self.clock() + window, 1))
        return 1

    async def read(self, key: bytes) -> int:
        n = self._live(key)
        return n if isinstance(n, int) else 0

    async def add(self, key: bytes, ttl: float, value: bytes = b"1") -> bool:
        if self._live(key) is not None:
            return False
        self._values.set(key, (self.clock() + ttl, value))
        return True

    async def put(self, key: bytes, ttl: float, value: bytes = b"1") -> None:
        self._values.set(key, (self.clock() + ttl, value))

    async def get(self, key: bytes) -> bytes | None:
        value = self._live(key)
        return value if isinstance(value, bytes) else None

    async def delete(self, *keys: bytes) -> None:
        for key in keys:
            self._values.pop(key)

    def _leases(self, key: bytes) -> dict[bytes, float]:
        now = self.clock()
        held = self._live(key)
        live = {m: t for m, t in held.items() if t > now} if isinstance(held, dict) else {}
        return live

    def _store_leases(self, key: bytes, live: dict[bytes, float]) -> None:
        if live:
            self._values.set(key, (max(live.values()), live))
        else:
            self._values.pop(key)

    async def lease(self, key: bytes, member: bytes, limit: int, ttl: float) -> bool:
        live = self._leases(key)
        if len(live) >= limit:
            self._store_leases(key, live)
            return False
        live[member] = self.clock() + ttl
        self._store_leases(key, live)
        return True

    async def renew(self, leases: list[tuple[bytes, bytes]], ttl: float) -> None:
        for key, member in leases:
            live = self._leases(key)
            if member in live:
                live[member] = self.clock() + ttl
            self._store_leases(key, live)

    async def release(self, key: bytes, member: bytes) -> None:
        live = self._leases(key)
        live.pop(member, None)
        self._store_leases(key, live)


# Counter in a fixed window: the TTL is set by the count that makes the key.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""
# Leases: a sorted set of members scored by their expiry (the server's clock, in ms).
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[i + 1]) then
    redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
    redis.call('PEXPIRE', key, ARGV[1])
  end
end
return 1
"""
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisState(SharedState):
    """Redis (or Valkey) through redis-py's asyncio client; every call bounded by `timeout`."""

    def __init__(self, secret: bytes, client: Any, timeout: float, prefix: str = "fwdmail:") -> None:
        super().__init__(secret, prefix)
        self.client = client
        self.timeout = timeout
        self._down = False

    async def _call(self, command: str, *args: Any) -> Any:
        try:
            result = await asyncio.wait_for(self.client.execute_command(command, *args), self.timeout)
        except (TimeoutError, OSError, ConnectionError) as exc:
            self._went_down(exc)
            raise SharedUnavailable(type(exc).__name__) from None
        except Exception as exc:
            if type(exc).__name__ == "NoScriptError":
                raise _NoScript from None
            if type(exc).__module__.startswith("redis"):
                self._went_down(exc)
                raise SharedUnavailable(type(exc).__name__) from None
            raise
        if self._down:
            self._down = False
            log.warning("shared state (Redis) reachable again")
        return result

    def _went_down(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning("shared state (Redis) unavailable: %s; clients get 4xx until it is back",
                        type(exc).__name__)

    async def _script(self, source: str, keys: list[bytes], args: list[Any]) -> Any:
        """Run a script by its digest; sent whole only when the server does not have it (first use,
        or a restarted server), which loads it for the next calls."""
        digest = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        try:
            return await self._call("EVALSHA", digest, len(keys), *keys, *args)
        except _NoScript:
            return await self._call("EVAL", source, len(keys), *keys, *args)

    async def count(self, key: bytes, window: float) -> int:
        return int(await self._script(_COUNT, [key], [_ms(window)]))

    async def read(self, key: bytes) -> int:
        value = await self._call("GET", key)
        try:
            return int(value) if value is not None else 0
        except ValueError:
            return 0

    async def add(self, key: bytes, ttl: float, value: bytes = b"1") -> bool:
        return bool(await self._call("SET", key, value, "PX", _ms(ttl), "NX"))

    async def put(self, key: bytes, ttl: float, value: bytes = b"1") -> None:
        await self._call("SET", key, value, "PX", _ms(ttl))

    async def get(self, key: bytes) -> bytes | None:
        value = await self._call("GET", key)
        return value if isinstance(value, bytes) else None

    async def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._call("MGET", *keys)
        return [v if isinstance(v, bytes) else None for v in values]

    async def delete(self, *keys: bytes) -> None:
        if keys:
            await self._call("DEL", *keys)

    async def lease(self, key: bytes, member: bytes, limit: int, ttl: float) -> bool:
        return bool(await self._script(_LEASE, [key], [member, limit, _ms(ttl)]))

    async def renew(self, leases: list[tuple[bytes, bytes]], ttl: float) -> None:
        for start in range(0, len(leases), 500):
            batch = leases[start:start + 500]
            await self._script(_RENEW, [k for k, _ in batch], [_ms(ttl), *(m for _, m in batch)])

    async def release(self, key: bytes, member: bytes) -> None:
        await self._script(_RELEASE, [key], [member])

    async def persistence(self) -> list[str]:
        """What makes the server write its data to disk: "RDB" (a `save` schedule) and "AOF"."""
        found = []
        save = await self._call("CONFIG", "GET", "save")
        if _config_value(save, b"save").strip():
            found.append("RDB")
        aof = await self._call("CONFIG", "GET", "appendonly")
        if _config_value(aof, b"appendonly").strip().lower() == b"yes":
            found.append("AOF")
        return found

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.client.aclose(), self.timeout)
        except Exception as exc:
            log.debug("closing the Redis client: %s", type(exc).__name__)


def _config_value(reply: Any, name: bytes) -> bytes:
    """The value in a CONFIG GET reply (a flat list or, with RESP3, a dict)."""
    if isinstance(reply, dict):
        value = reply.get(name, reply.get(name.decode(), b""))
    elif isinstance(reply, list | tuple) and len(reply) >= 2:
        value = reply[1]
    else:
        value = b""
    return value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else b""


async def open_shared(cfg: ClusterConfig, run_db: Any) -> SharedState | None:
    """The Redis shared state of `cfg` (None when `redis_url` is empty), checked: reachable, and not
    persisting to disk unless `allow_persistent_redis`. `run_db` runs a store call off the loop (the
    key of the keyed hashes is read, or made, in the database). Raises `SharedUnavailable` or
    `PersistentRedis` with a one-line reason."""
    if not cfg.redis_url:
        return None
    try:
        import redis.asyncio
    except ImportError:
        raise SharedUnavailable("cluster.redis_url: the Redis client is not installed: "
                                "pip install 'fwdmail[cluster]'") from None

    secret_hex = await run_db(store.meta_once, KEY_SECRET, secrets.token_hex(32))
    try:
        secret = bytes.fromhex(secret_hex)
    except ValueError:
        raise SharedUnavailable(f"the shared state's key ({KEY_SECRET} in table meta) is damaged") from None
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        cfg.redis_url, max_connections=cfg.redis_max_connections, timeout=cfg.redis_timeout,
        socket_timeout=cfg.redis_timeout, socket_connect_timeout=cfg.redis_timeout, health_check_interval=30)
    client = redis.asyncio.Redis.from_pool(pool)
    state = RedisState(secret, client, cfg.redis_timeout, cfg.redis_prefix)
    try:
        found = await state.persistence()
    except SharedUnavailable as exc:
        await state.close()
        raise SharedUnavailable(f"cluster.redis_url: cannot reach Redis ({exc})") from None
    if found and not cfg.allow_persistent_redis:
        await state.close()
        raise PersistentRedis(f"cluster.redis_url: the Redis server persists to disk ({' and '.join(found)} "
                              "on), which would keep SMTP metadata; turn it off (save '', appendonly no) "
                              "or set cluster.allow_persistent_redis = true")
    return state
