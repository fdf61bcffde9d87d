"""The verbs whose SQL is written by hand or depends on the engine, on SQLite and PostgreSQL alike: the
queue's enqueue/claim/attempt path, claims and crashes, retention purges, the bulk alias import and
listing, Meta upserts, and how a store that cannot be reached is reported."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fwdmail import store
from fwdmail.store import db as store_db
from tests.support import rows
from tests.support.postgres import PostgresServer
from tests.support.rows import T0
from tests.unit.store.conftest import Opened

LATER = T0 + dt.timedelta(minutes=5)
REPO = Path(__file__).resolve().parents[3]


class Reply:
    def __init__(self, code: int, enhanced_code: str, text: str) -> None:
        self.code, self.enhanced_code, self.text = code, enhanced_code, text


def new_email(domain: str, *recipients: str) -> store.NewEmail:
    return store.NewEmail(store.new_queue_id(), domain, "sender@" + domain, recipients,
                          b"Subject: hi\r\n", b"body\r\n", subject="hi")


def test_enqueue_claim_attempt_and_redact(opened: Opened) -> None:
    rows.make_domain("q.test")
    (qid,) = store.enqueue([new_email("q.test", "a@dest.test", "b@dest.test")], T0)
    claimed = store.claim_due(T0, "w1", 10)
    assert [(c.queue_id, c.recipients, c.body) for c in claimed] == [(qid, ("a@dest.test", "b@dest.test"),
                                                                     b"body\r\n")]
    assert claimed[0].created_at == T0 and not claimed[0].delay_notified
    assert store.claim_due(T0, "w2", 10) == []  # claimed already
    outcome = store.record_attempt(claimed[0].id, "w1", LATER, delivered=["a@dest.test"],
                                   deferred={"b@dest.test": Reply(451, "4.3.0", "try later")},
                                   retry_at=LATER + dt.timedelta(minutes=1))
    assert outcome == store.AttemptOutcome("deferred", False, False)
    assert store.record_attempt(claimed[0].id, "w1", LATER) is None  # no longer claimed by w1
    (again,) = store.claim_due(LATER + dt.timedelta(minutes=1), "w2", 10)
    assert again.recipients == ("b@dest.test",) and again.attempts == 1
    outcome = store.record_attempt(again.id, "w2", LATER, delivered=["b@dest.test"])
    assert outcome == store.AttemptOutcome("delivered", True, True)  # retention_days 0: redacted at once
    email = store.get_email(qid)
    assert email.status == "delivered" and email.body is None and email.final_at == LATER
    assert [e.code for e in store.list_smtp_errors()] == [451]


def test_concurrent_claims_never_share_a_message(opened: Opened) -> None:
    rows.make_domain("q.test")
    store.enqueue([new_email("q.test", f"r{i}@dest.test") for i in range(40)], T0)
    got: dict[str, list[int]] = {}

    def worker(token: str) -> None:
        opened.reopen_here()
        try:
            found: list[int] = []
            for _ in range(40):  # not stopping at an empty claim: rows locked by another may drop out
                found += [c.id for c in store.claim_due(T0, token, 3)]
            got[token] = found
        finally:
            store.close_store()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    claimed = [i for ids in got.values() for i in ids]
    assert len(got) == 3 and len(claimed) == 40 and len(set(claimed)) == 40


def test_crashes_and_stale_claims(opened: Opened) -> None:
    rows.make_domain("q.test")
    (qid,) = store.enqueue([new_email("q.test", "a@dest.test")], T0)
    (c,) = store.claim_due(T0, "w1", 1)
    assert store.record_crash(c.id, "other", T0, LATER, 3) is None
    assert store.record_crash(c.id, "w1", T0, LATER, 3) == "queued"
    store.claim_due(LATER, "w2", 1)
    assert store.release_stale_claims(LATER, max_crashes=2) == (1, 1)
    assert store.get_email(qid).status == "held"
    assert store.retry_email(qid, LATER).status == "queued"
    store.claim_due(LATER, "w3", 1)
    assert store.release_claims("w3", LATER) == 1
    store.delete_email(qid)
    assert store.list_emails() == []


def test_retention_purges_and_last_run(opened: Opened) -> None:
    rows.make_domain("r.test", retention_days=1)
    rows.add_outbound("r.test", body=b"old body", status="delivered")
    rows.add_error_log(T0, domain="r.test")
    rows.add_abuse_event(T0)
    far = T0 + dt.timedelta(days=400)
    assert store.count_bodies_due(far) == 1 and store.redact_bodies_due(far, 10) == 1
    assert store.purge_error_logs_before(far, 10) == 1 and store.purge_abuse_events_before(far, 10) == 1
    assert store.delete_emails_due(far, 30, 10) == 1
    assert store.wal_checkpoint() and store.settle_wal()
    store.set_last_retention_run(T0)
    store.set_last_retention_run(LATER)  # an upsert: replaced, not a second row
    assert store.last_retention_run() == LATER


def test_bulk_import_listing_and_undo(opened: Opened) -> None:
    dom = rows.make_domain("b.test")
    store.add_alias("b.test", "exact", "kept", ["old@dest.test"])
    writes = store.ImportWrites()
    batch = [store.ImportRow(dom.id, "exact", f"User{i}", (f"d{i}@dest.test",)) for i in range(5)]
    batch.append(store.ImportRow(dom.id, "exact", "kept", ("new@dest.test",)))
    store.import_batch(batch, writes)
    assert len(writes.inserted) == 5 and len(writes.replaced) == 1
    listed = list(store.iter_aliases("b.test", page=2))
    assert [a.local for a in listed] == ["User0", "User1", "User2", "User3", "User4", "kept"]
    assert store.existing_destinations([(dom.id, "exact", "kept")]) == {
        (dom.id, "exact", "kept"): ("new@dest.test",)}
    found = store.lookup_aliases("b.test", ["user3"])
    assert found is not None and found.exact["user3"] is not None
    store.undo_import(writes)
    assert [(a.local, a.destinations) for a in store.list_aliases()] == [("kept", ("old@dest.test",))]


def test_directory_versions_are_unique_under_concurrent_writers(opened: Opened) -> None:
    rows.make_domain("v.test")
    start = store.directory_version()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        opened.reopen_here()
        try:
            for i in range(5):
                store.add_alias("v.test", "exact", f"w{n}x{i}", ["d@dest.test"])
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close_store()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert store.directory_version() == start + 15


def test_postgres_that_cannot_be_reached_is_one_line_without_the_password(postgres: PostgresServer) -> None:
    from tests.support.postgres import _free_port

    url = f"postgresql://fwdmail:s3cret-pw@127.0.0.1:{_free_port()}/nowhere"
    with pytest.raises(store.StoreError) as exc:
        store.open_store("unused", url)
    message = str(exc.value)
    assert "s3cret-pw" not in message and "fwdmail:***@127.0.0.1" in message
    assert "\n" not in message and "refused" in message


def test_postgres_errors_are_classified(opened: Opened) -> None:
    if opened.engine != "postgresql":
        pytest.skip("PostgreSQL's error classes")
    import psycopg

    wrapped = store_db.pw.OperationalError("could not extend file")  # as peewee wraps psycopg's error
    wrapped.__context__ = psycopg.errors.DiskFull("could not extend file")
    assert store.storage_full(wrapped) and store.unavailable(wrapped)
    assert not store.storage_full(store_db.pw.OperationalError("canceling statement due to lock timeout"))
    # The server closing this connection (as a restart does): unavailable, then a fresh connection works.
    pid = opened.query("SELECT pg_backend_pid()")[0][0]
    opened.outside("SELECT pg_terminate_backend(?)", (pid,))
    with pytest.raises(Exception) as exc:
        store.list_accounts()
    assert store.unavailable(exc.value) and "\n" not in store.failure(exc.value)
    assert store.run_read(store.list_accounts) == []


def test_processes_opening_a_new_store_at_once_migrate_it_once(opened: Opened) -> None:
    store.close_store()
    if opened.engine == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{opened.path}{suffix}").unlink(missing_ok=True)
    else:
        opened.outside("DROP SCHEMA public CASCADE")
        opened.outside("CREATE SCHEMA public")
    code = ("import sys; from fwdmail import store; store.open_store(sys.argv[1], sys.argv[2]); "
            "store.add_account(sys.argv[3])")
    args = [sys.executable, "-c", code, str(opened.path), opened.url]
    procs = [subprocess.Popen([*args, f"p{i}@example.test"], cwd=REPO, stderr=subprocess.PIPE)
             for i in range(4)]
    errors = [p.communicate(timeout=60)[1].decode()[-300:] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    opened.reopen()
    assert len(store.list_accounts()) == 4
    version = opened.query("SELECT value FROM meta WHERE key = 'schema_version'")
    assert version == [(str(store.SCHEMA_VERSION),)]
