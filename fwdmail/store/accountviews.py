"""Verbs for one account's own view (the web API): its outbound mail and SMTP error log a page at a time,
newest first, read by key so a page costs the same however deep it is; and an alias's destinations set
in place.

Every query joins through the account, so a row of another account's domain is never read. Values come
validated from `app`; they reach SQL only as parameters.
"""

from __future__ import annotations

import datetime as dt
import json

import peewee as pw

from fwdmail.store.db import reads, writing
from fwdmail.store.directory import AliasRecord, _alias, _alias_record, _bump_directory
from fwdmail.store.errorlog import SmtpErrorRecord
from fwdmail.store.models import Account, Domain, OutboundEmail, OutboundRecipient, SmtpErrorLog
from fwdmail.store.outbound import EmailRecord, _email_record

__all__ = ["Key", "account_email_record", "page_emails", "page_smtp_errors", "set_alias_destinations"]

# The last row of a page: (created_at, id); the next page starts after it.
Key = tuple[dt.datetime, int]


def _bounds(created: pw.Field, ident: pw.Field, since: dt.datetime | None, until: dt.datetime | None,
            after: Key | None) -> list[pw.Expression]:
    """Conditions for rows in [since, until) and past the key `after` (newest first)."""
    conds = []
    if since is not None:
        conds.append(created >= since)
    if until is not None:
        conds.append(created < until)
    if after is not None:
        conds.append((created < after[0]) | ((created == after[0]) & (ident < after[1])))
    return conds


@reads
def page_emails(account_email: str, *, limit: int, status: str | None = None, domain: str | None = None,
                alias_id: int | None = None, since: dt.datetime | None = None,
                until: dt.datetime | None = None, after: Key | None = None) -> list[EmailRecord]:
    """Up to `limit` of the account's messages (headers and body left out), newest first, after `after`."""
    fields = [f for f in OutboundEmail._meta.sorted_fields if f.name not in ("headers", "body")]
    q = (OutboundEmail.select(*fields, Domain.name).join(Domain).join(Account)
         .where(Account.email == account_email,
                *_bounds(OutboundEmail.created_at, OutboundEmail.id, since, until, after))
         .order_by(OutboundEmail.created_at.desc(), OutboundEmail.id.desc()).limit(limit))
    if status is not None:
        q = q.where(OutboundEmail.status == status)
    if domain is not None:
        q = q.where(Domain.name == domain)
    if alias_id is not None:
        q = q.where(OutboundEmail.alias == alias_id)
    emails = list(q)
    recipients: dict[int, list[OutboundRecipient]] = {e.id: [] for e in emails}
    if emails:
        for r in (OutboundRecipient.select().where(OutboundRecipient.email.in_(list(recipients)))
                  .order_by(OutboundRecipient.id)):
            recipients[r.email_id].append(r)
    return [_email_record(e, e.domain.name, recipients[e.id]) for e in emails]


@reads
def account_email_record(account_email: str, queue_id: str) -> EmailRecord | None:
    """The message `queue_id` with its content if it belongs to one of the account's domains, else None."""
    row = (OutboundEmail.select(OutboundEmail, Domain.name).join(Domain).join(Account)
           .where(OutboundEmail.queue_id == queue_id, Account.email == account_email).first())
    if row is None:
        return None
    recipients = list(row.recipients.order_by(OutboundRecipient.id))
    return _email_record(row, row.domain.name, recipients, content=True)


@reads
def page_smtp_errors(account_email: str, *, limit: int, domain: str | None = None,
                     alias: str | None = None, direction: str | None = None,
                     since: dt.datetime | None = None, until: dt.datetime | None = None,
                     after: Key | None = None) -> list[SmtpErrorRecord]:
    """Up to `limit` logged errors of the account's domains, newest first, after `after`."""
    q = (SmtpErrorLog.select(SmtpErrorLog).join(Domain).join(Account)
         .where(Account.email == account_email,
                *_bounds(SmtpErrorLog.created_at, SmtpErrorLog.id, since, until, after))
         .order_by(SmtpErrorLog.created_at.desc(), SmtpErrorLog.id.desc()).limit(limit))
    if domain is not None:
        q = q.where(Domain.name == domain)
    if alias is not None:
        q = q.where(pw.fn.LOWER(SmtpErrorLog.alias) == alias.lower())
    if direction is not None:
        q = q.where(SmtpErrorLog.direction == direction)
    return [SmtpErrorRecord(r.id, r.created_at, r.direction, r.domain_name, r.alias, r.code,
                            r.enhanced_code, r.text) for r in q]


def set_alias_destinations(domain: str, kind: str, local: str, destinations: list[str]) -> AliasRecord:
    if not 1 <= len(destinations) <= 10:
        raise ValueError(f"an alias needs 1 to 10 destinations, got {len(destinations)}")
    with writing():
        row = _alias(domain, kind, local)
        row.destinations = json.dumps(destinations)
        row.save()
        _bump_directory([domain])
    return _alias_record(row)
