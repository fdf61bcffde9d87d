"""The HTTP listener: aiohttp's AppRunner and TCP sites on the daemon's own loop, with connection limits
per client and in all, the body size limit, JSON errors, and one request-log row per request.

Untrusted input: connections and requests from web clients (and, only from `[http] trusted_proxies`,
X-Forwarded-For). A failing handler answers a JSON 500, never a traceback; the log row keeps the route
pattern and the client's /24 or /48, never the path as sent, a query string, a body or an address."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fwdmail.app import httplog, now
from fwdmail.config import HttpConfig, parse_host_port
from fwdmail.runtime.context import Context, StartupError
from fwdmail.runtime.listeners import accepting
from fwdmail.web import api, metrics, pages
from fwdmail.web.auth import ACCOUNT_KEY
from fwdmail.web.clients import client_address

log = logging.getLogger("fwdmail.http")

KEEPALIVE_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 5.0
# Request-log rows waiting for the store: past this many (the store gone for long), new rows are dropped
# and counted, so memory stays bounded.
MAX_PENDING_ROWS = 10_000
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ERROR_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "timeout", 413: "too_large", 415: "unsupported_media_type",
               429: "busy", 503: "unavailable"}


class ConnectionLimits:
    """Open connections per client address and in all."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self.open = 0
        self.by_client: dict[str, int] = {}

    def admit(self, client: str) -> bool:
        if self.open >= self.total or self.by_client.get(client, 0) >= self.per_client:
            return False
        self.open += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        return True

    def release(self, client: str) -> None:
        self.open -= 1
        left = self.by_client.get(client, 1) - 1
        if left > 0:
            self.by_client[client] = left
        else:
            self.by_client.pop(client, None)


class _Limited(asyncio.Protocol):
    """A connection admitted by `ConnectionLimits` and handed to aiohttp's protocol, or closed at once.

    It is also closed when a request's headers take longer than `header_timeout` to arrive (counted from
    the connection's start, or from the end of its previous request) or its body longer than
    `body_timeout` after them: a client trickling bytes (slowloris) holds its slot that long at most.
    The request middleware says when headers ended (`started`), and when the request ended (`finished`).
    """

    def __init__(self, factory: Callable[[], Any], limits: ConnectionLimits, header_timeout: float,
                 body_timeout: float) -> None:
        self._factory = factory
        self._limits = limits
        self._inner: Any = None
        self._client = ""
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for = ""
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) and peer else ""
        if not self._limits.admit(self._client):
            transport.abort()
            return
        self._transport = transport
        self._inner = self._factory()
        self._inner.connection_made(transport)
        self._arm(self._header_timeout, "headers")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        if self._transport is not None:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._expire, what)
            self._waiting_for = what

    def _disarm(self) -> None:
        self._waiting_for = ""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, what: str) -> None:
        self._timer = None
        self._waiting_for = ""
        if self._transport is not None:
            log.debug("HTTP connection closed: request %s too slow", what)
            self._transport.abort()

    def started(self, request: web.BaseRequest) -> None:
        """A request's headers arrived: its body, if it has one, gets `body_timeout` to follow."""
        self._disarm()
        if request.body_exists and not request.content.at_eof():
            self._arm(self._body_timeout, "body")
            request.content.on_eof(self._body_done)

    def _body_done(self) -> None:
        if self._waiting_for == "body":
            self._disarm()

    def finished(self) -> None:
        """A request was answered: the next one's headers get `header_timeout` from now."""
        self._arm(self._header_timeout, "headers")

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        if self._inner is not None:
            self._limits.release(self._client)
            self._inner.connection_lost(exc)
            self._inner = None


class LimitedSite(web.TCPSite):
    """A TCP site whose connections pass `ConnectionLimits` first."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, limits: ConnectionLimits,
                 cfg: HttpConfig | None = None) -> None:
        super().__init__(runner, host, port)
        self._limits = limits
        cfg = cfg or HttpConfig()
        self._timeouts = (cfg.header_timeout, cfg.body_timeout)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Limited(server, self._limits, *self._timeouts),
                                                self._host, self._port, reuse_address=True)

    def listening(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()


class RequestLog:
    """Request rows waiting to be written: one write at a time, taking all that arrived meanwhile."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._pending: list[httplog.HttpLogRecord] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def add(self, row: httplog.HttpLogRecord) -> None:
        if len(self._pending) >= MAX_PENDING_ROWS:
            self.dropped += 1
            return
        self._pending.append(row)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._pending:
            rows, self._pending = self._pending, []
            try:
                await self._ctx.blocking.db(httplog.log_requests, rows)
            except Exception as exc:
                log.warning("request log: %d rows not written: %s", len(rows), type(exc).__name__)
                return

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pending:
            await self._write()
        if self.dropped:
            log.warning("request log: %d rows dropped while the store was unavailable", self.dropped)


MESSAGES = {401: "a valid API token is required (HTTP Basic user name or Bearer)",
            404: "no such resource", 405: "method not allowed here", 413: "the request body is too large"}
KEPT_HEADERS = ("www-authenticate", "allow", "link", "x-page", "x-limit", "retry-after")


def _error_reply(status: int, message: str) -> web.Response:
    return api.reply({"error": ERROR_CODES.get(status, "error"), "message": message}, status=status)


def _from_exception(exc: web.HTTPException) -> web.Response:
    """An HTTP exception as a JSON reply (an `ApiError` carries its own body)."""
    if isinstance(exc, api.ApiError):
        response = web.Response(text=exc.text, status=exc.status, content_type="application/json")
    else:
        response = _error_reply(exc.status, MESSAGES.get(exc.status, exc.reason))
    for name, value in exc.headers.items():
        if name.lower() in KEPT_HEADERS:
            response.headers[name] = value
    return response


@web.middleware
async def paced(request: web.Request,
                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Tell a limited connection when a request's headers arrived and when it was answered, which
    restarts its slow-client timers (`_Limited`)."""
    connection = request.transport.get_protocol() if request.transport is not None else None
    limited = connection if isinstance(connection, _Limited) else None
    if limited is not None:
        limited.started(request)
    try:
        return await handler(request)
    finally:
        if limited is not None:
            limited.finished()


def make_app(ctx: Context, requests: RequestLog, listeners: api.ListenerCheck | None = None,
             ) -> web.Application:
    """The application; `listeners` says which of the daemon's listeners are down (for `/healthz`)."""
    cfg: HttpConfig = ctx.config.http
    proxies = tuple(ipaddress.ip_network(p, strict=False) for p in cfg.trusted_proxies)

    @web.middleware
    async def logged(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        started = time.monotonic()
        response: web.StreamResponse
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = _from_exception(exc)
        except asyncio.CancelledError:
            raise
        except ConnectionError:  # the client left, or was closed for sending its body too slowly
            response = _error_reply(408, "the request body did not arrive in time")
        except Exception:
            log.exception("error answering %s %s", request.method, _route(request))
            response = _error_reply(500, "internal error")
        account = request.get(ACCOUNT_KEY)
        requests.add(httplog.HttpLogRecord(
            now(), account.id if account is not None else None,
            request.method if request.method in METHODS else "OTHER", _route(request), response.status,
            int((time.monotonic() - started) * 1000),
            httplog.client_network(client_address(request, proxies)),
        ))
        return response

    application = web.Application(client_max_size=cfg.max_body_size,
                                  middlewares=[paced, logged, pages.middleware],
                                  handler_args={"access_log": None})
    application[api.CONTEXT_KEY] = ctx
    application[api.LISTENERS_KEY] = listeners or (lambda: [])
    application.add_routes(api.routes())
    pages.setup(application, ctx)
    return application


def _route(request: web.Request) -> str:
    """The matched route pattern ("/v1/domains/{domain}"), never the path as sent."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


class WebService:
    """`[http] listen`: started after the store is open, stopped before it closes."""

    name = "http"

    def __init__(self, ctx: Context, listeners: api.ListenerCheck | None = None) -> None:
        self.ctx = ctx
        self.requests = RequestLog(ctx)
        self.runner: web.AppRunner | None = None
        self.sites: list[LimitedSite] = []
        self._others = listeners

    def listening(self) -> list[Any]:
        """The sockets the HTTP sites accept on (for `/healthz`)."""
        return [sock for site in self.sites for sock in site.listening()]

    def _listener_problems(self) -> list[str]:
        """The daemon's listeners down, this service's own sites included (before serve counts them)."""
        found = self._others() if self._others is not None else []
        if any(line.startswith(f"{self.name}:") for line in found):
            return found
        want, up = len(self.ctx.config.http.listen), sum(1 for s in self.listening() if accepting(s))
        return found + ([f"{self.name}: {want - up} of {want} listener(s) down"] if up < want else [])

    async def start(self) -> None:
        cfg = self.ctx.config.http
        limits = ConnectionLimits(cfg.max_connections_per_ip, cfg.max_connections)
        application = make_app(self.ctx, self.requests, self._listener_problems)
        metrics.register(application, self.ctx, limits,
                         lambda *args: LimitedSite(*args, cfg), middlewares=(paced,))
        runner = web.AppRunner(application, handle_signals=False, access_log=None,
                               keepalive_timeout=KEEPALIVE_TIMEOUT, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self.runner = runner
        for address in cfg.listen:
            host, port = parse_host_port(address)
            try:
                site = LimitedSite(runner, host, port, limits, cfg)
                await site.start()
                self.sites.append(site)
            except OSError as exc:
                await runner.cleanup()
                self.runner = None
                raise StartupError(f"http.listen: cannot listen on {address}: {exc.strerror or exc}"
                                   ) from None
        log.info("HTTP API listening on %d address(es)", len(cfg.listen))

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.sites = []
        await self.requests.close()
