"""An account's own outbound mail and SMTP error log (the web API's work): pages by an opaque cursor,
one message with its content, retry and delete; another account's message is `NotFound`, worded as
for one that does not exist.

Untrusted input: ids, filters, date ranges, page sizes and cursors from web clients; checked here
(`ValueError`, `NotFound`) before any query. A cursor is decoded strictly; a forged one can only move
the page within the caller's own rows.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from typing import Generic, TypeVar

from fwdmail import store
from fwdmail.app import emails, tenancy
from fwdmail.mail.addresses import parse_alias_spec
from fwdmail.store import AliasRecord, EmailRecord, NotFound, SmtpErrorRecord
from fwdmail.store.accountviews import Key, account_email_record, page_emails, page_smtp_errors

__all__ = [
    "DIRECTIONS", "MAX_LIMIT", "Page", "delete_own_email", "own_email", "own_emails", "own_smtp_errors",
    "retry_own_email",
]

MAX_LIMIT = 100
DIRECTIONS = ("inbound", "outbound")
_MAX_CURSOR = 64

T = TypeVar("T", EmailRecord, SmtpErrorRecord)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page, newest first; `cursor` names the next one (None: this is the last)."""

    items: list[T]
    cursor: str | None


def _encode(created_at: dt.datetime, ident: int) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{ident}".encode()).decode().rstrip("=")


def _decode(cursor: str | None) -> Key | None:
    if cursor is None:
        return None
    bad = ValueError("invalid cursor: give the one from the previous page's Link header")
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


def _window(since: dt.datetime | None, until: dt.datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise ValueError("'since' must be before 'until'")


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _own_alias(account_email: str, alias: str) -> AliasRecord:
    """The account's alias named by its full address (user@domain, *@domain or /regex/@domain)."""
    spec = parse_alias_spec(alias)
    tenancy.own_domain(account_email, spec.domain)
    return store.get_alias(spec.domain, spec.kind, spec.local)


def _page(rows: list[T], limit: int) -> Page[T]:
    if len(rows) <= limit:
        return Page(rows, None)
    last = rows[limit - 1]
    return Page(rows[:limit], _encode(last.created_at, last.id))


@store.reads
def own_emails(account_email: str, *, limit: int, status: str | None = None, domain: str | None = None,
               alias: str | None = None, since: dt.datetime | None = None, until: dt.datetime | None = None,
               cursor: str | None = None) -> Page[EmailRecord]:
    """A page of the account's outbound mail, newest first, filtered as `fwdmail emails list` is, by the
    alias that sent it and by acceptance time in [since, until)."""
    if status is not None and status not in emails.STATUSES:
        raise ValueError(f"status must be one of {', '.join(emails.STATUSES)}")
    _window(since, until)
    name = tenancy.own_domain(account_email, domain).name if domain is not None else None
    alias_id = _own_alias(account_email, alias).id if alias is not None else None
    rows = page_emails(account_email, limit=_limit(limit) + 1, status=status, domain=name, alias_id=alias_id,
                       since=since, until=until, after=_decode(cursor))
    return _page(rows, limit)


@store.reads
def own_email(account_email: str, queue_id: str) -> EmailRecord:
    """The account's message with its headers and (unless redacted) body."""
    qid = queue_id.strip().upper()
    if not qid or not qid.isalnum() or len(qid) > 64:
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
                    until: dt.datetime | None = None, cursor: str | None = None) -> Page[SmtpErrorRecord]:
    """A page of the SMTP errors logged for the account's domains, newest first."""
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
    _window(since, until)
    name = tenancy.own_domain(account_email, domain).name if domain is not None else None
    shown = _own_alias(account_email, alias).address if alias is not None else None
    rows = page_smtp_errors(account_email, limit=_limit(limit) + 1, domain=name, alias=shown,
                            direction=direction, since=since, until=until, after=_decode(cursor))
    return _page(rows, limit)
