"""Sender authentication on the MX: the inbound policy that checks, refuses, stamps and records abuse.

Untrusted input: the client's IP, HELO and envelope sender, and the message (checked by
`auth.check.check_sender`); the recipients' domain settings decide how strictly. Abuse records may
hold the client IP (privacy contract: spam/malicious activity, kept 7 days).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import dns.asyncresolver

from fwdmail import store
from fwdmail.auth.check import check_sender
from fwdmail.auth.forwarded import forwarded_copy
from fwdmail.auth.resolver import async_resolver
from fwdmail.auth.results import AuthReport, outcome
from fwdmail.policy.auth_verdict import needs_rewrite, verdict
from fwdmail.policy.contract import Accepted, DataVerdict, InboundPolicy, SessionInfo, Transaction
from fwdmail.policy.limits import RecordThrottle
from fwdmail.policy.routing import Route
from fwdmail.policy.senderlists import allowed_domains
from fwdmail.runtime.context import Context
from fwdmail.smtp.replies import TLS_REQUIRED, SmtpError

__all__ = ["SenderAuthPolicy"]

log = logging.getLogger("fwdmail.authcheck")

_NOTE = "fwdmail.authcheck"
_STRICTNESS = {"off": 0, "report-only": 1, "enforce": 2}


@dataclass
class _TxAuth:
    report: AuthReport
    copies: dict[tuple[int, str, str], tuple[bytes, bytes]] = field(default_factory=dict)


def _strictest(domains: Iterable[store.DomainRecord | None]) -> str:
    return max((d.auth_policy if d else "report-only" for d in domains), key=lambda p: _STRICTNESS.get(p, 2),
               default="off")


class SenderAuthPolicy(InboundPolicy):
    """Sender authentication on the MX.

    RCPT: a domain with `require_tls_inbound` refuses clients without TLS (530). DATA: SPF, DKIM, DMARC
    and ARC are checked unless every recipient domain's auth policy is "off"; the strictest policy of
    the recipient domains decides (enforce: refuse per `verdict`; report-only: log only); domains whose
    sender allow list names the sender or client do not take part in that decision. Each forwarded
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
        policy = _strictest(domains.values())
        if policy == "off":
            return DataVerdict()
        allowed = allowed_domains(tx)  # checked and recorded for them, never refused
        domains = {n: d for n, d in domains.items() if n not in allowed}
        policy = _strictest(domains.values()) if allowed else policy
        report = await check_sender(message, tx.sender, session.peer_ip, session.helo, self.resolver,
                                    cpu=self.ctx.blocking.cpu_for(len(message)),
                                    spf_cpu=self.ctx.blocking.cpu, timeout=self.timeout)
        tx.notes[_NOTE] = _TxAuth(report)
        found = verdict(report)
        if found is None:
            log.debug("sender authentication: %s", outcome(report))
            return DataVerdict()
        if policy != "enforce":
            log.info("sender authentication: %s would be refused (%s), not enforced (%s)",
                     outcome(report), found.kind, "allowed sender" if allowed else "report-only")
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
