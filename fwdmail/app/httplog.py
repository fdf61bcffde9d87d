"""The web/API request log: what one row holds, the client network it may keep, and writing rows.

Untrusted input: the client address (truncated here to its /24 or /48 before anything keeps it; web
logins count by the same function with /64)."""

from __future__ import annotations

import ipaddress

from fwdmail import store
from fwdmail.store import HttpLogRecord

__all__ = ["HttpLogRecord", "client_network", "list_http_logs", "log_requests"]


def client_network(address: str | None, v6_prefix: int = 48) -> str:
    """The /24 (IPv4) or `v6_prefix` (IPv6) network of `address`, never the address; "" if it is not an IP.
    An IPv4-mapped IPv6 address counts as the IPv4 address."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def log_requests(records: list[HttpLogRecord]) -> int:
    return store.log_http_requests(records)


@store.reads
def list_http_logs(account_email: str | None = None) -> list[HttpLogRecord]:
    return store.list_http_logs(account_email)
