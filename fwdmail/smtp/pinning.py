"""aiohttp resolvers that answer only with addresses already checked, so aiohttp never resolves a host
itself: the MTA-STS policy fetch (`smtp.mtasts`) and the webhook POST (`mx.webhook`).

Imported only by the code making such a request, when it makes one: aiohttp's client (~5 MiB) stays out
of the processes that never do (an MX worker whose destinations publish no MTA-STS and hold no webhook).

Untrusted input: none; the addresses come from our own checks of the DNS answers.
"""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = ["OneAddress", "PerHost"]


def _result(host: str, address: str, port: int) -> ResolveResult:
    fam = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0,
                         flags=socket.AI_NUMERICHOST)


class PerHost(AbstractResolver):
    """Answers a lookup of a host with the addresses set for it in `addresses`; none set: an error."""

    def __init__(self) -> None:
        self.addresses: dict[str, list[str]] = {}

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        out = [_result(host, address, port) for address in self.addresses.get(host, ())
               if family in (socket.AF_UNSPEC, socket.AF_INET6 if ":" in address else socket.AF_INET)]
        if not out:
            raise OSError(f"{host} has no checked address")
        return out

    async def close(self) -> None:
        return None


class OneAddress(AbstractResolver):
    """Answers every lookup with the one address checked."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [_result(host, self.address, port)]

    async def close(self) -> None:
        return None
