"""SPF (RFC 7208) of the MAIL FROM identity, or of HELO for a null sender, evaluated by pyspf.

Untrusted input: the client's IP, the envelope sender and HELO name, and every SPF, A, AAAA, MX and PTR
answer about the sender's domains. Bad input never raises: it becomes a `permerror`/`temperror`.

pyspf evaluates over answers fetched asynchronously through `lookup` and replayed to it (a query
object of our own per evaluation; pyspf's module is not patched); a lookup it has not seen yet is
recorded, fetched, and the evaluation re-run. pyspf makes no DNS query of its own.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Final

import dns.asyncresolver
import spf

from fwdmail.auth import dnsmemo
from fwdmail.auth.lookup import Offload, TempFail, inline, lookup

__all__ = ["MAX_SPF_ROUNDS", "MAX_SPF_TXT_BYTES", "SpfResult", "check_spf", "identity_result"]

MAX_SPF_ROUNDS: Final = 20  # pyspf evaluations per check; each needs at least one new answer
MAX_SPF_PREFETCH: Final = 20  # speculative lookups per round (include/redirect/a/mx targets, MX/PTR hosts)
MAX_SPF_TXT_BYTES: Final = 4096  # a larger SPF record is a permerror: bounded CPU per evaluation


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


class _ReplayQuery(spf.query):
    """A pyspf evaluation whose DNS questions are answered from a replay table only.

    pyspf asks every question through `query.dns`; this one keeps its rules (names it will not ask
    about, the void lookup limit of RFC 7208 4.6.4) and never reaches pyspf's module DNS function,
    which stays as pyspf set it.
    """

    def __init__(self, replay: _SpfReplay, ip: str, sender: str, helo: str) -> None:
        super().__init__(i=ip, s=sender, h=helo, strict=True)
        self._replay = replay

    def dns(self, name: object, qtype: str, cnames: object = None, ignore_void: bool = False) -> list[Any]:
        if not name:
            raise ValueError("invalid query")
        text = str(name)
        if text.endswith("."):
            text = text[:-1]
        if not all(0 < len(label) < 64 for label in text.split(".")):
            return []
        key = (text.lower(), qtype.upper())
        if key not in self._replay.answers:
            self._replay.misses.append(key)
            raise spf.TempError("lookup pending")
        value = self._replay.answers[key]
        if isinstance(value, TempFail):
            raise spf.TempError(f"DNS temporary failure for {key[0]}")
        if isinstance(value, _TooLarge):
            raise spf.PermError(f"TXT record of {key[0]} is larger than {MAX_SPF_TXT_BYTES} bytes")
        result = [v for _, v in value]
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


_SPF_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})


def _spf_round(ip: str, sender: str, helo: str, answers: dict[tuple[str, str], Any]
               ) -> tuple[str, list[tuple[str, str]]]:
    """One evaluation by pyspf over the answers so far (CPU work): (result, lookups it still needs)."""
    replay = _SpfReplay(answers)
    try:
        result = _ReplayQuery(replay, ip, sender, helo).check()[0]
    except spf.TempError:
        result = "temperror"
    except Exception:
        result = "permerror"
    return (result if result in _SPF_RESULTS else "permerror"), replay.misses


async def _spf_fetch(resolver: dns.asyncresolver.Resolver, key: tuple[str, str]) -> tuple[Any, float]:
    """pyspf's form of one answer, and until when it is fresh (0: not to be remembered)."""
    name, qtype = key
    records, fresh = await lookup(resolver, name, qtype)
    if isinstance(records, TempFail):
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


def identity_result(result: str, mail_from: str, helo: str) -> SpfResult:
    """`result` for the identity SPF checks: MAIL FROM's domain, or HELO for a null sender."""
    if "@" in mail_from:
        return SpfResult(result, mail_from.rpartition("@")[2].lower().rstrip("."), "mailfrom")
    return SpfResult(result, helo.lower().rstrip("."), "helo")


async def check_spf(resolver: dns.asyncresolver.Resolver, client_ip: str, mail_from: str, helo: str,
                    *, cpu: Offload = inline, max_rounds: int = MAX_SPF_ROUNDS) -> SpfResult:
    """SPF (RFC 7208) of the MAIL FROM identity, or of HELO for a null sender.

    pyspf evaluates (through `cpu`) over the answers fetched so far; the lookups it still needs are
    fetched asynchronously, with the ones the new answers name, and it runs again. Every round adds
    at least one answer; pyspf's limits (10 lookups, 2 void lookups, 10 MX/PTR names) bound them,
    `max_rounds` bounds the rounds, MAX_SPF_TXT_BYTES the work of each. A result made only from
    positive answers is remembered (`dnsmemo`) for the same IP, sender and HELO until one expires.
    """
    sender = mail_from if "@" in mail_from else ""
    unchecked = identity_result("none", mail_from, helo)
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
