"""The store tests run on both engines: `engine` is "sqlite" or "postgresql", and `opened` is a fresh store
on it (a file in tmp_path, or a new database on the session's private PostgreSQL server)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fwdmail import store
from fwdmail.store import db as store_db
from tests.support.postgres import PostgresServer, postgres_bin, running_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the whole session (skipped where none is installed)."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine: apt-get install postgresql")
    with running_postgres(bindir) as server:
        yield server


@dataclass
class Opened:
    """A store open on one engine: `path` (SQLite) or `url` (PostgreSQL) is what `open_store` takes."""

    engine: str
    path: Path
    url: str = ""

    def reopen(self) -> None:
        store.open_store(self.path, self.url)

    def reopen_here(self) -> None:
        """This thread's own connection to the open store (as the daemon's database threads have)."""
        store_db.database.connect(reuse_if_open=True)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of `sql` (with `?` placeholders) on the store's own connection."""
        return [tuple(r) for r in store_db.database.execute_sql(store_db.sql(sql), params).fetchall()]

    def outside(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of `sql` (with `?` placeholders) on a second, independent connection, committed at once:
        as another process would see and change the database."""
        if self.engine == "sqlite":
            con = sqlite3.connect(self.path, isolation_level=None, timeout=1)
            try:
                return con.execute(sql, params).fetchall()
            finally:
                con.close()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as con:
            cur = con.execute(sql.replace("?", "%s"), params)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []

    @property
    def name(self) -> str:
        """How store errors name this database."""
        return str(self.path) if self.engine == "sqlite" else self.url


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """The one database the session's PostgreSQL tests share, emptied before each."""
    return postgres.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opened(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Opened]:
    path = tmp_path / "data" / "fwdmail.db"
    if engine == "sqlite":
        at = Opened(engine, path)
        at.reopen()
        yield at
        store.close_store()
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url: str = request.getfixturevalue("postgres_url")
    server.empty_database(url)
    at = Opened(engine, path, url)
    at.reopen()
    yield at
    store.close_store()
