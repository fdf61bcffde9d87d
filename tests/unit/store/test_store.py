"""The store on SQLite and PostgreSQL (the `opened` fixture): schema versions, migrations, directory
verbs; and SQLite's own pragmas, file modes and concurrent writers."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import peewee as pw
import pytest

from fwdmail import store
from fwdmail.store import db as store_db
from fwdmail.store.models import ALL_MODELS
from tests.support import rows
from tests.support.daemon import Daemon
from tests.support.rows import T0
from tests.unit.store.conftest import Opened


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data" / "fwdmail.db"
    store.open_store(path)
    yield path
    store.close_store()


def raw(path: Path) -> sqlite3.Connection:
    """A second, independent connection, as another process (the daemon) would hold."""
    return sqlite3.connect(path, isolation_level=None, timeout=0.1)


def pragma(name: str) -> object:
    return store_db.database.execute_sql(f"PRAGMA {name}").fetchone()[0]


# ------------------------------------------------------------------ connection and files


def test_pragmas(db: Path) -> None:
    assert pragma("journal_mode") == "wal"
    assert pragma("foreign_keys") == 1
    assert pragma("secure_delete") == 1
    assert pragma("temp_store") == 2  # no temp file outside the database files holds a removed page
    assert pragma("busy_timeout") == 10_000
    assert pragma("synchronous") == 2


def test_files_are_private(db: Path) -> None:
    store.add_account("a@example.com")  # a write, so -wal and -shm exist
    for suffix in ("", "-wal", "-shm"):
        f = Path(f"{db}{suffix}")
        assert f.exists(), f
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_every_model_field_is_a_column(opened: Opened) -> None:
    for model in ALL_MODELS:
        table = model._meta.table_name
        columns = {c.name for c in store_db.database.get_columns(table)}
        assert columns == {f.column_name for f in model._meta.sorted_fields}, table


def test_reopening_keeps_data_and_version(opened: Opened) -> None:
    store.add_account("a@example.com")
    store.close_store()
    opened.reopen()
    assert [a.email for a in store.list_accounts()] == ["a@example.com"]
    assert store_db.schema_version(store_db.database.obj) == store.SCHEMA_VERSION


# ------------------------------------------------------------------ versions and migrations


def _add_scratch_column(database: pw.SqliteDatabase) -> None:
    database.execute_sql("ALTER TABLE account ADD COLUMN note TEXT NOT NULL DEFAULT 'migrated'")


def test_an_older_database_is_migrated_forward(opened: Opened, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_account("old@example.com")
    store.close_store()
    calls: list[int] = []

    def v2(database: pw.SqliteDatabase) -> None:
        calls.append(2)
        _add_scratch_column(database)

    def v3(database: pw.SqliteDatabase) -> None:
        calls.append(3)
        database.execute_sql("UPDATE account SET note = note || '-twice'")

    monkeypatch.setattr(store_db, "MIGRATIONS", [*store_db.MIGRATIONS, v2, v3])
    monkeypatch.setattr(store_db, "SCHEMA_VERSION", store.SCHEMA_VERSION + 2)
    opened.reopen()
    assert calls == [2, 3]
    assert store_db.schema_version(store_db.database.obj) == store.SCHEMA_VERSION + 2
    assert opened.outside("SELECT email, note FROM account") == [("old@example.com", "migrated-twice")]
    store.close_store()
    opened.reopen()  # up to date: nothing runs again
    assert calls == [2, 3]


def test_a_failing_migration_changes_nothing(opened: Opened, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_account("old@example.com")
    store.close_store()
    before = store.SCHEMA_VERSION

    def broken(database: pw.SqliteDatabase) -> None:
        _add_scratch_column(database)
        database.execute_sql("SELECT * FROM no_such_table")

    monkeypatch.setattr(store_db, "MIGRATIONS", [*store_db.MIGRATIONS, broken])
    monkeypatch.setattr(store_db, "SCHEMA_VERSION", before + 1)
    with pytest.raises(store.StoreError, match="no_such_table"):
        opened.reopen()
    assert opened.outside("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(before),)]
    assert opened.outside("SELECT * FROM account") == [(1, "old@example.com", mock.ANY)]  # no `note` column


def test_a_newer_database_is_refused(opened: Opened) -> None:
    store.close_store()
    newer = str(store.SCHEMA_VERSION + 1)
    opened.outside("UPDATE meta SET value = ? WHERE key = 'schema_version'", (newer,))
    with pytest.raises(store.StoreError) as exc:
        opened.reopen()
    message = str(exc.value)
    assert f"schema version {store.SCHEMA_VERSION + 1} is newer" in message and "upgrade fwdmail" in message
    assert opened.name in message
    assert opened.outside("SELECT value FROM meta WHERE key = 'schema_version'") == [(newer,)]


def test_a_newer_database_is_one_line_from_the_cli(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.cli("init")
    raw(d.data_dir / "fwdmail.db").execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    result = d.cli("account", "list", expect=1)
    assert "schema version 999 is newer" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_a_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    raw(path).execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(store.StoreError, match="not an fwdmail database"):
        store.open_store(path)
    assert raw(path).execute("SELECT name FROM sqlite_master").fetchall() == [("photos",)]


def test_a_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(store.StoreError, match=r"cannot open database .*garbage\.db"):
        store.open_store(path)


# ------------------------------------------------------------------ a second writer (the daemon)


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Take the write lock with a real change pending, as the daemon's queue does mid-transaction."""
    con = raw(path)
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('daemon_was_here', '1')")
    return con


def test_cli_writes_wait_for_the_daemons_write(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.cli("init")
    d.cli("account", "add", "first@example.com")
    holder = _hold_write_lock(d.data_dir / "fwdmail.db")
    results: list[int] = []

    def write() -> None:
        results.append(d.cli("account", "add", "second@example.com", expect=None).exit_code)

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(0.6)
    assert thread.is_alive(), "the CLI did not wait for the lock"
    holder.execute("COMMIT")  # the other writer's change lands while the CLI waits
    holder.close()
    thread.join(timeout=15)
    assert results == [0]
    listed = d.cli("account", "list", "--json").output
    assert "second@example.com" in listed and "first@example.com" in listed


def test_cli_writes_while_serve_runs(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.cli("account", "add", "you@example.org")
    d.cli("domain", "add", "example.com", "--account", "you@example.org")
    for i in range(5):
        d.cli("alias", "add", f"a{i}@example.com", "you@example.org")
    d.cli("alias", "password", "a0@example.com")
    d.cli("domain", "remove", "example.com", "--yes")
    assert d.proc is not None and d.proc.poll() is None
    assert d.stop() == 0
    assert "Traceback" not in d.logs()


def test_cli_gives_up_after_the_busy_timeout_with_one_line(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    d = Daemon(tmp_path)
    d.cli("init")
    monkeypatch.setitem(store_db.PRAGMAS, "busy_timeout", 300)
    holder = _hold_write_lock(d.data_dir / "fwdmail.db")
    try:
        started = time.monotonic()
        result = d.cli("account", "add", "blocked@example.com", expect=1)
        assert time.monotonic() - started >= 0.25
        assert "database is locked" in result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
        assert d.cli("account", "list", "--json").output.strip() == "[]"  # reads still work
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# ------------------------------------------------------------------ directory verbs


def test_every_directory_change_bumps_the_version(opened: Opened) -> None:
    seen = [store.directory_version()]

    def changed() -> None:
        seen.append(store.directory_version())
        assert seen[-1] > seen[-2]

    store.add_account("a@example.com"), changed()
    store.add_domain("example.com", "a@example.com", "sel", "key", "tok"), changed()
    store.update_domain("example.com", retention_days=5), changed()
    store.mark_domain_verified("example.com", T0), changed()
    store.add_alias("example.com", "exact", "x", ["d@example.org"]), changed()
    store.set_alias_state("example.com", "exact", "x", "quiet"), changed()
    store.set_alias_password("example.com", "exact", "x", "scrypt$hash"), changed()
    store.remove_alias("example.com", "exact", "x"), changed()
    store.remove_domain("example.com"), changed()
    store.delete_account("a@example.com"), changed()


def test_duplicates_and_unknown_names(opened: Opened) -> None:
    store.add_account("a@example.com")
    with pytest.raises(store.AlreadyExists):
        store.add_account("a@example.com")
    with pytest.raises(store.NotFound, match=r"no account b@example\.com"):
        store.add_domain("example.com", "b@example.com", "sel", "key", "tok")
    store.add_domain("example.com", "a@example.com", "sel", "key", "tok")
    with pytest.raises(store.AlreadyExists):
        store.add_domain("example.com", "a@example.com", "sel", "key", "tok")
    store.add_alias("example.com", "exact", "x", ["d@example.org"])
    with pytest.raises(store.AlreadyExists, match=r"alias x@example\.com exists already"):
        store.add_alias("example.com", "exact", "x", ["e@example.org"])
    with pytest.raises(store.NotFound, match=r"no domain other\.com"):
        store.add_alias("other.com", "exact", "x", ["d@example.org"])
    with pytest.raises(store.NotFound, match=r"no alias /\^y\$/@example.com"):
        store.remove_alias("example.com", "regex", "^y$")
    with pytest.raises(ValueError, match="cannot set dkim_private_key"):
        store.update_domain("example.com", dkim_private_key="evil")


def test_alias_records(opened: Opened) -> None:
    store.add_account("a@example.com")
    store.add_domain("example.com", "a@example.com", "sel", "key", "tok")
    store.add_alias("example.com", "regex", "^(.+)-x$", ["s+$1@example.org", "t@example.org"])
    store.add_alias("example.com", "catch-all", "*", ["c@example.org"])
    (catch, regex) = store.list_aliases("example.com")
    assert catch.address == "*@example.com" and catch.kind == "catch-all"
    assert regex.address == "/^(.+)-x$/@example.com"
    assert regex.destinations == ("s+$1@example.org", "t@example.org")
    assert regex.state == "enabled" and not regex.has_password and regex.account_email == "a@example.com"
    assert store.alias_password_hash("example.com", "catch-all", "*") is None
    store.set_alias_password("example.com", "catch-all", "*", "scrypt$x")
    assert store.alias_password_hash("example.com", "catch-all", "*") == "scrypt$x"
    assert store.get_alias("example.com", "catch-all", "*").has_password


def abuse_domains(opened: Opened) -> list[str]:
    sql = "SELECT d.name FROM abuse_event a LEFT JOIN domain d ON a.domain_id = d.id ORDER BY a.id"
    return [r[0] for r in opened.query(sql)]


def test_remove_domain_takes_its_aliases_mail_and_logs(opened: Opened) -> None:
    rows.make_domain("gone.test", "a@example.com")
    rows.make_domain("kept.test", "a@example.com")
    for name in ("gone.test", "kept.test"):
        store.add_alias(name, "exact", "x", ["d@example.org"])
        rows.add_outbound(name)
        rows.add_error_log(T0, domain=name)
        rows.add_abuse_event(T0, domain=name)
    counts = store.remove_domain("gone.test")
    assert counts == {"aliases": 1, "emails": 1, "smtp_error_logs": 1}
    assert [a.domain for a in store.list_aliases()] == ["kept.test"]
    assert {e.domain for e in store.list_emails()} == {"kept.test"}
    assert {e.domain for e in store.list_smtp_errors()} == {"kept.test"}
    assert abuse_domains(opened) == ["kept.test"]
    assert store.get_account("a@example.com").domains == ("kept.test",)


def test_delete_account_takes_everything_it_owns(opened: Opened) -> None:
    for owner, names in (("gone@example.com", ("g1.test", "g2.test")), ("kept@example.com", ("k.test",))):
        for name in names:
            rows.make_domain(name, owner)
            store.add_alias(name, "exact", "x", ["d@example.org"])
            store.set_alias_password(name, "exact", "x", "scrypt$x")
            rows.add_outbound(name)
            rows.add_error_log(T0, domain=name)
            rows.add_abuse_event(T0, domain=name)
    counts = store.delete_account("gone@example.com")
    assert counts == {"domains": 2, "aliases": 2, "emails": 2, "smtp_error_logs": 2}
    assert [a.email for a in store.list_accounts()] == ["kept@example.com"]
    assert [d.name for d in store.list_domains()] == ["k.test"]
    assert [a.domain for a in store.list_aliases()] == ["k.test"]
    assert {e.domain for e in store.list_emails()} == {"k.test"}
    assert {e.domain for e in store.list_smtp_errors()} == {"k.test"}
    assert abuse_domains(opened) == ["k.test"]
    assert opened.query("SELECT count(*) FROM outbound_recipient") == [(1,)]
    assert opened.query("SELECT count(*) FROM alias WHERE password_hash IS NOT NULL") == [(1,)]
    with pytest.raises(store.NotFound):
        store.delete_account("gone@example.com")


def test_the_store_itself_guards_its_invariants(opened: Opened) -> None:
    store.add_account("a@example.com")
    store.add_domain("example.com", "a@example.com", "sel", "key", "tok")
    for days in (-1, 31, "7"):
        with pytest.raises(ValueError, match="retention_days must be between 0 and 30"):
            store.update_domain("example.com", retention_days=days)
    assert store.update_domain("example.com", retention_days=30).retention_days == 30
    with pytest.raises(ValueError, match="1 to 10 destinations, got 0"):
        store.add_alias("example.com", "exact", "x", [])
    with pytest.raises(ValueError, match="1 to 10 destinations, got 11"):
        store.add_alias("example.com", "exact", "x", [f"d{i}@example.org" for i in range(11)])
    with pytest.raises(ValueError, match="alias kind"):
        store.add_alias("example.com", "prefix", "x", ["d@example.org"])
    store.add_alias("example.com", "exact", "x", ["d@example.org"])
    with pytest.raises(ValueError, match="alias state"):
        store.set_alias_state("example.com", "exact", "x", "paused")
    assert store.list_aliases()[0].state == "enabled"
