"""Retention verbs: delete old logs, redact and delete outbound mail, in short batches.

Each purge verb changes at most `batch` rows in one transaction and returns how many it changed, so a
caller loops until a batch comes back short. Each has a `count_*` twin for dry runs. A row is due once
its deadline is reached (deadline <= now), never before. Writes begin IMMEDIATE on SQLite, so a purge
from the CLI waits for the daemon's writes (busy timeout) instead of failing on a stale read snapshot.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence

import peewee as pw

from fwdmail.store.db import StoreError, forget_lock_timeout, is_sqlite, reads, upsert_meta, writing
from fwdmail.store.models import ALL_MODELS, AbuseEvent, Domain, Meta, OutboundEmail, SmtpErrorLog, database
from fwdmail.store.outbound import FINAL_STATUSES

__all__ = [
    "VACUUMED_TABLES", "count_abuse_events_before", "count_bodies_due", "count_emails_due",
    "count_error_logs_before", "delete_emails_due", "last_retention_run", "purge_abuse_events_before",
    "purge_error_logs_before", "redact_bodies_due", "set_last_retention_run", "settle_deleted", "settle_wal",
    "take_lease", "vacuum", "wal_checkpoint",
]

_LAST_RUN_KEY = "retention_last_run"


def _delete_ids(model: type[pw.Model], ids: list[int]) -> int:
    if not ids:
        return 0
    return model.delete().where(model.id.in_(ids)).execute()


def _error_logs_before(cutoff: dt.datetime) -> pw.ModelSelect:
    return SmtpErrorLog.select(SmtpErrorLog.id).where(SmtpErrorLog.created_at <= cutoff)


def purge_error_logs_before(cutoff: dt.datetime, batch: int) -> int:
    """Delete up to `batch` SMTP error logs created at or before `cutoff`."""
    with writing():
        ids = [r.id for r in _error_logs_before(cutoff).order_by(SmtpErrorLog.id).limit(batch)]
        return _delete_ids(SmtpErrorLog, ids)


@reads
def count_error_logs_before(cutoff: dt.datetime) -> int:
    return _error_logs_before(cutoff).count()


def _abuse_events_before(cutoff: dt.datetime) -> pw.ModelSelect:
    return AbuseEvent.select(AbuseEvent.id).where(AbuseEvent.created_at <= cutoff)


def purge_abuse_events_before(cutoff: dt.datetime, batch: int) -> int:
    """Delete up to `batch` spam/abuse records created at or before `cutoff`."""
    with writing():
        ids = [r.id for r in _abuse_events_before(cutoff).order_by(AbuseEvent.id).limit(batch)]
        return _delete_ids(AbuseEvent, ids)


@reads
def count_abuse_events_before(cutoff: dt.datetime) -> int:
    return _abuse_events_before(cutoff).count()


def _final() -> pw.Expression:
    """Delivered or permanently failed: mail that is queued, deferred or held is never touched."""
    return OutboundEmail.final_at.is_null(False) & OutboundEmail.status.in_(FINAL_STATUSES)


def _bodies_due(now: dt.datetime) -> pw.ModelSelect | None:
    """Final mail whose body is still there and whose domain's retention_days have passed since final_at."""
    days = [r.retention_days for r in Domain.select(Domain.retention_days).distinct()]
    if not days:
        return None
    window: pw.Expression | None = None
    for d in days:
        clause = (Domain.retention_days == d) & (OutboundEmail.final_at <= now - dt.timedelta(days=d))
        window = clause if window is None else window | clause
    return (
        OutboundEmail.select(OutboundEmail.id).join(Domain)
        .where(_final() & OutboundEmail.body.is_null(False) & window)
    )


def redact_bodies_due(now: dt.datetime, batch: int) -> int:
    """Drop the body of up to `batch` final messages with final_at + domain.retention_days <= now."""
    with writing():
        q = _bodies_due(now)
        if q is None:
            return 0
        ids = [r.id for r in q.order_by(OutboundEmail.id).limit(batch)]
        if not ids:
            return 0
        return (
            OutboundEmail.update(body=None, redacted_at=now)
            .where(OutboundEmail.id.in_(ids)).execute()
        )


@reads
def count_bodies_due(now: dt.datetime) -> int:
    q = _bodies_due(now)
    return 0 if q is None else q.count()


def _emails_due(now: dt.datetime, days: int) -> pw.ModelSelect:
    """Final mail whose Date header (or, without one, its acceptance) is `days` or more days old."""
    cutoff = now - dt.timedelta(days=days)
    dated = OutboundEmail.date_header.is_null(False) & (OutboundEmail.date_header <= cutoff)
    undated = OutboundEmail.date_header.is_null() & (OutboundEmail.created_at <= cutoff)
    return OutboundEmail.select(OutboundEmail.id).where(_final() & (dated | undated))


def delete_emails_due(now: dt.datetime, days: int, batch: int) -> int:
    """Delete up to `batch` outbound records (with their recipients) due by `_emails_due`."""
    with writing():
        ids = [r.id for r in _emails_due(now, days).order_by(OutboundEmail.id).limit(batch)]
        return _delete_ids(OutboundEmail, ids)


@reads
def count_emails_due(now: dt.datetime, days: int) -> int:
    return _emails_due(now, days).count()


def wal_checkpoint(wait_ms: int = 200) -> bool:
    """Checkpoint the WAL and truncate it to zero bytes; False if a reader kept it from completing.

    Waits at most `wait_ms` for readers (not the connection's long busy timeout), so the caller's
    thread is not held up; the caller retries later. Nothing to do on PostgreSQL (always True).
    """
    if not is_sqlite():
        return True
    saved = database.execute_sql("PRAGMA busy_timeout").fetchone()[0]
    database.execute_sql(f"PRAGMA busy_timeout = {int(wait_ms)}")
    try:
        busy, _log, _done = database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        database.execute_sql(f"PRAGMA busy_timeout = {int(saved)}")
    return busy == 0


def settle_wal(attempts: int = 20, wait_ms: int = 200) -> bool:
    """Checkpoint until the WAL is truncated, for a process that may sleep (the CLI, never the daemon).

    A checkpoint fails at once while another connection checkpoints, and waits only briefly for readers;
    a few retries get past the daemon's short transactions. False if it never completed.
    """
    for attempt in range(attempts):
        if wal_checkpoint(wait_ms):
            return True
        time.sleep(min(0.05 * 2**attempt, 0.5))
    return False


def settle_deleted(what: str, tables: Sequence[str] | None = None) -> None:
    """After deleting `what`: make sure its bytes left the WAL (SQLite) or the files of `tables`
    (PostgreSQL, `vacuum`; every table when not given), or raise StoreError."""
    if not is_sqlite():
        left = vacuum(VACUUMED_TABLES if tables is None else tables, lock_wait_ms=CLI_LOCK_WAIT_MS)
        if left:
            raise StoreError(f"{what} deleted, but {', '.join(left)} could not be rewritten yet (busy); "
                             "run `fwdmail purge` to finish")
        return
    if not settle_wal():
        raise StoreError(f"{what} deleted, but a reader kept its bytes in the WAL file; "
                         "run `fwdmail purge` to finish")


VACUUMED_TABLES: tuple[str, ...] = tuple(m._meta.table_name for m in ALL_MODELS)

# A rewrite waits at most this long for its table's lock (other sessions queue behind a waiting VACUUM
# FULL, so it gives up rather than stall them) and runs at most VACUUM_RUN_MS; the CLI waits longer.
VACUUM_LOCK_WAIT_MS = 1_000
CLI_LOCK_WAIT_MS = 5_000
VACUUM_RUN_MS = 30_000


# PostgreSQL's SQLSTATEs for "lock_timeout passed" and "statement_timeout passed".
_GAVE_UP = frozenset({"55P03", "57014"})


def _gave_up(exc: BaseException) -> bool:
    return any(getattr(e, "sqlstate", None) in _GAVE_UP for e in (exc, exc.__context__, exc.__cause__))


def vacuum(tables: Sequence[str], lock_wait_ms: int = VACUUM_LOCK_WAIT_MS,
           run_ms: int = VACUUM_RUN_MS) -> list[str]:
    """Rewrite `tables` (and their TOAST tables and indexes) so that rows deleted or redacted there leave
    the files; return the tables that could not be rewritten now (lock busy or too slow: try again).

    PostgreSQL's plain VACUUM only marks dead rows' space free and leaves their bytes in the pages, so
    this is `VACUUM FULL`: a new copy of each table under an exclusive lock, the old files truncated at
    once. It runs outside any transaction (autocommit), one table at a time, each bounded by
    `lock_wait_ms` and `run_ms`. Nothing on SQLite (secure_delete and the WAL checkpoint do this).
    """
    if is_sqlite():
        return []
    unknown = set(tables) - set(VACUUMED_TABLES)
    if unknown:
        raise ValueError(f"not fwdmail tables: {sorted(unknown)}")
    left: list[str] = []
    database.execute_sql(f"SET lock_timeout = {int(lock_wait_ms)}")
    database.execute_sql(f"SET statement_timeout = {int(run_ms)}")
    try:
        for table in dict.fromkeys(tables):
            try:
                database.execute_sql(f'VACUUM (FULL) "{table}"')
            except pw.DatabaseError as exc:
                if not _gave_up(exc):
                    raise
                left.append(table)
    finally:
        database.execute_sql("SET statement_timeout = 0")
        forget_lock_timeout()
    return left


@reads
def last_retention_run() -> dt.datetime | None:
    """When the scheduled retention jobs last started, if ever."""
    row = Meta.get_or_none(Meta.key == _LAST_RUN_KEY)
    return dt.datetime.fromisoformat(row.value) if row else None


def set_last_retention_run(now: dt.datetime) -> None:
    upsert_meta(_LAST_RUN_KEY, now.isoformat())


# One statement, so of several nodes asking at once exactly one gets the lease: the insert of a new name,
# or the update of an expired one (a node that finds the row locked waits, then sees it taken).
_TAKE_LEASE = (
    "INSERT INTO lease (name, expires_at) VALUES (%s, (now() AT TIME ZONE 'UTC') + %s * interval '1 second') "
    "ON CONFLICT (name) DO UPDATE SET expires_at = EXCLUDED.expires_at "
    "WHERE lease.expires_at <= (now() AT TIME ZONE 'UTC') RETURNING name"
)


def take_lease(name: str, now: dt.datetime, seconds: float) -> bool:
    """Whether this node may run the job `name` now, for the whole cluster: True for the first to ask,
    which then holds it `seconds`; False for any other until then (PostgreSQL's clock judges, not a
    node's). On SQLite always True: one machine runs one daemon on the store (the data dir's serve lock).
    """
    if is_sqlite():
        return True
    with writing():
        return database.execute_sql(_TAKE_LEASE, (name, seconds)).fetchone() is not None


def hold_job_lock(name: str) -> bool:
    """Whether this node now holds the cluster-wide lock of job `name` (a PostgreSQL session advisory lock
    on the writer's connection, held until `release_job_lock` or the connection ends): a run that outlasts
    its lease still never overlaps another node's. On SQLite always True (one daemon per store)."""
    if is_sqlite():
        return True
    row = database.execute_sql("SELECT pg_try_advisory_lock(hashtext(%s))", (_JOB_LOCK_PREFIX + name,))
    return bool(row.fetchone()[0])


def release_job_lock(name: str) -> None:
    """Let go of `hold_job_lock(name)` (no-op on SQLite)."""
    if not is_sqlite():
        database.execute_sql("SELECT pg_advisory_unlock(hashtext(%s))", (_JOB_LOCK_PREFIX + name,))


_JOB_LOCK_PREFIX = "fwdmail job "
