"""Which addresses a webhook may be POSTed to: no server-side request forgery.

Untrusted input: the host of a webhook URL (written by an alias's owner) and the DNS answers for it. The
host is resolved once, through the daemon's resolver; every address it resolves to must be public
(`non_public` says why one is not), and the caller connects to the address checked here, never
resolving again (a second answer could point somewhere else: DNS rebinding). `allow_private` (tests,
closed networks) lets any address through.
"""

from __future__ import annotations

import asyncio
import ipaddress

import dns.asyncresolver
import dns.exception
import dns.resolver

__all__ = ["Refused", "Unresolved", "non_public", "public_address"]

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
_MAX_ADDRESSES = 32


class Refused(Exception):
    """The host resolves to an address a webhook may not reach; the message says which kind."""


class Unresolved(Exception):
    """The host cannot be resolved now (`temporary`) or does not exist."""

    def __init__(self, text: str, temporary: bool) -> None:
        super().__init__(text)
        self.temporary = temporary


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


async def _lookup(resolver: dns.asyncresolver.Resolver, host: str, timeout: float) -> list[_Ip]:
    found: list[_Ip] = []
    failures = 0
    missing = 0
    for rtype in ("A", "AAAA"):
        try:
            async with asyncio.timeout(timeout):
                answer = await resolver.resolve(host, rtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            missing += 1
            continue
        except (dns.exception.DNSException, TimeoutError):
            failures += 1
            continue
        found += [ipaddress.ip_address(r.address) for r in list(answer)[:_MAX_ADDRESSES]]
    if not found:
        if failures:
            raise Unresolved(f"cannot resolve the webhook host {host} now", temporary=True)
        raise Unresolved(f"the webhook host {host} does not exist", temporary=False)
    return found


async def public_address(resolver: dns.asyncresolver.Resolver, host: str, allow_private: bool,
                         timeout: float) -> str:
    """The address to connect to for `host` (a name or an IP literal, IPv6 in brackets or not): its
    first, once every address it resolves to is public (or `allow_private`). Raises Refused or
    Unresolved."""
    literal = host[1:-1] if host.startswith("[") else host
    try:
        addresses: list[_Ip] = [ipaddress.ip_address(literal)]
    except ValueError:
        addresses = await _lookup(resolver, host, timeout)
    if not allow_private:
        for addr in addresses:
            why = non_public(addr)
            if why is not None:
                raise Refused(f"the webhook host resolves to a {why} address")
    return str(addresses[0])
