"""DMARC (RFC 7489): the record governing an author domain, identifier alignment, and the result.

Untrusted input: the From fields of a message (author domains) and the DMARC TXT records in DNS.
A malformed record is no record; an unreadable From is a `permerror`; nothing raises. Organisational
domains come from the bundled public suffix list (no network).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses

import dns.asyncresolver
from publicsuffixlist import PublicSuffixList

from fwdmail.auth.dkim_check import DkimResult
from fwdmail.auth.lookup import TempFail, txt
from fwdmail.auth.spf import SpfResult
from fwdmail.mail.addresses import AddressError, normalize_domain

__all__ = ["DmarcRecord", "DmarcResult", "Governing", "aligned", "evaluate_dmarc", "from_domains",
           "lookup_dmarc", "org_domain", "parse_dmarc", "public_suffixes", "strictness"]


@functools.cache
def public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()


def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 3.2) by the bundled public suffix list."""
    domain = domain.lower().rstrip(".")
    return public_suffixes().privatesuffix(domain) or domain


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    """DMARC identifier alignment: "s" strict (equal), "r" relaxed (same organisational domain)."""
    a, b = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not a or not b:
        return False
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


# DMARC

@dataclass(frozen=True)
class DmarcRecord:
    p: str  # none | quarantine | reject
    sp: str = ""  # subdomain policy; "" = same as p
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


Governing = tuple[DmarcRecord | TempFail | None, str]  # the record (or TEMPFAIL/None), where found


_DMARC_V = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|$)")


def parse_dmarc(text: str | bytes) -> DmarcRecord | None:
    """A DMARC record (RFC 7489 6.3), or None if `text` is not a usable one."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not _DMARC_V.match(text):
        return None
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        k, sep, v = part.partition("=")
        if sep:
            tags.setdefault(k.strip().lower(), v.strip())
    policies = ("none", "quarantine", "reject")
    p = tags.get("p", "").lower()
    if p not in policies:
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    pct_text = tags.get("pct", "100")
    pct = int(pct_text) if pct_text.isascii() and pct_text.isdigit() else 100
    return DmarcRecord(
        p=p, sp=sp if sp in policies else "", adkim=adkim if adkim in ("r", "s") else "r",
        aspf=aspf if aspf in ("r", "s") else "r", pct=min(pct, 100),
    )


async def _dmarc_at(resolver: dns.asyncresolver.Resolver, domain: str) -> DmarcRecord | TempFail | None:
    txts = await txt(resolver, f"_dmarc.{domain}")
    if isinstance(txts, TempFail):
        return txts
    candidates = [t for t in txts if _DMARC_V.match(t.decode("ascii", "replace"))]
    return parse_dmarc(candidates[0]) if len(candidates) == 1 else None


async def lookup_dmarc(resolver: dns.asyncresolver.Resolver, from_domain: str
                       ) -> Governing:
    """The record that governs `from_domain` and where it was found (the domain or its org domain)."""
    record = await _dmarc_at(resolver, from_domain)
    if record is None:
        org = org_domain(from_domain)
        if org != from_domain:
            return await _dmarc_at(resolver, org), org
    return record, from_domain


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass fail none temperror permerror
    from_domain: str = ""
    policy: str = ""  # the policy that applies to from_domain: none | quarantine | reject ("" = no record)
    pct: int = 100
    reason: str = ""


def _unfold(value: bytes) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value.decode("utf-8", "replace")).strip()


def from_domains(headers: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[str, ...], str]:
    """The distinct domains of the author addresses in every From field, or ((), why there are none).

    Several addresses (or From fields) are each checked and the strictest failing result counts
    (RFC 7489 6.6.1): adding an address of one's own cannot hide a spoofed one.
    """
    froms = [v for n, v in headers if n == b"from"]
    if not froms:
        return (), "no From header"
    domains: dict[str, None] = {}
    seen = False
    for value in froms:
        for _, addr in getaddresses([_unfold(value)]):
            if "@" not in addr:
                continue
            seen = True
            try:
                domains[normalize_domain(addr.rpartition("@")[2])] = None
            except AddressError:
                continue
    if not domains:
        return (), "bad From domain" if seen else "no usable From address"
    return tuple(domains), ""


def strictness(d: DmarcResult) -> int:
    """How strict a result is: fail under reject first, then temperror, then the other fails."""
    if d.result == "fail":
        return {"reject": 5, "quarantine": 3}.get(d.policy, 2)
    return {"temperror": 4, "none": 1}.get(d.result, 0)


def evaluate_dmarc(from_domain: str, looked_up: Governing,
                   spf_result: SpfResult, dkim_results: Sequence[DkimResult]) -> DmarcResult:
    """DMARC (RFC 7489 6.6) from the record found and the SPF and DKIM results."""
    record, record_domain = looked_up
    if isinstance(record, TempFail):
        return DmarcResult("temperror", from_domain, reason="DMARC record lookup failed")
    if record is None:
        return DmarcResult("none", from_domain)
    policy = record.p if record_domain == from_domain else (record.sp or record.p)
    spf_ok = spf_result.result == "pass" and aligned(spf_result.domain, from_domain, record.aspf)
    dkim_ok = any(r.result == "pass" and aligned(r.domain, from_domain, record.adkim) for r in dkim_results)
    if spf_ok or dkim_ok:
        return DmarcResult("pass", from_domain, policy, record.pct)
    transient = spf_result.result == "temperror" and aligned(spf_result.domain, from_domain, record.aspf)
    transient = transient or any(
        r.result == "temperror" and aligned(r.domain, from_domain, record.adkim) for r in dkim_results)
    if transient:
        return DmarcResult("temperror", from_domain, policy, record.pct, "aligned check failed temporarily")
    return DmarcResult("fail", from_domain, policy, record.pct)
