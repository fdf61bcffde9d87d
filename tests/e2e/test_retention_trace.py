"""Proof that removed means removed: after a purge, redaction or deletion, no byte of the data dir
(database, -wal, -shm, everything else) holds the removed content. Each test first checks that the
token is on disk, so the probe itself is proven to see it.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from fwdmail import store
from tests.support import rows
from tests.support.daemon import Daemon
from tests.support.rows import T0, files_containing, token

DAY = dt.timedelta(days=1)


@pytest.fixture
def d(tmp_path: Path) -> Daemon:
    """A data dir with its config, used through the real CLI (no daemon process here)."""
    daemon = Daemon(tmp_path)
    daemon.cli("init")
    return daemon


def open_db(d: Daemon) -> None:
    store.close_store()  # the CLI's connection: never two of ours open at once in this process
    store.open_store(d.data_dir / "fwdmail.db")


def on_disk(d: Daemon, *tokens: str) -> dict[str, list[str]]:
    found = {t: files_containing(d.data_dir, t) for t in tokens}
    return {t: f for t, f in found.items() if f}


def settle(d: Daemon) -> None:
    """Make every token written so far land in the main database file, and close this process's db."""
    store.checkpoint()
    store.close_store()


def test_purge_leaves_no_trace_of_redacted_bodies_and_deleted_logs(d: Daemon) -> None:
    body_tok, small_tok, hdr_tok, err_tok, spam_tok = (token(x) for x in ("body", "small", "hdr", "err",
                                                                           "spam"))
    open_db(d)
    rows.make_domain("a.test", retention_days=0)
    rows.filler("a.test")
    rows.add_outbound("a.test", body=b"big " + body_tok.encode() * 2000, created_at=T0, date_header=T0,
                      headers=f"Subject: {hdr_tok}\r\n".encode())
    rows.add_outbound("a.test", body=f"hi {small_tok}\r\n".encode(), created_at=T0, date_header=T0)
    rows.filler("a.test")
    rows.add_error_log(T0 - 7 * DAY, "a.test", alias=f"{err_tok}@a.test", text=f"550 {err_tok} unknown")
    rows.add_abuse_event(T0 - 7 * DAY, client_ip="198.51.100.7", detail=f"spam from {spam_tok}")
    settle(d)
    everything = (body_tok, small_tok, hdr_tok, err_tok, spam_tok)
    assert set(on_disk(d, *everything)) == set(everything)

    out = json.loads(d.cli("purge", "--now", T0.isoformat(), "--json").output)
    assert out == {"smtp_error_logs": 1, "abuse_events": 1, "emails_redacted": 242,
                   "emails_deleted": 0, "http_logs": 0, "web_sessions": 0}
    assert on_disk(d, body_tok, small_tok, err_tok, spam_tok, "198.51.100.7") == {}
    assert list(on_disk(d, hdr_tok)) == [hdr_tok], "the record outlives its body until Date + 30 days"

    out = json.loads(d.cli("purge", "--now", (T0 + 30 * DAY).isoformat(), "--json").output)
    assert out["emails_deleted"] == 242
    assert on_disk(d, *everything) == {}


def test_a_reader_holding_an_old_snapshot_is_reported_and_the_next_purge_clears_it(d: Daemon) -> None:
    err_tok = token("err")
    open_db(d)
    rows.add_error_log(T0 - 8 * DAY, text=err_tok)
    settle(d)
    reader = sqlite3.connect(d.data_dir / "fwdmail.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM smtp_error_log").fetchone() == (1,)
        result = d.cli("purge", "--now", T0.isoformat())
        assert "WAL" in result.stderr
        assert on_disk(d, err_tok), "the reader's snapshot keeps the old page in the database file"
    finally:
        reader.close()
    result = d.cli("purge", "--now", T0.isoformat())
    assert result.stderr == ""
    assert on_disk(d, err_tok) == {}


def test_account_delete_leaves_no_trace(d: Daemon) -> None:
    open_db(d)
    gone, kept = rows.Owned("gone"), rows.Owned("kept")
    settle(d)
    assert set(on_disk(d, *gone.tokens())) == set(gone.tokens())

    out = json.loads(d.cli("account", "delete", gone.email, "--yes", "--json").output)
    assert out["domains"] == 1 and out["aliases"] == 1 and out["emails"] == 41
    assert on_disk(d, *gone.tokens()) == {}
    assert set(on_disk(d, *kept.tokens())) == set(kept.tokens())


def test_domain_remove_leaves_no_trace(d: Daemon) -> None:
    open_db(d)
    owned = rows.Owned("owner")
    other = f"{token('other')}.test"
    store.add_domain(other, owned.email, "sel", "other-key", token("verify"))
    settle(d)
    removed = owned.tokens("account")
    assert set(on_disk(d, *removed)) == set(removed)

    d.cli("domain", "remove", owned.domain, "--yes")
    assert on_disk(d, *removed) == {}
    assert set(on_disk(d, owned.t["account"], other)) == {owned.t["account"], other}


def test_alias_remove_leaves_no_trace_of_its_destinations(d: Daemon) -> None:
    domain = f"{token('dom')}.test"
    gone, kept = token("gone"), token("kept")
    d.cli("account", "add", "owner@owner.test")
    d.cli("domain", "add", domain, "--account", "owner@owner.test")
    d.cli("alias", "add", f"{gone}@{domain}", f"{gone}@elsewhere.test")
    d.cli("alias", "add", f"{kept}@{domain}", f"{kept}@elsewhere.test")
    open_db(d)
    settle(d)
    assert set(on_disk(d, gone, kept)) == {gone, kept}

    d.cli("alias", "remove", f"{gone}@{domain}")
    assert on_disk(d, gone) == {}
    assert set(on_disk(d, kept)) == {kept}
