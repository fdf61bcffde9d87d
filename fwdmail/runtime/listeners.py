"""Opening and closing the daemon's TCP listeners on the running loop, and how many sessions they may hold.

Untrusted input: connections to implicit-TLS ports before their handshake ends (`TlsGate`: counted per
client and in all, and timed, as a session is); otherwise none here. The session caps bound what clients
can make the listeners hold.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import socket
import ssl
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fwdmail.config import Config, parse_host_port
from fwdmail.runtime.context import StartupError

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
    """The caps for this process's open-files limit (see `caps_for`)."""
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return caps_for(cfg, None if fds == resource.RLIM_INFINITY else fds)


def caps_for(cfg: Config, fds: int | None) -> SessionCaps:
    """The configured caps (`[abuse] max_sessions`, this process's share of it with MX workers, and
    `[submission] max_sessions`), lowered to what `fds` open files (None: unlimited) allow. Of the
    descriptors left after `RESERVED_FDS` and two per queue delivery, MX sessions may take 2/5 (each may
    hold a second one while it forwards: 4/5 in all) and submission 1/10; the rest stays for the MX's
    outgoing connections."""
    from fwdmail.runtime.shares import share

    mx = share(cfg.abuse.max_sessions, cfg.mx.workers)
    submission = cfg.submission.max_sessions
    if fds is None:
        return SessionCaps(mx, submission, None)
    spare = max(0, fds - RESERVED_FDS - 2 * cfg.queue.concurrency)
    return SessionCaps(max(1, min(mx, spare * 2 // 5)), max(1, min(submission, spare // 10)), fds)


class TlsGate:
    """Implicit-TLS connections until their handshake ends, when the SMTP protocol takes them over.

    A listener given `ssl=` would hold such a connection (and its descriptor) for up to a minute before
    any session, per-client count or cap saw it. Here at most `per_client` per client (`key` of its IP)
    and `total` in all are let into the handshake, each for at most `timeout` seconds; a connection past
    either is closed at once (nothing can be answered before TLS).
    """

    def __init__(self, tls: ssl.SSLContext, per_client: int, total: int, timeout: float,
                 key: Callable[[str], str]) -> None:
        self.tls = tls
        self.per_client = per_client
        self.total = total
        self.timeout = timeout
        self.key = key
        self.refused = 0
        self._open: dict[str, int] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for a plain listener: TLS first, then a protocol from `make`."""
        return lambda: _Handshake(self, make)

    def admit(self, key: str) -> bool:
        n = self._open.get(key, 0)
        if n >= self.per_client or self._total >= self.total:
            self.refused += 1
            return False
        self._open[key] = n + 1
        self._total += 1
        return True

    def release(self, key: str) -> None:
        n = self._open.pop(key, 0)
        if n:
            self._total -= 1
        if n > 1:
            self._open[key] = n - 1

    def settled(self, key: str, handshake: asyncio.Future[None]) -> None:
        """A handshake ended (done, failed, timed out or the client left): its place is free."""
        self.release(key)
        if not handshake.cancelled() and handshake.exception() is not None:
            log.debug("TLS handshake failed: %s", type(handshake.exception()).__name__)


class _Handshake(asyncio.Protocol):
    """A gated implicit-TLS connection: admitted, it is handed at once (no byte of it read yet) to
    asyncio's TLS protocol, which gives the SMTP protocol the secured transport once the handshake ends."""

    def __init__(self, gate: TlsGate, make: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.make = make

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        key = self.gate.key(str(peer[0]) if isinstance(peer, tuple) and peer else str(peer))
        if not self.gate.admit(key):
            transport.abort()
            return
        loop = asyncio.get_running_loop()
        handshake: asyncio.Future[None] = loop.create_future()
        handshake.add_done_callback(functools.partial(self.gate.settled, key))
        secured = sslproto.SSLProtocol(loop, self.make(), self.gate.tls, handshake, server_side=True,
                                       ssl_handshake_timeout=self.gate.timeout)
        transport.set_protocol(secured)
        secured.connection_made(transport)


async def listen(addresses: tuple[str, ...], factory: Callable[[], asyncio.Protocol],
                 tls: ssl.SSLContext | None = None, gate: TlsGate | None = None) -> list[asyncio.Server]:
    """Open one server per "host:port" on the running loop; with `gate`, speaking TLS through it."""
    loop = asyncio.get_running_loop()
    servers = []
    if gate is not None:
        factory, tls = gate.factory(factory), None
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


def accepting(sock: Any) -> bool:
    """A listening socket still open and listening (asyncio's TransportSocket or a plain socket)."""
    try:
        return bool(sock.fileno() != -1 and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


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
