"""What the admin commands do, as plain functions the CLI calls once each.

Arguments arrive as the admin typed them; they are validated here and raise `AddressError`,
`ValueError`, `NotFound` or `AlreadyExists` with a message fit to print.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import dns.exception
import dns.resolver

from fwdmail import store
from fwdmail.auth.resolver import sync_resolver
from fwdmail.config import Config
from fwdmail.mail.addresses import (
    SUBSTITUTION,
    AliasSpec,
    normalize_address,
    normalize_domain,
    parse_alias_spec,
    parse_destinations,
)
from fwdmail.policy.routing import PROBE_BUDGET, slow_probe
from fwdmail.runtime import keys

ALIAS_STATES = store.ALIAS_STATES
AUTH_POLICIES = ("off", "report-only", "enforce")


def add_account(email: str) -> store.AccountRecord:
    return store.add_account(normalize_address(email).lower())


def get_account(email: str) -> store.AccountRecord:
    return store.get_account(normalize_address(email).lower())


def delete_account(email: str) -> dict[str, int]:
    email = normalize_address(email).lower()
    counts = store.delete_account(email)
    store.settle_deleted(f"account {email}")
    return counts


def add_domain(name: str, account_email: str, now: dt.datetime) -> store.DomainRecord:
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


def get_domain(name: str) -> store.DomainRecord:
    return store.get_domain(normalize_domain(name))


def set_domain(name: str, retention_days: int | None = None, auth_policy: str | None = None,
               friendly_from: bool | None = None, require_tls_inbound: bool | None = None,
               ) -> store.DomainRecord:
    changes: dict[str, object] = {}
    if retention_days is not None:
        if not 0 <= retention_days <= 30:
            raise ValueError(f"--retention-days must be between 0 and 30, got {retention_days}")
        changes["retention_days"] = retention_days
    if auth_policy is not None:
        if auth_policy not in AUTH_POLICIES:
            raise ValueError(f"--auth-policy must be one of {', '.join(AUTH_POLICIES)}")
        changes["auth_policy"] = auth_policy
    if friendly_from is not None:
        changes["friendly_from"] = friendly_from
    if require_tls_inbound is not None:
        changes["require_tls_inbound"] = require_tls_inbound
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


def dns_records(cfg: Config, domain: store.DomainRecord) -> list[DnsRecord]:
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


def _lookup(resolver: dns.resolver.Resolver, name: str, rtype: str) -> list[str]:
    try:
        answer = resolver.resolve(name, rtype)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise ValueError(f"DNS lookup of {name} {rtype} failed: {exc}") from None
    if rtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    return [r.to_text() for r in answer]


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


def verify_domain(cfg: Config, name: str, now: dt.datetime) -> tuple[store.DomainRecord, list[RecordCheck]]:
    """Look up every record `dns_records` lists; mark the domain verified when MX and token match."""
    domain = get_domain(name)
    try:
        resolver = sync_resolver(cfg.dns)
    except dns.exception.DNSException as exc:
        raise ValueError(f"no DNS resolver: {exc} (set [dns] nameservers)") from None
    checks = []
    for rec in dns_records(cfg, domain):
        found = _lookup(resolver, rec.name, rec.type)
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
        checks.append(RecordCheck(rec, ok, "; ".join(found)))
    if checks[0].ok and checks[-1].ok:
        domain = store.mark_domain_verified(domain.name, now)
    return domain, checks


def _shown(probe: str) -> str:
    return repr(probe if len(probe) <= 12 else f"{probe[:6]}…{probe[-4:]}")


def add_alias(address: str, destinations: list[str]) -> store.AliasRecord:
    """Add an alias; refuses a forward to itself, `$N` beyond the regex's groups and a regex that
    backtracks on adversarial local parts (it would cost the MX's event loop on every such RCPT)."""
    spec = parse_alias_spec(address)
    dests = parse_destinations(destinations)
    groups = re.compile(spec.local).groups if spec.kind == "regex" else 0
    probe = slow_probe(spec.local) if spec.kind == "regex" else None
    if probe is not None:
        raise ValueError(f"regex /{spec.local}/ backtracks: matching the {len(probe)}-character local part "
                         f"{_shown(probe)} takes over {PROBE_BUDGET * 1000:g} ms; rewrite it without "
                         "nested or overlapping repetition such as (a+)+ or (a|a)*")
    for dest in dests:
        used = [int(m[1:]) for m in SUBSTITUTION.findall(dest)]
        if used and spec.kind != "regex":
            raise ValueError("$1..$9 substitutions are only for /regex/ aliases")
        if used and max(used) > groups:
            raise ValueError(f"{dest} uses ${max(used)} but the pattern has {groups} group(s)")
        if spec.kind == "exact" and dest.lower() == spec.address:
            raise ValueError(f"alias {spec.address} cannot forward to itself")
    return store.add_alias(spec.domain, spec.kind, spec.local, dests)


def _spec(address: str) -> AliasSpec:
    return parse_alias_spec(address)


def remove_alias(address: str) -> str:
    """Remove an alias; return its address as stored."""
    spec = _spec(address)
    store.remove_alias(spec.domain, spec.kind, spec.local)
    store.settle_deleted(f"alias {spec.address}")
    return spec.address


def set_alias_state(address: str, state: str) -> store.AliasRecord:
    if state not in ALIAS_STATES:
        raise ValueError(f"state must be one of {', '.join(ALIAS_STATES)}")
    spec = _spec(address)
    return store.set_alias_state(spec.domain, spec.kind, spec.local, state)


def new_alias_password(address: str) -> tuple[store.AliasRecord, str]:
    """Generate, hash and store a new SMTP password; return it (shown once, never stored in clear)."""
    spec = _spec(address)
    if spec.kind == "regex":
        raise ValueError("regex aliases cannot log in: give an exact or catch-all alias")
    password = keys.generate_password()
    record = store.set_alias_password(spec.domain, spec.kind, spec.local, keys.hash_password(password))
    return record, password
