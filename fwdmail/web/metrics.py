"""Prometheus metrics over HTTP: `GET /metrics` on the `[metrics] listen` addresses (no token: keep them
on loopback or a scrape-only network), and on the `[http]` listener behind `[metrics] token` (Bearer)
when one is set. Each scrape reads the queue's depth from the store through the executor (one grouped
count); the rest is counted as it happens (`runtime.metrics`).

Untrusted input: scrape requests: the Authorization header (compared in constant time with the token;
nothing else of a request is read) and connections to the metrics listener (bounded per client and in
all). An answer holds numbers and fixed label values only: no address, domain or IP.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from fwdmail.app import metrics as queue_stats
from fwdmail.config import parse_host_port
from fwdmail.runtime.context import Context, StartupError

__all__ = ["register", "scrape"]

log = logging.getLogger("fwdmail.metrics")

SCRAPE_TIMEOUT = 2.0
"""Seconds a scrape waits for the queue's depth; past them it answers without it (`fwdmail_store_up 0`)."""
MAX_CONNECTIONS = 16
MAX_CONNECTIONS_PER_IP = 4
KEEPALIVE_TIMEOUT = 15.0
SHUTDOWN_TIMEOUT = 1.0


class Limits(Protocol):
    """The HTTP listener's connection counter (`web.server.ConnectionLimits`)."""

    open: int

    def __init__(self, per_client: int, total: int) -> None: ...


SiteFactory = Callable[[web.AppRunner, str, int, Any], web.BaseSite]
"""Makes a TCP site whose connections pass the given limits first (`web.server.LimitedSite`)."""
Middleware = Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]],
                      Awaitable[web.StreamResponse]]
"""An aiohttp middleware (the HTTP listener's `paced`, which keeps its slow-client timers right)."""


async def scrape(ctx: Context) -> web.Response:
    """The metrics in Prometheus's text format."""
    try:
        depth = await asyncio.wait_for(ctx.blocking.db(queue_stats.queue_depth), SCRAPE_TIMEOUT)
    except Exception as exc:
        log.warning("metrics: queue depth not read: %s", type(exc).__name__)
        depth = None
    body = ctx.metrics.exposition(depth)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def _bearer(request: web.Request) -> bytes:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip().encode("utf-8", "replace") if scheme.lower() == "bearer" else b""


def _with_token(ctx: Context, token: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    expected = token.encode("ascii")

    async def metrics(request: web.Request) -> web.Response:
        if not hmac.compare_digest(_bearer(request), expected):
            return web.json_response(
                {"error": "unauthorized", "message": "the metrics token is required (Bearer)"}, status=401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return await scrape(ctx)

    return metrics


class _Listener:
    """`[metrics] listen`: its own small aiohttp runner, started and stopped with the HTTP listener's."""

    def __init__(self, ctx: Context, limits: Limits, site: SiteFactory,
                 middlewares: Sequence[Middleware] = ()) -> None:
        self.ctx = ctx
        self.middlewares = tuple(middlewares)
        self.limits = type(limits)(MAX_CONNECTIONS_PER_IP, MAX_CONNECTIONS)
        self.site = site
        self.runner: web.AppRunner | None = None

    async def start(self, _app: web.Application) -> None:
        addresses = self.ctx.config.metrics.listen
        if not addresses:
            return
        inner = web.Application(middlewares=self.middlewares)

        async def metrics(_request: web.Request) -> web.Response:
            return await scrape(self.ctx)

        inner.router.add_get("/metrics", metrics)
        runner = web.AppRunner(inner, handle_signals=False, access_log=None,
                               keepalive_timeout=KEEPALIVE_TIMEOUT, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        self.runner = runner
        for address in addresses:
            host, port = parse_host_port(address)
            try:
                await self.site(runner, host, port, self.limits).start()
            except OSError as exc:
                await self.stop(_app)
                raise StartupError(f"metrics.listen: cannot listen on {address}: {exc.strerror or exc}"
                                   ) from None
        log.info("metrics listening on %d address(es)", len(addresses))

    async def stop(self, _app: web.Application) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def register(application: web.Application, ctx: Context, limits: Limits, site: SiteFactory,
             middlewares: Sequence[Middleware] = ()) -> None:
    """Add the metrics to the HTTP service: `/metrics` behind the token (if set), the `[metrics] listen`
    listener (started and stopped with `application`), and the HTTP listener's open connections."""
    ctx.metrics.track_sessions("http", lambda: limits.open)
    if ctx.config.metrics.token:
        application.router.add_get("/metrics", _with_token(ctx, ctx.config.metrics.token))
    listener = _Listener(ctx, limits, site, middlewares)
    application.on_startup.append(listener.start)
    application.on_cleanup.append(listener.stop)
