"""Retention jobs on a real SQLite store, each at the edges of its window; time is a parameter."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwdmail import store
from fwdmail.config import RetentionConfig
from fwdmail.retention import jobs
from tests.support import rows
from tests.support.rows import T0

DAY = dt.timedelta(days=1)
TICK = dt.timedelta(microseconds=1)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fwdmail.db"
    store.open_store(path)
    yield path
    store.close_store()


def purge(now: dt.datetime, **settings: int) -> jobs.Report:
    report = jobs.purge_now(now, RetentionConfig(**settings))
    assert not report.failed, report.failed
    return report


def test_error_logs_and_abuse_events_go_at_exactly_7_days(db: Path) -> None:
    rows.make_domain("a.test")
    due = rows.add_error_log(T0 - 7 * DAY, "a.test", alias="x@a.test")
    young = rows.add_error_log(T0 - 7 * DAY + TICK, "a.test")
    spam_due = rows.add_abuse_event(T0 - 7 * DAY)
    spam_young = rows.add_abuse_event(T0 - 7 * DAY + TICK)

    assert jobs.purge_now(T0, RetentionConfig(), dry_run=True).counts["smtp_error_logs"] == 1
    assert rows.error_log_exists(due)

    report = purge(T0)
    assert report.counts["smtp_error_logs"] == 1
    assert report.counts["abuse_events"] == 1
    assert not rows.error_log_exists(due) and rows.error_log_exists(young)
    assert not rows.abuse_event_exists(spam_due) and rows.abuse_event_exists(spam_young)

    assert purge(T0 + TICK).counts == {"smtp_error_logs": 1, "abuse_events": 1, "emails_redacted": 0,
                                       "emails_deleted": 0, "http_logs": 0, "web_sessions": 0}
    assert not rows.error_log_exists(young) and not rows.abuse_event_exists(spam_young)


def test_error_log_days_comes_from_config(db: Path) -> None:
    kept = rows.add_error_log(T0 - 2 * DAY)
    assert purge(T0, error_log_days=3).counts["smtp_error_logs"] == 0
    assert purge(T0 + DAY, error_log_days=3).counts["smtp_error_logs"] == 1
    assert not rows.error_log_exists(kept)


def test_retention_0_redacts_at_once_and_keeps_the_record(db: Path) -> None:
    rows.make_domain("zero.test", retention_days=0)
    done = rows.add_outbound("zero.test", body=b"secret body", final_at=T0, date_header=T0)
    not_yet = rows.add_outbound("zero.test", final_at=T0 + TICK, date_header=T0)

    assert purge(T0).counts["emails_redacted"] == 1
    msg = rows.outbound(done)
    assert msg is not None and msg.body is None and msg.redacted_at == T0
    assert bytes(msg.headers) == b"Subject: hi\r\n" and rows.recipient_count(done) == 1
    assert rows.outbound(not_yet).body is not None
    assert purge(T0).counts["emails_redacted"] == 0


def test_retention_30_redacts_30_days_after_final_state(db: Path) -> None:
    rows.make_domain("thirty.test", retention_days=30)
    rows.make_domain("zero.test", retention_days=0)
    msg = rows.add_outbound("thirty.test", final_at=T0, date_header=T0 + DAY)
    other = rows.add_outbound("zero.test", final_at=T0, date_header=T0 + DAY)

    assert purge(T0 + 30 * DAY - TICK).counts["emails_redacted"] == 1
    assert rows.outbound(msg).body is not None and rows.outbound(other).body is None
    assert purge(T0 + 30 * DAY).counts["emails_redacted"] == 1
    assert rows.outbound(msg).body is None


def test_mail_delivered_by_the_queue_verbs_is_redacted_then_deleted(db: Path) -> None:
    rows.make_domain("keep.test", retention_days=2)
    queue_id = rows.send_through_queue("keep.test", b"body", accepted=T0, delivered=T0 + DAY,
                                       date_header=T0 - DAY)
    assert purge(T0 + 3 * DAY - TICK).removed == 0
    assert not store.get_email(queue_id).redacted
    assert purge(T0 + 3 * DAY).counts["emails_redacted"] == 1
    assert store.get_email(queue_id).redacted
    assert purge(T0 + 29 * DAY - TICK).counts["emails_deleted"] == 0
    assert purge(T0 + 29 * DAY).counts["emails_deleted"] == 1
    with pytest.raises(store.NotFound):
        store.get_email(queue_id)


@pytest.mark.parametrize("status", ["queued", "deferred", "held"])
def test_mail_not_in_a_final_state_is_never_touched(db: Path, status: str) -> None:
    rows.make_domain("a.test")
    msg = rows.add_outbound("a.test", status=status, created_at=T0 - 90 * DAY, date_header=T0 - 90 * DAY)
    report = purge(T0)
    assert report.counts["emails_redacted"] == 0 and report.counts["emails_deleted"] == 0
    assert rows.outbound(msg).body is not None


def test_records_go_30_days_after_their_date_header(db: Path) -> None:
    rows.make_domain("a.test", retention_days=30)
    msg = rows.add_outbound("a.test", created_at=T0, date_header=T0 - 2 * DAY)
    assert purge(T0 + 28 * DAY - TICK).counts["emails_deleted"] == 0
    report = purge(T0 + 28 * DAY)
    assert report.counts["emails_deleted"] == 1
    assert rows.outbound(msg) is None and rows.recipient_count(msg) == 0


def test_a_future_date_counts_from_that_date(db: Path) -> None:
    rows.make_domain("a.test")
    msg = rows.add_outbound("a.test", created_at=T0, date_header=T0 + 5 * DAY)
    assert purge(T0 + 35 * DAY - TICK).counts["emails_deleted"] == 0
    assert rows.outbound(msg) is not None
    assert purge(T0 + 35 * DAY).counts["emails_deleted"] == 1
    assert rows.outbound(msg) is None


def test_a_missing_date_counts_from_acceptance(db: Path) -> None:
    rows.make_domain("a.test")
    msg = rows.add_outbound("a.test", created_at=T0, date_header=None)
    assert purge(T0 + 30 * DAY - TICK).counts["emails_deleted"] == 0
    assert purge(T0 + 30 * DAY).counts["emails_deleted"] == 1
    assert rows.outbound(msg) is None


def test_outbound_record_days_comes_from_config(db: Path) -> None:
    rows.make_domain("a.test")
    rows.add_outbound("a.test", created_at=T0, date_header=T0)
    assert purge(T0 + 9 * DAY, outbound_record_days=10).counts["emails_deleted"] == 0
    assert purge(T0 + 10 * DAY, outbound_record_days=10).counts["emails_deleted"] == 1


def test_dry_run_counts_without_changing_anything(db: Path) -> None:
    rows.make_domain("a.test")
    log_id = rows.add_error_log(T0 - 8 * DAY)
    msg = rows.add_outbound("a.test", created_at=T0 - 31 * DAY, date_header=None)
    report = jobs.purge_now(T0, RetentionConfig(), dry_run=True)
    assert report.counts == {"smtp_error_logs": 1, "abuse_events": 0, "emails_redacted": 1,
                             "emails_deleted": 1, "http_logs": 0, "web_sessions": 0}
    assert rows.error_log_exists(log_id) and rows.outbound(msg).body is not None


def test_large_purges_go_in_batches(db: Path) -> None:
    rows.make_domain("a.test")
    for _ in range(10):
        rows.add_error_log(T0 - 8 * DAY)
    batches: list[tuple[str, int]] = []
    report = jobs.purge_now(T0, RetentionConfig(batch_size=3), progress=lambda k, n: batches.append((k, n)))
    assert report.counts["smtp_error_logs"] == 10
    assert batches == [("smtp_error_logs", 3)] * 3 + [("smtp_error_logs", 1)]
    assert report.checkpointed is True


def test_the_scheduler_checkpoints_only_after_removing_something(db: Path) -> None:
    report = asyncio.run(jobs.run_all(jobs.inline, T0, RetentionConfig()))
    assert report.removed == 0 and report.checkpointed is None


def test_overlapping_runs_remove_each_row_once(db: Path) -> None:
    rows.make_domain("a.test")
    for _ in range(60):
        rows.add_error_log(T0 - 8 * DAY)
        rows.add_outbound("a.test", created_at=T0 - 40 * DAY)
    reports: list[jobs.Report] = []
    start = threading.Barrier(3)

    def worker() -> None:
        start.wait()
        reports.append(jobs.purge_now(T0, RetentionConfig(batch_size=4)))
        store.close_store()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reports) == 3 and all(not r.failed for r in reports), [r.failed for r in reports]
    assert sum(r.counts["smtp_error_logs"] for r in reports) == 60
    assert sum(r.counts["emails_redacted"] for r in reports) == 60
    assert sum(r.counts["emails_deleted"] for r in reports) == 60
    assert purge(T0).removed == 0


def test_a_failing_job_does_not_stop_the_others_and_runs_again_next_time(db: Path) -> None:
    rows.make_domain("a.test")
    spam = rows.add_abuse_event(T0 - 8 * DAY)
    log_id = rows.add_error_log(T0 - 8 * DAY)
    rows.rename_table("abuse_event", "abuse_event_away")
    report = jobs.purge_now(T0, RetentionConfig())
    assert set(report.failed) == {"abuse_events"}
    assert report.counts["smtp_error_logs"] == 1 and not rows.error_log_exists(log_id)

    rows.rename_table("abuse_event_away", "abuse_event")
    assert purge(T0).counts["abuse_events"] == 1
    assert not rows.abuse_event_exists(spam)


def test_jobs_run_through_an_async_seam_and_stop_between_batches(db: Path) -> None:
    for _ in range(7):
        rows.add_error_log(T0 - 8 * DAY)
    calls: list[str] = []

    async def seam(fn, *args):  # type: ignore[no-untyped-def]
        calls.append(fn.__name__)
        stop.set()
        return fn(*args)

    stop = asyncio.Event()
    report = asyncio.run(jobs.run_all(seam, T0, RetentionConfig(batch_size=2), stop=stop))
    assert report.counts == {"smtp_error_logs": 2}
    assert calls == ["purge_error_logs_before", "wal_checkpoint"]


@pytest.mark.parametrize("text, expected", [
    ("2024-06-01T12:00:00", T0),
    ("2024-06-01T12:00:00Z", T0),
    ("2024-06-01T14:00:00+02:00", T0),
    ("2024-06-01", dt.datetime(2024, 6, 1)),
])
def test_parse_instant(text: str, expected: dt.datetime) -> None:
    assert jobs.parse_instant(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01", "1717243200"])
def test_parse_instant_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        jobs.parse_instant(text)


def _http_row(at: dt.datetime, account_id: int | None = None) -> None:
    store.log_http_requests([store.HttpLogRecord(at, account_id, "GET", "/v1/account", 200, 1,
                                                 "192.0.2.0/24")])


def test_web_api_request_logs_go_at_exactly_30_days(db: Path) -> None:
    _http_row(T0 - 30 * DAY)
    _http_row(T0 - 30 * DAY + TICK)
    assert jobs.purge_now(T0, RetentionConfig(), dry_run=True).counts["http_logs"] == 1
    assert purge(T0).counts["http_logs"] == 1
    assert [r.created_at for r in store.list_http_logs()] == [T0 - 30 * DAY + TICK]
    assert purge(T0 + TICK).counts["http_logs"] == 1
    assert store.list_http_logs() == []


def test_deleting_an_account_deletes_its_tokens_and_request_log(db: Path) -> None:
    acct = store.add_account("gone@owner.test")
    store.add_api_token(acct.email, "h" * 64, T0)
    _http_row(T0, acct.id)
    _http_row(T0)
    assert store.account_for_token("h" * 64) == store.get_account(acct.email)
    store.delete_account(acct.email)
    assert store.account_for_token("h" * 64) is None
    assert [r.account_id for r in store.list_http_logs()] == [None]
