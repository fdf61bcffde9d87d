"""Sender Rewriting Scheme, interoperable with libsrs2 / postsrsd (guarded scheme, SRS0 and SRS1).

Untrusted input: envelope senders (rewritten on forward) and recipients on our SRS domain (bounces,
reversed after checking hash and age). Pure functions of (address, secret, domain, now).

    SRS0=HHHH=TT=orig-domain=orig-local@srs-domain
    SRS1=HHHH=first-forwarder==HHHH=TT=orig-domain=orig-local@srs-domain

HHHH: first 4 characters of base64(HMAC-SHA1(secret, ASCII-lowercased concatenation of the fields)),
or `[srs] hash_length` characters; TT: days since the epoch modulo 1024, as two base32 characters.

When the hash length changes, addresses made before with the previous length (ours, or postsrsd's
four-character ones under the same secret) stay valid until they expire: `Lengths` records since when
the current length is used, in the data dir, and `reverse` accepts the previous length only for
addresses stamped up to that day.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Lengths", "SrsError", "forward", "is_srs", "lengths", "reverse", "timestamp"]

BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
HASH_LENGTH = 4
MAX_HASH_LENGTH = 26  # base64 of a 20-byte SHA-1 MAC: 27 characters, the last one partial
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


@dataclass(frozen=True)
class Lengths:
    """The hash length of new addresses, and the previous one still accepted for older addresses."""

    current: int = HASH_LENGTH
    previous: int = HASH_LENGTH
    since_day: int = 0  # days since the epoch: the first day `current` was used

    def accepts(self, given: int, stamp_day: int | None, today: int, max_age_days: int) -> bool:
        """Whether a hash of `given` characters may be valid for an address stamped `stamp_day`
        (None for SRS1, which has no stamp of ours: then only within `max_age_days` of the change)."""
        if given == self.current:
            return True
        if given != self.previous:
            return False
        if stamp_day is None:
            return today <= self.since_day + max_age_days
        return stamp_day <= self.since_day


def lengths(path: Path, current: int, now: dt.datetime) -> Lengths:
    """The `Lengths` recorded at `path` for a configured length of `current` (blocking file I/O, at start).

    A first start or a changed length records today as the day the new length began, and the
    length before it (four, postsrsd's, on a first start) as the one still accepted.
    """
    today = _days(now)
    try:
        fields = path.read_text("ascii").split()
        recorded = Lengths(int(fields[0]), int(fields[1]), int(fields[2]))
    except (OSError, ValueError, IndexError, UnicodeError):
        recorded = Lengths(HASH_LENGTH, HASH_LENGTH, today)
    if recorded.current == current:
        return recorded
    new = Lengths(current, recorded.current, today)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{new.current} {new.previous} {new.since_day}\n", "ascii")
    os.replace(tmp, path)
    return new


def _hash(secret: bytes, *parts: str, length: int = HASH_LENGTH) -> str:
    # ASCII-only lowercasing, as libsrs2's tolower() and Perl's lc on bytes: non-ASCII bytes stay as sent.
    mac = hmac.new(secret, "".join(parts).encode("utf-8", "surrogateescape").lower(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")[:length]


def _check_hash(given: str, secret: bytes, *parts: str, ok_length: bool = True) -> None:
    # Case-insensitive, like libsrs2: some MTAs lowercase local parts. A base64 hash is ASCII (and
    # compare_digest refuses non-ASCII text with a TypeError).
    if (not ok_length or not given.isascii()
            or not hmac.compare_digest(given.lower(), _hash(secret, *parts, length=len(given)).lower())):
        raise SrsError("bad SRS hash")


def _check_timestamp(stamp: str, now: dt.datetime, max_age_days: int) -> int:
    """The day (since the epoch) `stamp` stands for; SrsError if malformed or older than allowed."""
    stamp = stamp.upper()
    if len(stamp) != 2 or any(c not in BASE32 for c in stamp):
        raise SrsError("bad SRS timestamp")
    then = BASE32.index(stamp[0]) << 5 | BASE32.index(stamp[1])
    today = _days(now)
    age = (today % 1024 - then) % 1024
    if age > max_age_days:
        raise SrsError("SRS address expired")
    return today - age


def is_srs(local: str) -> bool:
    """True if the local part looks like SRS0 or SRS1."""
    return len(local) > 5 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in SEPARATORS


def forward(sender: str, secret: bytes, srs_domain: str, now: dt.datetime, hash_length: int = HASH_LENGTH,
            ) -> str:
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
        return f"SRS1={_hash(secret, host, rest, length=hash_length)}={host}={rest}@{srs_domain}"
    if is_srs(local) and tag == "SRS0":
        rest = local[4:]
        return f"SRS1={_hash(secret, domain, rest, length=hash_length)}={domain}={rest}@{srs_domain}"
    stamp = timestamp(now)
    return (f"SRS0={_hash(secret, stamp, domain, local, length=hash_length)}={stamp}={domain}={local}"
            f"@{srs_domain}")


def reverse(local: str, secret: bytes, now: dt.datetime, max_age_days: int = 21,
            accepted: Lengths = Lengths()) -> str:
    """The address an SRS local part of ours stands for; raise SrsError if invalid or expired.

    SRS0 gives the original sender; SRS1 gives the first forwarder's SRS0 address. A hash of
    `accepted.current` characters is checked, or of `accepted.previous` for addresses made before.
    """
    if not is_srs(local):
        raise SrsError("not an SRS address")
    tag, body = local[:4].upper(), local[5:]
    if tag == "SRS0":
        fields = body.split("=", 3)
        if len(fields) != 4 or not all(fields):
            raise SrsError("malformed SRS0 address")
        given, stamp, host, user = fields
        made = _check_timestamp(stamp, now, max_age_days)
        ok = accepted.accepts(len(given), made, _days(now), max_age_days)
        _check_hash(given, secret, stamp, host, user, ok_length=ok)
        return f"{user}@{host}"
    given, _, tail = body.partition("=")
    host, sep, user = tail.partition("=")
    if not given or not host or not sep or not user:
        raise SrsError("malformed SRS1 address")
    ok = accepted.accepts(len(given), None, _days(now), max_age_days)
    _check_hash(given, secret, host, user, ok_length=ok)
    return f"SRS0{user}@{host}"
