"""Copying a single-node SQLite store into an empty PostgreSQL database (`fwdmail db copy --to`).

The source is read through its own read-only connection in one read transaction (one consistent state
even while something else writes); the target gets the schema and every row in one transaction, so a copy
that fails leaves the target as empty as it found it. Rows move in batches bounded in count and bytes.

Untrusted input: the target URL (checked by config's rules; its password never reaches a message) and
the stored rows, which are copied as values and never interpreted.
"""

from __future__ import annotations

import importlib.util
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw

from fwdmail.store.db import (
    StoreError,
    _PostgresqlDatabase,
    close_store,
    failure,
    migrate,
    redacted_url,
    unavailable,
)
from fwdmail.store.models import ALL_MODELS, BaseModel, Meta, database

# A batch holds at most this many rows, and stops growing once its values pass BATCH_BYTES (an outbound
# body may be megabytes: memory stays near BATCH_BYTES plus one fetch of FETCH_ROWS rows).
BATCH_ROWS = 500
BATCH_BYTES = 8 * 1024 * 1024
FETCH_ROWS = 16


class TargetNotEmpty(StoreError):
    """The target database already has tables: a copy never merges into or overwrites a store."""


@dataclass(frozen=True)
class TableCopy:
    """One table's copy: rows in the source, rows written, rows the target then counted."""

    table: str
    source: int
    copied: int
    target: int

    @property
    def verified(self) -> bool:
        return self.source == self.copied == self.target


Progress = Callable[[str, int], None]


def copy_to(source: str | Path, url: str, *, progress: Progress | None = None,
            batch_rows: int = BATCH_ROWS, batch_bytes: int = BATCH_BYTES) -> list[TableCopy]:
    """Copy the SQLite store at `source` (already at this fwdmail's schema version) into the empty
    PostgreSQL database `url`; return each table's counts. Raises `TargetNotEmpty` if the target has any
    table, `StoreError` if either side fails or a count differs (the target then keeps nothing)."""
    shown = redacted_url(url)
    if importlib.util.find_spec("psycopg") is None:
        raise StoreError(f"cannot open database {shown}: PostgreSQL needs psycopg "
                         "(pip install 'fwdmail[postgres]')")
    close_store()
    src = _read_only(Path(source))
    target = _PostgresqlDatabase(url)
    database.initialize(target)
    try:
        try:
            target.connect()
            found = target.get_tables()
        except (pw.DatabaseError, pw.InterfaceError) as exc:
            raise StoreError(f"cannot open database {shown}: {failure(exc)}") from None
        if found:
            raise TargetNotEmpty(f"{shown} is not empty ({len(found)} tables, e.g. {sorted(found)[0]!r}); "
                                 "db copy fills only a new, empty database")
        try:
            src.execute("BEGIN")
            with target.atomic():
                migrate(target)
                Meta.delete().execute()  # the source's facts (schema version included) replace the new ones
                report = [_copy_table(src, model, progress, batch_rows, batch_bytes) for model in ALL_MODELS]
                bad = [r for r in report if not r.verified]
                if bad:
                    raise StoreError("counts differ after the copy (" + ", ".join(
                        f"{r.table}: {r.source} in the source, {r.target} in the target" for r in bad)
                        + "); nothing was kept in the target")
        except (pw.DatabaseError, pw.InterfaceError, sqlite3.Error) as exc:
            text = failure(exc) if unavailable(exc) else f"{type(exc).__name__}: {exc}"
            raise StoreError(f"copy to {shown} failed, nothing was kept in the target: {text}") from None
        return report
    finally:
        src.close()
        target.close()


def _read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreError(f"no SQLite store at {path}")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=10)
        con.execute("PRAGMA query_only = 1")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read database {path}: {exc}") from None
    return con


def _copy_table(src: sqlite3.Connection, model: type[BaseModel], progress: Progress | None,
                batch_rows: int, batch_bytes: int) -> TableCopy:
    table = model._meta.table_name
    fields = list(model._meta.sorted_fields)
    (source,) = src.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    copied = 0
    for batch in _batches(src, model, fields, batch_rows, batch_bytes):
        model.insert_many(batch, fields=fields).execute()
        copied += len(batch)
        if progress is not None:
            progress(table, len(batch))
    if isinstance(model._meta.primary_key, pw.AutoField):
        # Rows came with their ids: the table's sequence must continue after the largest.
        database.execute_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 0) + 1, false) "
            f'FROM "{table}"')
    target = model.select().count()
    return TableCopy(table, int(source), copied, int(target))


def _batches(src: sqlite3.Connection, model: type[BaseModel], fields: list[pw.Field], batch_rows: int,
             batch_bytes: int) -> Iterator[list[tuple[Any, ...]]]:
    """The source rows of `model` in primary-key order, as model values, in bounded batches."""
    columns = ", ".join(f'"{f.column_name}"' for f in fields)
    key = model._meta.primary_key.column_name
    cursor = src.execute(f'SELECT {columns} FROM "{model._meta.table_name}" ORDER BY "{key}"')
    batch: list[tuple[Any, ...]] = []
    size = 0
    while chunk := cursor.fetchmany(FETCH_ROWS):
        for raw in chunk:
            batch.append(tuple(f.python_value(v) for f, v in zip(fields, raw, strict=True)))
            size += sum(len(v) for v in raw if isinstance(v, str | bytes))
            if len(batch) >= batch_rows or size >= batch_bytes:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch
