"""SPF, DKIM, DMARC and the incoming ARC chain of one inbound message, as one `AuthReport`.

Untrusted input: the client's IP and HELO name, the envelope sender, the message's header section and
body, and every DNS answer about the sender's domains. Bad input never raises: a malformed record,
header or signature becomes a `permerror`/`none` result. The message is parsed and each canonical body
hashed once for DKIM, ARC and our ARC seals; that CPU work runs through the caller's `Offload`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final

import dns.asyncresolver

from fwdmail.auth import arc
from fwdmail.auth import dkim_core as dkimcore
from fwdmail.auth.dkim_check import (
    MAX_DKIM_SIGNATURES,
    DkimResult,
    KeyTable,
    Signature,
    fetch_keys,
    keyring,
    signatures,
    verify_dkim,
)
from fwdmail.auth.dmarc import (
    DmarcResult,
    Governing,
    evaluate_dmarc,
    from_domains,
    lookup_dmarc,
    public_suffixes,
    strictness,
)
from fwdmail.auth.lookup import TEMPFAIL, Offload, inline
from fwdmail.auth.results import AuthReport
from fwdmail.auth.spf import check_spf, identity_result
from fwdmail.mail import headers

__all__ = ["MAX_FROM_DOMAINS", "TOO_MANY_FROM_DOMAINS", "check_dkim", "check_sender"]

MAX_FROM_DOMAINS: Final = 10  # author domains checked per message; more is refused under enforce
TOO_MANY_FROM_DOMAINS: Final = "too many From domains"

_ARC_FIELDS = frozenset({b"arc-seal", b"arc-message-signature", b"arc-authentication-results"})


def _headers(message: bytes) -> list[tuple[bytes, bytes]]:
    """(lowercased name, raw value) of each header field."""
    return headers.raw_fields(message)


async def _bounded(coro: Awaitable[Any], timeout: float, fallback: Any) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await coro
    except TimeoutError:
        return fallback


async def check_sender(message: bytes, mail_from: str, client_ip: str, helo: str,
                       resolver: dns.asyncresolver.Resolver, *, cpu: Offload = inline,
                       spf_cpu: Offload | None = None, timeout: float = 20.0) -> AuthReport:
    """SPF, DKIM, DMARC and the incoming ARC chain of one message; all lookups within `timeout` seconds.

    Header parsing and signature checks run through `cpu` (their cost follows the message's size),
    SPF evaluation through `spf_cpu` (its cost follows the sender's records; default `cpu`).
    """
    prepared = await cpu(_prepare, message)
    sigs, arc_names = prepared.sigs, prepared.arc_names
    authors, from_error = prepared.from_domains, prepared.from_error
    if len(authors) > MAX_FROM_DOMAINS:
        authors, from_error = (), TOO_MANY_FROM_DOMAINS

    async def dmarc_records() -> list[Governing]:
        return list(await asyncio.gather(*(lookup_dmarc(resolver, d) for d in authors)))

    spf_result, keys, looked_up = await asyncio.gather(
        _bounded(check_spf(resolver, client_ip, mail_from, helo, cpu=spf_cpu or cpu), timeout,
                 identity_result("temperror", mail_from, helo)),
        _bounded(fetch_keys(resolver, [s.key_name for s in sigs if not s.error] + arc_names), timeout,
                 dict.fromkeys([s.key_name for s in sigs] + arc_names, TEMPFAIL)),
        _bounded(dmarc_records(), timeout, [(TEMPFAIL, d) for d in authors]),
    )
    dkim_results, arc_result, body_hash = await cpu(_verify_signatures, prepared, keys)
    if from_error:
        dmarc = DmarcResult("permerror", reason=from_error)
    else:
        dmarc = max((evaluate_dmarc(d, found, spf_result, dkim_results)
                     for d, found in zip(authors, looked_up, strict=True)), key=strictness)
    return AuthReport(spf_result, tuple(dkim_results), dmarc, arc_result, body_hash)


@dataclass(frozen=True)
class _Prepared:
    """What the header section says before any lookup: the message parsed for DKIM and ARC (None if it
    cannot be), its signatures, the ARC key names, whether it has ARC fields, and the author domains."""

    parsed: dkimcore.Message | None
    sigs: list[Signature]
    arc_names: list[str]
    has_arc: bool
    from_domains: tuple[str, ...]
    from_error: str


def _prepare(message: bytes) -> _Prepared:
    public_suffixes()  # the first call reads and parses the bundled list: keep that file I/O off the loop
    headers = _headers(message)
    try:
        parsed: dkimcore.Message | None = dkimcore.Message(message)
    except dkimcore.MessageFormatError:
        parsed = None
    fields = [(n.lower(), v) for n, v in parsed.headers] if parsed is not None else headers
    has_arc = any(n in _ARC_FIELDS for n, _ in fields)
    return _Prepared(parsed, signatures(fields)[:MAX_DKIM_SIGNATURES], arc.key_names(fields), has_arc,
                     *from_domains(headers))


def _verify_signatures(prepared: _Prepared, keys: KeyTable) -> tuple[list[DkimResult], str, bytes]:
    """DKIM results, ARC chain status, and the relaxed body hash (b"" for an unparsable message): DKIM,
    ARC and the seals of the forwarded copies share that one hash."""
    ring, parsed = keyring(keys), prepared.parsed
    dkim_results = verify_dkim(parsed, prepared.sigs, keys, ring) if prepared.sigs else []
    if parsed is None:
        return dkim_results, "fail" if prepared.has_arc else "none", b""
    arc_result = arc.verify_chain(parsed, ring) if prepared.has_arc else "none"
    return dkim_results, arc_result, parsed.body_hash(relaxed=True)


async def check_dkim(message: bytes, resolver: dns.asyncresolver.Resolver, *, cpu: Offload = inline
                     ) -> list[DkimResult]:
    """Verify the first MAX_DKIM_SIGNATURES DKIM signatures of `message`."""
    prepared = await cpu(_prepare, message)
    if not prepared.sigs:
        return []
    keys = await fetch_keys(resolver, [s.key_name for s in prepared.sigs if not s.error])
    return list(await cpu(verify_dkim, prepared.parsed, prepared.sigs, keys))
