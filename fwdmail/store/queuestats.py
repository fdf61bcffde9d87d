"""How many outbound messages wait, by state: what the metrics scrape reads (one grouped count).

Untrusted input: none; only counts leave this module."""

from __future__ import annotations

from peewee import fn

from fwdmail.store.db import reads
from fwdmail.store.models import OutboundEmail

__all__ = ["queue_depth"]

WAITING_STATUSES = ("queued", "deferred", "held")


@reads
def queue_depth() -> dict[str, int]:
    """Messages not yet final: "queued", "deferred" and "held", and "sending" for those a worker has
    claimed (counted there instead). A count over the status index, without reading any message."""
    claimed = OutboundEmail.claimed_at.is_null(False)
    depth = dict.fromkeys((*WAITING_STATUSES, "sending"), 0)
    rows = (OutboundEmail.select(OutboundEmail.status, claimed, fn.COUNT(OutboundEmail.id))
            .where(OutboundEmail.status.in_(WAITING_STATUSES))
            .group_by(OutboundEmail.status, claimed).tuples())
    for status, is_claimed, n in rows:
        depth["sending" if is_claimed else status] += n
    return depth
