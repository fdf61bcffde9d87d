"""A submitted message checked against the sender rules and completed for the queue.

Untrusted input: the message a logged-in submission client sends (header syntax, From, Date,
Message-ID, Bcc, Subject). Anything refused raises the `SmtpError` its reply is; nothing here logs.
"""

from __future__ import annotations

import datetime as dt
import email.errors
import email.header
import email.utils
import re
import secrets
from dataclasses import dataclass

from fwdmail.config import SubmissionConfig
from fwdmail.mail import headers as header_section
from fwdmail.mail.dates import rfc5322
from fwdmail.smtp import replies
from fwdmail.submission.logins import Login

__all__ = ["Prepared", "parse_header_block", "prepare_message"]

_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


@dataclass(frozen=True)
class Prepared:
    """A submitted message as it goes into the queue."""

    headers: bytes
    body: bytes
    subject: str
    date: dt.datetime
    send_at: dt.datetime


def parse_header_block(block: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) per header field; raise SmtpError for non-UTF-8 or malformed lines."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise replies.HEADER_NOT_UTF8 from None
    fields: list[tuple[str, str]] = []
    for line in text.split("\r\n")[:-1]:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise replies.HEADER_MALFORMED
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        name, sep, value = line.partition(":")
        if not sep or not _FIELD_NAME.fullmatch(name):
            raise replies.HEADER_MALFORMED
        fields.append((name, value))
    return fields


def _without_fields(block: bytes, names: frozenset[bytes]) -> bytes:
    """A well-formed header block (see `parse_header_block`) without the fields named (lowercase)."""
    out: list[bytes] = []
    keep = True
    for line in block.split(b"\r\n")[:-1]:
        if line[:1] not in (b" ", b"\t"):
            keep = line.partition(b":")[0].lower() not in names
        if keep:
            out.append(line + b"\r\n")
    return b"".join(out)


def _by_name(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Field values by lowercase name, in order."""
    found: dict[str, list[str]] = {}
    for name, value in fields:
        found.setdefault(name.lower(), []).append(value)
    return found


def _parse_date(value: str) -> dt.datetime:
    """A Date header as naive UTC; raise BAD_DATE if it is not an RFC 5322 date."""
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        raise replies.BAD_DATE from None
    if when is None:
        raise replies.BAD_DATE
    if when.tzinfo is None:
        return when
    try:
        return when.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:
        raise replies.BAD_DATE from None


def _decode_subject(value: str) -> str:
    if "=?" not in value:
        return " ".join(value.split())[:998]  # no encoded words: nothing to decode
    try:
        text = str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, ValueError, UnicodeError, email.errors.HeaderParseError):
        text = value
    return " ".join(text.split())[:998]


def prepare_message(login: Login, content: bytes, now: dt.datetime, cfg: SubmissionConfig, hostname: str,
                    queue_id: str) -> Prepared:
    """Check a submitted message against the sender rules and complete its header.

    The From header must be exactly one address this login may send as; a Date more than
    `max_future_date_days` ahead is refused, a nearer future Date schedules the send; a missing Date or
    Message-ID is added; Bcc fields are removed, so no recipient learns of the blind copies (RFC 5322
    3.6.3). Raise SmtpError with the reply otherwise.
    """
    block, body = header_section.split(content)
    fields = _by_name(parse_header_block(block))
    froms = fields.get("from", [])
    if len(froms) != 1:
        raise replies.FROM_NOT_ALLOWED
    addresses = [addr for _, addr in email.utils.getaddresses(froms) if addr]
    if len(addresses) != 1 or not login.may_send_as(addresses[0]):
        raise replies.FROM_NOT_ALLOWED
    added: list[str] = []
    stamp = rfc5322(now)
    dates = fields.get("date", [])
    if len(dates) > 1:
        raise replies.BAD_DATE
    if dates:
        date = _parse_date(dates[0])
        if date > now + dt.timedelta(days=cfg.max_future_date_days):
            raise replies.DATE_TOO_FAR
    else:
        date = now
        added.append(f"Date: {stamp}")
    if "message-id" not in fields:
        added.append(f"Message-ID: <{secrets.token_hex(12)}@{login.domain}>")
    if "bcc" in fields:
        block = _without_fields(block, frozenset({b"bcc"}))
    received = f"Received: by {hostname} (fwdmail) with ESMTPSA id {queue_id};\r\n\t{stamp}\r\n"
    headers = received.encode("ascii") + block + "".join(f"{h}\r\n" for h in added).encode("utf-8")
    subjects = fields.get("subject")
    return Prepared(headers, body, _decode_subject(subjects[0]) if subjects else "", date, max(date, now))
