"""Received header fields: our own trace line, and counting those a message already carries.

Untrusted input: the header section of an inbound message (counted, never parsed further) and the
HELO name an SMTP client gave (shown only if it is a plain host name).
"""

from __future__ import annotations

import datetime as dt
import re

from fwdmail.mail.dates import rfc5322

__all__ = ["count_received", "received_header"]

_RECEIVED = re.compile(rb"(?im)^received[ \t]*:")
_HELO_OK = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


def count_received(headers: bytes) -> int:
    return len(_RECEIVED.findall(headers))


def _clean_helo(helo: str) -> str:
    """The HELO name as it may appear in our Received header: a plain host name, never an IP."""
    name = helo.strip().rstrip(".")
    if not _HELO_OK.fullmatch(name) or re.fullmatch(r"[0-9.]+", name):
        return "unknown"
    return name


def received_header(helo: str, hostname: str, *, esmtp: bool, tls: bool, smtputf8: bool, marker: str,
                    now: dt.datetime) -> bytes:
    """Our Received line (protocol names per RFC 3848): names neither the client's IP nor the recipient."""
    proto = ("UTF8SMTP" if smtputf8 else "ESMTP" if esmtp else "SMTP") + ("S" if tls else "")
    date = rfc5322(now)
    line = f"Received: from {_clean_helo(helo)} by {hostname} (fwdmail) with {proto} id {marker};"
    return f"{line}\r\n\t{date}\r\n".encode("ascii", "replace")
