"""Which IP addresses are public unicast ones: the check that keeps outgoing HTTP requests (webhooks,
MTA-STS policy fetches) away from loopback, private, link-local and other non-public ranges.

Untrusted input: addresses that DNS answers (controlled by whoever runs the zone) gave; pure, no I/O.
"""

from __future__ import annotations

import ipaddress

__all__ = ["non_public"]

_Ip = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA special-purpose ranges, named here so the answer does not depend on the Python version's tables.
_SPECIAL = tuple((name, ipaddress.ip_network(net)) for name, net in (
    ("unspecified", "0.0.0.0/8"), ("private", "10.0.0.0/8"), ("carrier-grade NAT", "100.64.0.0/10"),
    ("loopback", "127.0.0.0/8"), ("link-local", "169.254.0.0/16"), ("private", "172.16.0.0/12"),
    ("IETF protocol", "192.0.0.0/24"), ("documentation", "192.0.2.0/24"), ("6to4 relay", "192.88.99.0/24"),
    ("private", "192.168.0.0/16"), ("benchmarking", "198.18.0.0/15"), ("documentation", "198.51.100.0/24"),
    ("documentation", "203.0.113.0/24"), ("multicast", "224.0.0.0/4"), ("reserved", "240.0.0.0/4"),
    ("unspecified", "::/128"), ("loopback", "::1/128"), ("discard-only", "100::/64"),
    ("IETF protocol", "2001::/23"), ("documentation", "2001:db8::/32"), ("documentation", "3fff::/20"),
    ("unique-local", "fc00::/7"), ("link-local", "fe80::/10"), ("site-local", "fec0::/10"),
    ("multicast", "ff00::/8"),
))
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if any(addr in net for net in _NAT64) or (int(addr) >> 32 == 0 and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def non_public(addr: _Ip) -> str | None:
    """Why `addr` is not a public unicast address (loopback, private, link-local ...), or None."""
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded(addr)
        if inner is not None:
            why = non_public(inner)
            return f"IPv6 embedding a {why} address" if why else None
    special = next((name for name, net in _SPECIAL if addr.version == net.version and addr in net), None)
    if special is not None:
        return special
    checks = (
        ("unspecified", addr.is_unspecified), ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local), ("multicast", addr.is_multicast),
        ("reserved", addr.is_reserved), ("private", addr.is_private), ("non-global", not addr.is_global),
    )
    return next((name for name, hit in checks if hit), None)
