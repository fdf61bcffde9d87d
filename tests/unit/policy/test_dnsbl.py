"""DNSBL lookups against a zone served by the loopback DNS server."""

from __future__ import annotations

from fwdmail.policy.dnsbl import listed, query_name
from tests.support.auth import resolver, run, unique_domain
from tests.support.dns_server import LoopbackDNS


def test_query_names() -> None:
    assert query_name("192.0.2.1", "bl.test") == "1.2.0.192.bl.test"
    assert query_name("::ffff:192.0.2.1", "bl.test.") == "1.2.0.192.bl.test"
    assert query_name("2001:db8::1", "bl.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test")
    assert query_name("nonsense", "bl.test") is None


def test_listed_unlisted_and_broken_zones(dns_server: LoopbackDNS) -> None:
    zone, second, broken = unique_domain("bl"), unique_domain("bl"), unique_domain("bl")
    dns_server.add(f"2.0.0.127.{zone}", "A", "127.0.0.2")
    dns_server.add(f"9.2.0.192.{second}", "A", "127.0.0.4")
    dns_server.add(f"9.2.0.192.{second}", "TXT", "listed for spam")
    dns_server.add(f"8.2.0.192.{zone}", "A", "127.255.255.254")  # "query refused": not a listing
    dns_server.add(f"7.2.0.192.{zone}", "A", "192.0.2.1")  # outside 127/8: not a listing
    dns_server.add(f"v6.{zone}", "A", "127.0.0.2")
    v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    dns_server.add(f"{v6}.{zone}", "A", "127.0.0.3")
    dns_server.set_failure(f"9.2.0.192.{broken}", "SERVFAIL")
    r = resolver(dns_server)
    assert run(listed(r, "127.0.0.2", [zone])) == zone
    assert run(listed(r, "192.0.2.9", [broken, zone, second])) == second
    assert run(listed(r, "192.0.2.9", [broken, zone])) is None
    assert run(listed(r, "192.0.2.8", [zone])) is None
    assert run(listed(r, "192.0.2.7", [zone])) is None
    assert run(listed(r, "192.0.2.6", [zone])) is None
    assert run(listed(r, "2001:db8::1", [zone])) == zone
    assert run(listed(r, "127.0.0.2", [])) is None


def test_a_silent_zone_times_out_as_not_listed(dns_server: LoopbackDNS) -> None:
    zone, fast = unique_domain("bl"), unique_domain("bl")
    dns_server.set_failure(f"2.0.0.127.{zone}", "timeout")
    dns_server.add(f"2.0.0.127.{fast}", "A", "127.0.0.2")
    r = resolver(dns_server)
    assert run(listed(r, "127.0.0.2", [zone], timeout=0.3)) is None
    assert run(listed(r, "127.0.0.2", [zone, fast], timeout=0.3)) == fast
