"""Which servers of a recipient domain may be used and what their TLS must show (`[delivery] tls_policy`).

"opportunistic": STARTTLS when offered, nothing checked. "verify": every server must offer STARTTLS with a
certificate valid (PKIX) for its name. "mta-sts+dane" (the default): a server with authenticated TLSA
records must match them (DANE, RFC 7672; authenticated records none of which is usable require STARTTLS
with any certificate; a TLSA lookup failing in a signed zone keeps the server out); the others follow
the domain's MTA-STS policy (RFC 8461), if it has one: `enforce` keeps only the servers its `mx:`
patterns name and requires a valid certificate, `testing` delivers anyway and logs what enforce would
refuse. DANE wins over MTA-STS (RFC 8461 2).

Untrusted input: the recipient domain's DNS and MTA-STS policy (through `dane` and `mtasts`) and the
certificates servers present. Failures are temporary (4.7.5) and name the policy and the host.
"""

from __future__ import annotations

import _ssl
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver

from fwdmail.config import DeliveryConfig
from fwdmail.smtp import dane
from fwdmail.smtp.mtasts import StsFetcher
from fwdmail.smtp.replies import SmtpError

log = logging.getLogger("fwdmail.delivery")

Host = tuple[str, int]


class TlsPolicyError(SmtpError):
    """A delivery deferred by a TLS policy; `public` says so without naming the destination (for the
    sending MTA on the MX path), the text names the policy, the domain and the host (error log, DSN)."""

    def __init__(self, policy: str, text: str) -> None:
        super().__init__(451, "4.7.5", text)
        self.public = f"A destination's TLS policy ({policy}) was not met; will retry"


@dataclass(frozen=True)
class HostCheck:
    """What the TLS session with one server must show: `policy` names it in errors; `host` is the name
    its certificate is checked for; `tlsa` set means DANE, else PKIX unless `any_cert` (DANE with only
    unusable TLSA records: STARTTLS required, the certificate not checked); `enforce` False only logs."""

    policy: str
    domain: str
    host: str
    tlsa: tuple[dane.Tlsa, ...] = ()
    enforce: bool = True
    any_cert: bool = False

    @property
    def key(self) -> str:
        """Connections are reused only between deliveries that check the same."""
        return f"{self.policy}|{self.host}|{self.enforce}|{self.any_cert}|{hash(self.tlsa)}"

    def failure(self, why: str) -> TlsPolicyError:
        return TlsPolicyError(self.policy, f"{self.policy} policy of {self.domain}: TLS with {self.host} "
                                           f"failed: {why}; will retry")


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _tlsa_failed(domain: str, hosts: list[str]) -> TlsPolicyError:
    return TlsPolicyError("DANE", f"DANE policy of {domain}: TLSA lookup for {', '.join(hosts)} failed; "
                                  "will retry")


class TlsPolicy:
    """Plans the TLS checks of a delivery to one domain and checks a DANE session; owns the MTA-STS cache."""

    def __init__(self, cfg: DeliveryConfig, resolver: dns.asyncresolver.Resolver) -> None:
        self.cfg = cfg
        self.resolver = resolver
        self.pkix = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
        self.open = ssl.create_default_context()
        self.open.check_hostname = False
        self.open.verify_mode = ssl.CERT_NONE
        self.sts = StsFetcher(resolver, self.pkix, cfg.mta_sts_timeout, cfg.mta_sts_port,
                              cfg.mta_sts_allow_private)

    async def close(self) -> None:
        await self.sts.close()

    def mode(self, domain: str, routed: bool) -> str:
        """The policy for `domain`: `[delivery.policy]` for it (or "*"), else `tls_policy`; a domain with a
        `[delivery.routes]` entry goes to the admin's chosen host, which is not its MX: opportunistic."""
        chosen = self.cfg.policy.get(domain) or self.cfg.policy.get("*")
        return chosen or ("opportunistic" if routed else self.cfg.tls_policy)

    def context(self, check: HostCheck) -> ssl.SSLContext:
        return self.open if check.tlsa or check.any_cert else self.pkix

    async def plan(self, domain: str, hosts: Sequence[Host],
                   routed: bool) -> dict[Host, HostCheck | None] | SmtpError:
        """The servers that may be used, each with its check (None: opportunistic), or why none may."""
        mode = self.mode(domain, routed)
        if mode == "opportunistic":
            return dict.fromkeys(hosts)
        if mode == "verify":
            return {h: HostCheck("verify", domain, h[0]) for h in hosts}
        plan: dict[Host, HostCheck | None] = {}
        sts_hosts: list[Host] = []
        unsure: list[str] = []
        for host in hosts:
            found = dane.NO_DANE if _is_ip(host[0]) else await dane.lookup(self.resolver, host[0], host[1])
            if found.state == "usable":
                plan[host] = HostCheck("DANE", domain, host[0], found.records)
            elif found.state == "unusable":
                plan[host] = HostCheck("DANE", domain, host[0], any_cert=True)
            elif found.state == "failed":
                log.warning("DANE policy of %s: TLSA lookup for %s failed in a signed zone; not using it",
                            domain, host[0])
                unsure.append(host[0])
            else:
                sts_hosts.append(host)
        if not sts_hosts:
            return _tlsa_failed(domain, unsure) if unsure and not plan else plan
        policy = await self.sts.policy(domain)
        for host in sts_hosts:
            if policy is None or policy.mode == "none":
                plan[host] = None
            elif policy.mode == "testing":
                if not policy.allows(host[0]):
                    log.warning("MTA-STS policy of %s (testing): %s is not a listed MX; delivering anyway",
                                domain, host[0])
                plan[host] = HostCheck("MTA-STS", domain, host[0], enforce=False)
            elif policy.allows(host[0]):
                plan[host] = HostCheck("MTA-STS", domain, host[0])
        if not plan and unsure:
            return _tlsa_failed(domain, unsure)
        if not plan:
            names = ", ".join(h[0] for h in hosts)
            log.warning("MTA-STS policy of %s (enforce): no listed MX among %s; deferred", domain, names)
            return TlsPolicyError("MTA-STS", f"MTA-STS policy of {domain}: no MX host it lists ({names}); "
                                             "will retry")
        return {h: plan[h] for h in hosts if h in plan}

    @staticmethod
    def dane_mismatch(check: HostCheck, ssl_object: ssl.SSLObject | None) -> str | None:
        """None when the session's certificate chain matches the host's TLSA records, else why not."""
        if ssl_object is None:
            return "no TLS session"
        chain: list[bytes] = []
        inner = getattr(ssl_object, "_sslobj", None)
        unverified = getattr(inner, "get_unverified_chain", None)  # public only from Python 3.13
        if unverified is not None:
            chain = [c.public_bytes(_ssl.ENCODING_DER) for c in unverified() or ()]
        if not chain:
            leaf = ssl_object.getpeercert(binary_form=True)
            chain = [leaf] if leaf else []
        return dane.verify(check.tlsa, chain, [check.host])
