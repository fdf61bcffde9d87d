"""The JSON shape of each record, one for both readers: `fwdmail ... --json` prints these and the web API
answers with them, so a script can move from one to the other.

Untrusted input: none; the records come from the store (their text is escaped by whoever writes it out).
"""

from __future__ import annotations

from typing import Any

from fwdmail.app.emails import is_pending
from fwdmail.store import AliasRecord, DomainRecord, EmailRecord, SmtpErrorRecord

__all__ = ["alias_json", "domain_json", "email_json", "smtp_error_json"]


def domain_json(d: DomainRecord) -> dict[str, Any]:
    return {
        "name": d.name, "account": d.account_email, "dkim_selector": d.dkim_selector,
        "retention_days": d.retention_days, "verified_at": d.verified_at, "auth_policy": d.auth_policy,
        "friendly_from": d.friendly_from, "require_tls_inbound": d.require_tls_inbound,
        "aliases_from": d.aliases_from, "created_at": d.created_at,
    }


def alias_json(a: AliasRecord) -> dict[str, Any]:
    return {"address": a.address, "kind": a.kind, "destinations": list(a.destinations), "state": a.state,
            "has_password": a.has_password, "account": a.account_email, "created_at": a.created_at}


def email_json(e: EmailRecord) -> dict[str, Any]:
    """A message with its recipients' statuses; `next_attempt_at` only while it is pending."""
    return {
        "id": e.queue_id, "status": e.status, "domain": e.domain, "mail_from": e.mail_from,
        "subject": e.subject, "date": e.date_header, "size": e.size, "created_at": e.created_at,
        "send_at": e.send_at, "next_attempt_at": e.next_attempt_at if is_pending(e) else None,
        "claimed": e.claimed_at is not None, "attempts": e.attempts, "crash_count": e.crash_count,
        "final_at": e.final_at, "redacted": e.redacted, "redacted_at": e.redacted_at,
        "delay_notified": e.delay_notified, "dsn_sent": e.dsn_sent,
        "recipients": [
            {"address": r.address, "status": r.status, "attempts": r.attempts, "code": r.code,
             "enhanced_code": r.enhanced_code, "text": r.text, "updated_at": r.updated_at}
            for r in e.recipients
        ],
    }


def smtp_error_json(r: SmtpErrorRecord) -> dict[str, Any]:
    return {"time": r.created_at, "direction": r.direction, "domain": r.domain, "alias": r.alias,
            "code": r.code, "enhanced_code": r.enhanced_code, "text": r.text}
