"""CSRF tokens for the pages' forms: with a session, an HMAC of the session id (so it needs no storage and
dies with the session); without one (login, set-password), a time-stamped HMAC under a key made at start,
valid `ANONYMOUS_TTL` seconds.

Untrusted input: the `csrf` field of a POSTed form, compared in constant time within a bounded length."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

FIELD = "csrf"
ANONYMOUS_TTL = 3600
MAX_TOKEN = 200


def new_key() -> bytes:
    return secrets.token_bytes(32)


def for_session(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"fwdmail csrf", hashlib.sha256).hexdigest()


def anonymous(key: bytes, now: float | None = None) -> str:
    stamp = str(int(time.time() if now is None else now))
    return f"{stamp}.{hmac.new(key, stamp.encode(), hashlib.sha256).hexdigest()}"


def valid(sent: str, key: bytes, session_id: str | None, now: float | None = None) -> bool:
    """Whether `sent` is the form's token: the session's, or (without a session) a recent anonymous one."""
    if not sent or len(sent) > MAX_TOKEN:
        return False
    if session_id is not None:
        return hmac.compare_digest(sent, for_session(session_id))
    stamp, _, mac = sent.partition(".")
    if not stamp.isascii() or not stamp.isdigit():
        return False
    expected = hmac.new(key, stamp.encode(), hashlib.sha256).hexdigest()
    age = (time.time() if now is None else now) - int(stamp)
    return hmac.compare_digest(mac, expected) and -60 <= age <= ANONYMOUS_TTL
