"""DNS lookups for sender authentication: records of a name through `dns.asyncresolver` and its memo.

Untrusted input: the names asked about (taken from envelopes, headers and signatures) and the answers
of any DNS server. A name that cannot be asked, an absent name or record and a malformed answer all
come back as no records; a timeout or SERVFAIL as TEMPFAIL. Nothing raises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import dns.asyncresolver
import dns.exception
import dns.resolver

from fwdmail.auth import dnsmemo

__all__ = ["TEMPFAIL", "Offload", "TempFail", "inline", "lookup", "query", "txt"]

Offload = Callable[..., Awaitable[Any]]
"""Runs a CPU-bound function with its arguments (an executor seam, or `inline`)."""


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """An `Offload` running `fn` on the caller's thread."""
    return fn(*args)


class TempFail:
    """A DNS lookup that failed temporarily (timeout, SERVFAIL)."""

    def __repr__(self) -> str:
        return "TEMPFAIL"


TEMPFAIL: Final = TempFail()


async def lookup(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str
                 ) -> tuple[list[Any] | TempFail, float]:
    """(records of `name`, until when they are fresh): [] when there are none (or the name is unusable),
    TEMPFAIL on failure; only a positive answer has a freshness (else 0) and is remembered."""
    memo = dnsmemo.memo_for(resolver).answers
    key = (name.lower(), rdtype)
    found = memo.get(key)
    if found is not None:
        return found
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return [], 0.0
    except (dns.exception.Timeout, dns.resolver.NoNameservers):
        return TEMPFAIL, 0.0
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return [], 0.0
    records = list(answer)
    memo.put(key, (records, answer.expiration), answer.expiration)
    return records, answer.expiration


async def query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[Any] | TempFail:
    """Records of `name`; [] when there are none (or the name is unusable); TEMPFAIL on failure."""
    return (await lookup(resolver, name, rdtype))[0]


async def txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[bytes] | TempFail:
    """Each TXT record of `name`, its strings joined."""
    records = await query(resolver, name, "TXT")
    if isinstance(records, TempFail):
        return records
    return [b"".join(r.strings) for r in records]
