"""The MX's aiosmtpd handler: SMTP events become `Mx` calls, and their answers become replies.

Untrusted input: what aiosmtpd parsed from an SMTP client on port 25 (peer address, HELO name, MAIL
and RCPT arguments and options, the message bytes); every decision about it is `Mx`'s, every reply
text is a constant of `smtp.replies` or an `SmtpError` a decision made.
"""

from __future__ import annotations

from fwdmail.mx.decisions import Mx
from fwdmail.policy.contract import SessionInfo, Transaction
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError
from fwdmail.smtp.server import Session, SmtpServer

__all__ = ["MxHandler"]


def _info(session: Session) -> SessionInfo:
    """What the policies may know of the client (its IP stays in memory)."""
    peer = session.peer
    ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    port = int(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else 0
    helo = session.host_name or ""
    return SessionInfo(ip, helo, session.ssl is not None, bool(session.extended_smtp), port)


class MxHandler:
    """aiosmtpd hooks: translate SMTP events into `Mx` calls and back into replies."""

    def __init__(self, mx: Mx) -> None:
        self.mx = mx

    async def handle_CONNECT(self, server: SmtpServer, session: Session, envelope: object) -> str | None:
        err = await self.mx.connect(_info(session))
        return err.reply if err is not None else None

    def handle_CLOSE(self, server: SmtpServer, session: Session, envelope: object) -> None:
        if session is not None:
            self.mx.disconnect(_info(session))

    async def handle_MAIL(self, server: SmtpServer, session: Session, envelope: object, address: str,
                          mail_options: list[str]) -> str:
        result = await self.mx.sender(_info(session), address, mail_options)
        if isinstance(result, SmtpError):
            return result.reply
        envelope.mail_from = address  # type: ignore[attr-defined]
        envelope.mail_options.extend(mail_options)  # type: ignore[attr-defined]
        envelope.state = result  # type: ignore[attr-defined]
        return replies.OK_SENDER

    async def handle_RCPT(self, server: SmtpServer, session: Session, envelope: object, address: str,
                          rcpt_options: list[str]) -> str:
        tx = envelope.state  # type: ignore[attr-defined]
        if not isinstance(tx, Transaction):
            self.mx.protocol_error(replies.NEED_MAIL)
            return replies.NEED_MAIL
        result = await self.mx.recipient(_info(session), tx, address)
        if isinstance(result, SmtpError):
            return result.reply
        envelope.rcpt_tos.append(address)  # type: ignore[attr-defined]
        envelope.rcpt_options.extend(rcpt_options)  # type: ignore[attr-defined]
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: object) -> str:
        tx = envelope.state  # type: ignore[attr-defined]
        data = envelope.original_content  # type: ignore[attr-defined]
        return await self.mx.message(_info(session), tx, data, getattr(envelope, "digest", b""))

    async def handle_DATA_ERROR(self, server: SmtpServer, session: Session, envelope: object,
                                error: SmtpError) -> str:
        return await self.mx.refuse(getattr(envelope, "state", None), error)
