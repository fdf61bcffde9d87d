"""The webhook SSRF check: every non-public range refused (IPv6 forms of IPv4 ones too), public ones
passed, and names resolved once through the loopback DNS server."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from fwdmail.policy import ssrf
from tests.support.auth import resolver
from tests.support.dns_server import LoopbackDNS

NON_PUBLIC = [
    "127.0.0.1", "127.255.0.9", "10.0.0.1", "172.31.255.1", "192.168.0.1", "169.254.169.254", "100.64.0.1",
    "100.127.255.254", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "192.0.0.8", "192.0.2.1", "198.18.0.1", "198.51.100.1", "203.0.113.1", "192.88.99.1",
    "::", "::1", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1", "ff0e::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "64:ff9b::a00:1",
    "64:ff9b::7f00:1", "2002:7f00:1::1", "2002:c0a8:101::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2001:4860:4860::8888", "2606:4700::1111",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("ip", NON_PUBLIC)
def test_non_public_addresses_are_named(ip: str) -> None:
    assert ssrf.non_public(ipaddress.ip_address(ip)) is not None


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_pass(ip: str) -> None:
    assert ssrf.non_public(ipaddress.ip_address(ip)) is None


def test_a_name_is_refused_if_any_of_its_addresses_is_not_public(dns_server: LoopbackDNS) -> None:
    asyncio.run(_resolved(dns_server))


async def _resolved(dns_server: LoopbackDNS) -> None:
    dns_server.add("mixed.ssrf-unit.test", "A", "8.8.8.8")
    dns_server.add("mixed.ssrf-unit.test", "AAAA", "::1")
    dns_server.add("public.ssrf-unit.test", "A", "8.8.4.4")
    r = resolver(dns_server)
    with pytest.raises(ssrf.Refused, match="loopback"):
        await ssrf.public_address(r, "mixed.ssrf-unit.test", False, 2.0)
    assert await ssrf.public_address(r, "public.ssrf-unit.test", False, 2.0) == "8.8.4.4"
    assert await ssrf.public_address(r, "mixed.ssrf-unit.test", True, 2.0) == "8.8.8.8"
    with pytest.raises(ssrf.Refused):
        await ssrf.public_address(r, "[::ffff:127.0.0.1]", False, 2.0)
    with pytest.raises(ssrf.Unresolved) as missing:
        await ssrf.public_address(r, "nothing.ssrf-unit.test", False, 2.0)
    assert not missing.value.temporary
