"""`fwdmail db ...`: the store itself; `db copy --to URL` moves a SQLite install to PostgreSQL.

Handles what the admin typed: the target URL (checked in app; its password never printed).
"""

from __future__ import annotations

import os
import sys

import click

from fwdmail.app import dbcopy
from fwdmail.cli.common import State, json_option, pass_state
from fwdmail.cli.render import emit_json, line, table
from fwdmail.runtime import datadir


@click.group()
def db() -> None:
    """The store: copy a single-node SQLite store to PostgreSQL."""


@db.command("copy")
@click.option("--to", "url", required=True, metavar="postgresql://USER@HOST:PORT/DBNAME",
              help="An empty PostgreSQL database to copy every table into.")
@json_option
@pass_state
def db_copy(state: State, url: str, as_json: bool) -> None:
    """Copy the SQLite store into an empty PostgreSQL database and verify every table's row count.

    Refused while `fwdmail serve` runs on this data dir (mail it accepted after the copy's snapshot
    would stay behind in SQLite). Afterwards set [database] url to the same URL and start serve again."""
    state.open()
    lock = datadir.lock_for_serve(state.config)  # refused while serve runs: its later mail would stay behind
    try:
        report = dbcopy.copy_store(state.config, url)
    finally:
        os.close(lock)
    ok = all(r.verified for r in report)
    if as_json:
        emit_json({"verified": ok, "tables": [
            {"table": r.table, "source": r.source, "copied": r.copied, "target": r.target,
             "verified": r.verified} for r in report]})
    else:
        table("db copy", ["table", "source rows", "copied", "target rows", "verified"],
              [(r.table, r.source, r.copied, r.target, "yes" if r.verified else "NO") for r in report])
        line(f"copied {sum(r.copied for r in report)} rows in {len(report)} tables; "
             "now set [database] url to the target and start serve")
    if not ok:
        sys.exit(1)
