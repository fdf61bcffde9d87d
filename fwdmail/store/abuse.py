"""Verbs on abuse events: detected spam or malicious activity, with what is needed to act on it.

The privacy contract lets only these rows hold a client IP; retention deletes them after 7 days.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from peewee import JOIN

from fwdmail.store.models import AbuseEvent, Domain

__all__ = ["AbuseRecord", "list_abuse_events", "record_abuse"]

_KIND_LIMIT = 64
_DETAIL_LIMIT = 1000


@dataclass(frozen=True)
class AbuseRecord:
    id: int
    created_at: dt.datetime
    kind: str
    client_ip: str | None
    domain: str
    detail: str


def record_abuse(now: dt.datetime, kind: str, client_ip: str | None, domain: str | None,
                 detail: str = "") -> int:
    """Record one event; `domain` names the hosted domain it concerns (kept only if hosted here)."""
    dom = Domain.get_or_none(Domain.name == domain.lower()) if domain else None
    row = AbuseEvent.create(
        created_at=now, kind=kind[:_KIND_LIMIT], client_ip=client_ip or None, domain=dom,
        detail=detail[:_DETAIL_LIMIT],
    )
    return int(row.id)


def list_abuse_events(kind: str | None = None) -> list[AbuseRecord]:
    """Recorded events, newest first; only those of `kind` if given."""
    q = (AbuseEvent.select(AbuseEvent, Domain).join(Domain, JOIN.LEFT_OUTER)
         .order_by(AbuseEvent.created_at.desc(), AbuseEvent.id.desc()))
    if kind is not None:
        q = q.where(AbuseEvent.kind == kind)
    return [
        AbuseRecord(r.id, r.created_at, r.kind, r.client_ip, r.domain.name if r.domain else "", r.detail)
        for r in q
    ]
