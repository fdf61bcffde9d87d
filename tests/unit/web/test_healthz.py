"""`GET /healthz` in-process on a real store: 200 while the store answers, 503 with the reason once it
cannot be opened (its file replaced by a directory, which even root cannot open as a database)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from fwdmail import store
from fwdmail.config import Config
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
