"""The inbound policy contract: what an MX check is told of a session and a transaction, and answers.

Untrusted input: none parsed here; these types carry what an SMTP client on port 25 sent (its IP and
HELO name, the envelope) to the checks. The client's IP stays in memory, never logged or stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fwdmail.policy.routing import Route
from fwdmail.smtp.replies import SmtpError

__all__ = ["Accepted", "DataVerdict", "InboundPolicy", "SessionInfo", "Transaction"]


@dataclass(frozen=True)
class SessionInfo:
    """What policies may know of the SMTP client. The IP stays in memory, never logged or stored."""

    peer_ip: str
    helo: str
    tls: bool
    esmtp: bool
    peer_port: int = 0  # with peer_ip, tells one connection from another


@dataclass(frozen=True)
class Accepted:
    """One recipient accepted at RCPT: the address as parsed, and where it goes."""

    rcpt: str
    route: Route


@dataclass
class Transaction:
    """One MAIL transaction: the sender ("" = null sender) and the accepted recipients."""

    sender: str
    smtputf8: bool = False
    recipients: list[Accepted] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)  # policies' own per-transaction state


@dataclass(frozen=True)
class DataVerdict:
    """A policy's answer to a message: refuse it, or header lines (CRLF-terminated) to add on top."""

    error: SmtpError | None = None
    prepend: bytes = b""


class InboundPolicy:
    """Base of inbound checks; every method may refuse with an SmtpError, the default lets mail in."""

    async def connect(self, session: SessionInfo) -> SmtpError | None:
        return None

    def disconnect(self, session: SessionInfo) -> None:
        return None

    async def mail(self, session: SessionInfo, tx: Transaction) -> SmtpError | None:
        return None

    async def rcpt(self, session: SessionInfo, tx: Transaction, recipient: Accepted) -> SmtpError | None:
        return None

    async def data(self, session: SessionInfo, tx: Transaction, message: bytes) -> DataVerdict:
        return DataVerdict()

    async def forward(self, session: SessionInfo, tx: Transaction, route: Route, rcpt: str,
                      header: bytes) -> bytes:
        """The header section of the copy sent for one alias (`rcpt`: the address it was reached at);
        by default `header`, the message's own (with the policies' prepends). The body follows it
        unchanged: it is never copied per alias."""
        return header
