"""Several nodes on one store: queue claims that never block or overlap across connections and that name
their node, stale claims judged by the database's clock, a job leased once per interval for the whole
cluster, and the SRS secret shared through the database."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path

import pytest

from fwdmail import store
from fwdmail.config import Config, ConfigError, DatabaseConfig, from_dict
from fwdmail.mail import srs
from fwdmail.retention.scheduler import RetentionScheduler
from fwdmail.runtime import datadir, keys
from fwdmail.runtime.context import Context
from fwdmail.store import db as store_db
from tests.support import rows
from tests.support.rows import T0
from tests.unit.store.conftest import Opened


def new_email(domain: str, n: int) -> store.NewEmail:
    return store.NewEmail(store.new_queue_id(), domain, "sender@" + domain, (f"r{n}@dest.test",),
                          b"Subject: hi\r\n", b"body\r\n", subject="hi")


def postgres_only(opened: Opened) -> None:
    if opened.engine != "postgresql":
        pytest.skip("several nodes share a store on PostgreSQL only")


def _unclaimed() -> int:
    return int(store_db.database.execute_sql(
        "SELECT count(*) FROM outbound_email WHERE claimed_at IS NULL").fetchone()[0])


def test_two_nodes_claiming_2000_messages_at_once_never_share_one(opened: Opened) -> None:
    postgres_only(opened)
    rows.make_domain("q.test")
    store.enqueue([new_email("q.test", i) for i in range(2000)], T0)
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=30)

    def node(name: str) -> None:
        opened.reopen_here()
        try:
            found: list[int] = []
            start.wait()
            for _ in range(1000):  # bounded; an empty claim may mean "the other node holds the rest"
                claimed = store.claim_due(T0, f"{name}-worker", 25, name)
                found += [c.id for c in claimed]
                if not claimed and _unclaimed() == 0:
                    break
            got[name] = found
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close_store()

    threads = [threading.Thread(target=node, args=(name,)) for name in ("node-a", "node-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == 2000 and len(set(claimed)) == 2000
    assert all(got.values()), "both nodes claimed some"
    by_node = dict(opened.query("SELECT claim_node, count(*) FROM outbound_email GROUP BY claim_node"))
    assert by_node == {name: len(ids) for name, ids in got.items()}


def test_a_claim_skips_rows_another_node_is_claiming_instead_of_waiting(opened: Opened) -> None:
    postgres_only(opened)
    import psycopg

    rows.make_domain("q.test")
    store.enqueue([new_email("q.test", i) for i in range(6)], T0)
    with psycopg.connect(opened.url) as other:  # another node, mid-claim: its rows locked
        locked = [r[0] for r in other.execute(
            "SELECT id FROM outbound_email ORDER BY id LIMIT 3 FOR UPDATE").fetchall()]
        store_db.database.execute_sql("SET lock_timeout = 2000")  # waiting would fail, not hang
        claimed = store.claim_due(T0, "w", 10, "node-b")
        other.rollback()
    assert sorted(c.id for c in claimed) == sorted(set(range(min(locked), min(locked) + 6)) - set(locked))


def test_a_node_start_releases_only_its_own_claims(opened: Opened) -> None:
    rows.make_domain("q.test")
    store.enqueue([new_email("q.test", i) for i in range(6)], T0)
    a = store.claim_due(T0, "wa", 3, "node-a")
    b = store.claim_due(T0, "wb", 3, "node-b")
    assert len(a) == len(b) == 3
    assert store.release_stale_claims(T0, max_crashes=3, node="node-a") == (3, 0)
    left = opened.query("SELECT id, claim_token, claim_node FROM outbound_email WHERE claimed_at IS NOT NULL")
    assert sorted(left) == sorted((c.id, "wb", "node-b") for c in b)
    assert sorted(c.id for c in store.claim_due(T0, "wa2", 10, "node-a")) == sorted(c.id for c in a)


def test_a_stale_claim_is_judged_by_the_database_clock(opened: Opened) -> None:
    postgres_only(opened)
    rows.make_domain("q.test")
    store.enqueue([new_email("q.test", i) for i in range(2)], T0)
    fresh, old = store.claim_due(T0, "w", 2, "node-a")
    opened.outside("UPDATE outbound_email SET claimed_at = (now() AT TIME ZONE 'UTC') "
                   "- interval '10 minutes' WHERE id = ?", (old.id,))
    # A node whose clock runs a day ahead takes back only the claim the database says is stale.
    ahead = store.utcnow() + dt.timedelta(days=1)
    assert store.release_stale_claims(ahead, max_crashes=3, older_than=300) == (1, 0)
    left = opened.query("SELECT id FROM outbound_email WHERE claimed_at IS NOT NULL")
    assert left == [(fresh.id,)]


def _node(opened: Opened, tmp_path: Path, name: str) -> datadir.Runtime:
    cfg = Config(data_dir=str(tmp_path / name), hostname="mx.fwd.test",
                 database=DatabaseConfig(url=opened.url))
    return datadir.prepare(cfg, create=True)


def test_nodes_on_one_postgres_share_the_srs_secret(opened: Opened, tmp_path: Path) -> None:
    a = _node(opened, tmp_path, "node-a")
    b = _node(opened, tmp_path, "node-b")
    if opened.engine == "sqlite":  # each data dir its own store and secret, as on one machine
        assert a.srs_secret != b.srs_secret and (tmp_path / "node-a" / "srs.secret").is_file()
        return
    assert a.srs_secret == b.srs_secret and len(a.srs_secret) == 44
    assert not (tmp_path / "node-b" / "srs.secret").exists(), "no data dir secret beside the shared one"
    assert _node(opened, tmp_path, "node-a").srs_secret == a.srs_secret, "read again, not made again"
    assert a.node_id != b.node_id
    minted = srs.forward("alice@sender.test", a.srs_secret, "fwd.test", T0)
    assert srs.reverse(minted.partition("@")[0], b.srs_secret, T0) == "alice@sender.test"


def test_a_single_node_moving_to_postgres_keeps_its_srs_secret(opened: Opened, tmp_path: Path) -> None:
    postgres_only(opened)
    old = keys.ensure_secret(tmp_path / "node-a" / "srs.secret")
    assert _node(opened, tmp_path, "node-a").srs_secret == old
    assert _node(opened, tmp_path, "node-b").srs_secret == old


def test_of_nodes_asking_at_once_one_takes_the_lease_until_it_expires(opened: Opened) -> None:
    postgres_only(opened)
    got: list[bool] = []
    start = threading.Barrier(4, timeout=30)

    def node() -> None:
        opened.reopen_here()
        try:
            start.wait()
            got.append(store.take_lease("retention", T0, 3600))
        finally:
            store.close_store()

    threads = [threading.Thread(target=node) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == [False, False, False, True]
    assert not store.take_lease("retention", T0 + dt.timedelta(days=1), 3600), "the database's clock judges"
    opened.outside("UPDATE lease SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 second'")
    assert store.take_lease("retention", T0, 3600) and not store.take_lease("retention", T0, 3600)


def test_two_schedulers_on_one_database_run_the_jobs_once_per_interval(opened: Opened,
                                                                       tmp_path: Path) -> None:
    old = [rows.add_error_log(store.utcnow() - dt.timedelta(days=60)) for _ in range(5)]
    assert len(old) == 5
    runtime = datadir.Runtime(from_dict({"data_dir": str(tmp_path / "data"), "retention": {"interval": 3600},
                                         "database": {"url": opened.url}}),
                              b"secret", tmp_path / "cert.pem", tmp_path / "key.pem")

    async def main() -> list[object]:
        contexts = [Context(runtime), Context(runtime)]
        schedulers = [RetentionScheduler(c.blocking, c.config.retention) for c in contexts]
        try:
            first = await asyncio.gather(*(s.run_once() for s in schedulers))
            again = await asyncio.gather(*(s.run_once() for s in schedulers))
            return [*first, *again]
        finally:
            for s, c in zip(schedulers, contexts, strict=True):
                await s.stop()
                c.blocking.shutdown()

    reports = asyncio.run(main())
    if opened.engine == "sqlite":  # one daemon per store: every run is its own
        assert all(r is not None for r in reports)
        return
    ran = [r for r in reports if r is not None]
    assert len(ran) == 1, "one run for the cluster in this interval"
    assert ran[0].counts["smtp_error_logs"] == 5  # type: ignore[attr-defined]


def test_a_run_outlasting_its_lease_does_not_overlap_another_nodes(opened: Opened, tmp_path: Path) -> None:
    postgres_only(opened)
    runtime = datadir.Runtime(from_dict({"data_dir": str(tmp_path / "data"), "retention": {"interval": 3600},
                                         "database": {"url": opened.url}}),
                              b"secret", tmp_path / "cert.pem", tmp_path / "key.pem")
    import psycopg

    async def run() -> object:
        ctx = Context(runtime)
        scheduler = RetentionScheduler(ctx.blocking, ctx.config.retention)
        try:
            return await scheduler.run_once()
        finally:
            await scheduler.stop()
            ctx.blocking.shutdown()

    with psycopg.connect(opened.url, autocommit=True) as other:  # a node whose run is still going
        other.execute("SELECT pg_advisory_lock(hashtext('fwdmail job retention'))")
        assert asyncio.run(run()) is None, "the lease was free (expired), but another node's run still goes"
        other.execute("SELECT pg_advisory_unlock(hashtext('fwdmail job retention'))")
    opened.outside("UPDATE lease SET expires_at = (now() AT TIME ZONE 'UTC') - interval '1 second'")
    assert asyncio.run(run()) is not None
    assert store.hold_job_lock("retention"), "the finished run let go of the lock"
    store.release_job_lock("retention")


@pytest.mark.parametrize("value", ["a b", "x" * 65, "mx1/blue", "ünï"])
def test_a_bad_node_id_is_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"cluster": {"node_id": value}})
    assert str(exc.value).startswith("cluster.node_id: must be empty") and "\n" not in str(exc.value)


def test_the_node_id_is_the_configured_one_or_stable_per_data_dir(tmp_path: Path) -> None:
    assert datadir.node_id(from_dict({"cluster": {"node_id": "mx-2"}})) == "mx-2"
    one, two = (from_dict({"data_dir": str(tmp_path / d)}) for d in ("one", "two"))
    assert datadir.node_id(one) == datadir.node_id(from_dict({"data_dir": str(tmp_path / "one")}))
    assert datadir.node_id(one) != datadir.node_id(two)
