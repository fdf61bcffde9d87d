"""The aiosmtpd SMTP protocol as fwdmail's listeners use it (MX and submission).

Untrusted input: every byte an SMTP client sends. On top of aiosmtpd this class
- reads DATA itself (`data.read_data`: only <CRLF>.<CRLF> ends it, bare CR or LF and oversize refused
  as a whole, the input read to its real end), under a time limit, and waits up to 10 minutes for the
  handler's reply to it;
- hands an address it cannot parse (`<a@b@c>`, `<a@b.>`) to the handler as written, so policy, not
  the parser, words the refusal;
- advertises SIZE, 8BITMIME, SMTPUTF8, PIPELINING and ENHANCEDSTATUSCODES (and STARTTLS/AUTH when
  configured), and gives every reply an RFC 3463 enhanced code (aiosmtpd's own replies lack most), except
  the greeting and the answers to HELO and EHLO, as RFC 2034 says;
- answers an unknown command without echoing it, and closes with a 421 (not aiosmtpd's 502) after
  `_UNKNOWN_COMMAND_LIMIT` of them; never sends a control character or an undecodable byte the client
  sent back in a reply;
- reads an AUTH response line over the line limit to its end and answers 500 5.5.6 (RFC 4954);
- refuses STARTTLS inside TLS (503 5.5.1) instead of nesting a second TLS layer;
- answers an unexpected exception with a 451, never a traceback;
- bounds a session: a cap of sessions per listener kind (`Sessions`: 421 at once past it), commands that
  do not advance a transaction (NOOP, RSET, HELP, VRFY, EHLO/HELO again; counted from the last accepted
  message, as Postfix's smtpd_junk_command_limit), a whole lifetime (a message under way is finished
  first) and, where given, a deadline to log in by.

Handlers may define, besides aiosmtpd's hooks:
- `handle_CONNECT(server, session, envelope)`: a reply string refuses the connection (sent instead of
  the greeting, then the connection is closed); None lets it go on;
- `handle_CLOSE(server, session, envelope)` (not async): the connection ended;
- `handle_DATA_ERROR(server, session, envelope, error)`: the reply for a refused DATA (default: the
  error's own reply).

Why over 400 lines: every use of aiosmtpd's private members is kept in this one module (checked by
name in tests/test_aiosmtpd_adapter.py), so an aiosmtpd upgrade has one place to break; the parts that
need none of them live beside it (`data`: the DATA reader, `limits`: the session cap, `replies`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import functools
import logging
import re
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, TLSSetupException, syntax

from fwdmail.smtp import replies
from fwdmail.smtp.data import read_data
from fwdmail.smtp.limits import Sessions
from fwdmail.smtp.replies import SmtpError, printable, with_enhanced_code

__all__ = ["MISSING", "DataEnvelope", "Envelope", "Session", "SmtpServer"]

log = logging.getLogger("fwdmail.smtp")

_COMMAND_LIMIT = 1000
_FINAL_REPLY_WAIT = 600.0
_UNKNOWN_COMMAND_LIMIT = 5  # aiosmtpd's BOGUS_LIMIT: the fifth unknown command ends the session

# The common path "<dot-atom@host.name> params": parsed here as aiosmtpd's RFC 5322 parser would.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"[ \t]*<(({_ATOM}(?:\.{_ATOM})*)@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>"
    r"(?:\Z|[ \t]+([A-Za-z0-9][A-Za-z0-9=+._-]*(?:[ \t]+[A-Za-z0-9][A-Za-z0-9=+._-]*)*[ \t]*)?\Z)")


class DataEnvelope(Envelope):
    """aiosmtpd's Envelope plus `state`, where a handler keeps its per-transaction data, and `digest`,
    the hash of the content made as it was read (b"" unless the server was given `data_hash`)."""

    def __init__(self) -> None:
        super().__init__()
        self.state: Any = None
        self.digest = b""


class _Commands(dict[str, Any]):
    """aiosmtpd's command table, where an unknown command finds `fallback` instead of aiosmtpd's own
    answer (which echoes the command and closes the connection with a 502 at the fifth)."""

    def __init__(self, methods: dict[str, Any], fallback: Callable[[str | None], Awaitable[None]]) -> None:
        super().__init__(methods)
        self.fallback = fallback

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key, self.fallback)


@functools.cache
def _commands(cls: type) -> list[str]:
    return [name for name in dir(cls) if name.startswith(("smtp_", "auth_"))]


class SmtpServer(SMTP):
    """One SMTP session. `hostname` is required (aiosmtpd's default would block on getfqdn)."""

    def __init__(self, handler: Any, *, hostname: str, data_size_limit: int,
                 sessions: Sessions | None = None, data_timeout: float = 0.0, max_errors: int = 0,
                 on_error_reply: Callable[[str], None] | None = None,
                 data_hash: Callable[[], Any] | None = None, max_junk_commands: int = 0,
                 max_session_time: float = 0.0, login_timeout: float = 0.0, **kwargs: Any) -> None:
        """`data_timeout`: seconds the message data may take to arrive (0: no limit); `max_errors`: error
        replies allowed before 421 and close (0: no limit); `on_error_reply`: called with every 4xx/5xx
        reply that did not come from a handler hook (syntax errors, limits, timeouts); `data_hash`: a
        hashlib constructor, to fill `DataEnvelope.digest` while the data is read (no pass of its own);
        `max_junk_commands`: commands that do nothing allowed between accepted messages, `max_session_time`:
        seconds a session may last, `login_timeout`: seconds it has to log in (each 0: no limit)."""
        kwargs.setdefault("ident", "ESMTP fwdmail")
        super().__init__(handler, hostname=hostname, data_size_limit=data_size_limit, enable_SMTPUTF8=True,
                         decode_data=False, **kwargs)
        self.sessions = sessions
        self.data_timeout = data_timeout
        self.max_errors = max_errors
        self.errors = 0
        self.on_error_reply = on_error_reply
        self.data_hash = data_hash
        self.max_junk_commands = max_junk_commands
        self.junk_commands = 0
        self.max_session_time = max_session_time
        self.login_timeout = login_timeout
        self._hook_reply: str | None = None
        # Per instance: aiosmtpd's class-level dict is shared (and mutated) by every session.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.command_size_limits.update(MAIL=_COMMAND_LIMIT, RCPT=_COMMAND_LIMIT)
        self.unknown_commands = 0
        self._smtp_methods = _Commands(self._smtp_methods, self._unknown_command)
        self._exempt_reply = False  # the next reply goes without an enhanced code (greeting, HELO/EHLO)
        self._admitted: bool | None = None  # None until the connection is made
        self._deadlines: list[asyncio.TimerHandle] = []
        self._in_message = False
        self._end_after_message: SmtpError | None = None

    def __dir__(self) -> list[str]:
        """The SMTP verbs and AUTH mechanisms only: aiosmtpd builds its tables from dir() (and
        inspect.getmembers) on every connection, and the full attribute list made that a large part of
        a short session's cost."""
        return _commands(type(self))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._admitted is not None:
            return  # again after STARTTLS: the same session
        self._admitted = self.sessions is None or self.sessions.add(self)
        if not self._admitted:
            return
        if self.max_session_time:
            self._deadlines.append(self.loop.call_later(self.max_session_time, self._end,
                                                        replies.SESSION_TOO_LONG))
        if self.login_timeout:
            self._deadlines.append(self.loop.call_later(self.login_timeout, self._login_due))

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted is None:
            return  # a TLS handshake failed before the connection was ours
        for deadline in self._deadlines:
            deadline.cancel()
        if self.sessions is not None:
            self.sessions.discard(self)
        hook = self._handle_hooks.get("CLOSE")
        if hook is not None:
            try:
                hook(self, self.session, self.envelope)
            except Exception:
                log.exception("error in the connection-closed hook")
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """aiosmtpd ends the session at the client's end of input by cancelling its task; a task cancelled
        before it ran (a client that connects and closes at once) never closes the transport, which kept
        the connection, its descriptor and its place under the caps for good. Close it here."""
        super().eof_received()
        return False

    def close(self, reply: str | None = None) -> None:
        """Close the connection, after sending `reply` if given (used when the daemon stops)."""
        if self.transport is not None:
            if reply is not None and not self.transport.is_closing():
                self.transport.write(reply.encode("ascii", "replace") + b"\r\n")
            self.transport.close()

    def _end(self, reply: SmtpError) -> None:
        """Close the session with `reply` now, or after the reply to a message under way."""
        if self.transport is None or self.transport.is_closing():
            return
        if self._in_message:
            self._end_after_message = reply
        else:
            self.close(reply.reply)

    def _login_due(self) -> None:
        if self.session is None or not self.session.authenticated:
            self._end(replies.LOGIN_TIMEOUT)

    async def _junk(self) -> bool:
        """Count a command that does not advance a transaction; past the limit answer 421, close the
        connection and return True."""
        self.junk_commands += 1
        if not self.max_junk_commands or self.junk_commands <= self.max_junk_commands:
            return False
        await self.push(replies.TOO_MANY_JUNK.reply)
        self.close()
        return True

    async def _handle_client(self) -> None:
        if not self._admitted:
            await self.push(replies.SESSIONS_FULL.reply)
            self.close()
            return
        if "CONNECT" in self._handle_hooks:
            status = await self._call_handler_hook("CONNECT")
            if status:
                await self.push(status)
                self.close()
                return
        self._exempt_reply = True  # aiosmtpd's first reply is the greeting
        await super()._handle_client()

    def _create_envelope(self) -> Envelope:
        return DataEnvelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.match(arg)
        if plain is not None and not (self.local_part_limit and len(plain.group(2)) > self.local_part_limit):
            return plain.group(1), plain.group(3) or ""
        address, rest = super()._getaddr(arg)
        if address is not None:
            return address, rest
        text = arg.strip()
        if text.startswith("<"):
            end = text.find(">")
            if end < 0:
                return None, None
            return text[1:end], text[end + 1:].strip()
        raw, _, rest = text.partition(" ")
        return raw, rest.strip()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        status = await super()._call_handler_hook(command, *args)
        self._hook_reply = printable(status) if isinstance(status, str) else None
        return status

    async def push(self, status: str | bytes) -> None:
        """Send a reply (with an enhanced code); past `max_errors` error replies, also 421 and close the
        connection."""
        if isinstance(status, str):
            status = printable(status) if self._exempt_reply else with_enhanced_code(printable(status))
            self._exempt_reply = False
        await super().push(status)
        text = status if isinstance(status, str) else status.decode("ascii", "replace")
        if text[:1] not in ("4", "5"):
            self._hook_reply = None
            return
        if text == self._hook_reply:
            self._hook_reply = None
        elif self.on_error_reply is not None:
            self.on_error_reply(text)
        if self.max_errors and not text.startswith("421") and self.transport:
            self.errors += 1
            if self.errors > self.max_errors:
                await super().push(replies.TOO_MANY_ERRORS.reply)
                if self.on_error_reply is not None:
                    self.on_error_reply(replies.TOO_MANY_ERRORS.reply)
                self.close()

    async def handle_exception(self, error: Exception) -> str:
        """A 451; the log gets the error's type and where it was raised, not its message, which may
        quote client input (addresses). A failed STARTTLS handshake (an old or hostile client) is one
        info line; aiosmtpd then closes the connection without a reply."""
        if isinstance(error, TLSSetupException):
            cause = error.__cause__
            log.info("STARTTLS handshake failed: %s", getattr(cause, "reason", None) or type(cause).__name__)
            return replies.TRY_LATER.reply
        where = "".join(traceback.format_tb(error.__traceback__)).rstrip()
        log.error("unexpected error in an SMTP session: %s\n%s", type(error).__name__, where)
        return replies.TRY_LATER.reply

    async def _unknown_command(self, arg: str | None) -> None:
        self.unknown_commands += 1
        if self.unknown_commands >= _UNKNOWN_COMMAND_LIMIT:
            await self.push(replies.TOO_MANY_UNKNOWN.reply)
            self.close()
            return
        await self.push(replies.UNKNOWN_COMMAND.reply)

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        """aiosmtpd's, except that a response line over the line limit is read to its end and answered
        500 5.5.6 (aiosmtpd's readline would raise in the middle of it). Never logs the response."""
        raw = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (base64.b64encode(raw) if encode_to_b64 else raw))
        line = await self._auth_response()
        if line is None:
            await self.push(replies.AUTH_LINE_TOO_LONG.reply)
            return MISSING
        blob = line.strip()
        if blob == b"*":
            await self.push("501 5.7.0 Auth aborted")
            return MISSING
        try:
            return base64.b64decode(blob, validate=True)
        except binascii.Error:
            await self.push("501 5.5.2 Can't decode base64")
            return MISSING

    async def _auth_response(self) -> bytes | None:
        """The next line (what is left of it at the end of input), or None once an over-long line is read."""
        too_long = False
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                await self._reader.readexactly(exc.consumed)
                too_long = True
                continue
            except asyncio.IncompleteReadError as exc:
                line = exc.partial
            return None if too_long else line

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        assert self.session is not None
        if self.session.host_name and await self._junk():
            return
        self._set_rset_state()
        self.session.extended_smtp = False
        status = await self._call_handler_hook("HELO", hostname)
        if status is MISSING:
            self.session.host_name = hostname
            status = f"250 {self.hostname}"
        self._exempt_reply = status.startswith("250")
        await self.push(status)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        assert self.session is not None
        if self.session.host_name and await self._junk():
            return
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname, "PIPELINING", f"SIZE {self.data_size_limit}", "8BITMIME", "SMTPUTF8",
                 "ENHANCEDSTATUSCODES"]
        if self.tls_context and not self._tls_protocol:
            lines.append("STARTTLS")
        if self._auth_methods and (not self._auth_require_tls or self._tls_protocol):
            lines.append("AUTH " + " ".join(sorted(self._auth_methods)))
        responses = [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]
        if "EHLO" in self._handle_hooks:
            responses = await self._call_handler_hook("EHLO", hostname, responses)
        self._exempt_reply = True
        await self.push("\r\n".join(responses))  # one write for the whole reply

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """aiosmtpd's, except inside TLS (RFC 3207: a client must not), where it would wrap TLS in TLS."""
        if self._tls_protocol is not None and not arg:
            await self.push(replies.TLS_ACTIVE.reply)
            return
        await super().smtp_STARTTLS(arg)

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_RSET(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_HELP(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_VRFY(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.sessions is not None:
            self.sessions.enter(self)
        self._in_message = True
        try:
            await self._data()
        finally:
            self._in_message = False
            if self.sessions is not None:
                self.sessions.leave(self)
            if self._end_after_message is not None:
                self.close(self._end_after_message.reply)

    async def _data(self) -> None:
        """From the 354 to the reply after the message."""
        assert self.envelope is not None
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            async with asyncio.timeout(self.data_timeout or None):
                data = await read_data(self._reader, self.data_size_limit, self.data_hash,
                                       self._reset_timeout)
        except TimeoutError:
            await self.push(replies.COMMAND_TIMEOUT.reply)
            self.close()
            return
        if data is None:
            if self.transport is not None:
                self.transport.close()
            return
        if isinstance(data, SmtpError):
            status = await self._call_handler_hook("DATA_ERROR", data)
            if status is MISSING:
                status = data.reply
        else:
            self.envelope.content = data.content
            self.envelope.original_content = data.content
            if isinstance(self.envelope, DataEnvelope):
                self.envelope.digest = data.digest
            # RFC 5321 4.5.3.2.6: the client waits 10 minutes for the reply to the end of data.
            self._reset_timeout(max(self._timeout_duration, _FINAL_REPLY_WAIT))
            status = await self._call_handler_hook("DATA")
            if self.transport is not None:
                self._reset_timeout()
            if status is MISSING:
                status = "250 OK"
        self._set_post_data_state()
        await self.push(status)
        if status[:1] == "2":
            self.junk_commands = 0
