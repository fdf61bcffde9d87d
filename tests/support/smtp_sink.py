"""A real, scriptable downstream SMTP server for tests (aiosmtpd in its own thread).

``SmtpSink`` accepts mail on loopback and records it.  Tests script failures
through ``sink.behaviour`` (per-recipient replies, 4xx-then-2xx DATA, connect-time
421, stalls, dropped connections, refused or broken STARTTLS) to exercise the daemon's
delivery logic.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

__all__ = ["BREAK_TLS", "Behaviour", "Received", "SmtpSink"]

BREAK_TLS = "break"
"""``Behaviour.starttls`` value: answer 220, then send bytes that are no TLS handshake and hang up."""

DataReply = str | Callable[[Envelope], "str | None"] | None


@dataclass(frozen=True)
class Received:
    """One message the sink accepted (DATA answered 2xx)."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    peer: str
    mail_options: tuple[str, ...] = ()
    """The MAIL FROM parameters, e.g. ``("SIZE=123", "BODY=8BITMIME", "SMTPUTF8")``."""


@dataclass
class Behaviour:
    """Scripted replies; ``None`` everywhere means "accept normally".

    Reply strings are sent verbatim (e.g. ``"450 4.2.0 Mailbox busy"``); use
    ``"\\r\\n"`` between lines for a multi-line reply.
    """

    connect: str | None = None
    """Reply sent instead of the 220 greeting; the connection is then closed."""
    mail: str | None = None
    """Reply to every MAIL FROM (sender is only accepted if it starts with "2")."""
    rcpt: dict[str, str] = field(default_factory=dict)
    """Lowercased recipient address -> reply to its RCPT TO."""
    data: DataReply = None
    """Reply after the DATA payload: a string, or ``callable(envelope) -> reply | None``."""
    data_replies: list[str | None] = field(default_factory=list)
    """Consumed one per DATA before ``data`` applies; an entry of ``None`` means "no override"."""
    stall_seconds_after_data: float = 0.0
    """Sleep this long after the payload arrives before replying to it."""
    close_mid_data: bool = False
    """After 354 and the first line of the payload, drop the connection without replying."""
    stall_seconds_at: dict[str, float] = field(default_factory=dict)
    """Stage ("CONNECT" for the greeting, "MAIL", "RCPT") -> seconds to wait before replying."""
    data_command: str | None = None
    """Reply to the DATA command itself instead of 354, once a recipient was accepted."""
    starttls: str | None = None
    """Reply to STARTTLS instead of 220 (e.g. ``"454 4.7.0 TLS not available"``), or ``BREAK_TLS``."""
    pipelining: bool = False
    """Offer PIPELINING (RFC 2920) in the EHLO reply; aiosmtpd reads pipelined commands one by one."""
    data_gate: threading.Event | None = None
    """Hold the reply after each payload until this event is set (at most 30 s); others are served meanwhile.
    ``SmtpSink.wait_for_payloads`` tells how many payloads arrived, held or not."""


class _SinkSMTP(SMTP):
    """aiosmtpd ``SMTP`` with connect-time replies and mid-DATA disconnects."""

    def __init__(self, sink: SmtpSink, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._sink._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._sink._live.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        await self._sink._stall("CONNECT")
        reply = self._sink.behaviour.connect
        if reply is None:
            await super()._handle_client()
            return
        await self.push(reply)
        if self.transport is not None:
            self.transport.close()

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        reply = self._sink.behaviour.starttls
        if reply is None or arg or not self.tls_context:
            await super().smtp_STARTTLS(arg)
        elif reply != BREAK_TLS:
            await self.push(reply)
        elif self.transport is not None:
            await self.push("220 Ready to start TLS")
            self.transport.write(b"this is no TLS handshake\r\n")
            self.transport.close()

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        command_reply = self._sink.behaviour.data_command
        if command_reply is not None and envelope is not None and envelope.rcpt_tos and not arg:
            await self.push(command_reply)
            return
        if not (
            self._sink.behaviour.close_mid_data
            and envelope is not None
            and envelope.rcpt_tos
            and not arg
            and self.session is not None
            and self.session.host_name
        ):
            await super().smtp_DATA(arg)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            await asyncio.wait_for(self._reader.readuntil(b"\r\n"), timeout=5)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        if self.transport is not None:
            self.transport.abort()


class _Handler:
    """aiosmtpd handler hooks implementing ``Behaviour``."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves this to a handler that has the hook
        if self.sink.behaviour.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        await self.sink._stall("MAIL")
        reply = self.sink.behaviour.mail or "250 2.1.0 OK"
        if reply.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        await self.sink._stall("RCPT")
        reply = self.sink.behaviour.rcpt.get(address.lower()) or "250 2.1.5 OK"
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        behaviour = self.sink.behaviour
        self.sink._payload_arrived()
        if behaviour.data_gate is not None:
            await asyncio.get_running_loop().run_in_executor(None, behaviour.data_gate.wait, 30)
        if behaviour.stall_seconds_after_data > 0:
            await asyncio.sleep(behaviour.stall_seconds_after_data)
        reply = self.sink._data_reply(envelope)
        if reply is None or reply.startswith("2"):
            n = self.sink._record(
                Received(
                    mail_from=envelope.mail_from or "",
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=envelope.original_content or b"",
                    tls=session.ssl is not None,
                    peer=_fmt_peer(session.peer),
                    mail_options=tuple(envelope.mail_options),
                )
            )
            reply = reply or f"250 2.0.0 OK queued as {n}"
        return reply


def _fmt_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class _Controller(Controller):
    """Threaded aiosmtpd controller serving on a pre-bound socket (so port 0 works)."""

    def __init__(self, sink: SmtpSink, sock: socket.socket, **kwargs: Any) -> None:
        self._sink = sink
        self._sock = sock
        super().__init__(_Handler(sink), hostname=sink.host, port=sock.getsockname()[1], **kwargs)

    def factory(self) -> SMTP:
        self._sink._on_connection()
        return _SinkSMTP(self._sink, self.handler, **self.SMTP_kwargs)

    def _create_server(self) -> Any:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)


class SmtpSink:
    """Downstream SMTP server on loopback that records what it accepts.

    ``tls_context`` (e.g. ``tests.support.tls.server_context()``) enables STARTTLS
    (optional for clients).  ``messages``, ``connections`` and ``behaviour`` are
    reset by ``reset()``; the port is kept across ``stop()``/``start()``.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls_context: ssl.SSLContext | None = None
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"SmtpSink only binds loopback addresses, not {host!r}")
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.behaviour = Behaviour()
        self.messages: list[Received] = []
        self.connections = 0
        self.payloads = 0
        self._cond = threading.Condition()
        self._counter = 0
        self._counting = False
        self._live: set[_SinkSMTP] = set()
        self._controller: _Controller | None = None

    @property
    def address(self) -> str:
        """``"host:port"``."""
        return f"{self.host}:{self.port}"

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> SmtpSink:
        """Bind (a free port the first time, the same port on restart) and serve."""
        if self._controller is not None:
            raise RuntimeError("SmtpSink already started")
        sock = socket.create_server((self.host, self.port), reuse_port=False)
        self.port = sock.getsockname()[1]
        kwargs: dict[str, Any] = {"server_hostname": "sink.test", "ready_timeout": 10.0}
        if self.tls_context is not None:
            kwargs.update(tls_context=self.tls_context, require_starttls=False)
        controller = _Controller(self, sock, **kwargs)
        self._counting = False  # aiosmtpd's start() makes one probe connection
        try:
            controller.start()
        except BaseException:
            sock.close()
            raise
        self._counting = True
        self._controller = controller
        return self

    def stop(self) -> None:
        """Close open client connections, stop the server thread, release the port."""
        controller, self._controller = self._controller, None
        if controller is None:
            return

        def _abort_all() -> None:
            for proto in list(self._live):
                if proto.transport is not None:
                    proto.transport.abort()

        controller.loop.call_soon_threadsafe(_abort_all)
        controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ queries
    def wait_for(self, n: int, timeout: float = 10) -> list[Received]:
        """Block until at least ``n`` messages were accepted; return a copy of ``messages``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"SmtpSink {self.address}: expected at least {n} message(s) within {timeout}s, "
                        f"got {len(self.messages)} over {self.connections} connection(s): "
                        f"{[(m.mail_from, m.rcpt_tos) for m in self.messages]}"
                    )
                self._cond.wait(remaining)
            return list(self.messages)

    def wait_for_payloads(self, n: int, timeout: float = 10) -> bool:
        """Block until at least ``n`` payloads arrived (before any reply to them), at most ``timeout``
        seconds; whether they did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.payloads < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def reset(self) -> None:
        """Forget messages and the connection and payload counts; restore default behaviour."""
        with self._cond:
            self.messages.clear()
            self.connections = 0
            self.payloads = 0
            self.behaviour = Behaviour()

    # ---------------------------------------------------------------- internals
    def _on_connection(self) -> None:
        if self._counting:
            with self._cond:
                self.connections += 1

    def _payload_arrived(self) -> None:
        with self._cond:
            self.payloads += 1
            self._cond.notify_all()

    def _record(self, message: Received) -> int:
        with self._cond:
            self.messages.append(message)
            self._counter += 1
            self._cond.notify_all()
            return self._counter

    async def _stall(self, stage: str) -> None:
        seconds = self.behaviour.stall_seconds_at.get(stage, 0.0)
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _data_reply(self, envelope: Envelope) -> str | None:
        behaviour = self.behaviour
        with self._cond:
            if behaviour.data_replies:
                scripted = behaviour.data_replies.pop(0)
                if scripted is not None:
                    return scripted
        data = behaviour.data
        return data(envelope) if callable(data) else data
