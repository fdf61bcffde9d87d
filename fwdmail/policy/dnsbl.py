"""DNS blocklist (DNSBL, RFC 5782) checks of connecting clients.

Untrusted input: the client's IP address and the lists' DNS answers. A lookup that fails or times out
counts as "not listed": a broken or slow list must not stop mail. Answers outside 127.0.0.0/8, and
the 127.255.255.0/24 error codes some lists return to refused resolvers, do not count as listings.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception

__all__ = ["listed", "query_name"]

_LISTED = ipaddress.ip_network("127.0.0.0/8")
_ERRORS = ipaddress.ip_network("127.255.255.0/24")


def query_name(ip: str, zone: str) -> str | None:
    """The name to look up for `ip` in `zone` (reversed octets or nibbles), or None if `ip` is not an IP."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        labels = str(addr).split(".")
    else:
        labels = list(addr.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.rstrip(".")


async def _listed_in(resolver: dns.asyncresolver.Resolver, name: str, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            answer = await resolver.resolve(name, "A", search=False)
    except (dns.exception.DNSException, TimeoutError):
        return False
    for rdata in answer:
        try:
            addr = ipaddress.IPv4Address(rdata.address)
        except ValueError:
            continue
        if addr in _LISTED and addr not in _ERRORS and addr != ipaddress.IPv4Address("127.0.0.1"):
            return True
    return False


async def listed(resolver: dns.asyncresolver.Resolver, ip: str, zones: Sequence[str],
                 timeout: float = 5.0) -> str | None:
    """The first zone (in configured order) that lists `ip`, or None.

    All zones are asked at once; each has `timeout` seconds to answer, a silent one counts as not listing.
    """
    names = [(zone, query_name(ip, zone)) for zone in zones]
    asked = [(zone, name) for zone, name in names if name]
    hits = await asyncio.gather(*(_listed_in(resolver, name, timeout) for _, name in asked))
    return next((zone for (zone, _), hit in zip(asked, hits, strict=True) if hit), None)
