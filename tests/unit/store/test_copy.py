"""`fwdmail db copy --to`: a populated SQLite store (every table non-empty) copied into a private PostgreSQL,
row for row; a non-empty target refused; then `fwdmail serve` on the copy forwards and submits."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from fwdmail import store
from fwdmail.store.models import ALL_MODELS, ApiToken, HttpLog, Lease, OutboundEmail
from tests.support import rows
from tests.support.daemon import Daemon, to_toml
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import message as mx_message
from tests.support.mx import send as mx_send
from tests.support.outbound import add_domain, queue_id, submit, wait_status
from tests.support.outbound import message as sub_message
from tests.support.postgres import PostgresServer
from tests.support.smtp_sink import SmtpSink

BODY = b"copied body \x00\xff bytes\r\n"


def populate(data_dir: Path) -> None:
    """Rows in every table of the SQLite store in `data_dir` (made by `init`)."""
    store.open_store(data_dir / "fwdmail.db")
    try:
        rows.make_domain("copy.test", retention_days=3)
        store.add_alias("copy.test", "exact", "fwd", ["dest@dest.test"])
        rows.add_outbound("copy.test", body=BODY, date_header=rows.T0,
                          recipients=("a@dest.test", "b@dest.test"))
        rows.add_outbound("copy.test", status="deferred", body=b"still queued\r\n")
        rows.add_error_log(rows.T0, "copy.test", "fwd@copy.test")
        rows.add_abuse_event(rows.T0, detail="too many")
        store.add_api_token("owner@copy.test", "ab" * 32, rows.T0)
        HttpLog.create(created_at=rows.T0, method="GET", route="/v1/aliases", status=200, duration_ms=3,
                       client_net="192.0.2.0/24")
        Lease.create(name="retention", expires_at=rows.T0)
        store.set_last_retention_run(rows.T0)
        later = rows.T0 + dt.timedelta(days=1)
        store.set_login("owner@copy.test", rows.T0, password_hash="scrypt$copied")
        store.add_session("owner@copy.test", "cd" * 32, "full", rows.T0, later)
        store.add_login_link("owner@copy.test", "ef" * 32, rows.T0, later)
        store.add_sender_rules("copy.test", "deny", ["@blocked.test"], rows.T0)
        store.set_webhook_key("copy.test", "0f" * 32, rows.T0, replace=False)
        for model in ALL_MODELS:
            assert model.select().count() > 0, f"{model._meta.table_name} is empty in the source"
    finally:
        store.close_store()


def contents(path: Path | None = None, url: str = "") -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, as model values, in primary-key order."""
    store.open_store(path or Path("unused.db"), url)
    try:
        out = {}
        for model in ALL_MODELS:
            key = model._meta.primary_key
            out[model._meta.table_name] = [
                {k: bytes(v) if isinstance(v, memoryview | bytearray) else v for k, v in r.items()}
                for r in model.select().order_by(key).dicts()]
        return out
    finally:
        store.close_store()


def make_node(tmp_path: Path, dns: LoopbackDNS, sink: SmtpSink) -> Daemon:
    return Daemon(tmp_path, {
        "dns": {"nameservers": [dns.address]},
        "delivery": {"routes": {"*": sink.address}},
        "queue": {"min_backoff": 0.5, "max_backoff": 1},
    })


def point_at(d: Daemon, url: str) -> None:
    d.settings["database"] = {"url": url}
    d.config_path.write_text(to_toml(d.settings))


def test_db_copy_moves_every_row_and_refuses_a_non_empty_target(
        tmp_path: Path, postgres: PostgresServer, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = make_node(tmp_path, dns_server, sink)
    d.cli("init")
    populate(d.data_dir)
    url = postgres.new_database()

    out = json.loads(d.cli("db", "copy", "--to", url, "--json").output)

    assert out["verified"] is True
    assert {t["table"] for t in out["tables"]} == {m._meta.table_name for m in ALL_MODELS}
    assert all(t["source"] == t["copied"] == t["target"] > 0 for t in out["tables"]), out
    source = contents(d.data_dir / "fwdmail.db")
    assert contents(url=url) == source
    (sent,) = [r for r in source["outbound_email"] if r["status"] == "delivered"]
    assert sent["body"] == BODY and sent["date_header"] == rows.T0

    with_password = url.replace("fwdmail@", "fwdmail:s3cretpw@")  # trust auth: the server ignores it
    again = d.cli("db", "copy", "--to", with_password, expect=1)
    assert "is not empty" in again.output and "db copy fills only a new, empty database" in again.output
    assert "s3cretpw" not in again.output and "fwdmail:***@" in again.output
    assert contents(url=url) == source, "the refused copy changed nothing"


def test_a_failed_copy_leaves_the_target_empty(tmp_path: Path, postgres: PostgresServer,
                                                dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = make_node(tmp_path, dns_server, sink)
    d.cli("init")
    populate(d.data_dir)
    store.open_store(d.data_dir / "fwdmail.db")
    try:  # a value PostgreSQL refuses (a NUL in a text column) in the last row of a late table
        HttpLog.create(created_at=rows.T0, method="GET", route="/v1/\x00", status=200, duration_ms=1)
    finally:
        store.close_store()
    url = postgres.new_database()

    failed = d.cli("db", "copy", "--to", url, expect=1)

    assert "nothing was kept in the target" in failed.output
    import psycopg

    with psycopg.connect(url) as con:
        left = con.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert left == (0,)


def test_serve_on_the_copied_store_forwards_and_submits(
        tmp_path: Path, postgres: PostgresServer, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = make_node(tmp_path, dns_server, sink)
    passwords = add_domain(d, "moved.test", "me@moved.test")
    d.cli("alias", "add", "in@moved.test", "inbox@dest.test")
    populate(d.data_dir)  # ids taken in every table, so the copy's sequences must continue past them
    url = postgres.new_database()
    shown = d.cli("db", "copy", "--to", url).output
    assert "outbound_email" in shown and "now set [database] url to the target" in shown
    assert " NO " not in shown
    point_at(d, url)
    d.start()
    try:
        forwarded = mx_send(d, "someone@src.test", ["in@moved.test"], mx_message(body=b"forward me\r\n"))
        assert forwarded.code == 250, forwarded
        (got,) = sink.wait_for(1)
        assert got.rcpt_tos == ["inbox@dest.test"] and got.data.endswith(b"forward me\r\n")
        sink.reset()
        qid = queue_id(submit(d, "me@moved.test", passwords["me@moved.test"],
                              sub_message("me@moved.test", subject="after the move")))
        assert wait_status(d, qid, "delivered")["status"] == "delivered"
        (sent,) = sink.wait_for(1)
        assert b"Subject: after the move" in sent.data
    finally:
        d.stop()
    store.open_store(Path("unused.db"), url)
    try:
        (new,) = OutboundEmail.select().where(OutboundEmail.subject == "after the move")
        assert new.id > 2, "the sequence continues past the copied ids"
        assert ApiToken.select().count() == 1
    finally:
        store.close_store()


def test_db_copy_is_refused_while_serve_runs_on_the_data_dir(
        tmp_path: Path, postgres: PostgresServer, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = make_node(tmp_path, dns_server, sink)
    d.start()
    try:
        url = postgres.new_database()
        refused = d.cli("db", "copy", "--to", url, expect=1)
        assert "another fwdmail serve" in refused.output and "is running" in refused.output
    finally:
        d.stop()
    import psycopg

    with psycopg.connect(url) as con:
        assert con.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_store_copy_in_one_row_batches_matches_the_source(tmp_path: Path, postgres: PostgresServer,
                                                          dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = make_node(tmp_path, dns_server, sink)
    d.cli("init")
    populate(d.data_dir)
    url = postgres.new_database()
    moved: dict[str, int] = {}

    def progress(table: str, n: int) -> None:
        assert n == 1, "a batch of at most one row"
        moved[table] = moved.get(table, 0) + n

    report = store.copy_to(d.data_dir / "fwdmail.db", url, progress=progress, batch_rows=1, batch_bytes=1)

    assert {r.table: r.copied for r in report} == moved
    assert contents(url=url) == contents(d.data_dir / "fwdmail.db")


@pytest.mark.parametrize("target", ["mysql://db.test/fwdmail", "", "postgresql://127.0.0.1:5432/"])
def test_db_copy_refuses_a_target_that_is_no_postgresql_url(tmp_path: Path, target: str) -> None:
    d = Daemon(tmp_path)
    d.cli("init")
    out = d.cli("db", "copy", "--to", target, expect=2).output
    assert out.startswith("Error: --to: ") and "postgresql://user@host:port/dbname" in out
    assert "SQLite" not in out and len(out.strip().splitlines()) == 1
