"""Group commit: concurrent submissions share one durable SQLite transaction.

Untrusted input: none directly; it batches messages the submission handler has already checked.
While one batch is being committed, new arrivals wait in the next batch (`runtime.batching`), so the
number of fsyncs grows with time spent committing, not with the number of messages.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from fwdmail import store
from fwdmail.runtime.batching import Batches, Waiting, settle
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
        self._batches: Batches[Item, Out] = Batches(self._write, max_batch)

    async def submit(self, item: Item) -> Out:
        """Return once `item` is committed durably; raise what the store raised otherwise."""
        return await self._batches.put(item)

    async def _write(self, batch: list[Waiting[Item, Out]]) -> None:
        try:
            items = [w.item for w in batch]
            outs = await self._blocking.db_since(batch[0].since, self._commit, items, self._clock())
        except Exception as exc:
            if len(batch) == 1 or store.unavailable(exc):
                for w in batch:
                    settle(w.future, exc=exc)
                return
            log.warning("group commit of %d messages failed (%s); committing them one by one",
                        len(batch), type(exc).__name__)
            for w in batch:
                try:
                    (out,) = await self._blocking.db(self._commit, [w.item], self._clock())
                except Exception as one_exc:
                    settle(w.future, exc=one_exc)
                else:
                    settle(w.future, out)
            return
        for w, out in zip(batch, outs, strict=True):
            settle(w.future, out)

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed (or has failed)."""
        await self._batches.drain()
