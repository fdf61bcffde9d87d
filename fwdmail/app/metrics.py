"""What the metrics scrape asks of the store: the outbound queue's depth by state (counts only).

Untrusted input: none."""

from __future__ import annotations

from fwdmail import store

__all__ = ["queue_depth"]

queue_depth = store.queue_depth
"""Messages not yet final by state ("queued", "sending", "deferred", "held"); a read verb, so the
executor runs it on the read connection."""
