"""The blocking-work seam: small CPU work stays on the loop, large work and all SQLite go to threads."""

from __future__ import annotations

import asyncio
import threading

from fwdmail.runtime.executor import INLINE_BYTES, Blocking


def where() -> str:
    return threading.current_thread().name


def test_cpu_work_runs_inline_below_the_threshold_and_in_the_pool_above() -> None:
    async def main() -> tuple[str, str, str, str]:
        blocking = Blocking()
        try:
            small = await blocking.cpu_for(INLINE_BYTES - 1)(where)
            large = await blocking.cpu_for(INLINE_BYTES)(where)
            return small, large, await blocking.cpu(where), await blocking.db(where)
        finally:
            blocking.shutdown()

    loop_thread = threading.current_thread().name
    small, large, cpu, db = asyncio.run(main())
    assert small == loop_thread
    assert large.startswith("fwdmail-cpu") and cpu.startswith("fwdmail-cpu")
    assert db.startswith("fwdmail-db")
