"""Friendly-From: rewrite From on forwarded copies whose sender's DMARC policy would make them bounce.

Untrusted input: the From and Reply-To headers of an inbound message (any bytes, possibly RFC 2047
encoded words or raw UTF-8). A From we cannot read leaves the message unchanged.

When the sender's domain publishes p=reject or p=quarantine and no aligned DKIM signature passes
(so DMARC at the destination would rest on SPF, which forwarding breaks), the copy goes out as
`"Original Name" <alias@our-domain>` with `Reply-To:` the original From, so replies still reach
the sender. An existing Reply-To is kept as it is.
"""

from __future__ import annotations

import email.errors
import email.header
import email.utils
import re
from email import policy
from email.headerregistry import Address
from typing import TYPE_CHECKING

from .arc import header_fields

if TYPE_CHECKING:
    from .authcheck import AuthReport

__all__ = ["needs_rewrite", "rewrite_from"]


def needs_rewrite(report: AuthReport) -> bool:
    """True when the sender's DMARC policy is reject/quarantine and no aligned DKIM pass survives."""
    return report.dmarc.policy in ("reject", "quarantine") and not report.aligned_dkim_pass


def _display_name(raw_value: bytes) -> tuple[str, str]:
    """(decoded display name, address) of a From value; ("", "") if it holds no single address."""
    text = re.sub(r"\r?\n(?=[ \t])", "", raw_value.decode("utf-8", "replace")).strip()
    pairs = [(n, a) for n, a in email.utils.getaddresses([text]) if "@" in a]
    if len(pairs) != 1:
        return "", ""
    name, addr = pairs[0]
    try:
        name = str(email.header.make_header(email.header.decode_header(name)))
    except (ValueError, LookupError, UnicodeError):
        pass
    return " ".join(name.split()), addr


def rewrite_from(message: bytes, alias: str) -> bytes:
    """`message` with From set to `alias` (keeping the display name) and Reply-To to the original From."""
    fields = header_fields(message)
    froms = [(s, e) for s, e, n in fields if n == b"from"]
    if len(froms) != 1:
        return message
    start, end = froms[0]
    original = message[start:end]
    name, addr = _display_name(original.partition(b":")[2])
    if not addr:
        return message
    if not name:
        local, _, domain = addr.rpartition("@")
        name = f"{local} at {domain}"
    eol = b"\r\n" if original.endswith(b"\r\n") else b"\n"
    try:
        value = str(Address(display_name=name[:200], addr_spec=alias))
        folded = policy.SMTP.header_factory("From", value).fold(policy=policy.SMTP)
    except (ValueError, TypeError, IndexError, email.errors.MessageError):
        return message
    replacement = folded.encode("ascii", "replace").replace(b"\r\n", eol)
    if not any(n == b"reply-to" for _, _, n in fields):
        value = original.partition(b":")[2].rstrip(b"\r\n")
        replacement += b"Reply-To:" + value + eol
    return message[:start] + replacement + message[end:]
