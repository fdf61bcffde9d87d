"""The one seam through which the event loop runs blocking work (SQLite, RSA, scrypt)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from fwdmail import store

P = ParamSpec("P")
T = TypeVar("T")

INLINE_BYTES = 64 * 1024


class Busy(RuntimeError):
    """A bounded pool's threads and wait list are full: the caller answers "try later" at once."""


async def _inline(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return fn(*args, **kwargs)


class _Bounded:
    """A pool of `threads` that lets at most `queue` calls wait for a thread; more raise `Busy` at once.
    A call counts until its thread is done with it, even if its caller stopped waiting."""

    def __init__(self, threads: int, queue: int, prefix: str) -> None:
        self.limit = threads + queue
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=prefix)
        self._lock = threading.Lock()
        self._pending = 0

    def _done(self, _: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        with self._lock:
            if self._pending >= self.limit:
                raise Busy
            self._pending += 1
        try:
            future = self._pool.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class Blocking:
    """`db` runs store work on two threads, each with its own SQLite connection: writes on one (SQLite
    has one writer), reads on the other; `cpu` runs on a pool; `hash` (password hashing, the cost a
    stranger can make us pay) on its own small pool with a bounded wait list, so guesses can neither
    take the threads `cpu` work needs nor queue without end."""

    def __init__(self, cpu_threads: int = 2, write_lock_timeout: float = 1.0, hash_threads: int = 1,
                 hash_queue: int = 8) -> None:
        self.write_lock_timeout = write_lock_timeout
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fwdmail-db")
        self._read = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fwdmail-db-read")
        self._cpu = ThreadPoolExecutor(max_workers=cpu_threads, thread_name_prefix="fwdmail-cpu")
        self._hash = _Bounded(hash_threads, hash_queue, "fwdmail-hash")

    def bound_hashing(self, threads: int, queue: int) -> None:
        """Size the `hash` pool (before its first use: calls already running keep the old one)."""
        old, self._hash = self._hash, _Bounded(threads, queue, "fwdmail-hash")
        old.shutdown()

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run store work. A verb marked `store.reads` goes to the read thread, so routing and logins
        never queue behind writes that wait for another process's lock. Anything else goes to the
        writer thread, where it waits for SQLite's write lock at most `write_lock_timeout` seconds from
        this call (its time queued included), then fails with the store's "unavailable" error."""
        if store.only_reads(fn):
            return await self._run(self._read, store.run_read, fn, *args, **kwargs)
        return await self.db_since(time.monotonic(), fn, *args, **kwargs)

    async def db_since(self, asked_at: float, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`db` for a write asked for at `asked_at` (`time.monotonic()`), e.g. a batch counted from its
        oldest item: its wait for the lock ends `write_lock_timeout` seconds after that."""
        return await self._run(self._db, store.run_write, asked_at, self.write_lock_timeout, fn, *args,
                               **kwargs)

    async def cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(self._cpu, fn, *args, **kwargs)

    async def hash(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run password hashing; raises `Busy` without waiting when its threads and wait list are full."""
        return await self._hash.run(fn, *args, **kwargs)

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
        self._hash.shutdown()
        self._cpu.shutdown(wait=True)
        self._read.submit(store.close_store)
        self._read.shutdown(wait=True)
        self._db.shutdown(wait=True)
