"""An account's own outbound mail, SMTP error log and web/API request log, for its web API and its
"My Account" pages alike: pages by an opaque cursor (older rows, and for the pages newer ones too), one
message with its content, retry and delete; another account's message is `NotFound`, worded as for one
that does not exist.

Untrusted input: ids, filters, date ranges, page sizes and cursors from web clients; checked here
(`ValueError`, `NotFound`) before any query. A cursor is decoded strictly; a forged one can only move
the page within the caller's own rows.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

from fwdmail import store
from fwdmail.app import emails, tenancy
from fwdmail.mail.addresses import parse_alias_spec
from fwdmail.store import AliasRecord, EmailRecord, HttpLogRecord, NotFound, SmtpErrorRecord
from fwdmail.store.accountviews import (
    Key,
    account_email_record,
    page_emails,
    page_http_logs,
    page_smtp_errors,
)

__all__ = [
    "API_LOG_DAYS", "DIRECTIONS", "MAX_LIMIT", "PAGE_SIZE", "Page", "delete_own_email", "own_api_log",
    "own_email", "own_emails", "own_smtp_errors", "retry_own_email",
]

MAX_LIMIT = 100
PAGE_SIZE = 50
API_LOG_DAYS = 30
DIRECTIONS = ("inbound", "outbound")
_MAX_CURSOR = 64

T = TypeVar("T", EmailRecord, SmtpErrorRecord, HttpLogRecord)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page, newest first; `cursor` names the older one after it and `newer` the one before it
    (None: there is none)."""

    items: list[T]
    cursor: str | None
    newer: str | None = None


def _encode(created_at: dt.datetime, ident: int) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{ident}".encode()).decode().rstrip("=")


def _decode(cursor: str | None) -> Key | None:
    if cursor is None:
        return None
    bad = ValueError("invalid cursor: give the one from the previous page's link")
    if not cursor or len(cursor) > _MAX_CURSOR or not cursor.isascii():
        raise bad
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        when, _, ident = text.partition("|")
        key = (dt.datetime.fromisoformat(when), int(ident))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if key[0].tzinfo is not None or not 0 < key[1] < 2**63:
        raise bad
    return key


def _own_domain(account_email: str, domain: str | None, since: dt.datetime | None,
                until: dt.datetime | None) -> str | None:
    """The filters every list shares, checked: the account's domain's name (if one is named), a window."""
    if since is not None and until is not None and since >= until:
        raise ValueError("'since' must be before 'until'")
    return tenancy.own_domain(account_email, domain).name if domain is not None else None


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _own_alias(account_email: str, alias: str) -> AliasRecord:
    """The account's alias named by its full address (user@domain, *@domain or /regex/@domain)."""
    spec = parse_alias_spec(alias)
    tenancy.own_domain(account_email, spec.domain)
    return store.get_alias(spec.domain, spec.kind, spec.local)


def _key(row: T) -> str:
    return _encode(row.created_at, row.id)


def _paged(read: Callable[..., list[T]], limit: int, cursor: str | None, newer: str | None) -> Page[T]:
    """The page older than `cursor`, or newer than `newer`, or else the newest; `read` takes `limit`,
    `after` and `before` and returns rows newest first."""
    _limit(limit)
    if newer is None:
        rows = read(limit=limit + 1, after=_decode(cursor))
        older = _key(rows[limit - 1]) if len(rows) > limit else None
        return Page(rows[:limit], older, cursor)
    if cursor is not None:
        raise ValueError("give a cursor or a newer cursor, not both")
    rows = read(limit=limit + 1, before=_decode(newer))
    if len(rows) <= limit:
        return _paged(read, limit, None, None)
    return Page(rows[1:], _key(rows[-1]), _key(rows[1]))


@store.reads
def own_emails(account_email: str, *, limit: int, status: str | None = None, domain: str | None = None,
               alias: str | None = None, since: dt.datetime | None = None, until: dt.datetime | None = None,
               cursor: str | None = None, newer: str | None = None) -> Page[EmailRecord]:
    """A page of the account's outbound mail, newest first, filtered as `fwdmail emails list` is, by the
    alias that sent it and by acceptance time in [since, until)."""
    if status is not None and status not in emails.STATUSES:
        raise ValueError(f"status must be one of {', '.join(emails.STATUSES)}")
    name = _own_domain(account_email, domain, since, until)
    alias_id = _own_alias(account_email, alias).id if alias is not None else None
    return _paged(partial(page_emails, account_email, status=status, domain=name, alias_id=alias_id,
                          since=since, until=until), limit, cursor, newer)


@store.reads
def own_email(account_email: str, queue_id: str) -> EmailRecord:
    """The account's message with its headers and (unless redacted) body."""
    qid = queue_id.strip().upper()
    if not qid or not qid.isascii() or not qid.isalnum() or len(qid) > 64:
        raise NotFound(f"no email {queue_id.strip()[:64]}")
    record = account_email_record(account_email, qid)
    if record is None:
        raise NotFound(f"no email {qid}")
    return record


def retry_own_email(account_email: str, queue_id: str, now: dt.datetime) -> EmailRecord:
    record = own_email(account_email, queue_id)
    return emails.retry_email(record.queue_id, now)


def delete_own_email(account_email: str, queue_id: str) -> str:
    record = own_email(account_email, queue_id)
    emails.delete_email(record.queue_id)
    return record.queue_id


@store.reads
def own_smtp_errors(account_email: str, *, limit: int, domain: str | None = None, alias: str | None = None,
                    direction: str | None = None, since: dt.datetime | None = None,
                    until: dt.datetime | None = None, cursor: str | None = None,
                    newer: str | None = None) -> Page[SmtpErrorRecord]:
    """A page of the SMTP errors logged for the account's domains, newest first."""
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
    name = _own_domain(account_email, domain, since, until)
    shown = _own_alias(account_email, alias).address if alias is not None else None
    return _paged(partial(page_smtp_errors, account_email, domain=name, alias=shown, direction=direction,
                          since=since, until=until), limit, cursor, newer)


@store.reads
def own_api_log(account_email: str, now: dt.datetime, *, limit: int, cursor: str | None = None,
                newer: str | None = None) -> Page[HttpLogRecord]:
    """A page of the account's own web/API request rows of the last `API_LOG_DAYS` days, newest first."""
    since = now - dt.timedelta(days=API_LOG_DAYS)
    return _paged(partial(page_http_logs, account_email, since=since), limit, cursor, newer)
