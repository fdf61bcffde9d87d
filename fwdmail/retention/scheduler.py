"""The retention scheduler: APScheduler's AsyncIOScheduler on the serve loop, running `run_all` every
`[retention] interval` seconds. Handles no untrusted input; it reads and deletes stored rows only.

Runs never overlap (one instance at a time, late runs coalesced into one); a run missed while the daemon
was down happens once at start. A failing job is logged and tried again next period; it never stops the
loop. A checkpoint a reader blocked is retried on the next run even if that run removes nothing.
Of several nodes on one PostgreSQL store, one runs the jobs per interval: each run first takes a lease
judged by the database's clock, and a node that finds it taken skips that run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from fwdmail import store
from fwdmail.config import RetentionConfig
from fwdmail.retention.jobs import Report, run_all
from fwdmail.runtime.executor import Blocking

log = logging.getLogger("fwdmail.retention")

JOB_ID = "retention"
LEASE_SHARE = 0.9
"""The share of `interval` one node's run holds the cluster's lease: a little less than the whole, so
the same node's next run, its timer firing a little early, still finds it free."""


def _wall_now() -> dt.datetime:
    """Aware UTC, the zone the schedule is kept in (no local-zone lookup)."""
    return dt.datetime.now(dt.UTC)


class RetentionScheduler:
    """The serve service that runs the retention jobs; starts last, stops first.

    It gets only what it uses: the executor for the store's verbs and the `[retention]` settings.
    """

    name = "retention"

    def __init__(self, blocking: Blocking, config: RetentionConfig) -> None:
        self.blocking = blocking
        self.config = config
        self.runs = 0
        self.last_report: Report | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._running = asyncio.Lock()
        self._stop = asyncio.Event()
        self._checkpoint_owed = False

    async def start(self) -> None:
        interval = self.config.interval
        last = await self.blocking.db(store.last_retention_run)
        delay = 0.0
        if last is not None:
            delay = max(0.0, (last + dt.timedelta(seconds=interval) - store.utcnow()).total_seconds())
        first = _wall_now() + dt.timedelta(seconds=min(delay, interval))
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=dt.UTC)
        self._scheduler.add_job(
            self.run_once, IntervalTrigger(seconds=interval, timezone=dt.UTC), id=JOB_ID,
            name="retention jobs", next_run_time=first, max_instances=1, coalesce=True,
            misfire_grace_time=None,
        )
        self._scheduler.start()
        log.info("retention jobs every %ss, next in %.1fs", interval, min(delay, interval))

    @property
    def next_run(self) -> dt.datetime | None:
        """When the next run is due (aware), or None when not scheduled."""
        job = self._scheduler.get_job(JOB_ID) if self._scheduler is not None else None
        return job.next_run_time if job is not None else None

    async def run_once(self) -> Report | None:
        """One run of every job as of now; None if a run is still going (runs never overlap) or another
        node of the cluster already has this interval's run (`store.take_lease`)."""
        if self._running.locked() or self._stop.is_set():
            return None
        async with self._running:
            now = store.utcnow()
            try:
                lease = self.config.interval * LEASE_SHARE
                ours = await self.blocking.db(store.take_lease, JOB_ID, now, lease)
            except Exception as exc:
                log.warning("cannot take the retention lease (%s); trying again next period",
                            store.failure(exc))
                return None
            if not ours:
                log.debug("retention run skipped: another node has this interval's run")
                return None
            try:
                held = await self.blocking.db(store.hold_job_lock, JOB_ID)
            except Exception as exc:
                log.warning("cannot take the retention lock (%s); trying again next period",
                            store.failure(exc))
                return None
            if not held:
                log.info("retention run skipped: another node's run is still going")
                return None
            log.debug("retention run: this node holds the cluster's lease and lock")
            try:
                report = await self._run_jobs(now)
            finally:
                try:
                    await self.blocking.db(store.release_job_lock, JOB_ID)
                except Exception as exc:  # the connection is gone, and the lock with it
                    log.debug("retention lock not released (%s)", type(exc).__name__)
            return report

    async def _run_jobs(self, now: dt.datetime) -> Report:
        """Record the run, run every job, log what it found."""
        try:
            await self.blocking.db(store.set_last_retention_run, now)
        except Exception as exc:
            log.warning("cannot record the retention run (%s); running the jobs anyway", exc)
        report = await run_all(self.blocking.db, now, self.config, stop=self._stop,
                               force_checkpoint=self._checkpoint_owed)
        self._checkpoint_owed = report.checkpointed is False or bool(report.unvacuumed)
        self.runs += 1
        self.last_report = report
        for key, error in report.failed.items():
            log.error("retention job %s failed (%s); it runs again next period", key, error)
        if report.checkpointed is False:
            log.warning("WAL checkpoint kept from completing by a reader; retried next run")
        if report.unvacuumed:
            log.warning("tables %s busy, not rewritten; every table is rewritten next run",
                        ", ".join(report.unvacuumed))
        if report.removed:
            log.info("retention run: %s", ", ".join(f"{k}={v}" for k, v in report.counts.items()))
        return report

    async def stop(self) -> None:
        """Stop scheduling; let a run in progress finish its current batch."""
        self._stop.set()
        async with self._running:
            pass
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.remove_all_jobs()
            self._scheduler.shutdown(wait=False)
            await asyncio.sleep(0)
