"""What an account's "My Account" pages read: its own outbound mail (a page of a status, one message),
the SMTP errors of its domains and its own web/API requests of the last 30 days. Another account's
message is `NotFound`, worded as one that does not exist.

Untrusted input: the email id from a URL, the status and page number from a query string (validated
here with a message fit to show).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Generic, TypeVar

from fwdmail import store
from fwdmail.app.emails import STATUSES
from fwdmail.store import EmailRecord, HttpLogRecord, NotFound, SmtpErrorRecord

__all__ = ["API_LOG_DAYS", "PAGE_SIZE", "Page", "own_api_log", "own_email", "own_emails", "own_smtp_errors",
           "page_number"]

PAGE_SIZE = 50
MAX_PAGE = 10_000
API_LOG_DAYS = 30

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    rows: list[T]
    number: int
    more: bool


def page_number(text: str | None) -> int:
    """A page number from a query string ("1" when absent); ValueError for anything else."""
    if text is None or text == "":
        return 1
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= MAX_PAGE:
        raise ValueError(f"page must be a whole number between 1 and {MAX_PAGE}")
    return int(text)


def _page(rows: list[T], number: int) -> Page[T]:
    return Page(rows[:PAGE_SIZE], number, len(rows) > PAGE_SIZE)


@store.reads
def own_emails(account_email: str, status: str | None, number: int) -> Page[EmailRecord]:
    """Page `number` of the account's messages (of one status if given), newest first."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    rows = store.list_account_emails(account_email, status, (number - 1) * PAGE_SIZE, PAGE_SIZE + 1)
    return _page(rows, number)


@store.reads
def own_email(account_email: str, queue_id: str) -> EmailRecord:
    """The account's message `queue_id` with headers and body; NotFound for one missing or someone else's."""
    qid = queue_id.strip().upper()
    if not qid or not qid.isascii() or not qid.isalnum() or len(qid) > 64:
        raise NotFound("no such email")
    if store.account_email_owner(qid) != account_email:
        raise NotFound("no such email")
    return store.get_email(qid)


@store.reads
def own_smtp_errors(account_email: str, number: int) -> Page[SmtpErrorRecord]:
    rows = store.list_account_smtp_errors(account_email, (number - 1) * PAGE_SIZE, PAGE_SIZE + 1)
    return _page(rows, number)


@store.reads
def own_api_log(account_email: str, now: dt.datetime, number: int) -> Page[HttpLogRecord]:
    """The account's own web/API request rows of the last 30 days, newest first."""
    since = now - dt.timedelta(days=API_LOG_DAYS)
    rows = store.list_account_http_logs(account_email, since, (number - 1) * PAGE_SIZE, PAGE_SIZE + 1)
    return _page(rows, number)
