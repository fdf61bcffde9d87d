"""RFC 5322 dates (Date, Received, DSN fields), written one way everywhere.

Untrusted input: none; the times come from our own clock. Every timestamp fwdmail keeps is naive UTC.
"""

from __future__ import annotations

import datetime as dt
import email.utils

__all__ = ["rfc5322"]


def rfc5322(when: dt.datetime) -> str:
    """`when` as an RFC 5322 date-time, e.g. "Mon, 01 Jan 2024 00:00:00 +0000"; a naive time is UTC,
    an aware one keeps its offset."""
    return email.utils.format_datetime(when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC))
