"""Hosted domains: add (with a DKIM key), set, remove, the DNS records to publish, and their check.

Arguments arrive as the admin typed them; they are validated here and raise `AddressError`,
`ValueError`, `NotFound` or `AlreadyExists` with a message fit to print. The check reads DNS answers
(untrusted): they are only compared with what is expected and returned as text for display.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from fwdmail import store
from fwdmail.auth.resolver import async_resolver, sync_resolver
from fwdmail.config import Config
from fwdmail.mail.addresses import normalize_address, normalize_domain
from fwdmail.runtime import keys
from fwdmail.store import DomainRecord

__all__ = [
    "ALIASES_FROM", "AUTH_POLICIES", "DnsRecord", "DomainRecord", "RecordCheck", "Verification",
    "add_domain", "check_records", "check_records_async", "dns_records", "get_domain", "list_domains",
    "record_verification", "remove_domain", "set_domain", "verifies", "verify_domain",
]

AUTH_POLICIES = ("off", "report-only", "enforce")
# Where the MX finds a domain's aliases: the store, the domain's `forward-email=` TXT records (verified
# domains only), or both (the store's answer wins; DNS is asked only for a name the store has no alias
# for, its catch-all included).
ALIASES_FROM = store.ALIAS_SOURCES


def add_domain(name: str, account_email: str, now: dt.datetime) -> DomainRecord:
    """Register a domain with a fresh RSA-2048 DKIM key and verification token."""
    domain = normalize_domain(name)
    account = normalize_address(account_email).lower()
    store.get_account(account)
    try:
        store.get_domain(domain)
    except store.NotFound:
        pass
    else:  # checked before the slow RSA key generation; store.add_domain checks again
        raise store.AlreadyExists(f"domain {domain} exists already")
    return store.add_domain(domain, account, keys.new_selector(now), keys.generate_dkim_key(),
                            keys.new_token())


def remove_domain(name: str) -> dict[str, int]:
    name = normalize_domain(name)
    counts = store.remove_domain(name)
    store.settle_deleted(f"domain {name}")
    return counts


def get_domain(name: str) -> DomainRecord:
    return store.get_domain(normalize_domain(name))


def list_domains() -> list[DomainRecord]:
    return store.list_domains()


def set_domain(name: str, retention_days: int | None = None, auth_policy: str | None = None,
               friendly_from: bool | None = None, require_tls_inbound: bool | None = None,
               aliases_from: str | None = None) -> DomainRecord:
    changes: dict[str, object] = {}
    if retention_days is not None:
        changes["retention_days"] = retention_days  # the store checks the range, for every caller
    if auth_policy is not None:
        if auth_policy not in AUTH_POLICIES:
            raise ValueError(f"--auth-policy must be one of {', '.join(AUTH_POLICIES)}")
        changes["auth_policy"] = auth_policy
    if friendly_from is not None:
        changes["friendly_from"] = friendly_from
    if require_tls_inbound is not None:
        changes["require_tls_inbound"] = require_tls_inbound
    if aliases_from is not None:
        if aliases_from not in ALIASES_FROM:
            raise ValueError(f"--aliases-from must be one of {', '.join(ALIASES_FROM)}")
        changes["aliases_from"] = aliases_from
    if not changes:
        raise ValueError("nothing to set: give at least one option")
    return store.update_domain(normalize_domain(name), **changes)


@dataclass(frozen=True)
class DnsRecord:
    type: str
    name: str
    value: str
    purpose: str

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, "name": self.name, "value": self.value}


def dns_records(cfg: Config, domain: DomainRecord) -> list[DnsRecord]:
    """The records the domain's owner publishes for fwdmail to receive, sign and be trusted."""
    host = cfg.server_hostname.rstrip(".")
    return [
        DnsRecord("MX", domain.name, f"10 {host}.", "receive mail"),
        DnsRecord("TXT", domain.name, f"v=spf1 a:{host} -all", "SPF"),
        DnsRecord("TXT", f"{domain.dkim_selector}._domainkey.{domain.name}",
                  keys.dkim_public_record(domain.dkim_private_key), "DKIM"),
        DnsRecord("TXT", f"_dmarc.{domain.name}", "v=DMARC1; p=quarantine; adkim=r; aspf=r", "DMARC"),
        DnsRecord("TXT", domain.name, f"fwdmail-verification={domain.verification_token}", "verification"),
    ]


@dataclass(frozen=True)
class RecordCheck:
    record: DnsRecord
    ok: bool
    found: str


@dataclass(frozen=True)
class Verification:
    """A domain after its DNS check (verified_at set when MX and token matched) and each record's result."""

    domain: DomainRecord
    checks: list[RecordCheck]

    @property
    def missing(self) -> list[str]:
        return [c.record.purpose for c in self.checks if not c.ok]


def _texts(answer: dns.resolver.Answer, name: str, rtype: str) -> list[str]:
    if rtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    return [r.to_text() for r in answer]


def _lookup(resolver: dns.resolver.Resolver, name: str, rtype: str) -> list[str]:
    try:
        answer = resolver.resolve(name, rtype)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise ValueError(f"DNS lookup of {name} {rtype} failed: {exc}") from None
    return _texts(answer, name, rtype)


async def _lookup_async(resolver: dns.asyncresolver.Resolver, name: str, rtype: str) -> list[str]:
    try:
        answer = await resolver.resolve(name, rtype)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise ValueError(f"DNS lookup of {name} {rtype} failed: {exc}") from None
    return _texts(answer, name, rtype)


def _dkim_key(value: str) -> str:
    """The p= tag of a DKIM key record, whitespace removed ("" if absent)."""
    tags = dict(t.split("=", 1) for t in "".join(value.split()).split(";") if "=" in t)
    return tags.get("p", "")


def _spf_allows(records: list[str], host: str) -> bool:
    """One SPF record (two are a permerror) that lists `a:host` or `mx` (our MX host)."""
    if len(records) != 1:
        return False
    terms = {t.lstrip("+") for t in records[0].lower().split()[1:]}
    return f"a:{host.lower()}" in terms or "mx" in terms


def _judge(cfg: Config, rec: DnsRecord, found: list[str]) -> RecordCheck:
    """Whether what DNS answered for `rec` is what fwdmail needs."""
    if rec.type == "MX":
        want = rec.value.split()[1].lower()
        ok = any(f.split()[-1].lower() == want for f in found)
    elif rec.purpose == "SPF":
        found = [f for f in found if f.lower().split()[:1] == ["v=spf1"]]
        ok = _spf_allows(found, cfg.server_hostname.rstrip("."))
    elif rec.purpose == "DMARC":
        ok = any(f.lower().startswith("v=dmarc1") for f in found)
    elif rec.purpose == "verification":
        found = [f for f in found if f.startswith("fwdmail-verification=")]
        ok = rec.value in found
    else:
        ok = any(_dkim_key(f) == _dkim_key(rec.value) for f in found)
    return RecordCheck(rec, ok, "; ".join(found))


def check_records(cfg: Config, domain: DomainRecord) -> list[RecordCheck]:
    """Look up every record `dns_records` lists for `domain` through the `[dns]` resolver (blocking: DNS
    round trips, no store access)."""
    try:
        resolver = sync_resolver(cfg.dns)
    except dns.exception.DNSException as exc:
        raise ValueError(f"no DNS resolver: {exc} (set [dns] nameservers)") from None
    return [_judge(cfg, rec, _lookup(resolver, rec.name, rec.type)) for rec in dns_records(cfg, domain)]


async def check_records_async(cfg: Config, domain: DomainRecord) -> list[RecordCheck]:
    """`check_records` on the running loop (the daemon's asynchronous `[dns]` resolver, the lookups at
    once): no thread waits on the answers."""
    try:
        resolver = async_resolver(cfg.dns)
    except dns.exception.DNSException as exc:
        raise ValueError(f"no DNS resolver: {exc} (set [dns] nameservers)") from None
    records = dns_records(cfg, domain)
    wanted = sorted({(r.name, r.type) for r in records})
    answers = await asyncio.gather(*(_lookup_async(resolver, name, rtype) for name, rtype in wanted))
    found = dict(zip(wanted, answers, strict=True))
    return [_judge(cfg, rec, list(found[(rec.name, rec.type)])) for rec in records]


def verifies(checks: list[RecordCheck]) -> bool:
    """What marks a domain verified: its MX and its verification token found."""
    return checks[0].ok and checks[-1].ok


def record_verification(name: str, checks: list[RecordCheck], now: dt.datetime) -> Verification:
    """Mark the domain verified when its MX and token records matched; the domain as it is now."""
    domain = store.mark_domain_verified(name, now) if verifies(checks) else get_domain(name)
    return Verification(domain, checks)


def verify_domain(cfg: Config, name: str, now: dt.datetime) -> Verification:
    """Look up every record `dns_records` lists; mark the domain verified when MX and token match."""
    domain = get_domain(name)
    return record_verification(domain.name, check_records(cfg, domain), now)
