"""The one seam through which the event loop runs blocking work (SQLite, RSA, scrypt)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Blocking:
    """`db` runs on one thread (SQLite has one writer; its connection lives there); `cpu` on a pool."""

    def __init__(self, cpu_threads: int = 2) -> None:
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fwdmail-db")
        self._cpu = ThreadPoolExecutor(max_workers=cpu_threads, thread_name_prefix="fwdmail-cpu")

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(self._db, fn, *args, **kwargs)

    async def cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(self._cpu, fn, *args, **kwargs)

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(pool, call)

    def shutdown(self) -> None:
        self._cpu.shutdown(wait=True)
        self._db.shutdown(wait=True)
