"""How limits tell one client from another: the units per-client counters are kept by.

Untrusted input: the client address the transport reports (any string; what does not parse stands for
itself). An IPv6 client is counted per /64, what one subscriber is given; an IPv4-mapped IPv6 address
counts as the IPv4 address.
"""

from __future__ import annotations

import ipaddress

__all__ = ["client_key", "network"]


def client_key(ip: str) -> str:
    """The unit limits count: the IPv4 address, or the IPv6 /64; unparsable input stands for itself."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def network(ip: str) -> str:
    """The network a client is counted by: its IPv4 /24 or IPv6 /64; unparsable input stands for itself."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    prefix = 24 if isinstance(addr, ipaddress.IPv4Address) else 64
    return str(ipaddress.ip_network((addr, prefix), strict=False))
