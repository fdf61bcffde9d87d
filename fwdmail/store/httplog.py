"""The log of web/API requests: one row each, written in batches, read per account, purged after 30 days.

Untrusted input: none that reaches a row as sent: the web layer gives the matched route pattern (never the
requested path, query string or body) and a truncated client network."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from fwdmail.store.db import reads, writing
from fwdmail.store.models import Account, HttpLog

__all__ = [
    "HttpLogRecord", "count_http_logs_before", "list_http_logs", "log_http_requests",
    "purge_http_logs_before",
]


@dataclass(frozen=True)
class HttpLogRecord:
    created_at: dt.datetime
    account_id: int | None
    method: str
    route: str
    status: int
    duration_ms: int
    client_net: str
    id: int = 0  # 0 until stored


def log_http_requests(records: list[HttpLogRecord]) -> int:
    """Insert request rows in one transaction; rows whose account was deleted meanwhile lose the link."""
    if not records:
        return 0
    with writing():
        ids = {r.account_id for r in records if r.account_id is not None}
        live = {a.id for a in Account.select(Account.id).where(Account.id.in_(ids))} if ids else set()
        HttpLog.insert_many([
            {"created_at": r.created_at, "account": r.account_id if r.account_id in live else None,
             "method": r.method, "route": r.route, "status": r.status, "duration_ms": r.duration_ms,
             "client_net": r.client_net}
            for r in records
        ]).execute()
    return len(records)


@reads
def list_http_logs(account_email: str | None = None, limit: int = 1000) -> list[HttpLogRecord]:
    """The newest request rows first (of one account's requests, if given)."""
    q = HttpLog.select().order_by(HttpLog.id.desc()).limit(limit)
    if account_email is not None:
        q = q.join(Account).where(Account.email == account_email)
    return [request_record(r) for r in q]


def request_record(r: HttpLog) -> HttpLogRecord:
    return HttpLogRecord(r.created_at, r.account_id, r.method, r.route, r.status, r.duration_ms, r.client_net,
                         r.id)


def _before(cutoff: dt.datetime):  # type: ignore[no-untyped-def]
    return HttpLog.select(HttpLog.id).where(HttpLog.created_at <= cutoff)


def purge_http_logs_before(cutoff: dt.datetime, batch: int) -> int:
    """Delete up to `batch` request rows created at or before `cutoff`."""
    with writing():
        ids = [r.id for r in _before(cutoff).order_by(HttpLog.id).limit(batch)]
        return HttpLog.delete().where(HttpLog.id.in_(ids)).execute() if ids else 0


@reads
def count_http_logs_before(cutoff: dt.datetime) -> int:
    return _before(cutoff).count()
