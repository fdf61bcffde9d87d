"""Two writers adding the same account, domain or alias at once: the one that loses is told the name
exists already (AlreadyExists), never a database error. On PostgreSQL the check before the insert cannot
see a row another transaction is about to commit; the race is forced here with a second connection that
holds the same insert open until the store's own insert waits on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fwdmail import store
from tests.unit.store.conftest import Opened

OWNER = "owner@example.test"


def _race(opened: Opened, insert_sql: str, params: tuple[Any, ...], add: Callable[[], Any]) -> BaseException:
    import psycopg

    outcome: list[BaseException] = []

    def run() -> None:
        opened.reopen_here()
        try:
            add()
        except BaseException as exc:  # the outcome under test
            outcome.append(exc)
        finally:
            store.db.database.close()

    with psycopg.connect(opened.url) as other:
        other.execute(insert_sql, params)  # inserted, not committed: the store's check cannot see it
        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.5)  # the store's insert now waits on the unique index for `other`'s transaction
        other.commit()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(outcome) == 1, "the losing add went through"
    return outcome[0]


@pytest.fixture
def pg(opened: Opened) -> Opened:
    if opened.engine != "postgresql":
        pytest.skip("a race the check cannot see needs PostgreSQL's concurrent transactions")
    store.add_account(OWNER)
    store.add_domain("a.test", OWNER, "sel", "key", "tok")
    return opened


def test_racing_account_adds(pg: Opened) -> None:
    lost = _race(pg, "INSERT INTO account (email, created_at) VALUES (%s, now())", ("new@example.test",),
                 lambda: store.add_account("new@example.test"))
    assert isinstance(lost, store.AlreadyExists) and "new@example.test" in str(lost)


def test_racing_domain_adds(pg: Opened) -> None:
    columns = [r[0] for r in pg.query("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'domain' AND column_name NOT IN ('id', 'name')")]
    listed = ", ".join(columns)
    copy = f"INSERT INTO domain (name, {listed}) SELECT %s, {listed} FROM domain WHERE name = 'a.test'"
    lost = _race(pg, copy, ("b.test",), lambda: store.add_domain("b.test", OWNER, "sel", "key", "tok"))
    assert isinstance(lost, store.AlreadyExists) and "b.test" in str(lost)


def test_racing_alias_adds(pg: Opened) -> None:
    domain_id = pg.query("SELECT id FROM domain WHERE name = 'a.test'")[0][0]
    lost = _race(pg, "INSERT INTO alias (domain_id, kind, local, lookup, destinations, state, created_at)"
                 " VALUES (%s, 'exact', 'x', 'x', '[\"d@dest.test\"]', 'enabled', now())", (domain_id,),
                 lambda: store.add_alias("a.test", "exact", "x", ["d@dest.test"]))
    assert isinstance(lost, store.AlreadyExists) and "x@a.test" in str(lost)
    assert [a.local for a in store.list_aliases("a.test")] == ["x"]
