"""The SQLite connection: pragmas, schema version, forward migrations, checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import peewee as pw

from .models import ALL_MODELS, Meta, database

PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "secure_delete": 1,
    "synchronous": 2,  # FULL: a commit is on disk before it returns
    "busy_timeout": 10_000,
}


class StoreError(RuntimeError):
    """The store cannot be opened or used (locked, read-only, full, corrupt)."""


def _v1(db: pw.SqliteDatabase) -> None:
    db.create_tables(ALL_MODELS)


MIGRATIONS: list[Callable[[pw.SqliteDatabase], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def open_store(path: str | Path) -> pw.SqliteDatabase:
    """Open (creating if needed) the database at `path`, apply pragmas and migrations."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists()
    db = pw.SqliteDatabase(str(path), pragmas=PRAGMAS, check_same_thread=False)
    database.initialize(db)
    try:
        db.connect(reuse_if_open=True)
        migrate(db)
    except pw.OperationalError as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    if fresh:
        for suffix in ("", "-wal", "-shm"):
            f = Path(f"{path}{suffix}")
            if f.exists():
                os.chmod(f, 0o600)
    return db


def close_store() -> None:
    """Close this thread's connection, if any."""
    db = database.obj
    if db is not None and not db.is_closed():
        db.close()


def schema_version(db: pw.SqliteDatabase) -> int:
    if not db.table_exists("meta"):
        return 0
    row = Meta.get_or_none(Meta.key == "schema_version")
    return int(row.value) if row else 0


def migrate(db: pw.SqliteDatabase) -> None:
    """Bring the schema forward to SCHEMA_VERSION, one migration per transaction."""
    with db.atomic("IMMEDIATE"):
        current = schema_version(db)
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {current} is newer than this fwdmail ({SCHEMA_VERSION})"
            )
        for version in range(current, SCHEMA_VERSION):
            MIGRATIONS[version](db)
            Meta.insert(key="schema_version", value=str(version + 1)).on_conflict_replace().execute()


def checkpoint() -> None:
    """Move the WAL into the main file and truncate it, so removed bytes leave the WAL too."""
    database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def data_version() -> int:
    """SQLite's data_version: changes when another connection commits."""
    return int(database.execute_sql("PRAGMA data_version").fetchone()[0])
