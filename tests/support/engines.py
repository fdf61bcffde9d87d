"""A store open on either engine, for the tests that run on both (the `engine` and `opened` fixtures of
tests/conftest.py): SQLite in a file, or a database on the session's private PostgreSQL server."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwdmail import store
from fwdmail.store import db as store_db


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
