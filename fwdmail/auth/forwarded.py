"""The forwarded copy of an inbound message: friendly-From, our Authentication-Results, our ARC set.

Untrusted input: the header section of an inbound message (the body is never copied) and the results
its checks produced. The copy is CPU work (an RSA signature) for the caller to run off the loop.
"""

from __future__ import annotations

from fwdmail import store
from fwdmail.auth import arc
from fwdmail.auth.results import AuthReport, stamp
from fwdmail.mail.friendly_from import rewrite_from

__all__ = ["forwarded_copy"]


def forwarded_copy(message: bytes, report: AuthReport, authserv_id: str, domain: store.DomainRecord | None,
                   friendly_alias: str, timestamp: int) -> bytes:
    """One forwarded copy (CPU work): friendly-From if `friendly_alias`, our Authentication-Results, and
    an ARC set sealed with the hosted domain's DKIM key. `message` is the message `report` checked, or
    only its header section (the MX passes that: the body is sent after it unchanged, never copied);
    the seal takes the body hash from the report, so a message whose header section could not be
    parsed when it was checked (no body hash) is not sealed."""
    if friendly_alias:
        message = rewrite_from(message, friendly_alias)
    message = stamp(message, report, authserv_id)
    if domain is not None and domain.dkim_private_key and domain.dkim_selector and report.body_hash:
        message = arc.seal(message, authserv_id, domain.name, domain.dkim_selector, domain.dkim_private_key,
                           timestamp, authres=report.header_value(authserv_id), cv=report.arc,
                           body_hash=report.body_hash)
    return message
