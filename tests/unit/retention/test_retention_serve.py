"""The retention scheduler: in-process on a real loop and store, and inside a real `fwdmail serve`."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fwdmail import store
from fwdmail.config import from_dict
from fwdmail.retention.scheduler import RetentionScheduler
from fwdmail.runtime.context import Context
from fwdmail.runtime.datadir import Runtime
from tests.support import rows
from tests.support.daemon import Daemon
from tests.support.rows import files_containing, token

DAY = dt.timedelta(days=1)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    cfg = from_dict({"data_dir": str(tmp_path / "data"), "retention": {"interval": 0.2}})
    store.open_store(cfg.db_path)
    yield Runtime(cfg, b"secret", tmp_path / "cert.pem", tmp_path / "key.pem")
    store.close_store()


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def run_service(runtime: Runtime, scenario: Callable[[RetentionScheduler], object]) -> None:
    async def main() -> None:
        ctx = Context(runtime)
        service = RetentionScheduler(ctx.blocking, ctx.config.retention)
        try:
            await scenario(service)  # type: ignore[misc]
        finally:
            await service.stop()
            ctx.blocking.shutdown()

    asyncio.run(main())


def test_a_failing_job_is_retried_next_period_and_never_stops_the_scheduler(runtime: Runtime) -> None:
    old = store.utcnow() - 8 * DAY
    spam = rows.add_abuse_event(old)
    rows.rename_table("abuse_event", "abuse_event_away")

    async def scenario(service: RetentionScheduler) -> None:
        await service.start()
        await until(lambda: service.runs >= 2, "two runs")
        assert service.last_report is not None and "abuse_events" in service.last_report.failed
        log_id = rows.add_error_log(old)
        await until(lambda: not rows.error_log_exists(log_id), "the other jobs to keep working")
        rows.rename_table("abuse_event_away", "abuse_event")
        await until(lambda: not rows.abuse_event_exists(spam), "the failed job to succeed next period")

    run_service(runtime, scenario)


def test_runs_never_overlap(runtime: Runtime) -> None:
    for _ in range(5):
        rows.add_error_log(store.utcnow() - 8 * DAY)

    async def scenario(service: RetentionScheduler) -> None:
        first, second = await asyncio.gather(service.run_once(), service.run_once())
        assert first is not None and first.counts["smtp_error_logs"] == 5
        assert second is None
        third = await service.run_once()
        assert third is not None and third.removed == 0

    run_service(runtime, scenario)


@pytest.mark.parametrize("last_run_ago, runs_at_start", [(None, True), (2 * 3600, True), (60, False)])
def test_a_run_missed_during_downtime_happens_once_at_start(
        tmp_path: Path, last_run_ago: int | None, runs_at_start: bool) -> None:
    cfg = from_dict({"data_dir": str(tmp_path / "data"), "retention": {"interval": 3600}})
    store.open_store(cfg.db_path)
    if last_run_ago is not None:
        store.set_last_retention_run(store.utcnow() - dt.timedelta(seconds=last_run_ago))
    runtime = Runtime(cfg, b"secret", tmp_path / "cert.pem", tmp_path / "key.pem")

    async def scenario(service: RetentionScheduler) -> None:
        before = dt.datetime.now(dt.UTC)
        await service.start()
        due = service.next_run
        assert due is not None
        if runs_at_start:
            assert due <= dt.datetime.now(dt.UTC)
            await until(lambda: service.runs == 1, "the start run")
        else:
            assert due >= before + dt.timedelta(seconds=3600 - 60 - 5)

    try:
        run_service(runtime, scenario)
    finally:
        store.close_store()


def test_serve_runs_the_retention_jobs_by_itself(make_daemon: Callable[..., Daemon]) -> None:
    d: Daemon = make_daemon({"retention": {"interval": 0.5}}, start=False)
    d.cli("init")
    store.close_store()  # one connection per process at a time: open_store's os.open/close drops its locks
    store.open_store(d.data_dir / "fwdmail.db")
    body_tok, err_tok, late_tok = token("body"), token("err"), token("late")
    now = store.utcnow()
    rows.make_domain("a.test", retention_days=0)
    msg = rows.add_outbound("a.test", body=body_tok.encode() * 300, created_at=now, final_at=now,
                            date_header=now)
    log_id = rows.add_error_log(now - 8 * DAY, text=err_tok)
    store.checkpoint()
    assert files_containing(d.data_dir, body_tok) and files_containing(d.data_dir, err_tok)

    def gone(*tokens: str) -> Callable[[], bool]:
        def check() -> bool:
            assert d.proc is not None and d.proc.poll() is None, f"serve exited:\n{d.logs()}"
            return not any(files_containing(d.data_dir, t) for t in tokens)
        return check

    d.start(wait_ports=[])
    try:
        asyncio.run(until(gone(body_tok, err_tok), "serve to purge and checkpoint"))
        assert rows.outbound(msg).body is None and not rows.error_log_exists(log_id)

        late = rows.add_error_log(store.utcnow() - 8 * DAY, text=late_tok)
        asyncio.run(until(gone(late_tok), "a later periodic run"))
        assert not rows.error_log_exists(late)
    finally:
        store.close_store()
        assert d.stop() == 0
    logs = d.logs()
    assert "retention run" in logs and "Traceback" not in logs
    assert not any(t in logs for t in (body_tok, err_tok, late_tok))


def test_account_delete_beside_a_running_serve_leaves_no_trace(make_daemon: Callable[..., Daemon]) -> None:
    d: Daemon = make_daemon({"retention": {"interval": 0.5}}, start=False)
    d.cli("init")
    store.close_store()
    store.open_store(d.data_dir / "fwdmail.db")
    gone, kept = rows.Owned("gone"), rows.Owned("kept")
    store.close_store()
    d.start(wait_ports=[])
    try:
        asyncio.run(until(lambda: "retention jobs every" in d.logs(), "the scheduler to start"))
        assert files_containing(d.data_dir, gone.t["body"])
        d.cli("account", "delete", gone.email, "--yes")
        store.close_store()  # the CLI's connection; the daemon keeps its own open all along
        assert [t for t in gone.tokens() if files_containing(d.data_dir, t)] == []
        # the other account stays (its year-old error log and abuse record went with the retention jobs)
        assert all(files_containing(d.data_dir, t) for t in kept.tokens("err", "spam"))
    finally:
        assert d.stop() == 0
