"""The store: SQLite through peewee, and the only code that writes queries.

Everything else calls these verbs; time-dependent verbs take `now` (naive UTC) as an argument.
"""

from __future__ import annotations

from peewee import DatabaseError as DatabaseFailure

from fwdmail.store.abuse import *
from fwdmail.store.bulk import *
from fwdmail.store.db import (
    SCHEMA_VERSION,
    StoreError,
    checkpoint,
    close_store,
    data_version,
    failure,
    only_reads,
    open_store,
    reads,
    rest_after,
    run_read,
    run_write,
    storage_full,
    unavailable,
)
from fwdmail.store.directory import *
from fwdmail.store.errorlog import *
from fwdmail.store.models import utcnow
from fwdmail.store.outbound import *
from fwdmail.store.retention import *
