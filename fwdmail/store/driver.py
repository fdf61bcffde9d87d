"""peewee without psycopg until a PostgreSQL store opens.

peewee and playhouse's schema migrator import psycopg (~9 MiB per process) as they load, whether or not
the store is PostgreSQL; with a SQLite store (the default) no process needs it. Imported first by
`fwdmail.store`, this module loads both with psycopg hidden; `load_psycopg` gives peewee the driver when a
PostgreSQL store is opened (playhouse's migrator itself never calls psycopg; its hstore helpers, which we
do not use, stay without it).

Untrusted input: none.
"""

from __future__ import annotations

import sys

__all__ = ["load_psycopg"]


def _peewee_without_psycopg() -> None:
    if "peewee" in sys.modules or "playhouse" in sys.modules or "psycopg" in sys.modules:
        return
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # peewee's `import psycopg` fails: its psycopg is None
    try:
        import peewee  # noqa: F401
        import playhouse.migrate  # noqa: F401  # through playhouse.cockroachdb and postgres_ext
    finally:
        del sys.modules["psycopg"]


def load_psycopg() -> None:
    """Give peewee psycopg 3 and what its adapter uses of it, as its own import would have (a test
    compares the two, so a peewee that reads more of psycopg is caught)."""
    import peewee

    if getattr(peewee, "psycopg", None) is not None:
        return
    import psycopg
    from psycopg.pq import TransactionStatus
    from psycopg.types.json import Json, Jsonb

    peewee.psycopg, peewee.TransactionStatus = psycopg, TransactionStatus  # type: ignore[attr-defined]
    peewee.Json_pg3, peewee.Jsonb_pg3 = Json, Jsonb  # type: ignore[attr-defined]
    adapter = peewee.Psycopg3Adapter  # its class body read the driver's constants
    adapter.txn_idle = TransactionStatus.IDLE
    adapter.txn_inerror = TransactionStatus.INERROR
    adapter.txn_unknown = TransactionStatus.UNKNOWN


_peewee_without_psycopg()
