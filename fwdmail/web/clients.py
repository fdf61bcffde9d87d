"""The client's address as a request shows it: the peer, or behind a trusted proxy the last hop it added.

Untrusted input: X-Forwarded-For, believed only from `[http] trusted_proxies` and only hop by hop."""

from __future__ import annotations

import ipaddress

from aiohttp import web


def client_address(request: web.Request, proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
                   ) -> str:
    """The peer, or with a trusted proxy as peer the last untrusted X-Forwarded-For hop."""
    peer = request.remote or ""
    if not proxies:
        return peer
    hops = [peer, *reversed([h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")])]
    for hop in hops:
        try:
            ip = ipaddress.ip_address(hop)
        except ValueError:
            return ""
        if not any(ip in net for net in proxies):
            return hop
    return hops[-1]
