"""Privacy on PostgreSQL, read from the disk: after the retention jobs purge and redact, and an account,
an alias and a queued message are deleted, the files of the database on the private server's data dir
(tables, their TOAST tables and indexes, and everything else of that database) hold no redacted body, no
purged log, no deleted message and no trace of the deleted account's address or the removed alias, while
a message still queued is found there (the probe sees what is stored).

Not covered, as the README says: WAL segments (kept until recycled), replicas and backups.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import psycopg

from fwdmail import store
from fwdmail.app import accounts, aliases, emails
from fwdmail.config import RetentionConfig
from fwdmail.retention import jobs
from tests.support import rows
from tests.support.postgres import PostgresServer

NOW = dt.datetime(2024, 6, 20, 12, 0, 0)


def database_files(server: PostgresServer, url: str) -> bytes:
    """Every file of `url`'s database on the server's data dir, after a CHECKPOINT wrote every page."""
    with psycopg.connect(url, autocommit=True) as con:
        con.execute("CHECKPOINT")
        (oid,) = con.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
        paths = [r[0] for r in con.execute(
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "OR c.oid IN (SELECT reltoastrelid FROM pg_class c2 "
            "JOIN pg_namespace n2 ON n2.oid = c2.relnamespace WHERE n2.nspname = 'public')",
        ).fetchall() if r[0]]
    base = server.data / "base" / str(oid)
    assert all((server.data / p).parent == base for p in paths), "fwdmail's relations live in base/<oid>"
    assert len(paths) > 20, "tables, TOAST tables and indexes"
    return b"".join(f.read_bytes() for f in sorted(base.iterdir()) if f.is_file())


def test_purged_redacted_and_deleted_data_leave_postgresqls_table_files(
        tmp_path: Path, postgres: PostgresServer) -> None:
    url = postgres.new_database()
    store.open_store(tmp_path / "unused.db", url)
    try:
        gone = f"{rows.token('gone')}@gone.test"
        small, large, log, kept, gone_body = (rows.token(k) for k in ("sm", "lg", "log", "kept", "gbody"))
        rows.make_domain("keep.test", "keeper@keep.test")
        rows.make_domain("gone.test", gone)
        final = NOW - dt.timedelta(days=1)
        rows.add_outbound("keep.test", body=f"{small}\r\n".encode(), created_at=final, date_header=NOW)
        toasted = os.urandom(6000) + large.encode() + os.urandom(6000)  # out of line, uncompressible
        rows.add_outbound("keep.test", body=toasted, created_at=final, date_header=NOW)
        rows.add_outbound("keep.test", body=f"{kept}\r\n".encode(), status="queued", created_at=final)
        rows.add_error_log(NOW - dt.timedelta(days=8), "keep.test", text=f"550 {log}")
        rows.add_outbound("gone.test", body=f"{gone_body}\r\n".encode(), status="queued", created_at=final,
                          recipients=(gone,))
        rows.add_error_log(NOW, "gone.test", alias=gone)
        store.add_alias("gone.test", "exact", gone.split("@")[0], ["someone@dest.test"])
        dropped_alias, deleted_body = rows.token("alias"), rows.token("deleted")
        store.add_alias("keep.test", "exact", dropped_alias, ["someone@dest.test"])
        qid = store.new_queue_id()
        store.enqueue([store.NewEmail(qid, "keep.test", "me@keep.test", ("x@dest.test",), b"Subject: x\r\n",
                                      f"{deleted_body}\r\n".encode())], final)
        markers = {m.encode() for m in (small, large, log, gone_body, gone, dropped_alias, deleted_body)}
        before = database_files(postgres, url)
        assert all(m in before for m in markers), "the probe sees every marker before the purge"

        report = jobs.purge_now(NOW, RetentionConfig())
        assert report.counts["emails_redacted"] == 2 and report.counts["smtp_error_logs"] == 1
        assert report.unvacuumed == [] and report.failed == {}
        accounts.delete_account(gone)
        aliases.remove_alias(f"{dropped_alias}@keep.test")
        emails.delete_email(qid)

        after = database_files(postgres, url)
        assert kept.encode() in after, "what is still stored is found"
        assert [m for m in markers if m in after] == []
    finally:
        store.close_store()
