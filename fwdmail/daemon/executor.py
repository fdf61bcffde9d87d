"""The one seam through which the event loop runs blocking work (SQLite, RSA, scrypt)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

INLINE_BYTES = 64 * 1024


async def _inline(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return fn(*args, **kwargs)


class Blocking:
    """`db` runs on one thread (SQLite has one writer; its connection lives there); `cpu` on a pool."""

    def __init__(self, cpu_threads: int = 2) -> None:
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fwdmail-db")
        self._cpu = ThreadPoolExecutor(max_workers=cpu_threads, thread_name_prefix="fwdmail-cpu")

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(self._db, fn, *args, **kwargs)

    async def cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(self._cpu, fn, *args, **kwargs)

    def cpu_for(self, nbytes: int) -> Callable[..., Awaitable[Any]]:
        """`cpu` for work on `nbytes` bytes of input, or, below `INLINE_BYTES`, a call on the loop
        itself: a thread handoff then costs more than the work (parsing, hashing, verifying a few KB)."""
        return self.cpu if nbytes >= INLINE_BYTES else _inline

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(pool, call)

    def shutdown(self) -> None:
        self._cpu.shutdown(wait=True)
        self._db.shutdown(wait=True)
