"""The features that move onto the shared state, two "nodes" (two instances) sharing one `MemoryState`:
what one node counts, the other sees. The same code runs on Redis in tests/e2e/test_cluster_shared.py."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
import redis.asyncio

from fwdmail.config import AbuseConfig
from fwdmail.mx.dedup import SharedDelivered
from fwdmail.policy.guessing import ClientKeys, SrsGuard
from fwdmail.policy.limits import Rate, SharedLimits
from fwdmail.runtime.sharedstate import MemoryState, RedisState, SharedUnavailable
from fwdmail.submission.logins import AuthLimiter, FailureBudget


def state() -> MemoryState:
    return MemoryState(b"s" * 32)


def test_connection_leases_are_counted_for_both_nodes_and_given_back() -> None:
    async def main() -> list[bool]:
        shared = state()
        cfg = AbuseConfig(max_connections_per_ip=3)
        a, b = SharedLimits(shared, cfg), SharedLimits(shared, cfg)
        got = [await a.acquire(("192.0.2.1", 1)), await b.acquire(("192.0.2.1", 2)),
               await a.acquire(("192.0.2.1", 3)), await b.acquire(("192.0.2.1", 4)),
               await b.acquire(("192.0.2.9", 5))]  # another client has its own leases
        a.release(("192.0.2.1", 1))
        await asyncio.sleep(0)  # the release runs in the background
        await asyncio.sleep(0)
        got.append(await b.acquire(("192.0.2.1", 6)))
        await a.close()
        await b.close()
        return got
    assert asyncio.run(main()) == [True, True, True, False, True, True]


def test_message_rate_is_one_budget_for_both_nodes() -> None:
    async def main() -> list[Rate]:
        shared = state()
        cfg = AbuseConfig(max_messages_per_ip_per_minute=2)
        a, b = SharedLimits(shared, cfg), SharedLimits(shared, cfg)
        return [await a.rate("2001:db8::1"), await b.rate("2001:db8::2"),  # one /64: one client
                await a.rate("2001:db8::3"), await b.rate("2001:db8::1"), await a.rate("2001:db9::1")]
    assert asyncio.run(main()) == [Rate.ALLOWED, Rate.ALLOWED, Rate.NEWLY_LIMITED, Rate.LIMITED, Rate.ALLOWED]


def test_a_message_forwarded_on_one_node_is_known_on_the_other() -> None:
    async def main() -> list[Any]:
        shared = state()
        a, b = SharedDelivered(shared, 60, 30), SharedDelivered(shared, 60, 30)
        now = time.monotonic()
        out: list[Any] = [await a.claim(b"fp1", now), await b.claim(b"fp1", now)]  # b waits at most until now
        await a.land(b"fp1", True)
        out.append(await b.claim(b"fp1", now))
        await a.claim(b"fp2", now)
        await a.land(b"fp2", False)
        out.append(await b.claim(b"fp2", now))  # a's forward failed: b takes it
        await a.remember([b"fp3"])
        out.append(await b.seen([b"fp3", b"fp4"]))
        await b.forget([b"fp3"])
        out.append(await a.seen([b"fp3"]))
        return out
    assert asyncio.run(main()) == ["mine", "busy", "delivered", "mine", {b"fp3"}, set()]


def test_a_claim_waits_for_the_other_node_to_land() -> None:
    async def main() -> str:
        shared = state()
        a, b = SharedDelivered(shared, 60, 30), SharedDelivered(shared, 60, 30)
        await a.claim(b"fp", time.monotonic())

        async def land_soon() -> None:
            await asyncio.sleep(0.3)
            await a.land(b"fp", True)
        task = asyncio.create_task(land_soon())
        result = await b.claim(b"fp", time.monotonic() + 10)
        await task
        return result
    assert asyncio.run(main()) == "delivered"


def test_the_invalid_srs_budget_is_one_for_both_nodes() -> None:
    async def main() -> list[bool]:
        shared = state()
        a = SrsGuard(3, 100, 600, ClientKeys(), shared)
        b = SrsGuard(3, 100, 600, ClientKeys(), shared)
        await a.count(("192.0.2.1", 1), 0)
        await b.count(("192.0.2.2", 2), 0)  # the same /24
        out = [await a.check("192.0.2.3", 0), b.session_blocked(("192.0.2.2", 2))]
        await b.count(("192.0.2.2", 2), 0)
        out += [await a.check("192.0.2.3", 0), b.session_blocked(("192.0.2.2", 2)),
                await a.check("198.51.100.1", 0)]
        return out
    assert asyncio.run(main()) == [False, False, True, True, False]


def test_the_invalid_srs_total_is_one_for_both_nodes() -> None:
    async def main() -> list[bool]:
        shared = state()
        a, b = SrsGuard(10, 2, 600, ClientKeys(), shared), SrsGuard(10, 2, 600, ClientKeys(), shared)
        await a.count(("192.0.2.1", 1), 0)
        before = await b.check("203.0.113.1", 0)
        await b.count(("198.51.100.1", 1), 0)
        return [before, await a.check("203.0.113.1", 0)]
    assert asyncio.run(main()) == [False, True]


def test_login_failures_lock_the_client_out_on_both_nodes() -> None:
    async def main() -> list[bool]:
        shared = state()
        a, b = AuthLimiter(3, 600, shared=shared), AuthLimiter(3, 600, shared=shared)
        out = [await a.count_failure("192.0.2.1", 0), await b.count_failure("192.0.2.1", 0),
               await a.is_blocked("192.0.2.1", 0), await b.count_failure("192.0.2.1", 0)]
        out += [await a.is_blocked("192.0.2.1", 0), await a.is_blocked("192.0.2.2", 0)]
        return out
    assert asyncio.run(main()) == [False, False, False, True, True, False]


def test_the_failed_login_budgets_are_shared() -> None:
    async def main() -> list[bool]:
        shared = state()
        a = FailureBudget(100, 2, shared=shared)
        b = FailureBudget(100, 2, shared=shared)
        await a.count_failure(b"Alice@example.test", 0)
        out = [await b.may_try(b"alice@example.test", 0)]
        await b.count_failure(b"alice@example.test ", 0)
        out += [await a.may_try(b"alice@example.test", 0), await a.may_try(b"bob@example.test", 0)]
        total = FailureBudget(2, 100, shared=state())
        await total.count_failure(b"x", 0)
        await total.count_failure(b"y", 0)
        out.append(await total.may_try(b"z", 0))
        return out
    assert asyncio.run(main()) == [True, False, True, False]


def _gone() -> RedisState:
    """A real Redis client on a loopback port nobody listens on: every call fails, as with Redis gone."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5,
                                          socket_connect_timeout=0.5)
    return RedisState(b"s" * 32, client, 0.5)


@pytest.mark.parametrize("call", ["limits", "rate", "srs", "login", "budget", "dedup"])
def test_an_unavailable_state_raises_shared_unavailable(call: str) -> None:
    gone = _gone()
    calls: dict[str, Any] = {
        "limits": lambda: SharedLimits(gone, AbuseConfig()).acquire(("192.0.2.1", 1)),
        "rate": lambda: SharedLimits(gone, AbuseConfig()).rate("192.0.2.1"),
        "srs": lambda: SrsGuard(3, 3, 60, ClientKeys(), gone).check("192.0.2.1", 0),
        "login": lambda: AuthLimiter(3, 60, shared=gone).is_blocked("192.0.2.1", 0),
        "budget": lambda: FailureBudget(3, 3, shared=gone).may_try(b"a", 0),
        "dedup": lambda: SharedDelivered(gone, 60, 30).seen([b"fp"]),
    }
    async def main() -> None:
        try:
            await calls[call]()
        finally:
            await gone.close()
    with pytest.raises(SharedUnavailable):
        asyncio.run(main())
