"""`fwdmail db copy`: moving a single-node SQLite install to PostgreSQL in one command.

Handles the target URL the admin typed: checked by the same rules as `[database] url`, and quoted in
messages only with its password replaced.
"""

from __future__ import annotations

from collections.abc import Callable

from fwdmail import store
from fwdmail.config import Config, ConfigError, DatabaseConfig
from fwdmail.store import TableCopy, TargetNotEmpty

__all__ = ["TableCopy", "TargetNotEmpty", "copy_store"]


def copy_store(cfg: Config, url: str, progress: Callable[[str, int], None] | None = None) -> list[TableCopy]:
    """Copy this install's SQLite store (opened and migrated by the caller) into the empty PostgreSQL
    database `url`: every table, counts verified; the source is left as it was."""
    if cfg.database.url:
        raise ValueError("db copy moves the SQLite store in data_dir, but this config's [database] url "
                         "already names a database; run it with the single-node config")
    if not url.strip():
        raise ConfigError("--to: give the PostgreSQL database to copy into, postgresql://user@host:port/dbname")
    try:
        DatabaseConfig(url).validate("--to")
    except ConfigError as exc:  # the same rules as [database] url, where empty would mean SQLite
        raise ConfigError(str(exc).replace("--to.url: must be empty (SQLite in data_dir) or",
                                           "--to: must be")) from None
    return store.copy_to(cfg.db_path, url, progress=progress)
