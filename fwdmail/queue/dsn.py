"""Delivery status notifications (RFC 3464) for the outbound queue: bounces and the one "delayed" notice.

A report naming a UTF-8 address, or quoting UTF-8 headers, uses RFC 6533's `message/global-delivery-status`
and `message/global-headers`, where UTF-8 is allowed as it is; any other report the ASCII types of RFC 3464.

Untrusted input: the original message's header block (copied into the report as text/rfc822-headers,
never its body) and the reply texts of destination servers (reduced to printable ASCII on one line).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from fwdmail.mail import headers
from fwdmail.mail.dates import rfc5322
from fwdmail.smtp.replies import SmtpError

__all__ = ["Notification", "build_report"]

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_MESSAGE_ID = re.compile(rb"message-id:[ \t]*(<[^<>\s]+>)", re.IGNORECASE)


@dataclass(frozen=True)
class Notification:
    """A DSN ready to queue: header block (CRLF-terminated), body, and its subject."""

    headers: bytes
    body: bytes
    subject: str


def _message_id(section: bytes) -> str:
    """The first Message-ID field of the original header section that holds a plain <id>, or ""."""
    for start, end, name in headers.scan(section).fields:
        if name == b"message-id":
            match = _MESSAGE_ID.match(section, start, end)
            if match:
                return match.group(1).decode("ascii", "replace")
    return ""


def _one_line(text: str, limit: int = 500) -> str:
    clean = "".join(c if " " <= c <= "~" else " " for c in text)
    return " ".join(clean.split())[:limit]


def _status(error: SmtpError) -> str:
    if _ENHANCED.fullmatch(error.enhanced_code or ""):
        return error.enhanced_code
    return f"{str(error.code)[0]}.0.0"


def _address_field(address: str) -> str:
    if address.isascii():
        return f"rfc822; {_one_line(address, 320)}"
    return "utf-8; " + "".join(c for c in address if c.isprintable() and not c.isspace())[:320]


def _lines(*lines: str) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8")


def build_report(*, action: str, domain: str, hostname: str, to: str, queue_id: str, original_headers: bytes,
                 arrival: dt.datetime, failures: Mapping[str, SmtpError], now: dt.datetime,
                 retry_until: dt.datetime | None = None) -> Notification:
    """A multipart/report DSN from MAILER-DAEMON@`domain` to `to` about `failures` (address -> error).

    `action` is "failed" (a bounce) or "delayed" (still being retried until `retry_until`).
    """
    if action not in ("failed", "delayed"):
        raise ValueError(f"unknown DSN action {action!r}")
    boundary = f"=_fwdmail_{secrets.token_hex(12)}"
    if action == "failed":
        subject = "Undelivered Mail Returned to Sender"
        intro = [
            f"This is the mail system at {hostname}.",
            "",
            f"Your message (queue id {queue_id}) could not be delivered to one or more recipients.",
            "It has been given up on; the details are below.",
        ]
    else:
        subject = "Delayed Mail (still being retried)"
        until = f" until {rfc5322(retry_until)}" if retry_until else ""
        intro = [
            f"This is the mail system at {hostname}.",
            "",
            f"Your message (queue id {queue_id}) has not been delivered yet to the recipients below.",
            f"The mail system will keep trying{until}; you do not need to send it again.",
        ]
    human = [*intro, ""]
    for address, error in failures.items():
        human.append(f"<{address}>: {error.code} {_status(error)} {_one_line(error.text)}")

    per_message = [f"Reporting-MTA: dns; {hostname}", f"X-Fwdmail-Queue-ID: {queue_id}",
                   f"Arrival-Date: {rfc5322(arrival)}"]
    per_recipient: list[str] = []
    for address, error in failures.items():
        per_recipient += [
            "",
            f"Final-Recipient: {_address_field(address)}",
            f"Action: {action}",
            f"Status: {_status(error)}",
            f"Diagnostic-Code: smtp; {error.code} {_status(error)} {_one_line(error.text)}",
            f"Last-Attempt-Date: {rfc5322(now)}",
        ]
        if action == "delayed" and retry_until is not None:
            per_recipient.append(f"Will-Retry-Until: {rfc5322(retry_until)}")

    original = original_headers if original_headers.endswith(b"\r\n") else original_headers + b"\r\n"
    utf8 = not (original.isascii() and all(a.isascii() for a in failures))
    headers_part = _lines("Content-Type: message/global-headers" if utf8
                          else "Content-Type: text/rfc822-headers; charset=utf-8",
                          "Content-Transfer-Encoding: " + ("8bit" if utf8 else "7bit"),
                          "Content-Description: Headers of the undelivered message", "")
    status_part = (["Content-Type: message/global-delivery-status", "Content-Transfer-Encoding: 8bit"] if utf8
                   else ["Content-Type: message/delivery-status"])
    body = (
        _lines("This is a MIME-encapsulated message.", "", f"--{boundary}",
               "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit",
               "Content-Description: Notification", "", *human, "", f"--{boundary}",
               *status_part, "Content-Description: Delivery report", "",
               *per_message, *per_recipient, "", f"--{boundary}")
        + headers_part + original + _lines("", f"--{boundary}--")
    )

    fields = [
        f'From: "Mail Delivery System" <MAILER-DAEMON@{domain}>',
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {rfc5322(now)}",
        f"Message-ID: <dsn.{secrets.token_hex(10)}@{domain}>",
    ]
    ref = _message_id(original)
    if ref:
        fields += [f"In-Reply-To: {ref}", f"References: {ref}"]
    fields += [
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
    ]
    return Notification(_lines(*fields), body, subject)
