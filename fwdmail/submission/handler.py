"""The submission listeners' SMTP hooks: SMTP events become calls of the login protection and the
message rules (`logins`, `message`), and their answers reply constants.

Untrusted input: everything a submission client sends: AUTH credentials, envelope addresses and the
message. Only a client that logged in over TLS may send, only as its alias; a 250 comes only once the
message and its envelope are committed durably. A login refused unchecked (budgets spent, hashing
pool full: `logins.PasswordCheck`) gets 454 after a pause.
Concurrent connections are counted per client (IPv4 address or IPv6 /64, in memory only).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable

from fwdmail import store
from fwdmail.mail.addresses import AddressError, normalize_address
from fwdmail.policy.limits import ConnectionLimiter
from fwdmail.runtime.context import Context
from fwdmail.runtime.executor import Busy
from fwdmail.runtime.groupcommit import GroupCommitter
from fwdmail.runtime.sharedstate import SharedUnavailable
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError
from fwdmail.smtp.server import MISSING, Envelope, Session, SmtpServer
from fwdmail.submission.logins import AuthLimiter, Login, PasswordCheck
from fwdmail.submission.message import prepare_message

__all__ = ["SubmissionHandler"]

log = logging.getLogger("fwdmail.submission")

# A login refused unchecked (budgets spent, hashing full) is answered after this pause (seconds), taken
# in the client's turn: no hash waits, but a client cannot loop on AUTH faster than this, as a flood of
# instant 454s would take the event loop (Postfix's smtpd_error_sleep_time does the same).
_REFUSED_PAUSE = 1.0


def _peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class SubmissionHandler:
    """aiosmtpd hooks: SMTP events into calls of the login and message rules, their answers into replies."""

    def __init__(self, ctx: Context, committer: GroupCommitter[store.NewEmail, str], limiter: AuthLimiter,
                 on_queued: Callable[[], None]) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.submission
        self.hostname = ctx.config.server_hostname
        self.committer = committer
        self.limiter = limiter
        self.on_queued = on_queued
        self.passwords = PasswordCheck(ctx.blocking, self.cfg, ctx.shared)
        self.connections = ConnectionLimiter(self.cfg.max_connections_per_ip)
        self._counted: set[SmtpServer] = set()

    # the connection

    async def handle_CONNECT(self, server: SmtpServer, session: Session, envelope: Envelope) -> str | None:
        if self.ctx.stopping.is_set():
            return replies.SHUTTING_DOWN.reply
        if not self.connections.acquire(_peer_ip(session)):
            return replies.TOO_MANY_CONNECTIONS.reply
        self._counted.add(server)
        return None

    def handle_CLOSE(self, server: SmtpServer, session: Session, envelope: Envelope) -> None:
        if server in self._counted:
            self._counted.discard(server)
            self.connections.release(_peer_ip(session))

    # AUTH

    async def handle_AUTH(self, server: SmtpServer, session: Session, envelope: Envelope,
                          args: list[str]) -> str | None:
        ip = _peer_ip(session)
        try:
            if await self.limiter.is_blocked(ip, time.monotonic()):
                return await self._locked_out(server)
        except SharedUnavailable:
            return replies.AUTH_BUSY.reply
        try:
            if args[0].upper() == "PLAIN":
                creds = await self._plain(server, args)
            else:
                creds = await self._login(server, args)
        except SmtpError as exc:
            return exc.reply
        if creds is None:
            return None
        async with self.limiter.turn(ip):
            try:
                if await self.limiter.is_blocked(ip, time.monotonic()):
                    return await self._locked_out(server)
                login = await self.passwords.check(*creds)
                locked = login is None and await self.limiter.count_failure(ip, time.monotonic())
            except (Busy, SharedUnavailable):
                log.debug("submission login not checked: password checks over their budget or capacity")
                await asyncio.sleep(_REFUSED_PAUSE)
                return replies.AUTH_BUSY.reply
            if login is None:
                log.info("submission login failed%s", "; client locked out for a while" if locked else "")
                return replies.AUTH_FAILED.reply
        session.authenticated = True
        session.auth_data = login
        return replies.AUTH_OK

    @staticmethod
    async def _locked_out(server: SmtpServer) -> None:
        await server.push(replies.AUTH_RATE_LIMITED.reply)
        if server.transport is not None:
            server.transport.close()

    @staticmethod
    def _b64(text: str) -> bytes:
        if text == "=":
            return b""
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise replies.AUTH_UNREADABLE from None

    async def _plain(self, server: SmtpServer, args: list[str]) -> tuple[bytes, bytes] | None:
        if len(args) > 1:
            blob = self._b64(args[1])
        else:
            answer = await server.challenge_auth("", encode_to_b64=False)
            if answer is MISSING:
                return None
            blob = answer  # type: ignore[assignment]
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            raise replies.AUTH_UNREADABLE
        return parts[1], parts[2]

    async def _login(self, server: SmtpServer, args: list[str]) -> tuple[bytes, bytes] | None:
        if len(args) > 1:
            username = self._b64(args[1])
        else:
            answer = await server.challenge_auth("Username:")
            if answer is MISSING:
                return None
            username = answer  # type: ignore[assignment]
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return None
        return username, password  # type: ignore[return-value]

    # the transaction

    async def handle_MAIL(self, server: SmtpServer, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        login = session.auth_data if session.authenticated else None
        if not isinstance(login, Login):
            return self._refused(replies.AUTH_REQUIRED)
        if not login.may_send_as(address):
            return self._refused(replies.SENDER_NOT_ALLOWED)
        envelope.mail_from = normalize_address(address)
        envelope.mail_options.extend(mail_options)
        return replies.OK_SENDER

    async def handle_RCPT(self, server: SmtpServer, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if not session.authenticated:
            return self._refused(replies.AUTH_REQUIRED)
        try:
            rcpt = normalize_address(address)
        except AddressError:
            return self._refused(replies.BAD_ADDRESS)
        if rcpt.lower() in (r.lower() for r in envelope.rcpt_tos):
            return replies.OK_RECIPIENT
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            return self._refused(replies.TOO_MANY_RECIPIENTS)
        envelope.rcpt_tos.append(rcpt)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        login = session.auth_data if session.authenticated else None
        if not isinstance(login, Login) or envelope.mail_from is None:
            return self._refused(replies.AUTH_REQUIRED)
        now = store.utcnow()
        queue_id = store.new_queue_id()
        try:
            msg = prepare_message(login, envelope.original_content or b"", now, self.cfg, self.hostname,
                                  queue_id)
        except SmtpError as exc:
            return self._refused(exc)
        item = store.NewEmail(
            queue_id=queue_id, domain=login.domain, mail_from=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos), headers=msg.headers, body=msg.body, subject=msg.subject,
            date_header=msg.date, send_at=msg.send_at, alias_id=login.alias_id,
        )
        try:
            await self.committer.submit(item)
        except Exception as exc:
            log.warning("could not queue a submitted message: %s", store.failure(exc))
            full = store.storage_full(exc)
            return self._refused(replies.STORAGE_FULL if full else replies.STORE_UNAVAILABLE)
        self.ctx.metrics.queue()
        self.on_queued()
        log.debug("queued %s: %d recipient(s), %d bytes", queue_id, len(item.recipients),
                 len(msg.headers) + len(msg.body))
        return replies.QUEUED.format(queue_id=queue_id)

    def _refused(self, error: SmtpError) -> str:
        """`error`'s reply, counted in the metrics by its reason."""
        self.ctx.metrics.refusal("submission", error)
        return error.reply
