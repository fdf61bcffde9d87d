"""What every daemon service shares: config, secrets, the blocking seam, TLS, stop signals, metrics."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fwdmail.config import Config
from fwdmail.runtime.datadir import Runtime
from fwdmail.runtime.executor import Blocking
from fwdmail.runtime.metrics import Metrics
from fwdmail.runtime.sharedstate import SharedState

if TYPE_CHECKING:
    from fwdmail.smtp.client import Delivery


log = logging.getLogger("fwdmail.tls")


class StartupError(RuntimeError):
    """The daemon cannot start (a port taken, a certificate unreadable); the message says which."""


# TLS 1.2: forward secrecy (ECDHE) and AEAD only; TLS 1.3's own suites are all AEAD with forward secrecy.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


def server_tls_context(runtime: Runtime) -> ssl.SSLContext:
    """TLS 1.2+ with the configured (or generated) certificate; no renegotiation, no compression."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(str(runtime.cert_path), str(runtime.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"tls.cert / tls.key: cannot load {runtime.cert_path} with "
                           f"{runtime.key_path}: {getattr(exc, 'strerror', None) or exc}") from None
    return ctx


class ServerTls:
    """The daemon's server TLS: one listening context, whose every handshake takes the current pair.

    Listeners keep the context they were given (an implicit-TLS server holds it for its life), so a
    reload builds a complete new context and the listening context's SNI callback, which OpenSSL runs
    on every ClientHello (with or without a server name), moves each new handshake onto it. Sessions
    already encrypted keep theirs. A pair that does not load leaves the current one in place.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.listening = self.current = server_tls_context(runtime)
        self.listening.sni_callback = self._select

    def _select(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                ctx: ssl.SSLContext) -> None:
        if self.current is not ctx:
            conn.context = self.current

    async def reload(self, blocking: Blocking) -> bool:
        """Load the pair from disk again for new handshakes; False (one log line) if it does not load."""
        try:
            fresh = await blocking.cpu(server_tls_context, self.runtime)
        except StartupError as exc:
            log.error("certificate not reloaded, keeping the previous one: %s", exc)
            return False
        self.current = fresh
        log.info("certificate reloaded for new TLS sessions")
        return True


@dataclass
class Context:
    runtime: Runtime
    blocking: Blocking = field(default_factory=Blocking)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    force_stop: asyncio.Event = field(default_factory=asyncio.Event)
    tls: ServerTls | None = None
    shared: SharedState | None = None
    """What every node shares (`[cluster] redis_url`); None: each feature keeps its own memory."""
    metrics: Metrics = field(default_factory=Metrics)
    delivery: Delivery = field(init=False)
    _drain_until: float | None = field(default=None, init=False)

    def drain_left(self) -> float:
        """Seconds the stop may still spend draining: one `shutdown_timeout` for all services together,
        counted from the first call (serve makes it when the stop signal arrives)."""
        now = time.monotonic()
        if self._drain_until is None:
            self._drain_until = now + self.config.shutdown_timeout
        return max(0.0, self._drain_until - now)

    @property
    def config(self) -> Config:
        return self.runtime.config

    def __post_init__(self) -> None:
        from fwdmail.smtp.client import Delivery

        self.delivery = Delivery(self.runtime.config)
        self.blocking.write_lock_timeout = self.runtime.config.store.write_lock_timeout
        sub = self.runtime.config.submission
        self.blocking.bound_hashing(sub.auth_hash_threads, sub.auth_hash_queue)

    def server_tls(self) -> ssl.SSLContext:
        """The context listeners hand to TLS handshakes (it follows `reload_tls`)."""
        if self.tls is None:
            self.tls = ServerTls(self.runtime)
        return self.tls.listening

    async def reload_tls(self) -> bool:
        """Reload the certificate and key for new TLS sessions (on SIGHUP); False if the new pair is bad."""
        if self.tls is None:
            return False
        return await self.tls.reload(self.blocking)
