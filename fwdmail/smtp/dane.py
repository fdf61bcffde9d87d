"""DANE for SMTP (RFC 7672): TLSA records of a mail server and matching its certificate chain.

Untrusted input: TLSA answers (used only when the resolver marks them authenticated, AD bit: the daemon's
resolver must be a local validating one, since the AD bit of a remote resolver can be forged on the path),
the AD bit of the server's address answers (after a failed TLSA lookup) and the certificate chain a
destination server presents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

DANE_TA, DANE_EE = 2, 3
_USABLE_USAGES = (DANE_TA, DANE_EE)  # RFC 7672 3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP
_HASHES = {0: None, 1: hashlib.sha256, 2: hashlib.sha512}


@dataclass(frozen=True)
class Tlsa:
    """One usable TLSA record."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def matches(self, cert: x509.Certificate) -> bool:
        """Whether `cert` is the one this record names (by full certificate or public key)."""
        raw = (cert.public_bytes(Encoding.DER) if self.selector == 0
               else cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
        digest = _HASHES[self.mtype]
        return (digest(raw).digest() if digest else raw) == self.data


@dataclass(frozen=True)
class Lookup:
    """What the TLSA lookup of one server says: `state` is "usable" (`records` to match), "unusable"
    (authenticated records, none usable: TLS required, any certificate, RFC 7672 2.2), "failed" (the
    lookup failed in a signed zone: the server may not be used now) or "none" (no DANE)."""

    state: str
    records: tuple[Tlsa, ...] = ()


NO_DANE = Lookup("none")


async def _authenticated_address(resolver: dns.asyncresolver.Resolver, host: str) -> bool:
    """Whether an address answer for `host` is authenticated (AD): its zone is signed (RFC 7672 2.2.2)."""
    for rtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = await resolver.resolve(host, rtype)
        except dns.exception.DNSException:
            continue
        if answer.response is not None and answer.response.flags & dns.flags.AD:
            return True
    return False


async def lookup(resolver: dns.asyncresolver.Resolver, host: str, port: int) -> Lookup:
    """The DANE state of `host`:`port`. Unauthenticated answers, NXDOMAIN and NODATA are "none"; a lookup
    that fails (SERVFAIL, timeout) is "failed" when the host's addresses are authenticated, else "none"."""
    try:
        answer = await resolver.resolve(f"_{port}._tcp.{host}", dns.rdatatype.TLSA)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return NO_DANE
    except dns.exception.DNSException:
        return Lookup("failed") if await _authenticated_address(resolver, host) else NO_DANE
    if answer.response is None or not answer.response.flags & dns.flags.AD:
        return NO_DANE
    usable = tuple(Tlsa(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in answer
                   if r.usage in _USABLE_USAGES and r.selector in (0, 1) and r.mtype in _HASHES)
    return Lookup("usable", usable) if usable else Lookup("unusable")


def _name_matches(cert: x509.Certificate, names: Sequence[str]) -> bool:
    """RFC 7672 3.2.3: a DNS name of the certificate is one of `names` (a "*." wildcard covers one label)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        presented = [n.lower().rstrip(".") for n in sans.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        presented = [str(a.value).lower() for a in cns]
    for want in (n.lower().rstrip(".") for n in names):
        for have in presented:
            if have == want or (have.startswith("*.") and want.partition(".")[2] == have[2:]
                                and "." in have[2:]):
                return True
    return False


def _issued_chain(chain: Sequence[x509.Certificate], top: int) -> bool:
    """Whether chain[0] .. chain[top] is a signed chain, each certificate issued by the next."""
    try:
        for i in range(top):
            chain[i].verify_directly_issued_by(chain[i + 1])
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify(records: Sequence[Tlsa], chain_der: Sequence[bytes], names: Sequence[str]) -> str | None:
    """None when the chain (leaf first) matches one of `records`, else what went wrong. DANE-EE names only
    the leaf (no name or date checks, RFC 7672 3.1.1); DANE-TA names a certificate of the chain, which must
    have issued the chain up to a leaf valid for one of `names` (the MX host name)."""
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError:
        return "unreadable certificate"
    if not chain:
        return "no certificate"
    for rec in records:
        if rec.usage == DANE_EE and rec.matches(chain[0]):
            return None
    for rec in records:
        if rec.usage != DANE_TA:
            continue
        for top, cert in enumerate(chain):
            if rec.matches(cert) and _issued_chain(chain, top) and _name_matches(chain[0], names):
                return None
    return "certificate matches no TLSA record"
