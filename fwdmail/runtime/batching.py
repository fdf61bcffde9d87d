"""The one batching mechanism for database writes: what arrives while a batch is written waits for the next.

Untrusted input: none; it carries items its callers (group commit, the SMTP error log) already checked.
One task at a time writes, so the number of transactions grows with the time spent writing, not with
the number of items.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Batches", "Waiting", "settle"]

Item = TypeVar("Item")
Out = TypeVar("Out")


@dataclass(frozen=True)
class Waiting(Generic[Item, Out]):
    """One item of a batch: its future (settled by the writer) and when it arrived (`time.monotonic()`)."""

    item: Item
    future: asyncio.Future[Out]
    since: float


class Batches(Generic[Item, Out]):
    """Collects items and hands them, oldest first and at most `max_batch` (None: all) at a time, to
    `write`, which must settle each item's future (see `settle`)."""

    def __init__(self, write: Callable[[list[Waiting[Item, Out]]], Awaitable[None]],
                 max_batch: int | None = None) -> None:
        self._write = write
        self._max_batch = max_batch
        self._pending: list[Waiting[Item, Out]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, item: Item) -> asyncio.Future[Out]:
        """Queue `item`; its future is settled once its batch is written (or failed)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Out] = loop.create_future()
        fut.add_done_callback(_retrieve)  # nobody may be waiting: a hung-up client, a summary row
        self._pending.append(Waiting(item, fut, time.monotonic()))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        return fut

    async def put(self, item: Item) -> Out:
        """Queue `item` and return its outcome; a caller cancelled meanwhile does not cancel the write."""
        return await asyncio.shield(self.add(item))

    async def _run(self) -> None:
        while self._pending:
            cut = len(self._pending) if self._max_batch is None else self._max_batch
            batch = self._pending[:cut]
            del self._pending[:cut]
            await self._write(batch)

    async def drain(self) -> None:
        """Wait until everything queued so far is written (or has failed)."""
        if self._task is not None:
            await asyncio.shield(self._task)


def _retrieve(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled():
        fut.exception()


def settle(fut: asyncio.Future[Out], out: Out | None = None, exc: BaseException | None = None) -> None:
    """Give `fut` its outcome unless it already has one."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(out)  # type: ignore[arg-type]
