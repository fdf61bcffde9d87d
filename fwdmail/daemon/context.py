"""What every daemon service shares: config, secrets, the blocking seam, TLS, stop signals."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import Config
from ..datadir import Runtime
from .executor import Blocking

if TYPE_CHECKING:
    from .delivery import Delivery


class StartupError(RuntimeError):
    """The daemon cannot start (a port taken, a certificate unreadable); the message says which."""


def server_tls_context(runtime: Runtime) -> ssl.SSLContext:
    """TLS 1.2+ with the configured (or generated) certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(runtime.cert_path), str(runtime.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"tls.cert / tls.key: cannot load {runtime.cert_path} with "
                           f"{runtime.key_path}: {getattr(exc, 'strerror', None) or exc}") from None
    return ctx


@dataclass
class Context:
    runtime: Runtime
    blocking: Blocking = field(default_factory=Blocking)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    force_stop: asyncio.Event = field(default_factory=asyncio.Event)
    tls: ssl.SSLContext | None = None
    delivery: Delivery = field(init=False)

    @property
    def config(self) -> Config:
        return self.runtime.config

    def __post_init__(self) -> None:
        from .delivery import Delivery

        self.delivery = Delivery(self.runtime.config)

    def server_tls(self) -> ssl.SSLContext:
        if self.tls is None:
            self.tls = server_tls_context(self.runtime)
        return self.tls
