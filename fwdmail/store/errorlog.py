"""Verbs on the SMTP error log: every 4xx/5xx the MX returns or gets from a destination.

A row holds time, direction, domain, alias, code, enhanced code and reply text; never a client IP,
never a message body.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from fwdmail.store.db import writing
from fwdmail.store.models import Domain, SmtpErrorLog

__all__ = ["SmtpErrorRecord", "list_smtp_errors", "log_smtp_errors"]

_TEXT_LIMIT = 1000


@dataclass(frozen=True)
class SmtpErrorRecord:
    id: int
    created_at: dt.datetime
    direction: str
    domain: str
    alias: str
    code: int
    enhanced_code: str
    text: str


def error_record(r: SmtpErrorLog) -> SmtpErrorRecord:
    return SmtpErrorRecord(r.id, r.created_at, r.direction, r.domain_name, r.alias, r.code, r.enhanced_code,
                           r.text)


def _row(now: dt.datetime, direction: str, domain: str, alias: str, code: int, enhanced_code: str,
         text: str, domain_ids: dict[str, int]) -> dict[str, object]:
    name = domain.lower()
    return {
        "created_at": now, "direction": direction, "domain": domain_ids.get(name), "domain_name": name,
        "alias": alias, "code": int(code), "enhanced_code": enhanced_code, "text": text[:_TEXT_LIMIT],
    }


def log_smtp_errors(rows: Sequence[tuple[dt.datetime, str, str, str, int, str, str]]) -> int:
    """Insert many (now, direction, domain, alias, code, enhanced_code, text) rows in one transaction.

    `domain` is a name, linked to the hosted domain when there is one.
    """
    if not rows:
        return 0
    names = {r[2].lower() for r in rows if r[2]}
    with writing():
        ids = {d.name: d.id for d in Domain.select(Domain.id, Domain.name).where(Domain.name.in_(names))}
        SmtpErrorLog.insert_many([_row(*r, domain_ids=ids) for r in rows]).execute()
    return len(rows)


def list_smtp_errors(domain: str | None = None) -> list[SmtpErrorRecord]:
    """Logged errors, newest first; only those of `domain` if given."""
    q = SmtpErrorLog.select().order_by(SmtpErrorLog.created_at.desc(), SmtpErrorLog.id.desc())
    if domain is not None:
        q = q.where(SmtpErrorLog.domain_name == domain.lower())
    return [error_record(r) for r in q]
