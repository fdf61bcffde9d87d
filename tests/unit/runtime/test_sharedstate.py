"""The shared-state seam on both backends: memory and a private Redis (tests/support/redis.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from fwdmail import store
from fwdmail.config import ClusterConfig, ConfigError
from fwdmail.runtime.sharedstate import (
    KEY_SECRET,
    MemoryState,
    PersistentRedis,
    RedisState,
    SharedState,
    SharedUnavailable,
    open_shared,
)
from tests.support.redis import RedisServer, command, redis_bin, running_redis

pytestmark = pytest.mark.skipif(redis_bin() is None, reason="redis-server is not installed")

SECRET = b"k" * 32


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_on(backend: str, server: RedisServer | None,
           body: Callable[[SharedState, Callable[[float], Awaitable[None]]], Awaitable[Any]]) -> Any:
    """Run `body(state, wait)` on a fresh state of `backend`; `wait(s)` lets `s` seconds pass."""
    async def main() -> Any:
        if backend == "memory":
            clock = FakeClock()

            async def advance(seconds: float) -> None:
                clock.now += seconds
            return await body(MemoryState(SECRET, clock=clock), advance)
        assert server is not None
        client = redis.asyncio.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        await client.flushdb()
        state = RedisState(SECRET, client, 2.0)
        try:
            return await body(state, asyncio.sleep)
        finally:
            await state.close()
    return asyncio.run(main())


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, RedisServer | None]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    return request.param, server


def test_keys_are_keyed_hashes_that_name_nothing() -> None:
    state = MemoryState(SECRET)
    key = state.key("srs", "192.0.2.0/24")
    assert key.startswith(b"fwdmail:srs:") and b"192" not in key
    assert key == state.key("srs", "192.0.2.0/24") != MemoryState(b"x" * 32).key("srs", "192.0.2.0/24")
    assert state.key("a", "bc") != state.key("a", "b", "c") != state.key("ab", "c")


def test_count_opens_a_window_that_expires(backend: tuple[str, RedisServer | None]) -> None:
    async def body(state: SharedState, wait: Callable[[float], Awaitable[None]]) -> list[int]:
        key = state.key("n", "x")
        seen = [await state.count(key, 0.3) for _ in range(3)]
        seen.append(await state.read(key))
        await wait(0.5)
        seen += [await state.read(key), await state.count(key, 0.3)]
        return seen
    assert run_on(*backend, body) == [1, 2, 3, 3, 0, 1]


def test_add_sets_only_when_absent_and_expires(backend: tuple[str, RedisServer | None]) -> None:
    async def body(state: SharedState, wait: Callable[[float], Awaitable[None]]) -> list[Any]:
        key = state.key("m", "x")
        out: list[Any] = [await state.add(key, 0.3, b"v"), await state.add(key, 0.3), await state.get(key)]
        await wait(0.5)
        out += [await state.get(key), await state.add(key, 5)]
        await state.delete(key)
        out += [await state.get(key), await state.get_many([key, state.key("m", "y")])]
        await state.put(key, 5, b"w")
        out.append(await state.get(key))
        return out
    assert run_on(*backend, body) == [True, False, b"v", None, True, None, [None, None], b"w"]


def test_leases_are_bounded_released_and_expire_one_by_one(backend: tuple[str, RedisServer | None]) -> None:
    async def body(state: SharedState, wait: Callable[[float], Awaitable[None]]) -> list[bool]:
        key = state.key("c", "client")
        out = [await state.lease(key, b"a", 2, 0.4), await state.lease(key, b"b", 2, 5),
               await state.lease(key, b"c", 2, 5)]
        await state.release(key, b"b")
        out.append(await state.lease(key, b"c", 2, 0.4))
        await wait(0.25)
        await state.renew([(key, b"c")], 5)
        await wait(0.3)  # a's lease expired, c's was renewed
        out += [await state.lease(key, b"d", 2, 5), await state.lease(key, b"e", 2, 5)]
        return out
    assert run_on(*backend, body) == [True, True, False, True, True, False]


def test_every_redis_key_has_a_ttl(redis_server: RedisServer) -> None:
    async def body(state: SharedState, wait: Callable[[float], Awaitable[None]]) -> list[int]:
        await state.count(state.key("n", "1"), 60)
        await state.add(state.key("m", "2"), 60)
        await state.put(state.key("m", "3"), 60)
        await state.lease(state.key("c", "4"), b"x", 3, 60)
        assert isinstance(state, RedisState)
        keys = await state.client.keys("*")
        return [await state.client.pttl(k) for k in keys]
    ttls = run_on("redis", redis_server, body)
    assert len(ttls) == 4 and all(0 < t <= 60_000 for t in ttls)


def test_redis_gone_is_unavailable_within_the_timeout_then_recovers() -> None:
    with running_redis() as server:
        async def main() -> tuple[list[str], list[int]]:
            client = redis.asyncio.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
            state = RedisState(SECRET, client, 0.5)
            key = state.key("n", "x")
            out: list[str] = []
            counts = [await state.count(key, 60)]
            server.stop()
            for _ in range(2):
                try:
                    await state.count(key, 60)
                except SharedUnavailable:
                    out.append("unavailable")
            server.start()
            for _ in range(20):  # the pool reconnects on the next call
                try:
                    counts.append(await state.count(key, 60))
                    break
                except SharedUnavailable:
                    await asyncio.sleep(0.1)
            await state.close()
            return out, counts
        out, counts = asyncio.run(main())
    assert out == ["unavailable", "unavailable"]
    assert counts == [1, 1]  # nothing persisted: the restarted server starts empty


def test_redis_that_does_not_answer_is_unavailable_within_the_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    async def main() -> str:
        client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3,
                                              socket_connect_timeout=0.3)
        state = RedisState(SECRET, client, 0.3)
        try:
            await asyncio.wait_for(state.get(b"k"), 5)
        except SharedUnavailable:
            return "unavailable"
        finally:
            await state.close()
        return "answered"
    try:
        assert asyncio.run(main()) == "unavailable"
    finally:
        listener.close()


def _open(tmp_path: Path, cfg: ClusterConfig) -> SharedState | None:
    store.open_store(tmp_path / "fwdmail.db")

    async def run_db(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    async def main() -> SharedState | None:
        state = await open_shared(cfg, run_db)
        if state is not None:
            await state.close()
        return state
    try:
        return asyncio.run(main())
    finally:
        store.close_store()


def test_open_shared_reads_the_key_from_the_database(tmp_path: Path, redis_server: RedisServer) -> None:
    assert _open(tmp_path, ClusterConfig()) is None
    one = _open(tmp_path, ClusterConfig(redis_url=redis_server.url))
    two = _open(tmp_path, ClusterConfig(redis_url=redis_server.url))
    assert one is not None and two is not None
    assert one.key("x", "y") == two.key("x", "y")
    store.open_store(tmp_path / "fwdmail.db")
    try:
        assert len(bytes.fromhex(store.meta_once(KEY_SECRET, "00"))) == 32
    finally:
        store.close_store()


def test_open_shared_refuses_a_redis_that_persists(tmp_path: Path) -> None:
    with running_redis(persistent=True) as server:
        with pytest.raises(PersistentRedis, match=r"persists to disk \(RDB and AOF on\)"):
            _open(tmp_path, ClusterConfig(redis_url=server.url))
        assert _open(tmp_path, ClusterConfig(redis_url=server.url, allow_persistent_redis=True)) is not None
        with server.client() as s:
            command(s, "CONFIG", "SET", "appendonly", "no")
            with pytest.raises(PersistentRedis, match=r"\(RDB on\)"):
                _open(tmp_path, ClusterConfig(redis_url=server.url))
            command(s, "CONFIG", "SET", "save", "")
        assert _open(tmp_path, ClusterConfig(redis_url=server.url)) is not None


def test_open_shared_unreachable_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SharedUnavailable, match="cannot reach Redis"):
        _open(tmp_path, ClusterConfig(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.5))


@pytest.mark.parametrize("bad", ["http://x", "redis://x:99999", "redis://a b", "localhost:6379"])
def test_bad_redis_url_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"cluster\.redis_url"):
        ClusterConfig(redis_url=bad).validate("cluster")


def test_good_cluster_config_passes() -> None:
    ClusterConfig(redis_url="redis://:pw@127.0.0.1:6379/0").validate("cluster")
    ClusterConfig(redis_url="unix:///run/redis.sock").validate("cluster")
    with pytest.raises(ConfigError, match="redis_timeout"):
        ClusterConfig(redis_timeout=0).validate("cluster")
