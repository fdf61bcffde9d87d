"""Reads of one account's own records, a page at a time, for its "My Account" pages: its outbound mail,
the SMTP errors of its domains, its own web/API request rows. Pages go by offset (the caller bounds the
page number).

Untrusted input: none as such; the account is the one the caller authenticated and paging values are
bounded by the caller. Every query is filtered by that account here, so a page cannot reach another's.
"""

from __future__ import annotations

import datetime as dt

from fwdmail.store.db import reads
from fwdmail.store.errorlog import SmtpErrorRecord
from fwdmail.store.httplog import HttpLogRecord
from fwdmail.store.models import Account, Domain, HttpLog, OutboundEmail, OutboundRecipient, SmtpErrorLog
from fwdmail.store.outbound import EmailRecord, _email_record

__all__ = ["account_email_owner", "list_account_emails", "list_account_http_logs",
           "list_account_smtp_errors"]


def _domain_ids(account_email: str) -> list[int]:
    return [d.id for d in Domain.select(Domain.id).join(Account).where(Account.email == account_email)]


@reads
def list_account_emails(account_email: str, status: str | None, offset: int, limit: int,
                        ) -> list[EmailRecord]:
    """Up to `limit` of the account's messages from `offset`, newest first (headers and body left out)."""
    ids = _domain_ids(account_email)
    if not ids:
        return []
    fields = [f for f in OutboundEmail._meta.sorted_fields if f.name not in ("headers", "body")]
    q = (OutboundEmail.select(*fields, Domain.name).join(Domain).where(OutboundEmail.domain.in_(ids))
         .order_by(OutboundEmail.created_at.desc(), OutboundEmail.id.desc()).offset(offset).limit(limit))
    if status is not None:
        q = q.where(OutboundEmail.status == status)
    emails = list(q)
    recipients: dict[int, list[OutboundRecipient]] = {e.id: [] for e in emails}
    if emails:
        for r in (OutboundRecipient.select().where(OutboundRecipient.email.in_(list(recipients)))
                  .order_by(OutboundRecipient.id)):
            recipients[r.email_id].append(r)
    return [_email_record(e, e.domain.name, recipients[e.id]) for e in emails]


@reads
def account_email_owner(queue_id: str) -> str | None:
    """The account email owning the message `queue_id`, or None if there is no such message."""
    row = (Account.select(Account.email).join(Domain).join(OutboundEmail)
           .where(OutboundEmail.queue_id == queue_id).first())
    return row.email if row is not None else None


@reads
def list_account_smtp_errors(account_email: str, offset: int, limit: int) -> list[SmtpErrorRecord]:
    """SMTP errors logged for the account's domains, newest first."""
    ids = _domain_ids(account_email)
    if not ids:
        return []
    q = (SmtpErrorLog.select().where(SmtpErrorLog.domain.in_(ids))
         .order_by(SmtpErrorLog.created_at.desc(), SmtpErrorLog.id.desc()).offset(offset).limit(limit))
    return [SmtpErrorRecord(r.id, r.created_at, r.direction, r.domain_name, r.alias, r.code,
                            r.enhanced_code, r.text) for r in q]


@reads
def list_account_http_logs(account_email: str, since: dt.datetime, offset: int, limit: int,
                           ) -> list[HttpLogRecord]:
    """The account's own web/API request rows created after `since`, newest first."""
    q = (HttpLog.select().join(Account).where(Account.email == account_email, HttpLog.created_at > since)
         .order_by(HttpLog.id.desc()).offset(offset).limit(limit))
    return [HttpLogRecord(r.created_at, r.account_id, r.method, r.route, r.status, r.duration_ms,
                          r.client_net) for r in q]
