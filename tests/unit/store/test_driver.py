"""The store loads peewee without psycopg (a SQLite store never needs it) and gives peewee psycopg, as
peewee's own import would have, when a PostgreSQL store opens. Checked in fresh interpreters: this test
process may have imported psycopg already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

# What peewee holds of psycopg: its module globals and its psycopg 3 adapter's class attributes.
_DUMP = """
import json, sys, peewee
def mine(value):
    return getattr(value, "__module__", None) or getattr(value, "__name__", "")
seen = {f"peewee.{k}": repr(v) for k, v in vars(peewee).items() if mine(v).startswith("psycopg")}
seen.update({f"adapter.{k}": repr(v) for k, v in vars(peewee.Psycopg3Adapter).items()
             if not callable(v) and not k.startswith("__")})
print(json.dumps(seen, sort_keys=True))
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout


def test_the_store_does_not_import_psycopg_until_postgresql_opens() -> None:
    out = _run("import sys; from fwdmail import store; import peewee; "
               "print('psycopg' in sys.modules, peewee.psycopg is None)")
    assert out.split() == ["False", "True"]


def test_peewee_gets_psycopg_as_its_own_import_would_have_given_it() -> None:
    plain = json.loads(_run(_DUMP))
    loaded = json.loads(_run("from fwdmail.store import driver; driver.load_psycopg()\n" + _DUMP))
    assert plain["peewee.psycopg"].startswith("<module 'psycopg'")
    assert loaded == plain
