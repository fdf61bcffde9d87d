"""The retention jobs: plain functions of (store seam, now) that return counts.

`db` is how a job reaches the store: in `serve` it is `ctx.blocking.db` (the daemon's one database
thread), in `fwdmail purge` it is `inline` (call the verb right here). A job works in batches of
`batch_size` rows, one short transaction each, and yields to the event loop between batches, so the MX
and submission stay responsive during a large purge. Every job is idempotent: running two at once, or
running one again after a failure, removes each row once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from fwdmail import store
from fwdmail.config import RetentionConfig

log = logging.getLogger("fwdmail.retention")

T = TypeVar("T")

CHECKPOINT_ATTEMPTS = 5


class DbSeam(Protocol):
    def __call__(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


async def inline(fn: Callable[..., T], *args: Any) -> T:
    """The seam for a process that owns its thread: run the store verb here and now. After a write it
    rests (`store.rest_after`), so a running daemon's writes get SQLite's lock between two batches."""
    started = time.monotonic()
    out = fn(*args)
    if not store.only_reads(fn):
        await asyncio.sleep(store.rest_after(started))
    return out


Progress = Callable[[int], None]


@dataclass(frozen=True)
class Job:
    """One retention rule: `count` for dry runs, `run` to apply it (returns rows changed)."""

    key: str
    title: str
    rule: Callable[[RetentionConfig], str]
    count: Callable[[DbSeam, dt.datetime, RetentionConfig], Awaitable[int]]
    run: Callable[..., Awaitable[int]]


async def _batches(db: DbSeam, verb: Callable[..., int], args: tuple[Any, ...], batch: int,
                   progress: Progress | None, stop: asyncio.Event | None) -> int:
    total = 0
    while True:
        n = await db(verb, *args, batch)
        total += n
        if progress is not None and n:
            progress(n)
        if n < batch or (stop is not None and stop.is_set()):
            return total
        await asyncio.sleep(0)


def _days(now: dt.datetime, days: int) -> dt.datetime:
    return now - dt.timedelta(days=days)


async def purge_error_logs(db: DbSeam, now: dt.datetime, cfg: RetentionConfig,
                           progress: Progress | None = None, stop: asyncio.Event | None = None) -> int:
    """Delete SMTP error logs `error_log_days` or more days old."""
    cutoff = _days(now, cfg.error_log_days)
    return await _batches(db, store.purge_error_logs_before, (cutoff,), cfg.batch_size, progress, stop)


async def purge_abuse_events(db: DbSeam, now: dt.datetime, cfg: RetentionConfig,
                             progress: Progress | None = None, stop: asyncio.Event | None = None) -> int:
    """Delete spam/abuse records `error_log_days` or more days old."""
    cutoff = _days(now, cfg.error_log_days)
    return await _batches(db, store.purge_abuse_events_before, (cutoff,), cfg.batch_size, progress, stop)


# The privacy policy's promise for the web/API request log.
HTTP_LOG_DAYS = 30


async def purge_http_logs(db: DbSeam, now: dt.datetime, cfg: RetentionConfig,
                          progress: Progress | None = None, stop: asyncio.Event | None = None) -> int:
    """Delete web/API request rows `HTTP_LOG_DAYS` or more days old."""
    cutoff = _days(now, HTTP_LOG_DAYS)
    return await _batches(db, store.purge_http_logs_before, (cutoff,), cfg.batch_size, progress, stop)


async def purge_web_sessions(db: DbSeam, now: dt.datetime, cfg: RetentionConfig,
                             progress: Progress | None = None, stop: asyncio.Event | None = None) -> int:
    """Delete expired web sessions and expired one-time password links."""
    sessions = await _batches(db, store.purge_sessions_before, (now,), cfg.batch_size, progress, stop)
    links = await _batches(db, store.purge_login_links_before, (now,), cfg.batch_size, progress, stop)
    return sessions + links


async def redact_bodies(db: DbSeam, now: dt.datetime, cfg: RetentionConfig,
                        progress: Progress | None = None, stop: asyncio.Event | None = None) -> int:
    """Drop the bodies of final outbound mail past its domain's retention_days."""
    return await _batches(db, store.redact_bodies_due, (now,), cfg.batch_size, progress, stop)


async def delete_emails(db: DbSeam, now: dt.datetime, cfg: RetentionConfig,
                        progress: Progress | None = None, stop: asyncio.Event | None = None) -> int:
    """Delete final outbound records `outbound_record_days` after their Date (or acceptance)."""
    return await _batches(db, store.delete_emails_due, (now, cfg.outbound_record_days), cfg.batch_size,
                          progress, stop)


async def _count_error_logs(db: DbSeam, now: dt.datetime, cfg: RetentionConfig) -> int:
    return await db(store.count_error_logs_before, _days(now, cfg.error_log_days))


async def _count_abuse_events(db: DbSeam, now: dt.datetime, cfg: RetentionConfig) -> int:
    return await db(store.count_abuse_events_before, _days(now, cfg.error_log_days))


async def _count_http_logs(db: DbSeam, now: dt.datetime, cfg: RetentionConfig) -> int:
    return await db(store.count_http_logs_before, _days(now, HTTP_LOG_DAYS))


async def _count_web_sessions(db: DbSeam, now: dt.datetime, cfg: RetentionConfig) -> int:
    return await db(store.count_expired_web_sessions, now)


async def _count_bodies(db: DbSeam, now: dt.datetime, cfg: RetentionConfig) -> int:
    return await db(store.count_bodies_due, now)


async def _count_emails(db: DbSeam, now: dt.datetime, cfg: RetentionConfig) -> int:
    return await db(store.count_emails_due, now, cfg.outbound_record_days)


JOBS: tuple[Job, ...] = (
    Job("smtp_error_logs", "SMTP error logs",
        lambda c: f"created {c.error_log_days}+ days ago", _count_error_logs, purge_error_logs),
    Job("abuse_events", "spam/abuse records",
        lambda c: f"created {c.error_log_days}+ days ago", _count_abuse_events, purge_abuse_events),
    Job("emails_redacted", "outbound bodies redacted",
        lambda c: "final, domain retention_days passed", _count_bodies, redact_bodies),
    Job("emails_deleted", "outbound records deleted",
        lambda c: f"final, Date {c.outbound_record_days}+ days ago", _count_emails, delete_emails),
    Job("http_logs", "web/API request logs",
        lambda c: f"created {HTTP_LOG_DAYS}+ days ago", _count_http_logs, purge_http_logs),
    Job("web_sessions", "web sessions and password links",
        lambda c: "expired", _count_web_sessions, purge_web_sessions),
)


async def checkpoint(db: DbSeam, attempts: int = CHECKPOINT_ATTEMPTS) -> bool:
    """Checkpoint and truncate the WAL, retrying while a reader holds an old snapshot."""
    for attempt in range(attempts):
        if await db(store.wal_checkpoint):
            return True
        await asyncio.sleep(0.05 * 2**attempt)
    return False


@dataclass
class Report:
    """What one run of all jobs did (or, for a dry run, would do)."""

    counts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    checkpointed: bool | None = None  # None: nothing removed, no checkpoint needed

    @property
    def removed(self) -> int:
        return sum(self.counts.values())


async def count_all(db: DbSeam, now: dt.datetime, cfg: RetentionConfig) -> Report:
    """What `run_all` would change at `now`, changing nothing."""
    report = Report()
    for job in JOBS:
        try:
            report.counts[job.key] = await job.count(db, now, cfg)
        except Exception as exc:
            report.failed[job.key] = str(exc) or exc.__class__.__name__
    return report


async def run_all(db: DbSeam, now: dt.datetime, cfg: RetentionConfig, *,
                  progress: Callable[[str, int], None] | None = None, stop: asyncio.Event | None = None,
                  force_checkpoint: bool = False) -> Report:
    """Run every job once; a failing job is recorded in the report and the others still run.

    After anything was removed (or when `force_checkpoint`), the WAL is checkpointed and truncated.
    """
    report = Report()
    for job in JOBS:
        if stop is not None and stop.is_set():
            break
        step = None if progress is None else _bind(progress, job.key)
        try:
            report.counts[job.key] = await job.run(db, now, cfg, step, stop)
        except Exception as exc:
            log.debug("retention job %s failed", job.key, exc_info=True)
            report.failed[job.key] = str(exc) or exc.__class__.__name__
    if report.removed or force_checkpoint:
        try:
            report.checkpointed = await checkpoint(db)
        except Exception as exc:
            log.debug("WAL checkpoint failed", exc_info=True)
            report.failed["checkpoint"] = str(exc) or exc.__class__.__name__
            report.checkpointed = False
    return report


def _bind(progress: Callable[[str, int], None], key: str) -> Progress:
    return lambda n: progress(key, n)


def parse_instant(text: str) -> dt.datetime:
    """An ISO-8601 time as naive UTC (a time without an offset is taken as UTC)."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO-8601 time: {text!r} (e.g. 2024-05-01T12:00:00Z)") from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    if not 1971 <= value.year <= 9000:  # the windows reach 30 days either side
        raise ValueError(f"{text!r} is out of range: give a time between the years 1971 and 9000")
    return value


def purge_now(now: dt.datetime, cfg: RetentionConfig, *, dry_run: bool = False,
              progress: Callable[[str, int], None] | None = None) -> Report:
    """`fwdmail purge`: every job once, in this process, as of `now`; only counts when `dry_run`.

    It always checkpoints, so running it again clears a WAL that a reader kept from being truncated.
    """
    if dry_run:
        return asyncio.run(count_all(inline, now, cfg))
    return asyncio.run(run_all(inline, now, cfg, progress=progress, force_checkpoint=True))
