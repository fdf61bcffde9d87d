"""Sender Rewriting Scheme, interoperable with libsrs2 / postsrsd (guarded scheme, SRS0 and SRS1).

Untrusted input: envelope senders (rewritten on forward) and recipients on our SRS domain (bounces,
reversed after checking hash and age). Pure functions of (address, secret, domain, now).

    SRS0=HHHH=TT=orig-domain=orig-local@srs-domain
    SRS1=HHHH=first-forwarder==HHHH=TT=orig-domain=orig-local@srs-domain

HHHH: first 4 characters of base64(HMAC-SHA1(secret, ASCII-lowercased concatenation of the fields)).
TT: days since the epoch modulo 1024, as two base32 characters.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac

__all__ = ["SrsError", "forward", "is_srs", "reverse", "timestamp"]

BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
HASH_LENGTH = 4
SEPARATORS = "=+-"
_EPOCH = dt.datetime(1970, 1, 1)


class SrsError(ValueError):
    """Not a valid SRS address of ours: malformed, bad hash or too old."""


def _days(now: dt.datetime) -> int:
    if now.tzinfo is not None:
        now = now.astimezone(dt.UTC).replace(tzinfo=None)
    return (now - _EPOCH).days


def timestamp(now: dt.datetime) -> str:
    """The two-character SRS timestamp of the day of `now` (naive UTC or aware)."""
    day = _days(now) % 1024
    return BASE32[(day >> 5) & 31] + BASE32[day & 31]


def _hash(secret: bytes, *parts: str) -> str:
    # ASCII-only lowercasing, as libsrs2's tolower() and Perl's lc on bytes: non-ASCII bytes stay as sent.
    mac = hmac.new(secret, "".join(parts).encode("utf-8", "surrogateescape").lower(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")[:HASH_LENGTH]


def _check_hash(given: str, secret: bytes, *parts: str) -> None:
    # Case-insensitive, like libsrs2: some MTAs lowercase local parts. A base64 hash is ASCII (and
    # compare_digest refuses non-ASCII text with a TypeError).
    if (len(given) != HASH_LENGTH or not given.isascii()
            or not hmac.compare_digest(given.lower(), _hash(secret, *parts).lower())):
        raise SrsError("bad SRS hash")


def _check_timestamp(stamp: str, now: dt.datetime, max_age_days: int) -> None:
    stamp = stamp.upper()
    if len(stamp) != 2 or any(c not in BASE32 for c in stamp):
        raise SrsError("bad SRS timestamp")
    then = BASE32.index(stamp[0]) << 5 | BASE32.index(stamp[1])
    today = _days(now) % 1024
    if (today - then) % 1024 > max_age_days:
        raise SrsError("SRS address expired")


def is_srs(local: str) -> bool:
    """True if the local part looks like SRS0 or SRS1."""
    return len(local) > 5 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in SEPARATORS


def forward(sender: str, secret: bytes, srs_domain: str, now: dt.datetime) -> str:
    """Rewrite envelope sender `sender` ("local@domain", or "" for the null sender) onto `srs_domain`."""
    if not sender:
        return ""
    local, _, domain = sender.rpartition("@")
    if not local or not domain:
        raise SrsError("sender has no domain")
    if domain.lower() == srs_domain.lower():
        return sender
    tag = local[:4].upper()
    if is_srs(local) and tag == "SRS1":
        host, sep, rest = local[5:].partition("=")[2].partition("=")
        if not host or not sep or not rest:
            raise SrsError("malformed SRS1 sender")
        return f"SRS1={_hash(secret, host, rest)}={host}={rest}@{srs_domain}"
    if is_srs(local) and tag == "SRS0":
        rest = local[4:]
        return f"SRS1={_hash(secret, domain, rest)}={domain}={rest}@{srs_domain}"
    stamp = timestamp(now)
    return f"SRS0={_hash(secret, stamp, domain, local)}={stamp}={domain}={local}@{srs_domain}"


def reverse(local: str, secret: bytes, now: dt.datetime, max_age_days: int = 21) -> str:
    """The address an SRS local part of ours stands for; raise SrsError if invalid or expired.

    SRS0 gives the original sender; SRS1 gives the first forwarder's SRS0 address.
    """
    if not is_srs(local):
        raise SrsError("not an SRS address")
    tag, body = local[:4].upper(), local[5:]
    if tag == "SRS0":
        fields = body.split("=", 3)
        if len(fields) != 4 or not all(fields):
            raise SrsError("malformed SRS0 address")
        given, stamp, host, user = fields
        _check_timestamp(stamp, now, max_age_days)
        _check_hash(given, secret, stamp, host, user)
        return f"{user}@{host}"
    given, _, tail = body.partition("=")
    host, sep, user = tail.partition("=")
    if not given or not host or not sep or not user:
        raise SrsError("malformed SRS1 address")
    _check_hash(given, secret, host, user)
    return f"SRS0{user}@{host}"
