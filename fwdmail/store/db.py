"""The store's connections, on SQLite (the default, a file in data_dir) or PostgreSQL (`[database] url`):
pragmas, schema version, forward migrations under a lock, checkpoints, and how a thread reads (its own
read-only connection) or writes (waiting a bounded time for locks held elsewhere).

Untrusted input: the `[database] url` (validated in config; its password never reaches a message) and
the database's own error texts, logged only for failures of the store as a whole."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import peewee as pw
from playhouse import migrate as schema

from fwdmail.store.models import (
    ALL_MODELS,
    AccountLogin,
    ApiToken,
    DirectoryChange,
    HttpLog,
    Lease,
    LoginLink,
    Meta,
    SenderRule,
    WebhookKey,
    WebSession,
    database,
    lookup_key,
)

P = ParamSpec("P")
T = TypeVar("T")

PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "secure_delete": 1,
    "temp_store": 2,  # MEMORY: sorter and statement-journal temp files could hold bodies being redacted
    "synchronous": 2,  # FULL: a commit is on disk before it returns
    "busy_timeout": 10_000,
}


class StoreError(RuntimeError):
    """The store cannot be opened or used (locked, read-only, full, corrupt)."""


# PostgreSQL's SQLSTATE for "disk full" (class 53, insufficient resources).
PG_DISK_FULL = "53100"


def _from_psycopg(exc: BaseException) -> bool:
    return any(type(e).__module__.startswith("psycopg") for e in (exc, exc.__context__, exc.__cause__)
               if e is not None)


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the store as a whole cannot work now (locked, full, read-only, I/O error, the
    server gone), rather than that it refused one particular write."""
    if isinstance(exc, pw.OperationalError | StoreError):
        return True
    # psycopg's "the connection is closed" (the server went away between two statements).
    return isinstance(exc, pw.InterfaceError) and _from_psycopg(exc)


def storage_full(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's SQLITE_FULL or PostgreSQL's disk-full SQLSTATE: no room left."""
    return any(getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
               or getattr(e, "sqlstate", None) == PG_DISK_FULL
               for e in (exc, exc.__context__, exc.__cause__))


def failure(exc: BaseException) -> str:
    """A store failure as a log line may say it: the engine's own first line ("database is locked",
    "connection refused"), or the exception's type for anything else (its text could quote stored data)."""
    text = str(exc).strip().splitlines()[0] if unavailable(exc) and str(exc).strip() else ""
    return text or type(exc).__name__


def is_sqlite() -> bool:
    """Whether the open store is SQLite (the default) rather than PostgreSQL."""
    return isinstance(database.obj, pw.SqliteDatabase)


def writing() -> AbstractContextManager[Any]:
    """A write transaction: on SQLite `BEGIN IMMEDIATE`, taking the write lock before the first read so a
    writer waits for another instead of failing on a stale snapshot; on PostgreSQL a plain transaction
    (a verb that reads and then writes locks its rows: `locking`, `FOR_UPDATE`)."""
    return database.atomic("IMMEDIATE") if is_sqlite() else database.atomic()


@contextlib.contextmanager
def unique_insert(error: type[Exception], message: str) -> Iterator[None]:
    """An insert that another writer may have beaten (on PostgreSQL the check before it cannot see a row
    committed meanwhile, and the unique index refuses): `error(message)`, as the check would have said."""
    try:
        yield
    except pw.IntegrityError:
        raise error(message) from None


def snapshot() -> AbstractContextManager[Any]:
    """A read transaction that sees one state throughout (SQLite's transactions always do; PostgreSQL's
    default READ COMMITTED would see each statement's own)."""
    return database.atomic() if is_sqlite() else database.atomic(isolation_level="REPEATABLE READ")


def locking(query: pw.ModelSelect) -> pw.ModelSelect:
    """`query` locking the rows it reads until the transaction ends (PostgreSQL); SQLite's write
    transaction holds the whole database already."""
    return query if is_sqlite() else query.for_update()


def sql(text: str) -> str:
    """Fixed SQL written with `?` placeholders, in the open database's parameter style."""
    param = database.param
    return text if param == "?" else text.replace("?", param)


def redacted_url(url: str) -> str:
    """`url` with any password replaced, as an error message may show it."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class _SqliteDatabase(pw.SqliteDatabase):
    """peewee's SqliteDatabase, except that a ROLLBACK is skipped when SQLite already rolled back by itself
    (it does on SQLITE_FULL and some I/O errors): the caller then sees the error that caused it, not
    "cannot rollback - no transaction is active"."""

    def rollback(self) -> None:
        conn = self._state.conn
        if conn is not None and not conn.in_transaction:
            return
        super().rollback()


class _PostgresqlDatabase(pw.PostgresqlDatabase):
    """peewee's PostgresqlDatabase on psycopg 3 (peewee's own adapter for it)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, prefer_psycopg3=True, connect_timeout=10)


# MIGRATIONS[i] brings an existing database from schema version i + 1 to i + 2. A new database is created
# from the models straight at SCHEMA_VERSION, so changing models.py takes both: the model edit (new
# databases) and a migration appended here (existing ones).
def _directory_lookups(db: pw.Database) -> None:
    """2: aliases found by an indexed `lookup` key, and the per-domain change log the MX polls."""
    # One plain ADD COLUMN: playhouse's add_column rebuilds a SQLite table to make a column NOT NULL, and
    # dropping the old `alias` table would run ON DELETE SET NULL on every queued message's alias.
    migrator = schema.SchemaMigrator.from_database(db)
    if "lookup" not in {c.name for c in db.get_columns("alias")}:
        db.execute_sql("ALTER TABLE alias ADD COLUMN lookup VARCHAR(255) NOT NULL DEFAULT ''")
    update = f"UPDATE alias SET lookup = {db.param} WHERE id = {db.param}"
    select = f"SELECT id, local FROM alias WHERE id > {db.param} ORDER BY id LIMIT 10000"
    last = 0
    while rows := db.execute_sql(select, (last,)).fetchall():
        db.cursor().executemany(update, [(lookup_key(local), ident) for ident, local in rows])
        last = rows[-1][0]
    schema.migrate(migrator.add_index("alias", ("domain_id", "kind", "lookup"), False))
    db.create_tables([DirectoryChange])


def _cluster(db: pw.Database) -> None:
    """3: claims tagged with the claiming node, and the leases that run a job once for the cluster."""
    migrator = schema.SchemaMigrator.from_database(db)
    schema.migrate(migrator.add_column("outbound_email", "claim_node", pw.CharField(null=True)))
    db.create_tables([Lease])


def _http_tables(db: pw.Database) -> None:
    """4: API tokens (hashed) and the 30-day log of web/API requests."""
    db.create_tables([ApiToken, HttpLog])


def _web_logins(db: pw.Database) -> None:
    """issue 16 pages: account web logins, sessions and one-time password links."""
    db.create_tables([AccountLogin, WebSession, LoginLink], safe=True)


def _sender_lists_and_webhook_keys(db: pw.Database) -> None:
    """issue 17: per-domain sender allow/deny lists and webhook signing keys."""
    db.create_tables([SenderRule, WebhookKey], safe=True)


def _aliases_from(db: pw.Database) -> None:
    """issue 17: where a domain's aliases come from (store, dns, both); the column added if missing.
    One plain ADD COLUMN: playhouse's add_column rebuilds a SQLite table to make a column NOT NULL, and
    dropping the old `domain` table would cascade to every alias."""
    if "aliases_from" not in {c.name for c in db.get_columns("domain")}:
        db.execute_sql("ALTER TABLE domain ADD COLUMN aliases_from VARCHAR(255) NOT NULL DEFAULT 'store'")


MIGRATIONS: list[Callable[[pw.Database], None]] = [_directory_lookups, _cluster, _http_tables,
                                                   _web_logins, _sender_lists_and_webhook_keys,
                                                   _aliases_from]
SCHEMA_VERSION = 1 + len(MIGRATIONS)


def open_store(path: str | Path, url: str = "") -> pw.Database:
    """Open (creating if needed) the database at `path`, apply pragmas and migrations; with `url` (a
    `postgresql://` URL, `[database] url`) the PostgreSQL database it names instead of `path`."""
    close_store()
    if url:
        return _open_postgres(url)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Created 0600 before SQLite opens it; SQLite gives the -wal and -shm files the same mode.
            # Only when missing: closing any descriptor of an open database drops this process's locks.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror or exc}") from None
    db = _SqliteDatabase(str(path), pragmas=PRAGMAS, check_same_thread=False)
    database.initialize(db)
    try:
        db.connect(reuse_if_open=True)
        migrate(db)
    except (pw.DatabaseError, StoreError) as exc:
        db.close()
        raise StoreError(f"cannot open database {path}: {exc}") from None
    return db


def _open_postgres(url: str) -> pw.Database:
    shown = redacted_url(url)
    if importlib.util.find_spec("psycopg") is None:
        raise StoreError(f"cannot open database {shown}: PostgreSQL needs psycopg "
                         "(pip install 'fwdmail[postgres]')")
    db = _PostgresqlDatabase(url)
    database.initialize(db)
    try:
        db.connect(reuse_if_open=True)
        migrate(db)
    except (pw.DatabaseError, pw.InterfaceError, StoreError) as exc:
        db.close()
        raise StoreError(f"cannot open database {shown}: {failure(exc) if unavailable(exc) else exc}"
                         ) from None
    return db


def close_store() -> None:
    """Close this thread's connection, if any."""
    db = database.obj
    if db is not None and not db.is_closed():
        db.close()


def schema_version(db: pw.Database) -> int:
    if not db.table_exists("meta"):
        return 0
    row = Meta.get_or_none(Meta.key == "schema_version")
    if row is None:
        return 0
    if not row.value.isdigit():
        raise StoreError(f"its schema version {row.value!r} is not a number (not written by fwdmail?)")
    return int(row.value)


# The PostgreSQL advisory lock that migrations hold (any constant: only fwdmail takes it on its database).
MIGRATION_LOCK = 0x66776D_01


def migrate(db: pw.Database) -> None:
    """Create a new database at SCHEMA_VERSION, or bring an older one forward, in one transaction.

    Once, under a lock, however many processes open the store at the same time: SQLite's write lock,
    PostgreSQL's transaction-scoped advisory lock (DDL there is transactional too). A database written by
    a newer fwdmail is refused rather than guessed at. An up-to-date database is only read, so opening
    the store does not wait for the daemon's write lock.
    """
    if schema_version(db) == SCHEMA_VERSION:
        return
    with writing():
        if not is_sqlite():
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        current = schema_version(db)
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"its schema version {current} is newer than this fwdmail supports ({SCHEMA_VERSION}); "
                "upgrade fwdmail"
            )
        if current == SCHEMA_VERSION:
            return
        if current == 0:
            if db.get_tables():
                raise StoreError("it is not an fwdmail database (it has tables but no schema version)")
            db.create_tables(ALL_MODELS)
        else:
            for version in range(current, SCHEMA_VERSION):
                MIGRATIONS[version - 1](db)
        upsert_meta("schema_version", str(SCHEMA_VERSION))


def upsert_meta(key: str, value: str) -> None:
    """Set one `Meta` fact, inserting or replacing it (the same statement on both engines)."""
    (Meta.insert(key=key, value=value)
     .on_conflict(conflict_target=[Meta.key], update={Meta.value: value}).execute())


def meta_once(key: str, value: str) -> str:
    """The `Meta` fact `key`, set to `value` first if it has none: of several processes setting it at
    once, one value wins and every one gets it (an insert-if-absent, then a read)."""
    with writing():
        Meta.insert(key=key, value=value).on_conflict_ignore().execute()
        return str(Meta.get(Meta.key == key).value)


@contextlib.contextmanager
def unsynced() -> Iterator[None]:
    """Commits inside need not survive a power loss, only a crash of the process: SQLite writes them to
    the WAL without an fsync (`synchronous` NORMAL), and the next synchronous commit or checkpoint makes
    them durable with everything before it. For bookkeeping whose loss repeats work but loses nothing.
    (SQLite only: elsewhere commits stay as the server syncs them.)"""
    if not is_sqlite():
        yield
        return
    database.execute_sql("PRAGMA synchronous = 1")
    try:
        yield
    finally:
        database.execute_sql(f"PRAGMA synchronous = {PRAGMAS['synchronous']}")


def checkpoint(wait_ms: int = 200) -> None:
    """Move the WAL into the main file and truncate it, so removed bytes leave the WAL too.

    While it waits for readers it holds other writers off, so it waits at most `wait_ms` (not the
    connection's busy timeout) and may leave the WAL as it was; `settle_wal` retries until it is done.
    Nothing on PostgreSQL (the server manages its WAL).
    """
    if not is_sqlite():
        return
    saved = database.execute_sql("PRAGMA busy_timeout").fetchone()[0]
    database.execute_sql(f"PRAGMA busy_timeout = {int(wait_ms)}")
    try:
        database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        database.execute_sql(f"PRAGMA busy_timeout = {int(saved)}")


def data_version() -> int:
    """SQLite's data_version: changes when another connection commits (always 0 on PostgreSQL)."""
    if not is_sqlite():
        return 0
    return int(database.execute_sql("PRAGMA data_version").fetchone()[0])


def reads(verb: Callable[P, T]) -> Callable[P, T]:
    """Mark `verb` as one that only reads: a daemon runs it on its read connection (`run_read`)."""
    verb.store_reads = True  # type: ignore[attr-defined]
    return verb


def only_reads(fn: Callable[..., object]) -> bool:
    return getattr(fn, "store_reads", False) is True


def run_read(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call the read verb `fn` on this thread's own connection, made read-only when it opens.

    In WAL mode it reads the last committed state while another connection (another process's long
    transaction, or this process's writer waiting for it) holds the write lock, so reads never queue
    behind writes.
    """
    if database.obj is not None and _reconnect():
        database.execute_sql("PRAGMA query_only = 1" if is_sqlite()
                             else "SET default_transaction_read_only = on")
    return fn(*args, **kwargs)


def _reconnect() -> bool:
    """Open this thread's connection if it is closed, or (PostgreSQL) broken by a server that went away
    and came back; True if it opened one."""
    if not database.is_closed():
        if is_sqlite() or database.is_connection_usable():
            return False
        database.close()
    database.connect()
    return True


# Even a write whose deadline passed while it queued waits this long (or its whole budget, if smaller) for
# a lock held elsewhere: other processes' ordinary commits (MX workers, short CLI batches) take that long.
MIN_LOCK_WAIT = 0.1


def run_write(asked_at: float, budget: float, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call `fn` on this thread's connection, waiting for SQLite's write lock only until `budget` seconds
    after `asked_at` (a `time.monotonic()` value: when the write was asked for, before it queued): past
    that, a lock held elsewhere fails the call with "database is locked" (`unavailable`), so writes
    queued behind one that waits do not each wait the whole budget in turn."""
    if database.obj is not None:
        wait = max(asked_at + budget - time.monotonic(), min(MIN_LOCK_WAIT, budget))
        if is_sqlite():
            database.execute_sql(f"PRAGMA busy_timeout = {int(wait * 1000)}")
        else:
            _reconnect()
            _lock_timeout(int(wait * 1000))
    return fn(*args, **kwargs)


# PostgreSQL's lock_timeout is set in steps of this many ms (rounded down), and only when the step changes
# on this connection: most writes arrive well within their budget, so most skip the SET's round trip.
LOCK_TIMEOUT_STEP_MS = 100


def _lock_timeout(ms: int) -> None:
    ms = ms // LOCK_TIMEOUT_STEP_MS * LOCK_TIMEOUT_STEP_MS or ms
    conn = database._state.conn
    last = getattr(database._state, "lock_timeout", None)
    if last is not None and last[0] is conn and last[1] == ms:
        return
    database.execute_sql(f"SET lock_timeout = {ms}")
    database._state.lock_timeout = (conn, ms)  # the object, not its id: a new connection never matches


def forget_lock_timeout() -> None:
    """After something else set this connection's lock_timeout: the next write sets its own again."""
    if database.obj is not None:
        database._state.lock_timeout = None


# A process that writes in a loop (a CLI delete or purge) rests between its transactions at least this
# long, and at least as long as the last one took: a running daemon's writes, polling for the lock, find
# it free about half the time instead of never.
MIN_REST = 0.02


def rest_after(started: float) -> float:
    """Seconds to rest after a write transaction that began at `started` (a `time.monotonic()` value)."""
    return max(MIN_REST, time.monotonic() - started)
