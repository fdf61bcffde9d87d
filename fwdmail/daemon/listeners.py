"""Opening and closing the daemon's TCP listeners on the running loop."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from ..config import parse_host_port
from .context import StartupError


async def listen(addresses: tuple[str, ...], factory: Callable[[], asyncio.Protocol],
                 tls: ssl.SSLContext | None = None) -> list[asyncio.Server]:
    """Open one server per "host:port" on the running loop."""
    loop = asyncio.get_running_loop()
    servers = []
    for addr in addresses:
        host, port = parse_host_port(addr)
        try:
            servers.append(await loop.create_server(
                factory, host, port, ssl=tls, backlog=1024, reuse_address=True, start_serving=True,
            ))
        except OSError as exc:
            for s in servers:
                s.close()
            raise listen_error(addr, exc) from None
    return servers


def listen_error(addr: str, exc: OSError) -> StartupError:
    """The one-line start-up error for an address that cannot be listened on."""
    reason = exc.strerror or str(exc)
    if "address already in use" in str(exc).lower():
        reason = "address already in use"
    return StartupError(f"cannot listen on {addr}: {reason}")


async def close_servers(servers: list[asyncio.Server]) -> None:
    for s in servers:
        s.close()
    for s in servers:
        await s.wait_closed()
