"""Sender authentication of inbound mail: SPF, DKIM, DMARC with alignment, and Authentication-Results.

Untrusted input: the client's IP and HELO name, the envelope sender, the message's headers and body,
and every DNS answer about the sender's domains (SPF, DKIM keys, DMARC records). Bad input never
raises: a malformed record, header or signature becomes a `permerror`/`none` result.

DNS goes through `dns.asyncresolver` only. pyspf evaluates SPF, replaying answers we fetched
asynchronously (a lookup it has not seen yet is recorded, fetched, and the evaluation re-run);
`dkimcore` verifies DKIM signatures and `arc` the ARC chain, from keys fetched beforehand: the message
is parsed and each canonical body hashed once for all of them, and RSA runs in OpenSSL.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any, Final

import dkim.util
import dns.asyncresolver
import dns.exception
import dns.resolver
import spf
from publicsuffixlist import PublicSuffixList

from fwdmail import store
from fwdmail.auth import arc, dnsmemo
from fwdmail.auth import dkim_core as dkimcore
from fwdmail.auth.arc import header_fields
from fwdmail.auth.resolver import async_resolver
from fwdmail.mail.addresses import AddressError, normalize_domain
from fwdmail.policy.contract import Accepted, DataVerdict, InboundPolicy, SessionInfo, Transaction
from fwdmail.policy.friendly_from import needs_rewrite, rewrite_from
from fwdmail.policy.limits import RecordThrottle
from fwdmail.policy.routing import Route
from fwdmail.runtime.context import Context
from fwdmail.smtp.replies import AUTH_TEMPFAIL, DMARC_REJECTED, SPF_REJECTED, TLS_REQUIRED, SmtpError

__all__ = [
    "AuthReport", "DkimResult", "DmarcRecord", "DmarcResult", "SenderAuthPolicy",
    "SpfResult", "Verdict", "aligned", "check_dkim", "check_sender", "check_spf", "forwarded_copy",
    "lookup_dmarc", "org_domain", "outcome", "parse_dmarc", "stamp", "verdict",
]

log = logging.getLogger("fwdmail.authcheck")

Offload = Callable[..., Awaitable[Any]]

MAX_DKIM_SIGNATURES: Final = 5  # each hashes the body: bounded CPU per message
MAX_FROM_DOMAINS: Final = 10  # author domains checked per message; more is refused under enforce
TOO_MANY_FROM_DOMAINS: Final = "too many From domains"
MAX_SPF_ROUNDS: Final = 20  # pyspf evaluations per check; each needs at least one new answer
MAX_SPF_PREFETCH: Final = 20  # speculative lookups per round (include/redirect/a/mx targets, MX/PTR hosts)
MAX_SPF_TXT_BYTES: Final = 4096  # a larger SPF record is a permerror: bounded CPU per evaluation
POLICIES: Final = ("off", "report-only", "enforce")


class _TempFail:
    """A DNS lookup that failed temporarily (timeout, SERVFAIL)."""

    def __repr__(self) -> str:
        return "TEMPFAIL"


TEMPFAIL: Final = _TempFail()

KeyTable = dict[str, bytes | _TempFail | None]  # DKIM/ARC key name -> TXT, TEMPFAIL, or None (no key)

_ARC_FIELDS = frozenset({b"arc-seal", b"arc-message-signature", b"arc-authentication-results"})


async def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


# raw headers

def _headers(message: bytes) -> list[tuple[bytes, bytes]]:
    """(lowercased name, raw value) of each header field."""
    out = []
    for start, end, name in header_fields(message):
        raw = message[start:end]
        out.append((name, raw[raw.find(b":") + 1:] if name else raw))
    return out


def _unfold(value: bytes) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value.decode("utf-8", "replace")).strip()


# DNS

async def _lookup(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str
                  ) -> tuple[list[Any] | _TempFail, float]:
    """(records of `name`, until when they are fresh): [] when there are none (or the name is unusable),
    TEMPFAIL on failure; only a positive answer has a freshness (else 0) and is remembered."""
    memo = dnsmemo.memo_for(resolver).answers
    key = (name.lower(), rdtype)
    found = memo.get(key)
    if found is not None:
        return found
    try:
        answer = await resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return [], 0.0
    except (dns.exception.Timeout, dns.resolver.NoNameservers):
        return TEMPFAIL, 0.0
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return [], 0.0
    records = list(answer)
    memo.put(key, (records, answer.expiration), answer.expiration)
    return records, answer.expiration


async def _query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> list[Any] | _TempFail:
    """Records of `name`; [] when there are none (or the name is unusable); TEMPFAIL on failure."""
    return (await _lookup(resolver, name, rdtype))[0]


async def _txt(resolver: dns.asyncresolver.Resolver, name: str) -> list[bytes] | _TempFail:
    records = await _query(resolver, name, "TXT")
    if isinstance(records, _TempFail):
        return records
    return [b"".join(r.strings) for r in records]


# organisational domains and alignment

@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 3.2) by the bundled public suffix list."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    """DMARC identifier alignment: "s" strict (equal), "r" relaxed (same organisational domain)."""
    a, b = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not a or not b:
        return False
    return a == b if mode == "s" else org_domain(a) == org_domain(b)


# SPF

@dataclass(frozen=True)
class SpfResult:
    result: str  # pass fail softfail neutral none temperror permerror
    domain: str  # the checked identity's domain (MAIL FROM, or HELO for a null sender)
    identity: str = "mailfrom"  # mailfrom | helo


class _TooLarge:
    """A TXT answer larger than MAX_SPF_TXT_BYTES: pyspf gets a PermError instead of parsing it."""

    def __repr__(self) -> str:
        return "TOO_LARGE"


_TOO_LARGE: Final = _TooLarge()


@dataclass
class _SpfReplay:
    answers: dict[tuple[str, str], Any]
    misses: list[tuple[str, str]] = field(default_factory=list)


_spf_replay: contextvars.ContextVar[_SpfReplay | None] = contextvars.ContextVar("fwdmail_spf", default=None)


def _spf_lookup(name: str, qtype: str, strict: object = True, timeout: object = None) -> list[Any]:
    """pyspf's DNS hook: answers only from the replay table of the running check; no DNS of its own."""
    replay = _spf_replay.get()
    if replay is None:
        raise spf.TempError("DNS outside fwdmail's resolver is disabled")
    key = (str(name).lower().rstrip("."), qtype.upper())
    if key not in replay.answers:
        replay.misses.append(key)
        raise spf.TempError("lookup pending")
    value = replay.answers[key]
    if isinstance(value, _TempFail):
        raise spf.TempError(f"DNS temporary failure for {key[0]}")
    if isinstance(value, _TooLarge):
        raise spf.PermError(f"TXT record of {key[0]} is larger than {MAX_SPF_TXT_BYTES} bytes")
    return value


spf.DNSLookup = _spf_lookup

_SPF_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})


def _spf_round(ip: str, sender: str, helo: str, answers: dict[tuple[str, str], Any]
               ) -> tuple[str, list[tuple[str, str]]]:
    """One evaluation by pyspf over the answers so far (CPU work): (result, lookups it still needs)."""
    replay = _SpfReplay(answers)
    token = _spf_replay.set(replay)
    try:
        result = spf.query(i=ip, s=sender, h=helo, strict=True).check()[0]
    except spf.TempError:
        result = "temperror"
    except Exception:
        result = "permerror"
    finally:
        _spf_replay.reset(token)
    return (result if result in _SPF_RESULTS else "permerror"), replay.misses


async def _spf_fetch(resolver: dns.asyncresolver.Resolver, key: tuple[str, str]) -> tuple[Any, float]:
    """pyspf's form of one answer, and until when it is fresh (0: not to be remembered)."""
    name, qtype = key
    records, fresh = await _lookup(resolver, name, qtype)
    if isinstance(records, _TempFail):
        return records, 0.0
    if qtype in ("A", "AAAA"):
        return [(key, r.address) for r in records], fresh
    if qtype == "MX":
        return [(key, (r.preference, r.exchange.to_text(omit_final_dot=True))) for r in records], fresh
    if qtype == "PTR":
        return [(key, r.target.to_text(omit_final_dot=True)) for r in records], fresh
    if any(sum(map(len, r.strings)) > MAX_SPF_TXT_BYTES for r in records):
        return _TOO_LARGE, fresh
    return [(key, tuple(r.strings)) for r in records], fresh


_SPF_TARGET = re.compile(rb"(?i)(?:^|\s)[+?~-]?(include:|redirect=|a:|mx:)([^\s/%]+)")


def _spf_next(key: tuple[str, str], value: Any, addr_type: str) -> list[tuple[str, str]]:
    """The lookups pyspf is likely to ask for after this answer (macro-free targets only)."""
    if not isinstance(value, list):
        return []
    if key[1] in ("MX", "PTR"):
        hosts = [v[1] if key[1] == "MX" else v for _, v in value][:10]
        return [(h.lower().rstrip("."), addr_type) for h in hosts if h]
    if key[1] != "TXT":
        return []
    records = [b"".join(v) for _, v in value]
    spf_records = [r for r in records if r.lower().startswith(b"v=spf1 ")]
    if len(spf_records) != 1:
        return []
    kinds = {b"include:": "TXT", b"redirect=": "TXT", b"a:": addr_type, b"mx:": "MX"}
    out = []
    for kind, target in _SPF_TARGET.findall(spf_records[0]):
        name = target.decode("ascii", "replace").lower().rstrip(".")
        if name:
            out.append((name, kinds[kind.lower()]))
    return out[:10]


def _spf_unchecked(result: str, mail_from: str, helo: str) -> SpfResult:
    """`result` for the identity SPF checks: MAIL FROM's domain, or HELO for a null sender."""
    if "@" in mail_from:
        return SpfResult(result, mail_from.rpartition("@")[2].lower().rstrip("."), "mailfrom")
    return SpfResult(result, helo.lower().rstrip("."), "helo")


async def check_spf(resolver: dns.asyncresolver.Resolver, client_ip: str, mail_from: str, helo: str,
                    *, cpu: Offload = _inline, max_rounds: int = MAX_SPF_ROUNDS) -> SpfResult:
    """SPF (RFC 7208) of the MAIL FROM identity, or of HELO for a null sender.

    pyspf evaluates (through `cpu`) over the answers fetched so far; the lookups it still needs are
    fetched asynchronously, with the ones the new answers name, and it runs again. Every round adds
    at least one answer; pyspf's limits (10 lookups, 2 void lookups, 10 MX/PTR names) bound them,
    `max_rounds` bounds the rounds, MAX_SPF_TXT_BYTES the work of each. A result made only from
    positive answers is remembered (`dnsmemo`) for the same IP, sender and HELO until one expires.
    """
    sender = mail_from if "@" in mail_from else ""
    unchecked = _spf_unchecked("none", mail_from, helo)
    if not unchecked.domain:
        return unchecked
    memo = dnsmemo.memo_for(resolver)
    memo_key = memo.spf_key(client_ip, mail_from, helo)
    remembered = memo.spf.get(memo_key)
    if isinstance(remembered, SpfResult):
        return remembered
    domain, identity = unchecked.domain, unchecked.identity
    addr_type = "AAAA" if ":" in client_ip and not client_ip.lower().startswith("::ffff:") else "A"
    answers: dict[tuple[str, str], Any] = {}
    fresh_until = float("inf")
    for _ in range(max_rounds):
        result, misses = await cpu(_spf_round, client_ip, sender, helo, answers)
        if not misses:
            found = SpfResult(result, domain, identity)
            if answers and fresh_until != float("inf"):
                memo.spf.put(memo_key, found, fresh_until)
            return found
        wanted = list(dict.fromkeys(m for m in misses if m not in answers))
        for _depth in range(2):
            fetched_fresh = await asyncio.gather(*(_spf_fetch(resolver, k) for k in wanted))
            fetched = [value for value, _ in fetched_fresh]
            fresh_until = min([fresh_until, *(fresh for _, fresh in fetched_fresh)])
            answers.update(zip(wanted, fetched, strict=True))
            follow = [n for k, v in zip(wanted, fetched, strict=True) for n in _spf_next(k, v, addr_type)]
            wanted = [k for k in dict.fromkeys(follow) if k not in answers][:MAX_SPF_PREFETCH]
            if not wanted:
                break
    return SpfResult("temperror", domain, identity)


# DKIM

@dataclass(frozen=True)
class DkimResult:
    result: str  # pass fail neutral temperror permerror
    domain: str
    selector: str
    b: str = ""  # the first characters of the signature (RFC 6008), to tell signatures apart
    reason: str = ""


@dataclass(frozen=True)
class _Signature:
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


def _signatures(headers: Iterable[tuple[bytes, bytes]]) -> list[_Signature]:
    sigs = []
    for name, value in headers:
        if name == b"dkim-signature":
            d, s, b, error = _signature_tags(value)
            sigs.append(_Signature(d, s, b, error))
    return sigs


async def _fetch_keys(resolver: dns.asyncresolver.Resolver, names: Iterable[str]
                      ) -> KeyTable:
    """TXT of each key name (the first record, strings joined, as dkimpy reads it)."""
    names = list(dict.fromkeys(n.lower() for n in names))
    found = await asyncio.gather(*(_txt(resolver, n) for n in names))
    keys: KeyTable = {}
    for name, txt in zip(names, found, strict=True):
        keys[name] = txt if isinstance(txt, _TempFail) else (txt[0] if txt else None)
    return keys


def _keyring(keys: KeyTable) -> dkimcore.Keys:
    """The message's signer keys, each parsed once, from the records fetched beforehand (`keys` only)."""
    def lookup(name: str) -> bytes | None:
        value = keys.get(name.lower().rstrip("."))
        if isinstance(value, _TempFail):
            raise dkimcore.KeyUnavailable(name)
        return value

    return dkimcore.Keys(lookup)


def _verify_dkim(parsed: dkimcore.Message | None, sigs: Sequence[_Signature], keys: KeyTable,
                 ring: dkimcore.Keys | None = None) -> list[DkimResult]:
    """Verify each signature (CPU work: body hashes and RSA); keys come from `keys` only."""
    ring = ring or _keyring(keys)
    results = []
    for idx, sig in enumerate(sigs):
        def res(result: str, reason: str, sig: _Signature = sig) -> DkimResult:
            return DkimResult(result, sig.domain, sig.selector, sig.b, reason)

        if sig.error or parsed is None:
            results.append(res("permerror", sig.error or "malformed message headers"))
            continue
        record = keys.get(sig.key_name)
        if isinstance(record, _TempFail):
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


async def check_dkim(message: bytes, resolver: dns.asyncresolver.Resolver, *, cpu: Offload = _inline
                     ) -> list[DkimResult]:
    """Verify the first MAX_DKIM_SIGNATURES DKIM signatures of `message`."""
    prepared = await cpu(_prepare, message)
    if not prepared.sigs:
        return []
    keys = await _fetch_keys(resolver, [s.key_name for s in prepared.sigs if not s.error])
    return list(await cpu(_verify_dkim, prepared.parsed, prepared.sigs, keys))


# DMARC

@dataclass(frozen=True)
class DmarcRecord:
    p: str  # none | quarantine | reject
    sp: str = ""  # subdomain policy; "" = same as p
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100


Governing = tuple[DmarcRecord | _TempFail | None, str]  # the record (or TEMPFAIL/None), where found


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


async def _dmarc_at(resolver: dns.asyncresolver.Resolver, domain: str) -> DmarcRecord | _TempFail | None:
    txts = await _txt(resolver, f"_dmarc.{domain}")
    if isinstance(txts, _TempFail):
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


def _from_domains(headers: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[str, ...], str]:
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


def _dmarc_rank(d: DmarcResult) -> int:
    """How strict a result is: fail under reject first, then temperror, then the other fails."""
    if d.result == "fail":
        return {"reject": 5, "quarantine": 3}.get(d.policy, 2)
    return {"temperror": 4, "none": 1}.get(d.result, 0)


def evaluate_dmarc(from_domain: str, looked_up: Governing,
                   spf_result: SpfResult, dkim_results: Sequence[DkimResult]) -> DmarcResult:
    """DMARC (RFC 7489 6.6) from the record found and the SPF and DKIM results."""
    record, record_domain = looked_up
    if isinstance(record, _TempFail):
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


# the report

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+")


def _pvalue(value: str) -> str:
    if _TOKEN.fullmatch(value):
        return value
    clean = "".join(c for c in value if " " <= c <= "~" and c not in '"\\')[:255]
    return f'"{clean}"'


def _comment(text: str) -> str:
    clean = "".join(c for c in text if " " <= c <= "~" and c not in "()\\")
    return f" ({clean})" if clean else ""


@dataclass(frozen=True)
class AuthReport:
    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    dmarc: DmarcResult
    arc: str = "none"  # none | pass | fail: the ARC chain the message arrived with
    body_hash: bytes = field(default=b"", repr=False, compare=False)  # relaxed SHA-256, for our ARC seals

    @property
    def dkim_pass(self) -> bool:
        return any(r.result == "pass" for r in self.dkim)

    @property
    def aligned_dkim_pass(self) -> bool:
        """A passing signature aligned (relaxed) with the From domain: it survives forwarding."""
        return bool(self.dmarc.from_domain) and any(
            r.result == "pass" and aligned(r.domain, self.dmarc.from_domain, "r") for r in self.dkim)

    def results(self) -> list[str]:
        """The resinfo parts of Authentication-Results (RFC 8601), in order spf, dkim, dmarc, arc."""
        prop = "smtp.mailfrom" if self.spf.identity == "mailfrom" else "smtp.helo"
        parts = [f"spf={self.spf.result} {prop}={_pvalue(self.spf.domain)}" if self.spf.domain
                 else f"spf={self.spf.result}"]
        if not self.dkim:
            parts.append("dkim=none")
        for r in self.dkim:
            props = "".join(f" {k}={_pvalue(v)}" for k, v in
                            (("header.d", r.domain), ("header.s", r.selector)) if v)
            b = f' header.b="{r.b}"' if r.b and re.fullmatch(r"[A-Za-z0-9+/=]+", r.b) else ""
            parts.append(f"dkim={r.result}{_comment(r.reason)}{props}{b}")
        d = self.dmarc
        policy = _comment(f"p={d.policy}" + (f" pct={d.pct}" if d.pct != 100 else "")) if d.policy else ""
        reason = _comment(d.reason) if not policy else ""
        header_from = f" header.from={_pvalue(d.from_domain)}" if d.from_domain else ""
        parts.append(f"dmarc={d.result}{policy}{reason}{header_from}")
        parts.append(f"arc={self.arc}")
        return parts

    def header_value(self, authserv_id: str) -> str:
        return ";\r\n\t".join([authserv_id, *self.results()])

    def header(self, authserv_id: str) -> bytes:
        """The whole Authentication-Results field, CRLF-terminated."""
        return f"Authentication-Results: {self.header_value(authserv_id)}\r\n".encode("ascii")

    def summary(self) -> str:
        """One line without addresses, for logs and abuse records."""
        dkim_part = ",".join(f"{r.result}:{r.domain}" for r in self.dkim) or "none"
        return (f"spf={self.spf.result} ({self.spf.identity} {self.spf.domain or '-'}) dkim={dkim_part} "
                f"dmarc={self.dmarc.result} (p={self.dmarc.policy or '-'}) "
                f"header.from={self.dmarc.from_domain or '-'} arc={self.arc}")


async def _bounded(coro: Awaitable[Any], timeout: float, fallback: Any) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except TimeoutError:
        return fallback


async def check_sender(message: bytes, mail_from: str, client_ip: str, helo: str,
                       resolver: dns.asyncresolver.Resolver, *, cpu: Offload = _inline,
                       spf_cpu: Offload | None = None, timeout: float = 20.0) -> AuthReport:
    """SPF, DKIM, DMARC and the incoming ARC chain of one message; all lookups within `timeout` seconds.

    Header parsing and signature checks run through `cpu` (their cost follows the message's size),
    SPF evaluation through `spf_cpu` (its cost follows the sender's records; default `cpu`).
    """
    prepared = await cpu(_prepare, message)
    sigs, arc_names = prepared.sigs, prepared.arc_names
    from_domains, from_error = prepared.from_domains, prepared.from_error
    if len(from_domains) > MAX_FROM_DOMAINS:
        from_domains, from_error = (), TOO_MANY_FROM_DOMAINS

    async def dmarc_records() -> list[Governing]:
        return list(await asyncio.gather(*(lookup_dmarc(resolver, d) for d in from_domains)))

    spf_result, keys, looked_up = await asyncio.gather(
        _bounded(check_spf(resolver, client_ip, mail_from, helo, cpu=spf_cpu or cpu), timeout,
                 _spf_unchecked("temperror", mail_from, helo)),
        _bounded(_fetch_keys(resolver, [s.key_name for s in sigs if not s.error] + arc_names), timeout,
                 dict.fromkeys([s.key_name for s in sigs] + arc_names, TEMPFAIL)),
        _bounded(dmarc_records(), timeout, [(TEMPFAIL, d) for d in from_domains]),
    )
    dkim_results, arc_result, body_hash = await cpu(_verify_signatures, prepared, keys)
    if from_error:
        dmarc = DmarcResult("permerror", reason=from_error)
    else:
        dmarc = max((evaluate_dmarc(d, found, spf_result, dkim_results)
                     for d, found in zip(from_domains, looked_up, strict=True)), key=_dmarc_rank)
    return AuthReport(spf_result, tuple(dkim_results), dmarc, arc_result, body_hash)


@dataclass(frozen=True)
class _Prepared:
    """What the header section says before any lookup: the message parsed for DKIM and ARC (None if it
    cannot be), its signatures, the ARC key names, whether it has ARC fields, and the author domains."""

    parsed: dkimcore.Message | None
    sigs: list[_Signature]
    arc_names: list[str]
    has_arc: bool
    from_domains: tuple[str, ...]
    from_error: str


def _prepare(message: bytes) -> _Prepared:
    _psl()  # the first call reads and parses the bundled list: keep that file I/O off the loop
    headers = _headers(message)
    try:
        parsed: dkimcore.Message | None = dkimcore.Message(message)
    except dkimcore.MessageFormatError:
        parsed = None
    fields = [(n.lower(), v) for n, v in parsed.headers] if parsed is not None else headers
    has_arc = any(n in _ARC_FIELDS for n, _ in fields)
    return _Prepared(parsed, _signatures(fields)[:MAX_DKIM_SIGNATURES], arc.key_names(fields), has_arc,
                     *_from_domains(headers))


def _verify_signatures(prepared: _Prepared, keys: KeyTable) -> tuple[list[DkimResult], str, bytes]:
    """DKIM results, ARC chain status, and the relaxed body hash (b"" for an unparsable message): DKIM,
    ARC and the seals of the forwarded copies share that one hash."""
    ring, parsed = _keyring(keys), prepared.parsed
    dkim_results = _verify_dkim(parsed, prepared.sigs, keys, ring) if prepared.sigs else []
    if parsed is None:
        return dkim_results, "fail" if prepared.has_arc else "none", b""
    arc_result = arc.verify_chain(parsed, ring) if prepared.has_arc else "none"
    return dkim_results, arc_result, parsed.body_hash(relaxed=True)


# policy

@dataclass(frozen=True)
class Verdict:
    """What `enforce` answers for a message, and whether it is abuse worth recording."""

    error: SmtpError
    kind: str  # dmarc-reject | spf-reject | auth-temperror
    abuse: bool


def verdict(report: AuthReport, rng: Callable[[], float] = random.random) -> Verdict | None:
    """The rejection the report calls for under `enforce`, or None to accept.

    DMARC fail with p=reject (sampled by pct) -> 550 5.7.1; DMARC temperror -> 451;
    SPF fail with no DMARC record and no valid DKIM signature -> 550 5.7.1. More author domains than
    MAX_FROM_DOMAINS cannot be checked, so they are refused like a DMARC reject.
    """
    d = report.dmarc
    if d.result == "fail" and d.policy == "reject" and rng() * 100 < d.pct:
        return Verdict(DMARC_REJECTED, "dmarc-reject", True)
    if d.result == "permerror" and d.reason == TOO_MANY_FROM_DOMAINS:
        return Verdict(DMARC_REJECTED, "dmarc-reject", True)
    if d.result == "temperror":
        return Verdict(AUTH_TEMPFAIL, "auth-temperror", False)
    if report.spf.result == "fail" and d.result == "none" and not report.dkim_pass:
        return Verdict(SPF_REJECTED, "spf-reject", True)
    return None


def stamp(message: bytes, report: AuthReport, authserv_id: str) -> bytes:
    """`message` with our Authentication-Results prepended and any forged one claiming our id removed."""
    own = authserv_id.lower()
    drop = []
    for start, end, name in header_fields(message):
        if name == b"authentication-results":
            value = message[start:end].partition(b":")[2]
            first = re.sub(rb"\([^)]*\)", b"", value).split(b";", 1)[0].split()
            if first and first[0].decode("ascii", "replace").lower() == own:
                drop.append((start, end))
    if drop:
        parts, pos = [], 0
        for start, end in drop:
            parts.append(message[pos:start])
            pos = end
        parts.append(message[pos:])
        message = b"".join(parts)
    return report.header(authserv_id) + message


def outcome(report: AuthReport) -> str:
    """The results without any domain, for log lines."""
    return (f"spf={report.spf.result} dkim={','.join(r.result for r in report.dkim) or 'none'} "
            f"dmarc={report.dmarc.result}" + (f" p={report.dmarc.policy}" if report.dmarc.policy else "")
            + f" arc={report.arc}")


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


# the MX policy

_NOTE = "fwdmail.authcheck"
_STRICTNESS = {"off": 0, "report-only": 1, "enforce": 2}


@dataclass
class _TxAuth:
    report: AuthReport
    copies: dict[tuple[int, str, str], tuple[bytes, bytes]] = field(default_factory=dict)


class SenderAuthPolicy(InboundPolicy):
    """Sender authentication on the MX.

    RCPT: a domain with `require_tls_inbound` refuses clients without TLS (530). DATA: SPF, DKIM, DMARC
    and ARC are checked unless every recipient domain's auth policy is "off"; the strictest policy of
    the recipient domains decides (enforce: refuse per `verdict`; report-only: log only). Each forwarded
    copy gets Authentication-Results, friendly-From when the domain asks for it and it is needed, and
    an ARC set sealed with the domain's DKIM key. Refusals that are abuse are recorded (with the client
    IP, once per client, kind and sender domain in `record_window` seconds).
    """

    def __init__(self, ctx: Context, resolver: dns.asyncresolver.Resolver | None = None,
                 record_window: float = 600.0) -> None:
        self.ctx = ctx
        self.hostname = ctx.config.server_hostname
        self.timeout = ctx.config.abuse.sender_auth_timeout
        self.resolver = resolver or async_resolver(ctx.config.dns)
        self.records = RecordThrottle(record_window)

    async def rcpt(self, session: SessionInfo, tx: Transaction, recipient: Accepted) -> SmtpError | None:
        if session.tls:
            return None
        domain = recipient.route.settings
        return TLS_REQUIRED if domain is not None and domain.require_tls_inbound else None

    async def data(self, session: SessionInfo, tx: Transaction, message: bytes) -> DataVerdict:
        domains = {a.route.domain.lower(): a.route.settings for a in tx.recipients}
        policy = max((d.auth_policy if d else "report-only" for d in domains.values()),
                     key=lambda p: _STRICTNESS.get(p, 2), default="off")
        if policy == "off":
            return DataVerdict()
        report = await check_sender(message, tx.sender, session.peer_ip, session.helo, self.resolver,
                                    cpu=self.ctx.blocking.cpu_for(len(message)),
                                    spf_cpu=self.ctx.blocking.cpu, timeout=self.timeout)
        tx.notes[_NOTE] = _TxAuth(report)
        found = verdict(report)
        if found is None:
            log.debug("sender authentication: %s", outcome(report))
            return DataVerdict()
        if policy != "enforce":
            log.info("sender authentication: %s would be refused (%s), policy is report-only",
                     outcome(report), found.kind)
            return DataVerdict()
        log.info("sender authentication: %s refused (%s)", outcome(report), found.kind)
        if found.abuse:
            enforcing = [n for n, d in domains.items() if d is not None and d.auth_policy == "enforce"]
            await self._record(found.kind, session.peer_ip, enforcing, report)
        return DataVerdict(error=found.error)

    async def forward(self, session: SessionInfo, tx: Transaction, route: Route, rcpt: str,
                      message: bytes) -> bytes:
        state = tx.notes.get(_NOTE)
        if not isinstance(state, _TxAuth):
            return message
        domain = route.settings
        if domain is not None and domain.auth_policy == "off":
            return message
        alias = rcpt if domain is not None and domain.friendly_from and needs_rewrite(state.report) else ""
        key = (id(message), route.domain.lower(), alias.lower())
        done = state.copies.get(key)
        if done is None:
            copy = await self.ctx.blocking.cpu(forwarded_copy, message, state.report, self.hostname, domain,
                                               alias, int(time.time()))
            state.copies[key] = done = (message, copy)
        return done[1]

    async def _record(self, kind: str, ip: str, domains: list[str], report: AuthReport) -> None:
        if not self.records.first(f"{kind}:{report.dmarc.from_domain or report.spf.domain}", ip,
                                  time.monotonic()):
            return
        now = store.utcnow()
        try:
            for name in domains or [None]:
                await self.ctx.blocking.db(store.record_abuse, now, kind, ip, name, report.summary())
        except Exception as exc:
            log.warning("could not record an abuse event: %s", type(exc).__name__)
