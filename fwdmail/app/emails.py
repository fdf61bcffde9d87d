"""Outbound mail as the admin sees it: list, look up, retry, delete, the stored bytes (`preview` reads them).

Handles what the admin typed (an email id, a status, a domain): refused with a message fit to print.
The records hold what submission clients sent; they are returned as stored, for the CLI to show escaped.
"""

from __future__ import annotations

import datetime as dt

from fwdmail import store
from fwdmail.mail.addresses import normalize_domain
from fwdmail.store import EmailRecord

__all__ = [
    "PENDING_STATUSES", "STATUSES", "EmailRecord", "delete_email", "get_email", "is_pending", "list_emails",
    "raw_message", "retry_email",
]

STATUSES = store.EMAIL_STATUSES
PENDING_STATUSES = store.PENDING_STATUSES

def _queue_id(value: str) -> str:
    qid = value.strip().upper()
    if not qid or not qid.isalnum():
        raise ValueError(f"invalid email id {value!r}")
    return qid


def is_pending(record: EmailRecord) -> bool:
    """Still to be tried (so its next attempt time means something)."""
    return record.status in PENDING_STATUSES


def list_emails(status: str | None = None, domain: str | None = None) -> list[EmailRecord]:
    if status is not None and status not in STATUSES:
        raise ValueError(f"--status must be one of {', '.join(STATUSES)}")
    name = None
    if domain is not None:
        name = store.get_domain(normalize_domain(domain)).name
    return store.list_emails(status=status, domain=name)


def get_email(queue_id: str) -> EmailRecord:
    return store.get_email(_queue_id(queue_id))


def retry_email(queue_id: str, now: dt.datetime) -> EmailRecord:
    return store.retry_email(_queue_id(queue_id), now)


def delete_email(queue_id: str) -> None:
    """Delete a message; its bytes must leave the WAL too (a reader can hold them there for a while)."""
    qid = _queue_id(queue_id)
    store.delete_email(qid)
    store.settle_deleted(f"email {qid}", ("outbound_email", "outbound_recipient"))


def raw_message(record: EmailRecord) -> bytes:
    """The stored message as submitted (plus the headers fwdmail added); headers only once redacted."""
    headers = record.headers or b""
    return headers if record.body is None else headers + b"\r\n" + record.body
