"""`GET /healthz` in-process on a real store: 200 while the store answers, 503 with the reason once it
cannot be opened (its file replaced by a directory, which even root cannot open as a database)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from fwdmail import store
from fwdmail.config import Config, HttpConfig
from fwdmail.runtime import datadir
from fwdmail.runtime.context import Context
from fwdmail.web.server import RequestLog, make_app


def test_healthz_is_503_with_the_reason_when_the_store_is_unreachable(tmp_path: Path) -> None:
    cfg = Config(data_dir=str(tmp_path / "data"), hostname="mx.fwdmail.test")
    runtime = datadir.prepare(cfg, create=True)
    store.close_store()

    async def probe() -> list[tuple[int, dict[str, str]]]:
        ctx = Context(runtime)
        answers = []
        async with TestClient(TestServer(make_app(ctx, RequestLog(ctx)))) as client:
            resp = await client.get("/healthz")
            answers.append((resp.status, await resp.json()))
            await ctx.blocking.db(store.close_store)  # the read connection too, so the next one opens anew
            ctx.blocking._read.submit(store.close_store).result()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{cfg.db_path}{suffix}").unlink(missing_ok=True)
            cfg.db_path.mkdir()
            resp = await client.get("/healthz")
            answers.append((resp.status, await resp.json()))
        ctx.blocking.shutdown()
        await ctx.delivery.close()
        return answers

    try:
        assert asyncio.run(probe()) == [(200, {"status": "ok"}),
                                        (503, {"status": "unavailable", "reason": "store unreachable"})]
    finally:
        shutil.rmtree(cfg.db_path, ignore_errors=True)


def test_healthz_is_503_naming_the_service_whose_listener_closed(tmp_path: Path) -> None:
    """The daemon's listeners as `fwdmail serve` registers them: a real MX-like server and the HTTP
    service's own two sites; closing one of each turns /healthz to 503 with the reason."""
    from fwdmail.runtime.serve import ListenerState
    from fwdmail.web.server import WebService
    from tests.support.daemon import free_port

    ports = [free_port(), free_port()]
    cfg = Config(data_dir=str(tmp_path / "data"), hostname="mx.fwdmail.test",
                 http=HttpConfig(listen=tuple(f"127.0.0.1:{p}" for p in ports)))
    runtime = datadir.prepare(cfg, create=True)
    store.close_store()

    async def probe() -> list[tuple[int, dict[str, str]]]:
        ctx = Context(runtime)
        smtp = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        state = ListenerState()
        state.expect("mx", 1, lambda: smtp.sockets)
        web = WebService(ctx, state.problems)
        await web.start()
        state.expect("http", 2, web.listening)
        answers = []

        async def health() -> tuple[int, dict[str, str]]:
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://127.0.0.1:{ports[0]}/healthz") as resp:
                return resp.status, await resp.json()

        try:
            answers.append(await health())
            smtp.close()
            await smtp.wait_closed()
            answers.append(await health())
            web.sites[1]._server.close()  # type: ignore[union-attr]
            answers.append(await health())
        finally:
            await web.stop()
            ctx.blocking.shutdown()
            await ctx.delivery.close()
        return answers

    assert asyncio.run(probe()) == [
        (200, {"status": "ok"}),
        (503, {"status": "unavailable", "reason": "listeners down: mx: 1 of 1 listener(s) down"}),
        (503, {"status": "unavailable",
               "reason": "listeners down: mx: 1 of 1 listener(s) down; http: 1 of 2 listener(s) down"}),
    ]
