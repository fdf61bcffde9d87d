"""Which addresses a webhook may be POSTed to: no server-side request forgery.

Untrusted input: the host of a webhook URL (written by an alias's owner) and the DNS answers for it. The
host is resolved once, through the daemon's resolver; every address it resolves to must be public
(`non_public`, from `mail.ipranges`, says why one is not), and the caller connects to the address
checked here, never resolving again (a second answer could point somewhere else: DNS rebinding).
`allow_private` (tests, closed networks) lets any address through.
"""

from __future__ import annotations

import asyncio
import ipaddress

import dns.asyncresolver
import dns.exception
import dns.resolver

from fwdmail.mail.ipranges import non_public

__all__ = ["Refused", "Unresolved", "non_public", "public_address"]

_Ip = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAX_ADDRESSES = 32


class Refused(Exception):
    """The host resolves to an address a webhook may not reach; the message says which kind."""


class Unresolved(Exception):
    """The host cannot be resolved now (`temporary`) or does not exist."""

    def __init__(self, text: str, temporary: bool) -> None:
        super().__init__(text)
        self.temporary = temporary


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
