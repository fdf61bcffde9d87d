"""What the MX recorded: the SMTP error log (4xx/5xx replies, per domain) and abuse events (kind, IP).

The records hold text from outside (remote replies, client input); they are returned as stored, for the
CLI to show escaped.
"""

from __future__ import annotations

from fwdmail import store
from fwdmail.mail.addresses import normalize_domain
from fwdmail.store import AbuseRecord, SmtpErrorRecord

__all__ = ["ABUSE_KINDS", "AbuseRecord", "SmtpErrorRecord", "list_abuse_events", "list_smtp_errors"]

# What the MX records (fwdmail.policy.sender_auth and limits).
ABUSE_KINDS = ("dmarc-reject", "spf-reject", "dnsbl", "rate-limit", "too-many-connections")


def list_smtp_errors(domain: str | None = None) -> list[SmtpErrorRecord]:
    """Logged SMTP errors, newest first; only those of `domain` if given."""
    return store.list_smtp_errors(normalize_domain(domain) if domain is not None else None)


def list_abuse_events(kind: str | None = None) -> list[AbuseRecord]:
    """Abuse events, newest first; only those of `kind` if given."""
    return store.list_abuse_events(kind)
