"""What an inbound message's authentication report calls for: a refusal under `enforce`, friendly-From.

Untrusted input: none directly; the report's results come from the sender's DNS and headers, and a
sampled DMARC `pct` decides with `rng`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from fwdmail.auth.check import TOO_MANY_FROM_DOMAINS
from fwdmail.auth.results import AuthReport
from fwdmail.smtp.replies import AUTH_TEMPFAIL, DMARC_REJECTED, SPF_REJECTED, SmtpError

__all__ = ["Verdict", "needs_rewrite", "verdict"]


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


def needs_rewrite(report: AuthReport) -> bool:
    """True when the sender's DMARC policy is reject/quarantine and no aligned DKIM pass survives: DMARC
    at the destination would rest on SPF, which forwarding breaks, so the copy needs friendly-From."""
    return report.dmarc.policy in ("reject", "quarantine") and not report.aligned_dkim_pass
