"""`store.queue_depth` on SQLite and PostgreSQL: messages not yet final by state, a claimed one counted
as "sending", final ones not at all."""

from __future__ import annotations

import datetime as dt

from fwdmail import store
from fwdmail.smtp.replies import SmtpError
from tests.support import rows
from tests.support.rows import T0
from tests.unit.store.conftest import Opened


def new_email(*recipients: str) -> store.NewEmail:
    return store.NewEmail(store.new_queue_id(), "q.test", "sender@q.test", recipients, b"Subject: hi\r\n",
                          b"body\r\n", subject="hi")


def test_queue_depth_by_state(opened: Opened) -> None:
    rows.make_domain("q.test")
    assert store.queue_depth() == {"queued": 0, "deferred": 0, "held": 0, "sending": 0}
    store.enqueue([new_email(f"r{i}@dest.test") for i in range(4)], T0)
    first, second = store.claim_due(T0, "w1", 2)
    assert store.queue_depth() == {"queued": 2, "deferred": 0, "held": 0, "sending": 2}
    store.record_attempt(first.id, "w1", T0, delivered=list(first.recipients))
    later = SmtpError(451, "4.3.0", "later")
    store.record_attempt(second.id, "w1", T0, deferred={second.recipients[0]: later},
                         retry_at=T0 + dt.timedelta(minutes=1))
    assert store.queue_depth() == {"queued": 2, "deferred": 1, "held": 0, "sending": 0}

