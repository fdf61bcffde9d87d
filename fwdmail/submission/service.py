"""Authenticated submission (STARTTLS on `listen`, implicit TLS on `listen_tls`): users send as their alias.

Untrusted input: connections to the submission listeners, handed to `SubmissionHandler` (`handler`),
with the login protection (`logins`) and the message rules (`message`) it calls. A session is bounded:
sessions per client and in all, errors, commands that do nothing, time to log in, its whole lifetime.
This module opens and closes the listeners, with their group committer and login limiter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fwdmail import store
from fwdmail.policy.clients import client_key
from fwdmail.runtime.context import Context
from fwdmail.runtime.groupcommit import GroupCommitter
from fwdmail.runtime.listeners import TlsGate, listen, session_caps
from fwdmail.smtp import replies
from fwdmail.smtp.limits import Sessions
from fwdmail.smtp.server import SmtpServer
from fwdmail.submission.handler import SubmissionHandler
from fwdmail.submission.logins import AuthLimiter

__all__ = ["SubmissionService"]

log = logging.getLogger("fwdmail.submission")


class SubmissionService:
    """The submission listeners on the serve loop, with their group committer and login limiter."""

    name = "submission"

    def __init__(self, ctx: Context, on_queued: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        cfg = ctx.config.submission
        self.committer: GroupCommitter[store.NewEmail, str] = GroupCommitter(
            ctx.blocking, store.enqueue, store.utcnow)
        self.limiter = AuthLimiter(cfg.auth_failures_per_hour, cfg.auth_lockout, shared=ctx.shared)
        self.handler = SubmissionHandler(ctx, self.committer, self.limiter, on_queued or (lambda: None))
        self._servers: list[asyncio.Server] = []
        self.sessions = Sessions("submission", session_caps(ctx.config).submission)
        ctx.metrics.track_sessions("submission", lambda: len(self.sessions))
        self.gate: TlsGate | None = None

    def _factory(self, implicit_tls: bool) -> Callable[[], SmtpServer]:
        cfg = self.ctx.config.submission
        tls = None if implicit_tls else self.ctx.server_tls()

        def make() -> SmtpServer:
            return SmtpServer(
                self.handler, hostname=self.ctx.config.server_hostname, sessions=self.sessions,
                data_size_limit=cfg.max_message_size, tls_context=tls, require_starttls=not implicit_tls,
                auth_require_tls=not implicit_tls, timeout=cfg.idle_timeout,
                max_errors=cfg.max_errors_per_session, max_junk_commands=cfg.max_junk_commands,
                max_session_time=cfg.max_session_time, login_timeout=cfg.login_timeout,
            )

        return make

    async def start(self) -> None:
        cfg = self.ctx.config.submission
        self._servers = await listen(cfg.listen, self._factory(False))
        self.gate = TlsGate(self.ctx.server_tls(), cfg.max_connections_per_ip, self.sessions.cap or 1,
                            cfg.login_timeout, client_key)
        self._servers += await listen(cfg.listen_tls, self._factory(True), gate=self.gate)
        log.info("submission listening on %d STARTTLS and %d implicit TLS address(es)",
                 len(cfg.listen), len(cfg.listen_tls))

    def listening(self) -> list[Any]:
        """The sockets submission is accepted on (for `/healthz`)."""
        return [sock for server in self._servers for sock in server.sockets]

    async def stop(self) -> None:
        """Refuse new connections, let messages being received or committed get their reply (at most
        `shutdown_timeout`, or until a second signal), then close every session with a 421."""
        for server in self._servers:
            server.close()
        log.info("submission closed to new connections; %d session(s) inside a message", self.sessions.busy)
        if not await self.sessions.drain(self.ctx.drain_left(), self.ctx.force_stop):
            log.warning("submission stopping with %d message(s) still being received", self.sessions.busy)
        try:
            async with asyncio.timeout(self.ctx.drain_left()):
                await self.committer.drain()
        except TimeoutError:
            log.warning("stopping with submissions still being committed")
        self.sessions.close(replies.SHUTTING_DOWN.reply)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except TimeoutError:
                pass
        self._servers = []
