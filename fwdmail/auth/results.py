"""The authentication report of one message and its Authentication-Results field (RFC 8601).

Untrusted input: the domains, selectors and reasons inside the results (from envelopes, headers and
DNS), written into a header only as printable ASCII tokens or quoted strings; and the header section
of a message, from which any Authentication-Results claiming our authserv-id is removed.

Each resinfo is made by `authres` (with our quoting of values); the field is folded one resinfo a line.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from authres import DKIMAuthenticationResult, SPFAuthenticationResult
from authres.arc import ARCAuthenticationResult
from authres.core import AuthenticationResult, AuthenticationResultProperty, QuotableValue
from authres.dmarc import DMARCAuthenticationResult

from fwdmail.auth.dkim_check import DkimResult
from fwdmail.auth.dmarc import DmarcResult, aligned
from fwdmail.auth.spf import SpfResult
from fwdmail.mail.headers import fields as header_fields

__all__ = ["AuthReport", "outcome", "stamp"]

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]+")


class _PValue(QuotableValue):
    """A property value as we write it: a token (address form included) as it is, anything else a
    quoted string of the printable characters a quoted string holds without escapes, cut to 255."""

    def quote_if_needed(self) -> str:
        if _TOKEN.fullmatch(self):
            return str(self)
        clean = "".join(c for c in self if " " <= c <= "~" and c not in '"\\')[:255]
        return f'"{clean}"'


class _Quoted(QuotableValue):
    """A value always written quoted (header.b, RFC 6008), holding only base64 characters."""

    def quote_if_needed(self) -> str:
        return f'"{self}"'


def _prop(ptype: str, name: str, value: QuotableValue) -> AuthenticationResultProperty:
    prop = AuthenticationResultProperty(ptype, name)
    prop.value = value
    return prop


def _comment(text: str) -> str | None:
    """`text` as a comment's content: printable ASCII without parentheses or backslashes (None if empty)."""
    return "".join(c for c in text if " " <= c <= "~" and c not in "()\\") or None


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
        return list(self._resinfo)

    @functools.cached_property
    def _resinfo(self) -> tuple[str, ...]:
        """Made once per report: each forwarded copy writes them twice (the field, our ARC set)."""
        identity = "mailfrom" if self.spf.identity == "mailfrom" else "helo"
        spf_props = [_prop("smtp", identity, _PValue(self.spf.domain))] if self.spf.domain else []
        parts: list[AuthenticationResult] = [
            SPFAuthenticationResult(result=self.spf.result, properties=spf_props)]
        if not self.dkim:
            parts.append(DKIMAuthenticationResult(result="none"))
        for r in self.dkim:
            props = [_prop("header", k, _PValue(v)) for k, v in (("d", r.domain), ("s", r.selector)) if v]
            if r.b and _BASE64.fullmatch(r.b):
                props.append(_prop("header", "b", _Quoted(r.b)))
            parts.append(DKIMAuthenticationResult(result=r.result, result_comment=_comment(r.reason),
                                                  properties=props))
        d = self.dmarc
        note = _comment(f"p={d.policy}" + (f" pct={d.pct}" if d.pct != 100 else "")) if d.policy else None
        from_props = [_prop("header", "from", _PValue(d.from_domain))] if d.from_domain else []
        parts.append(DMARCAuthenticationResult(result=d.result, result_comment=note or _comment(d.reason),
                                               properties=from_props))
        parts.append(ARCAuthenticationResult(result=self.arc))
        return tuple(str(part) for part in parts)

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
