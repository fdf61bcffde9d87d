"""The MX service: listeners on `[mx] listen` (or worker processes), start and stop.

Untrusted input: connections from anyone on port 25, handed to the SMTP server (`smtp.server`) with
the MX's handler (`mx.handler`); the decisions are `mx.decisions.Mx`'s, forwarding `mx.forward`'s.
A forwarded message lives in memory only, until the reply after DATA: no row, no file, no log line
names an address or an IP.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Sequence
from typing import Any

from fwdmail.mx.decisions import Mx
from fwdmail.mx.dedup import message_hasher
from fwdmail.mx.handler import MxHandler
from fwdmail.mx.workers import Dispatcher, Inbox
from fwdmail.policy.contract import InboundPolicy
from fwdmail.runtime.context import Context
from fwdmail.runtime.listeners import close_servers, listen, session_caps
from fwdmail.runtime.tasks import cancel_and_wait
from fwdmail.smtp import replies
from fwdmail.smtp.limits import Sessions
from fwdmail.smtp.server import SmtpServer

__all__ = ["MxService"]

log = logging.getLogger("fwdmail.mx")

SESSIONS_REPORT_EVERY = 1.0


class MxService:
    """The MX listeners on `[mx] listen`, with STARTTLS offered."""

    name = "mx"

    def __init__(self, ctx: Context, policies: Sequence[InboundPolicy] = (), *,
                 worker_command: list[str] | None = None, inbox_fd: int | None = None) -> None:
        """`worker_command` starts a worker process when `[mx] workers` > 1; a worker itself is given
        `inbox_fd`, where the serving process sends it connections, instead of listening."""
        self.ctx = ctx
        self.mx = Mx(ctx, policies)
        self.handler = MxHandler(self.mx)
        self.sessions = Sessions("MX", session_caps(ctx.config).mx)
        self._servers: list[asyncio.Server] = []
        self._worker_command = worker_command
        self._inbox_fd = inbox_fd
        self._dispatcher: Dispatcher | None = None
        self._inbox: Inbox | None = None
        self._adopting: set[asyncio.Task[object]] = set()
        self._reporter: asyncio.Task[None] | None = None

    def _protocol(self) -> SmtpServer:
        return SmtpServer(
            self.handler, hostname=self.mx.hostname, data_size_limit=self.ctx.config.mx.max_message_size,
            sessions=self.sessions, tls_context=self.ctx.server_tls(), require_starttls=False,
            auth_exclude_mechanism=["LOGIN", "PLAIN"], loop=asyncio.get_running_loop(),
            timeout=self.ctx.config.abuse.idle_timeout, data_timeout=self.ctx.config.abuse.command_timeout,
            max_errors=self.ctx.config.abuse.max_errors_per_session, on_error_reply=self.mx.protocol_error,
            data_hash=message_hasher, max_junk_commands=self.ctx.config.abuse.max_junk_commands,
            max_session_time=self.ctx.config.abuse.max_session_time,
        )

    async def start(self) -> None:
        self.ctx.server_tls()
        await self.mx.load_srs_lengths()
        workers = self.ctx.config.mx.workers
        metrics = self.ctx.metrics
        metrics.track_sessions("mx", lambda: len(self.sessions))
        if self._inbox_fd is not None:
            self._inbox = Inbox(self._inbox_fd, self._adopt, self.mx.delivered.apply, self.ctx.stopping.set)
            self.mx.delivered.tell = metrics.relay = self._inbox.tell
            self._inbox.start()
            self._reporter = asyncio.get_running_loop().create_task(self._report_sessions())
        elif workers > 1 and self._worker_command:
            self._dispatcher = Dispatcher(workers, self._worker_command, self._adopt, self.mx.delivered.apply,
                                          metrics.apply)
            self.mx.delivered.tell = self._dispatcher.tell
            await self._dispatcher.start(self.ctx.config.mx.listen)
        else:
            self._servers = await listen(self.ctx.config.mx.listen, self._protocol)
            log.info("MX listening on %d address(es)", len(self._servers))

    async def _report_sessions(self) -> None:
        """In a worker: tell the serving process this process's open sessions, at most once a second."""
        while not self.ctx.stopping.is_set():
            self.ctx.metrics.report_sessions("mx")
            await asyncio.sleep(SESSIONS_REPORT_EVERY)

    def listening(self) -> list[Any]:
        """The sockets this process accepts MX connections on (for `/healthz`)."""
        if self._dispatcher is not None:
            return self._dispatcher.listening()
        return [sock for server in self._servers for sock in server.sockets]

    def _adopt(self, sock: socket.socket) -> None:
        """Serve a connection accepted elsewhere (by the dispatcher, or sent by the serving process)."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(self._protocol, sock))
        self._adopting.add(task)
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task[object]) -> None:
        self._adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("an MX connection could not be set up: %s", type(task.exception()).__name__)

    def hangup(self) -> None:
        """Pass SIGHUP on to the worker processes (each reloads its TLS certificate)."""
        if self._dispatcher is not None:
            self._dispatcher.signal(signal.SIGHUP)

    async def stop(self) -> None:
        """Refuse new connections, let messages being received or forwarded finish (at most
        `shutdown_timeout`, or until a second signal), then close every session with a 421."""
        for server in self._servers:
            server.close()
        if self._dispatcher is not None:
            self._dispatcher.close()
        if self._inbox is not None:
            self._inbox.stop()
        if self._reporter is not None:
            await cancel_and_wait({self._reporter})
        log.info("MX closed to new connections; %d session(s) inside a message", self.sessions.busy)
        if not await self.sessions.drain(self.ctx.drain_left(), self.ctx.force_stop):
            log.warning("MX stopping with %d message(s) still being received", self.sessions.busy)
        await self.mx.drain(self.ctx.drain_left())
        self.sessions.close(replies.SHUTTING_DOWN.reply)
        await close_servers(self._servers)
        await self.mx.close()
        if self._dispatcher is not None:
            if self.ctx.force_stop.is_set():
                self._dispatcher.signal(signal.SIGTERM)  # their second signal: stop at once
            await self._dispatcher.wait(self.ctx.drain_left())
