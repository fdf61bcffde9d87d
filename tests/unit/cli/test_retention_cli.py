"""`fwdmail purge` through the real CLI: table, --json, --dry-run, --now, progress, bad input."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fwdmail import store
from tests.support import rows
from tests.support.daemon import Daemon
from tests.support.rows import T0

DAY = dt.timedelta(days=1)


@pytest.fixture
def d(tmp_path: Path) -> Daemon:
    daemon = Daemon(tmp_path, {"retention": {"batch_size": 5}})
    daemon.cli("init")
    store.close_store()
    store.open_store(daemon.data_dir / "fwdmail.db")
    rows.make_domain("a.test", retention_days=3)
    for _ in range(12):
        rows.add_error_log(T0 - 7 * DAY)
    rows.add_abuse_event(T0 - 6 * DAY)
    rows.add_outbound("a.test", final_at=T0 - 3 * DAY, date_header=T0 - 30 * DAY)
    rows.add_outbound("a.test", final_at=T0, date_header=T0 + DAY)
    store.close_store()
    return daemon


def purge_json(d: Daemon, *args: str) -> dict[str, int]:
    return json.loads(d.cli("purge", "--json", *args).output)


def test_dry_run_counts_and_changes_nothing(d: Daemon) -> None:
    expected = {"smtp_error_logs": 12, "abuse_events": 0, "emails_redacted": 1, "emails_deleted": 1,
                "http_logs": 0, "web_sessions": 0}
    assert purge_json(d, "--dry-run", "--now", T0.isoformat()) == expected
    assert purge_json(d, "--dry-run", "--now", T0.isoformat()) == expected
    table = d.cli("purge", "--dry-run", "--now", "2024-06-01T14:00:00+02:00").output
    assert "dry run" in table and "would remove" in table and "12" in table


def test_purge_as_of_another_time(d: Daemon) -> None:
    assert purge_json(d, "--now", (T0 - DAY).isoformat()) == {
        "smtp_error_logs": 0, "abuse_events": 0, "emails_redacted": 0, "emails_deleted": 0, "http_logs": 0,
        "web_sessions": 0}
    assert purge_json(d, "--now", T0.isoformat()) == {
        "smtp_error_logs": 12, "abuse_events": 0, "emails_redacted": 1, "emails_deleted": 1, "http_logs": 0,
        "web_sessions": 0}
    assert purge_json(d, "--now", (T0 + 31 * DAY).isoformat()) == {
        "smtp_error_logs": 0, "abuse_events": 1, "emails_redacted": 1, "emails_deleted": 1, "http_logs": 0,
        "web_sessions": 0}


def test_table_output_after_a_purge_of_several_batches(d: Daemon) -> None:
    result = d.cli("purge", "--now", T0.isoformat())
    for line in ("SMTP error logs", "spam/abuse records", "outbound bodies redacted",
                 "outbound records deleted"):
        assert line in result.stdout
    row = next(line for line in result.stdout.splitlines() if "SMTP error logs" in line)
    assert "12" in row
    assert "Traceback" not in result.output


def test_the_default_now_is_the_present(d: Daemon) -> None:
    out = purge_json(d)
    assert out["smtp_error_logs"] == 12 and out["abuse_events"] == 1 and out["emails_deleted"] == 2


@pytest.mark.parametrize("bad", ["tomorrow", "2024-02-30", "", "12:00", "0001-01-02", "9999-12-31T23:59"])
def test_a_bad_now_is_a_one_line_error_with_exit_2(d: Daemon, bad: str) -> None:
    result = d.cli("purge", "--now", bad, expect=2)
    assert result.output.count("\n") == 1 and result.output.startswith("Error: --now:")
    assert purge_json(d, "--dry-run", "--now", T0.isoformat())["smtp_error_logs"] == 12


def test_a_failing_job_is_a_one_line_error_with_exit_1_and_the_others_still_run(d: Daemon) -> None:
    store.open_store(d.data_dir / "fwdmail.db")
    rows.rename_table("smtp_error_log", "smtp_error_log_away")
    store.close_store()
    result = d.cli("purge", "--json", "--now", (T0 + 31 * DAY).isoformat(), expect=1)
    assert json.loads(result.stdout) == {"abuse_events": 1, "emails_redacted": 2, "emails_deleted": 2,
                                         "http_logs": 0, "web_sessions": 0}
    assert result.stderr.startswith("error: smtp_error_logs: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
