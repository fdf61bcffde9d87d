"""What the store and process fault tests share: a login plus an MX alias, and SQLite's own check."""

from __future__ import annotations

import json
import sqlite3

from tests.support.daemon import Daemon
from tests.support.mx import cli, cli_batch

ALICE = "alice@example.test"
OWNER = "owner@owner.test"


def setup(d: Daemon) -> str:
    """A submission login (ALICE) and an MX alias (a@ours.test -> a@dest.test); return ALICE's password."""
    cli_batch(d, [
        ["account", "add", OWNER],
        ["domain", "add", "example.test", "--account", OWNER],
        ["alias", "add", ALICE, "someone@dest.test"],
        ["domain", "add", "ours.test", "--account", OWNER],
        ["alias", "add", "a@ours.test", "a@dest.test"],
    ])
    return json.loads(cli(d, "alias", "password", ALICE, "--json").stdout)["password"]


def integrity(d: Daemon) -> str:
    """`PRAGMA integrity_check` of the daemon's database ("ok" when sound)."""
    con = sqlite3.connect(f"file:{d.data_dir / 'fwdmail.db'}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()
