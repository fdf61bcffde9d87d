"""ARC (RFC 8617): validating the chain a message arrives with, and sealing the copy we forward.

Untrusted input: the ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results headers of an
inbound message, and the keys their signers publish (fetched beforehand, served by `dnsfunc`).
Sealing uses the receiving domain's DKIM key; both directions are CPU work for `ctx.blocking.cpu`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

import dkim
import dkim.util

__all__ = ["MAX_HEADER_BYTES", "MAX_INSTANCES", "MAX_VERIFIED_SETS", "header_fields", "key_names", "seal",
           "verify_chain"]

log = logging.getLogger("fwdmail.arc")

MAX_INSTANCES = 50  # RFC 8617 4.2.1: a chain longer than this fails
MAX_HEADER_BYTES = 256 * 1024
MAX_VERIFIED_SETS = 10

_ARC_SIGNED = (b"arc-seal", b"arc-message-signature")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")

_quiet = logging.getLogger("fwdmail.arc.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def header_fields(message: bytes, limit: int = MAX_HEADER_BYTES) -> list[tuple[int, int, bytes]]:
    """(start, end, lowercased name) of each header field, continuation lines included.

    A line in the header block that is not a field (no colon) gets the name b"". Scanning stops after
    `limit` bytes, so a message without a blank line costs no more than a large header.
    """
    fields: list[tuple[int, int, bytes]] = []
    pos, size = 0, min(len(message), limit)
    while pos < size:
        nl = message.find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        line = message[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            start, _, name = fields[-1]
            fields[-1] = (start, end, name)
        else:
            colon = line.find(b":")
            name = line[:colon].strip().lower() if colon > 0 else b""
            fields.append((pos, end, name))
        pos = end
    return fields


def _dns_name(text: str) -> bool:
    return 0 < len(text) <= 253 and all(_LABEL.fullmatch(label) for label in text.split("."))


def key_names(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The key record names (s._domainkey.d) of every ARC-Seal and ARC-Message-Signature, deduplicated."""
    names: dict[str, None] = {}
    for name, value in headers:
        if name not in _ARC_SIGNED:
            continue
        try:
            tags = dkim.util.parse_tag_value(value)
        except Exception:
            continue
        d = re.sub(rb"\s+", b"", tags.get(b"d", b"")).decode("ascii", "replace").lower().rstrip(".")
        s = re.sub(rb"\s+", b"", tags.get(b"s", b"")).decode("ascii", "replace").lower()
        key = f"{s}._domainkey.{d}"
        if d and s and _dns_name(key):
            names[key] = None
        if len(names) >= 2 * MAX_INSTANCES:
            break
    return list(names)


def verify_chain(message: bytes, dnsfunc: Callable[..., bytes | None]) -> str:
    """"none" (no ARC headers), "pass" or "fail": the chain validation status (RFC 8617 5.2).

    Every set's signature hashes the whole body, so a chain of more than MAX_VERIFIED_SETS sets is not
    validated (it fails): a 50-set chain on a large message would cost minutes of CPU.
    """
    seals = sum(1 for _, _, name in header_fields(message) if name == b"arc-seal")
    if seals > MAX_VERIFIED_SETS:
        return "fail"
    try:
        cv, _, reason = dkim.ARC(message, logger=_quiet, minkey=1024).verify(dnsfunc=dnsfunc)
    except Exception:
        return "fail"
    if cv == dkim.CV_Pass:
        return "pass"
    if cv == dkim.CV_None:
        return "none"
    # dkimpy's own verdicts are fixed texts; its other reasons quote the header it could not parse
    fixed = reason.startswith(("Most recent ARC-Message-Signature", "ARC-Seal["))
    log.debug("ARC chain does not validate: %s", reason if fixed else "malformed ARC header field")
    return "fail"


def seal(message: bytes, authserv_id: str, domain: str, selector: str, private_key_pem: str,
         timestamp: int) -> bytes:
    """`message` (which starts with our Authentication-Results) with a new ARC set prepended.

    The chain status `cv` is the `arc=` result of our Authentication-Results. If the set cannot be
    made (chain too long, broken key) the message is returned unsealed: sealing never stops delivery.
    """
    try:
        arc_set = dkim.arc_sign(
            message, selector.encode("ascii"), domain.encode("ascii"), private_key_pem.encode("ascii"),
            authserv_id.encode("ascii"), timestamp=timestamp, logger=_quiet,
        )
    except Exception as exc:
        log.warning("ARC seal for %s not added: %s", domain, exc.__class__.__name__)
        return message
    return b"".join(arc_set) + message
