"""Opening and closing the daemon's TCP listeners on the running loop, and how many sessions they may hold.

Untrusted input: none here; the session caps bound what clients can make the listeners hold.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config, parse_host_port
from .context import StartupError

log = logging.getLogger("fwdmail.listeners")

# Descriptors kept out of the session caps whatever the configuration: the store (database, WAL, shm),
# DNS sockets, the listening sockets, logs, pipes to MX workers, the executor's threads' files.
RESERVED_FDS = 100


def raise_fd_limit() -> int | None:
    """Raise this process's soft limit of open files to its hard limit; return the soft limit now
    (None: unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return None if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class SessionCaps:
    """Most concurrent sessions this process serves, per listener kind."""

    mx: int
    submission: int
    fd_limit: int | None


def session_caps(cfg: Config) -> SessionCaps:
    """The configured caps (`[abuse] max_sessions`, this process's share of it with MX workers, and
    `[submission] max_sessions`), lowered to what the open-files limit allows. Of the descriptors left
    after `RESERVED_FDS` and two per queue delivery, MX sessions may take 2/5 (each may hold a second one
    while it forwards: 4/5 in all) and submission 1/10; the rest stays for the MX's outgoing connections."""
    from .workers import share  # workers imports this module

    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    mx = share(cfg.abuse.max_sessions, cfg.mx.workers)
    submission = cfg.submission.max_sessions
    if fds == resource.RLIM_INFINITY:
        return SessionCaps(mx, submission, None)
    spare = max(0, fds - RESERVED_FDS - 2 * cfg.queue.concurrency)
    return SessionCaps(max(1, min(mx, spare * 2 // 5)), max(1, min(submission, spare // 10)), fds)


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
