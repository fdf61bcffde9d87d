"""A write on PostgreSQL waits for a row lock held elsewhere only its budget, on every write of a
connection and on a new connection after a reconnect, although the `SET lock_timeout` is sent only when
its value changes (one round trip less per write)."""

from __future__ import annotations

import threading
import time

import peewee as pw
import psycopg
import pytest

from fwdmail import store
from fwdmail.store import db as store_db
from fwdmail.store.models import Meta
from tests.unit.store.conftest import Opened

HELD = 5.0
"""How long the other connection holds the row: a write without a lock timeout would wait this long and
then succeed, so the test fails (never hangs) if the timeout went missing."""


def _touch() -> None:
    with store_db.writing():
        Meta.update(value="x").where(Meta.key == "held").execute()


def _write_fails_within_budget() -> None:
    started = time.monotonic()
    with pytest.raises(pw.OperationalError):
        store_db.run_write(time.monotonic(), 0.3, _touch)
    assert time.monotonic() - started < HELD, "it waited for the lock instead of giving up"


def test_every_write_keeps_its_lock_budget_with_the_set_sent_once(opened: Opened) -> None:
    if opened.engine != "postgresql":
        pytest.skip("PostgreSQL's lock_timeout")
    store_db.upsert_meta("held", "v")
    with psycopg.connect(opened.url) as other:
        other.execute("SELECT * FROM meta WHERE key = 'held' FOR UPDATE")
        release = threading.Timer(HELD, other.rollback)
        release.start()
        try:
            _write_fails_within_budget()
            _write_fails_within_budget()  # same value: no SET sent, the connection still has it
            store.close_store()
            opened.reopen_here()  # a new connection starts with lock_timeout 0 (wait for ever)
            _write_fails_within_budget()
        finally:
            release.cancel()
            other.rollback()
    store_db.run_write(time.monotonic(), 0.3, _touch)
    assert opened.query("SELECT value FROM meta WHERE key = 'held'") == [("x",)]
