"""One account's own records, read by its web API and its "My Account" pages alike: its outbound mail,
the SMTP errors of its domains and its own web/API request rows, a page at a time, newest first. Pages go
by key (the row a page starts from), so a page costs the same however deep it is, in either direction.

Every query joins through the account, so a row of another account's domain is never read. Values come
validated from `app`; they reach SQL only as parameters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

import peewee as pw

from fwdmail.store.db import reads
from fwdmail.store.errorlog import SmtpErrorRecord, error_record
from fwdmail.store.httplog import HttpLogRecord, request_record
from fwdmail.store.models import Account, Domain, HttpLog, OutboundEmail, OutboundRecipient, SmtpErrorLog
from fwdmail.store.outbound import EmailRecord, _email_record, listed, listing

__all__ = ["Key", "account_email_record", "page_emails", "page_http_logs", "page_smtp_errors"]

# A row a page is read from: (created_at, id). `after` reads the older rows past it, `before` the newer.
Key = tuple[dt.datetime, int]
R = TypeVar("R")


def _paged(q: pw.ModelSelect, model: type[pw.Model], limit: int, since: dt.datetime | None,
           until: dt.datetime | None, after: Key | None, before: Key | None,
           record: Callable[[list], list[R]]) -> list[R]:
    """Up to `limit` rows of `q` created in [since, until), newest first: the newest of those older than
    `after`, or the oldest of those newer than `before` (then still returned newest first)."""
    created, ident = model.created_at, model.id
    conds = []
    if since is not None:
        conds.append(created >= since)
    if until is not None:
        conds.append(created < until)
    if after is not None:
        conds.append((created < after[0]) | ((created == after[0]) & (ident < after[1])))
    if before is not None:
        conds.append((created > before[0]) | ((created == before[0]) & (ident > before[1])))
    if conds:
        q = q.where(*conds)
    if before is not None:
        return record(list(q.order_by(created.asc(), ident.asc()).limit(limit)))[::-1]
    return record(list(q.order_by(created.desc(), ident.desc()).limit(limit)))


@reads
def page_emails(account_email: str, *, limit: int, status: str | None = None, domain: str | None = None,
                alias_id: int | None = None, since: dt.datetime | None = None,
                until: dt.datetime | None = None, after: Key | None = None,
                before: Key | None = None) -> list[EmailRecord]:
    """Up to `limit` of the account's messages (headers and body left out), newest first."""
    q = listing().join(Account).where(Account.email == account_email)
    if status is not None:
        q = q.where(OutboundEmail.status == status)
    if domain is not None:
        q = q.where(Domain.name == domain)
    if alias_id is not None:
        q = q.where(OutboundEmail.alias == alias_id)
    return _paged(q, OutboundEmail, limit, since, until, after, before, listed)


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
                     after: Key | None = None, before: Key | None = None) -> list[SmtpErrorRecord]:
    """Up to `limit` logged errors of the account's domains, newest first."""
    q = SmtpErrorLog.select(SmtpErrorLog).join(Domain).join(Account).where(Account.email == account_email)
    if domain is not None:
        q = q.where(Domain.name == domain)
    if alias is not None:
        q = q.where(pw.fn.LOWER(SmtpErrorLog.alias) == alias.lower())
    if direction is not None:
        q = q.where(SmtpErrorLog.direction == direction)
    return _paged(q, SmtpErrorLog, limit, since, until, after, before,
                  lambda rows: [error_record(r) for r in rows])


@reads
def page_http_logs(account_email: str, *, limit: int, since: dt.datetime | None = None,
                   after: Key | None = None, before: Key | None = None) -> list[HttpLogRecord]:
    """Up to `limit` of the account's own web/API request rows, newest first."""
    q = HttpLog.select().join(Account).where(Account.email == account_email)
    return _paged(q, HttpLog, limit, since, None, after, before,
                  lambda rows: [request_record(r) for r in rows])
