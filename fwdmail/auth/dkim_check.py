"""DKIM (RFC 6376) results of a message's signatures, from keys fetched beforehand through `lookup`.

Untrusted input: the DKIM-Signature fields of a message, its header section and body, and the key
records in DNS. A malformed signature, key or message is a `permerror`, a key lookup that failed
temporarily a `temperror`; nothing raises. `verify_dkim` is CPU work for the caller to run off the loop;
`dkim_core` parses and hashes, RSA runs in OpenSSL.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import dkim.util
import dns.asyncresolver

from fwdmail.auth import dkim_core as dkimcore
from fwdmail.auth.lookup import TempFail, txt
from fwdmail.mail.addresses import AddressError, normalize_domain

__all__ = ["MAX_DKIM_SIGNATURES", "DkimResult", "KeyTable", "Signature", "fetch_keys", "keyring",
           "signatures", "verify_dkim"]

MAX_DKIM_SIGNATURES: Final = 5  # each hashes the body: bounded CPU per message

KeyTable = dict[str, bytes | TempFail | None]  # DKIM/ARC key name -> TXT, TEMPFAIL, or None (no key)

@dataclass(frozen=True)
class DkimResult:
    result: str  # pass fail neutral temperror permerror
    domain: str
    selector: str
    b: str = ""  # the first characters of the signature (RFC 6008), to tell signatures apart
    reason: str = ""


@dataclass(frozen=True)
class Signature:
    domain: str
    selector: str
    b: str
    error: str = ""

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


_SELECTOR = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_-]{1,63})*")


def _signature_tags(value: bytes) -> tuple[str, str, str, str]:
    """(d, s, b prefix, error) of a DKIM-Signature or ARC header value."""
    try:
        tags = dkim.util.parse_tag_value(value)
    except Exception:
        return "", "", "", "malformed signature"
    d = re.sub(rb"\s+", b"", tags.get(b"d", b"")).decode("ascii", "replace")
    s = re.sub(rb"\s+", b"", tags.get(b"s", b"")).decode("ascii", "replace")
    b = re.sub(rb"\s+", b"", tags.get(b"b", b"")).decode("ascii", "replace")[:8]
    try:
        d = normalize_domain(d) if d.isascii() else ""
    except AddressError:
        d = ""
    if not d or not _SELECTOR.fullmatch(s):
        return d, s, b, "bad d= or s= tag"
    return d, s.lower(), b, ""


def signatures(headers: Iterable[tuple[bytes, bytes]]) -> list[Signature]:
    sigs = []
    for name, value in headers:
        if name == b"dkim-signature":
            d, s, b, error = _signature_tags(value)
            sigs.append(Signature(d, s, b, error))
    return sigs


async def fetch_keys(resolver: dns.asyncresolver.Resolver, names: Iterable[str]
                      ) -> KeyTable:
    """TXT of each key name (the first record, strings joined, as dkimpy reads it)."""
    names = list(dict.fromkeys(n.lower() for n in names))
    found = await asyncio.gather(*(txt(resolver, n) for n in names))
    keys: KeyTable = {}
    for name, records in zip(names, found, strict=True):
        keys[name] = records if isinstance(records, TempFail) else (records[0] if records else None)
    return keys


def keyring(keys: KeyTable) -> dkimcore.Keys:
    """The message's signer keys, each parsed once, from the records fetched beforehand (`keys` only)."""
    def lookup(name: str) -> bytes | None:
        value = keys.get(name.lower().rstrip("."))
        if isinstance(value, TempFail):
            raise dkimcore.KeyUnavailable(name)
        return value

    return dkimcore.Keys(lookup)


def verify_dkim(parsed: dkimcore.Message | None, sigs: Sequence[Signature], keys: KeyTable,
                 ring: dkimcore.Keys | None = None) -> list[DkimResult]:
    """Verify each signature (CPU work: body hashes and RSA); keys come from `keys` only."""
    ring = ring or keyring(keys)
    results = []
    for idx, sig in enumerate(sigs):
        def res(result: str, reason: str, sig: Signature = sig) -> DkimResult:
            return DkimResult(result, sig.domain, sig.selector, sig.b, reason)

        if sig.error or parsed is None:
            results.append(res("permerror", sig.error or "malformed message headers"))
            continue
        record = keys.get(sig.key_name)
        if isinstance(record, TempFail):
            results.append(res("temperror", "key lookup failed"))
            continue
        if record is None:
            results.append(res("permerror", "no key"))
            continue
        try:
            verdict = dkimcore.verify_dkim(parsed, idx, ring.get(sig.key_name))
        except dkimcore.KeyRecordError:
            results.append(res("permerror", "bad key"))
            continue
        except Exception:
            results.append(res("permerror", "invalid signature"))
            continue
        results.append(res("pass", "") if verdict == "pass" else res("fail", verdict))
    return results
