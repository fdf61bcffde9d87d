"""Group commit: concurrent submissions share one durable SQLite transaction.

Untrusted input: none directly; it batches messages the submission handler has already checked.
While one batch is being committed, new arrivals wait in the next batch, so the number of fsyncs
grows with time spent committing, not with the number of messages.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from fwdmail import store
from fwdmail.runtime.executor import Blocking

log = logging.getLogger("fwdmail.groupcommit")

Item = TypeVar("Item")
Out = TypeVar("Out")


class GroupCommitter(Generic[Item, Out]):
    """Collects items and writes them with `commit(items, now) -> outputs` on the database thread.

    If a whole batch fails, its items are retried one by one, so one bad item fails alone; unless the
    store as a whole failed (locked, full, read-only): then the batch fails at once, not once per item.
    A batch waits for a lock held elsewhere only until its oldest item has waited `write_lock_timeout`.
    """

    def __init__(self, blocking: Blocking, commit: Callable[[Sequence[Item], dt.datetime], list[Out]],
                 clock: Callable[[], dt.datetime], max_batch: int = 500) -> None:
        self._blocking = blocking
        self._commit = commit
        self._clock = clock
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Out], float]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Out:
        """Return once `item` is committed durably; raise what the store raised otherwise."""
        fut: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_retrieve)  # a client that hung up must not leave an unretrieved error
        self._pending.append((item, fut, time.monotonic()))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[:self._max_batch]
            del self._pending[:self._max_batch]
            try:
                items = [item for item, _, _ in batch]
                outs = await self._blocking.db_since(batch[0][2], self._commit, items, self._clock())
            except Exception as exc:
                if len(batch) == 1 or store.unavailable(exc):
                    for _, fut, _ in batch:
                        _settle(fut, exc=exc)
                    continue
                log.warning("group commit of %d messages failed (%s); committing them one by one",
                            len(batch), type(exc).__name__)
                for item, fut, _ in batch:
                    try:
                        (out,) = await self._blocking.db(self._commit, [item], self._clock())
                    except Exception as one_exc:
                        _settle(fut, exc=one_exc)
                    else:
                        _settle(fut, out)
                continue
            for (_, fut, _), out in zip(batch, outs, strict=True):
                _settle(fut, out)

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)


def _retrieve(fut: asyncio.Future[object]) -> None:
    if not fut.cancelled():
        fut.exception()


def _settle(fut: asyncio.Future[Out], out: Out | None = None, exc: BaseException | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(out)  # type: ignore[arg-type]
