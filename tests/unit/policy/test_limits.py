"""Per-client limits held in memory: concurrent connections, message rate, abuse-record throttling."""

from __future__ import annotations

from fwdmail.config import AbuseConfig
from fwdmail.policy.limits import (
    ConnectionLimiter,
    Limits,
    Rate,
    RecordThrottle,
    TokenBuckets,
    client_key,
)


def test_client_key_groups_ipv6_by_64() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("garbage") == "garbage"


def test_connections_per_client() -> None:
    limiter = ConnectionLimiter(2)
    assert limiter.acquire("192.0.2.1") and limiter.acquire("192.0.2.1")
    assert not limiter.acquire("192.0.2.1")
    assert limiter.acquire("192.0.2.2")  # another client is not affected
    assert limiter.open("192.0.2.1") == 2
    limiter.release("192.0.2.1")
    assert limiter.acquire("192.0.2.1")
    assert not limiter.acquire("::ffff:192.0.2.1")  # the same client, written differently
    for _ in range(5):
        limiter.release("192.0.2.1")
    assert limiter.open("192.0.2.1") == 0 and limiter._open == {"192.0.2.2": 1}


def test_rate_is_a_burst_then_an_even_refill() -> None:
    rate = TokenBuckets(per_minute=3)
    t = 1000.0
    assert [rate.check("192.0.2.1", t) for _ in range(3)] == [Rate.ALLOWED] * 3
    assert rate.check("192.0.2.1", t) is Rate.NEWLY_LIMITED
    assert rate.check("192.0.2.1", t + 1) is Rate.LIMITED
    assert rate.check("192.0.2.9", t) is Rate.ALLOWED  # other clients have their own bucket
    assert rate.check("192.0.2.1", t + 20) is Rate.ALLOWED  # one token back every 20 s
    assert rate.check("192.0.2.1", t + 21) is Rate.NEWLY_LIMITED
    assert [rate.check("192.0.2.1", t + 1000) for _ in range(4)] == [Rate.ALLOWED] * 3 + [Rate.NEWLY_LIMITED]


def test_rate_table_is_bounded() -> None:
    rate = TokenBuckets(per_minute=1, max_clients=100)
    for i in range(1000):
        rate.check(f"10.0.{i // 256}.{i % 256}", 5.0)
    assert len(rate) == 100
    assert rate.check("10.0.3.231", 5.0) is Rate.NEWLY_LIMITED  # the most recent ones are remembered


def test_record_throttle_once_per_window() -> None:
    throttle = RecordThrottle(window=600, max_entries=3)
    assert throttle.first("rate", "192.0.2.1", 0)
    assert not throttle.first("rate", "192.0.2.1", 599)
    assert throttle.first("dnsbl", "192.0.2.1", 599)
    assert throttle.first("rate", "192.0.2.1", 600)
    for ip in ("192.0.2.2", "192.0.2.3", "192.0.2.4"):
        assert throttle.first("rate", ip, 700)
    assert len(throttle) == 3


def test_limits_from_config() -> None:
    limits = Limits(AbuseConfig(max_connections_per_ip=1, max_messages_per_ip_per_minute=5))
    assert limits.connections.acquire("192.0.2.1") and not limits.connections.acquire("192.0.2.1")
    assert limits.rate.capacity == 5
