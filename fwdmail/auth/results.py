"""The authentication report of one message and its Authentication-Results field (RFC 8601).

Untrusted input: the domains, selectors and reasons inside the results (from envelopes, headers and
DNS), written into a header only as printable ASCII tokens or quoted strings; and the header section
of a message, from which any Authentication-Results claiming our authserv-id is removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fwdmail.auth.arc import header_fields
from fwdmail.auth.dkim_check import DkimResult
from fwdmail.auth.dmarc import DmarcResult, aligned
from fwdmail.auth.spf import SpfResult

__all__ = ["AuthReport", "outcome", "stamp"]

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
