"""The store: SQLite through peewee, and the only code that writes queries.

Everything else calls these verbs; time-dependent verbs take `now` (naive UTC) as an argument.
"""

from __future__ import annotations

from peewee import DatabaseError as DatabaseFailure

from .abuse import *
from .db import (
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
from .directory import *
from .errorlog import *
from .models import utcnow
from .outbound import *
from .retention import *
