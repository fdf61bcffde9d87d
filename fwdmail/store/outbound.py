"""Verbs on the outbound queue: submitted mail, its recipients, delivery attempts, claims and redaction.

Time-dependent verbs take `now` (naive UTC). Callers get plain records, never peewee objects. Verbs that
read and then write begin IMMEDIATE, so they wait for another writer instead of failing on a stale snapshot.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import peewee as pw

from .directory import NotFound
from .errorlog import log_smtp_errors
from .models import Account, Alias, Domain, OutboundEmail, OutboundRecipient, database

__all__ = [
    "EMAIL_STATUSES", "FINAL_STATUSES", "PENDING_STATUSES", "AttemptOutcome", "ClaimedEmail", "EmailRecord",
    "LoginRecord", "NewEmail", "RecipientRecord", "claim_due", "delete_email", "enqueue", "get_email",
    "list_emails", "login_record", "new_queue_id", "record_attempt", "record_crash", "release_claims",
    "release_stale_claims", "retry_email",
]

PENDING_STATUSES = ("queued", "deferred")
FINAL_STATUSES = ("delivered", "bounced", "partial")
EMAIL_STATUSES = (*PENDING_STATUSES, *FINAL_STATUSES, "held")


def new_queue_id() -> str:
    """A fresh queue id: 16 uppercase hex digits."""
    return secrets.token_hex(8).upper()


class Reply(Protocol):
    """What the queue stores of an SMTP reply (the daemon's `SmtpError` fits)."""

    code: int
    enhanced_code: str
    text: str


@dataclass(frozen=True)
class NewEmail:
    """A message to put in the queue. `headers` ends with CRLF; the message is headers + CRLF + body."""

    queue_id: str
    domain: str
    mail_from: str
    recipients: tuple[str, ...]
    headers: bytes
    body: bytes
    subject: str = ""
    date_header: dt.datetime | None = None
    send_at: dt.datetime | None = None
    alias_id: int | None = None


@dataclass(frozen=True)
class LoginRecord:
    """An alias that may log in to submission."""

    alias_id: int
    domain: str
    kind: str
    local: str
    password_hash: str | None


@dataclass(frozen=True)
class RecipientRecord:
    address: str
    status: str
    attempts: int
    code: int | None
    enhanced_code: str | None
    text: str | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class EmailRecord:
    id: int
    queue_id: str
    domain: str
    mail_from: str
    status: str
    subject: str
    date_header: dt.datetime | None
    size: int
    created_at: dt.datetime
    send_at: dt.datetime | None
    next_attempt_at: dt.datetime
    claimed_at: dt.datetime | None
    attempts: int
    crash_count: int
    final_at: dt.datetime | None
    redacted_at: dt.datetime | None
    delay_notified: bool
    dsn_sent: bool
    recipients: tuple[RecipientRecord, ...]
    headers: bytes | None = None
    body: bytes | None = None

    @property
    def redacted(self) -> bool:
        return self.redacted_at is not None


@dataclass(frozen=True)
class ClaimedEmail:
    """A due message a worker now owns: what it needs to sign and deliver it."""

    id: int
    queue_id: str
    token: str
    domain: str
    dkim_selector: str
    dkim_private_key: str
    account_email: str
    mail_from: str
    headers: bytes
    body: bytes
    recipients: tuple[str, ...]
    created_at: dt.datetime
    send_at: dt.datetime
    attempts: int
    delay_notified: bool

    @property
    def message(self) -> bytes:
        return self.headers + b"\r\n" + self.body


@dataclass(frozen=True)
class AttemptOutcome:
    status: str
    final: bool
    redacted: bool


def _blob(value: object) -> bytes | None:
    return None if value is None else bytes(value)  # type: ignore[arg-type]


def _recipient_record(r: OutboundRecipient) -> RecipientRecord:
    return RecipientRecord(r.address, r.status, r.attempts, r.code, r.enhanced_code, r.text, r.updated_at)


def _email_record(e: OutboundEmail, domain: str, recipients: list[OutboundRecipient],
                  content: bool = False) -> EmailRecord:
    return EmailRecord(
        e.id, e.queue_id, domain, e.mail_from, e.status, e.subject, e.date_header, e.size, e.created_at,
        e.send_at, e.next_attempt_at, e.claimed_at, e.attempts, e.crash_count, e.final_at, e.redacted_at,
        e.delay_notified, e.dsn_sent, tuple(_recipient_record(r) for r in recipients),
        _blob(e.headers) if content else None, _blob(e.body) if content else None,
    )


def login_record(domain: str, kind: str, local: str) -> LoginRecord | None:
    """The alias a submission login names, with its password hash; None if there is no such alias."""
    row = (
        Alias.select(Alias.id, Alias.kind, Alias.local, Alias.password_hash, Domain.name).join(Domain)
        .where(Domain.name == domain, Alias.kind == kind, Alias.local == local)
        .first()
    )
    if row is None:
        return None
    return LoginRecord(row.id, row.domain.name, row.kind, row.local, row.password_hash)


def _insert(email: NewEmail, domain_id: int, now: dt.datetime) -> None:
    send_at = max(email.send_at or now, now)
    row = OutboundEmail.create(
        queue_id=email.queue_id, domain=domain_id, alias=email.alias_id, mail_from=email.mail_from,
        headers=email.headers, body=email.body, size=len(email.headers) + 2 + len(email.body),
        subject=email.subject, date_header=email.date_header, status="queued", created_at=now,
        send_at=send_at, next_attempt_at=send_at,
    )
    OutboundRecipient.insert_many(
        [{"email": row.id, "address": a, "updated_at": now} for a in email.recipients]
    ).execute()


def enqueue(emails: Sequence[NewEmail], now: dt.datetime) -> list[str]:
    """Store messages in one transaction (one durable commit for all); return their queue ids."""
    if not emails:
        return []
    with database.atomic("IMMEDIATE"):
        names = {e.domain for e in emails}
        ids = {d.name: d.id for d in Domain.select(Domain.id, Domain.name).where(Domain.name.in_(names))}
        for email in emails:
            if email.domain not in ids:
                raise NotFound(f"no domain {email.domain}")
            _insert(email, ids[email.domain], now)
    return [e.queue_id for e in emails]


def claim_due(now: dt.datetime, token: str, limit: int) -> list[ClaimedEmail]:
    """Claim up to `limit` unclaimed messages due at `now` (oldest due first) for the worker `token`."""
    if limit <= 0:
        return []
    due = (
        OutboundEmail.select(OutboundEmail.id)
        .where(OutboundEmail.status.in_(PENDING_STATUSES), OutboundEmail.next_attempt_at <= now,
               OutboundEmail.claimed_at.is_null())
        .order_by(OutboundEmail.next_attempt_at, OutboundEmail.id)
        .limit(limit)
    )
    if not due.exists():
        return []  # the common idle poll: a read, no write lock
    with database.atomic("IMMEDIATE"):
        ids = [r.id for r in due]
        if not ids:
            return []
        OutboundEmail.update(claimed_at=now, claim_token=token).where(OutboundEmail.id.in_(ids)).execute()
        pending: dict[int, list[str]] = {i: [] for i in ids}
        for r in (OutboundRecipient.select(OutboundRecipient.email, OutboundRecipient.address)
                  .where(OutboundRecipient.email.in_(ids),
                         OutboundRecipient.status.in_(PENDING_STATUSES))
                  .order_by(OutboundRecipient.id)):
            pending[r.email_id].append(r.address)
        rows = (
            OutboundEmail.select(OutboundEmail, Domain, Account).join(Domain).join(Account)
            .where(OutboundEmail.id.in_(ids)).order_by(OutboundEmail.next_attempt_at, OutboundEmail.id)
        )
        return [
            ClaimedEmail(
                e.id, e.queue_id, token, e.domain.name, e.domain.dkim_selector, e.domain.dkim_private_key,
                e.domain.account.email, e.mail_from, bytes(e.headers), bytes(e.body or b""),
                tuple(pending[e.id]), e.created_at, e.send_at or e.created_at, e.attempts, e.delay_notified,
            )
            for e in rows
        ]


def _set_recipients(email_id: int, replies: Mapping[str, Reply | None], status: str,
                    now: dt.datetime) -> None:
    for address, reply in replies.items():
        OutboundRecipient.update(
            status=status, attempts=OutboundRecipient.attempts + 1, updated_at=now,
            code=reply.code if reply else None, enhanced_code=reply.enhanced_code if reply else None,
            text=reply.text if reply else None,
        ).where(OutboundRecipient.email == email_id, OutboundRecipient.address == address,
                OutboundRecipient.status.in_(PENDING_STATUSES)).execute()


def _log_errors(email: OutboundEmail, domain_name: str, replies: Mapping[str, Reply],
                now: dt.datetime) -> None:
    log_smtp_errors([(now, "outbound", domain_name, email.mail_from, r.code, r.enhanced_code, r.text)
                     for r in replies.values()])


def _overall_status(statuses: list[str]) -> str:
    """A message's status after an attempt, from its recipients' statuses."""
    if any(s in PENDING_STATUSES for s in statuses):
        return "deferred"
    if all(s == "delivered" for s in statuses):
        return "delivered"
    if all(s == "bounced" for s in statuses):
        return "bounced"
    return "partial"


def record_attempt(email_id: int, token: str, now: dt.datetime, *,
                   delivered: Sequence[str] = (), deferred: Mapping[str, Reply] | None = None,
                   bounced: Mapping[str, Reply] | None = None, retry_at: dt.datetime | None = None,
                   notices: Sequence[NewEmail] = (), delay_notified: bool = False) -> AttemptOutcome | None:
    """Record one delivery attempt in one transaction and release the claim.

    Per recipient: delivered, deferred or bounced (with the reply); every deferral and bounce is also an
    outbound SMTP error log row. `notices` (DSNs, delay notices) are queued in the same transaction. A
    message with no recipient left pending reaches its final state; its body is redacted at once when
    its domain keeps none (retention_days 0). Returns None if the message is gone or no longer ours.
    """
    deferred = deferred or {}
    bounced = bounced or {}
    with database.atomic("IMMEDIATE"):
        email = OutboundEmail.get_or_none(OutboundEmail.id == email_id)
        if email is None or email.claim_token != token:
            return None
        domain = Domain.get_by_id(email.domain_id)
        _set_recipients(email_id, dict.fromkeys(delivered), "delivered", now)
        _set_recipients(email_id, deferred, "deferred", now)
        _set_recipients(email_id, bounced, "bounced", now)
        _log_errors(email, domain.name, {**deferred, **bounced}, now)
        for notice in notices:
            _insert(notice, domain.id, now)
        statuses = [r.status for r in OutboundRecipient.select(OutboundRecipient.status)
                    .where(OutboundRecipient.email == email_id)]
        status = _overall_status(statuses)
        final = status in FINAL_STATUSES
        changes: dict[pw.Field, object] = {
            OutboundEmail.status: status, OutboundEmail.attempts: OutboundEmail.attempts + 1,
            OutboundEmail.claimed_at: None, OutboundEmail.claim_token: None,
        }
        if bounced and notices:
            changes[OutboundEmail.dsn_sent] = True
        if delay_notified:
            changes[OutboundEmail.delay_notified] = True
        redacted = False
        if final:
            changes[OutboundEmail.final_at] = now
            if domain.retention_days == 0:
                changes[OutboundEmail.body] = None
                changes[OutboundEmail.redacted_at] = now
                redacted = True
        else:
            changes[OutboundEmail.next_attempt_at] = retry_at or now
        OutboundEmail.update(changes).where(OutboundEmail.id == email_id).execute()
    return AttemptOutcome(status, final, redacted)


def record_crash(email_id: int, token: str, now: dt.datetime, retry_at: dt.datetime,
                 max_crashes: int) -> str | None:
    """The worker failed on this message: count it, release the claim, hold it after `max_crashes`."""
    with database.atomic("IMMEDIATE"):
        email = OutboundEmail.get_or_none(OutboundEmail.id == email_id)
        if email is None or email.claim_token != token:
            return None
        return _crashed(email, now, retry_at, max_crashes)


def _crashed(email: OutboundEmail, now: dt.datetime, retry_at: dt.datetime, max_crashes: int) -> str:
    email.crash_count += 1
    email.claimed_at = None
    email.claim_token = None
    if email.crash_count >= max_crashes:
        email.status = "held"
    email.next_attempt_at = retry_at
    email.save()
    return email.status


def release_stale_claims(now: dt.datetime, max_crashes: int, claimed_before: dt.datetime | None = None,
                         exclude: Sequence[int] = ()) -> tuple[int, int]:
    """Take back claims of workers that died (all claims, or those made before `claimed_before`).

    Each counts as a crash of that message; a message that reaches `max_crashes` is held for the admin,
    never dropped. Returns (released, held).
    """
    released = held = 0
    with database.atomic("IMMEDIATE"):
        q = OutboundEmail.select().where(OutboundEmail.claimed_at.is_null(False))
        if claimed_before is not None:
            q = q.where(OutboundEmail.claimed_at < claimed_before)
        if exclude:
            q = q.where(OutboundEmail.id.not_in(list(exclude)))
        for email in q:
            released += 1
            if _crashed(email, now, now, max_crashes) == "held":
                held += 1
    return released, held


def release_claims(token: str, now: dt.datetime) -> int:
    """Give back, without counting a crash, the claims of a worker that stops cleanly."""
    return (
        OutboundEmail.update(claimed_at=None, claim_token=None, next_attempt_at=now)
        .where(OutboundEmail.claim_token == token).execute()
    )


def _email(queue_id: str) -> OutboundEmail:
    row = OutboundEmail.get_or_none(OutboundEmail.queue_id == queue_id)
    if row is None:
        raise NotFound(f"no email {queue_id}")
    return row


def get_email(queue_id: str) -> EmailRecord:
    """One message with its recipients, headers and (unless redacted) body."""
    e = _email(queue_id)
    recipients = list(e.recipients.order_by(OutboundRecipient.id))
    return _email_record(e, Domain.get_by_id(e.domain_id).name, recipients, content=True)


def list_emails(status: str | None = None, domain: str | None = None,
                limit: int | None = None) -> list[EmailRecord]:
    """Messages newest first, optionally of one status and/or one domain (headers and body left out)."""
    fields = [f for f in OutboundEmail._meta.sorted_fields if f.name not in ("headers", "body")]
    q = (OutboundEmail.select(*fields, Domain.name).join(Domain)
         .order_by(OutboundEmail.created_at.desc(), OutboundEmail.id.desc()))
    if status is not None:
        q = q.where(OutboundEmail.status == status)
    if domain is not None:
        q = q.where(Domain.name == domain)
    if limit is not None:
        q = q.limit(limit)
    emails = list(q)
    recipients: dict[int, list[OutboundRecipient]] = {e.id: [] for e in emails}
    if emails:
        for r in (OutboundRecipient.select().where(OutboundRecipient.email.in_(list(recipients)))
                  .order_by(OutboundRecipient.id)):
            recipients[r.email_id].append(r)
    return [_email_record(e, e.domain.name, recipients[e.id]) for e in emails]


def retry_email(queue_id: str, now: dt.datetime) -> EmailRecord:
    """Make a queued, deferred or held message due now (a held one gets its crash count reset)."""
    with database.atomic("IMMEDIATE"):
        e = _email(queue_id)
        if e.status in FINAL_STATUSES:
            raise ValueError(f"email {queue_id} is {e.status}: there is nothing left to retry")
        if e.claimed_at is not None:
            raise ValueError(f"email {queue_id} is being delivered right now")
        if e.status == "held":
            e.status = "deferred" if e.attempts else "queued"
            e.crash_count = 0
        e.next_attempt_at = now
        e.save()
    return get_email(queue_id)


def delete_email(queue_id: str) -> None:
    """Delete a message with its recipients (the caller then settles the WAL: `settle_deleted`)."""
    with database.atomic("IMMEDIATE"):
        _email(queue_id).delete_instance()
