"""RFC 2920 PIPELINING for the delivering client: MAIL, every RCPT and DATA go out in one write, their
replies are read in order, then the message follows the 354. aiosmtplib (5.1) reads one reply per
command written, so for the transaction our own protocol takes the session aiosmtplib opened, greeted
and secured (`transport.set_protocol`), and gives it back afterwards for reuse, RSET and QUIT.

Untrusted input: the destination's replies. Each is read within bounds (line length, lines per reply,
time per reply); a malformed reply, one too long, or a reply nobody asked for closes the connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from collections.abc import Iterable, Sequence
from typing import cast

import aiosmtplib
from aiosmtplib.email import quote_address

from fwdmail.smtp.replies import SmtpError

MAX_LINE = 2048
"""Bytes in one reply line, CRLF included (RFC 5321 4.5.3.1.5 asks for 512)."""
MAX_LINES = 100
"""Lines in one (multi-line) reply."""

_FORBIDDEN = re.compile(rb"[\x00-\x1f\x7f]")
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -]|\r?\n)")

Result = dict[str, SmtpError | None]


class BadReply(aiosmtplib.SMTPServerDisconnected):
    """The server broke the protocol; the connection was closed."""


class Reply:
    __slots__ = ("code", "text")

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text

    def error(self) -> SmtpError:
        return SmtpError.parse(f"{self.code} {self.text}", default_code=self.code)


class _Replies(asyncio.Protocol):
    """The session's protocol while a pipelined transaction runs: parses replies as they arrive,
    at most as many as commands were written, and keeps the flow control our writes wait on."""

    def __init__(self, inner: asyncio.BaseProtocol, transport: asyncio.Transport) -> None:
        self.inner = inner
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()
        self.lines: list[bytes] = []
        self.ready: collections.deque[Reply] = collections.deque()
        self.owed = 0
        self.failure: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False  # taken between commands: nothing of ours is waiting to be written
        self.resumed: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        if self.failure is not None:
            return
        self.buffer += data
        while (end := self.buffer.find(b"\n", 0, MAX_LINE)) >= 0:
            line = bytes(self.buffer[:end + 1])
            del self.buffer[:end + 1]
            if not self._line(line):
                return
        if len(self.buffer) >= MAX_LINE:
            self._fail("Reply line too long")

    def _line(self, line: bytes) -> bool:
        m = _REPLY_LINE.match(line)
        if m is None or (self.lines and self.lines[0][:3] != line[:3]):
            self._fail("Malformed reply")
            return False
        self.lines.append(line)
        if m.group(2) == b"-":
            if len(self.lines) >= MAX_LINES:
                self._fail("Reply has too many lines")
                return False
            return True
        if self.owed == 0:
            self._fail("Reply to no command")
            return False
        self.owed -= 1
        text = "\n".join(raw[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape") for raw in self.lines)
        self.ready.append(Reply(int(line[:3]), text))
        self.lines = []
        self._wake()
        return True

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            self.failure = aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.paused = False
        self._wake()
        self.inner.connection_lost(exc)  # so aiosmtplib's session knows it is gone

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    # ours

    def _fail(self, why: str) -> None:
        self.failure = BadReply(why)
        self._wake()
        self.transport.abort()

    def _wake(self) -> None:
        for fut in (self.waiter, self.resumed):
            if fut is not None and not fut.done():
                fut.set_result(None)

    def send(self, data: bytes, replies: int) -> None:
        if self.failure is not None:
            raise self.failure
        self.owed += replies
        self.transport.write(data)

    async def drain(self) -> None:
        while self.paused and self.failure is None:
            self.resumed = self.loop.create_future()
            await self.resumed
        if self.failure is not None:
            raise self.failure

    async def reply(self, timeout: float) -> Reply:
        async with asyncio.timeout(timeout):
            while not self.ready:
                if self.failure is not None:
                    raise self.failure
                self.waiter = self.loop.create_future()
                await self.waiter
        return self.ready.popleft()


def command(verb: bytes, address: str, options: Sequence[str], encoding: str) -> bytes:
    """One MAIL or RCPT line as aiosmtplib writes it (the address checked and quoted by aiosmtplib)."""
    line = b" ".join([verb + quote_address(address).encode(encoding), *(o.encode("ascii") for o in options)])
    if _FORBIDDEN.search(line):
        raise ValueError("Command arg contains a prohibited control character")
    return line + b"\r\n"


async def transaction(conn: aiosmtplib.SMTP, mail_from: str, rcpts: Sequence[str], options: Sequence[str],
                      encoding: str, body: Iterable[bytes], command_timeout: float,
                      data_timeout: float) -> tuple[SmtpError | None, Result]:
    """One pipelined transaction on `conn` (whose server offered PIPELINING). Returns MAIL's refusal
    (then every recipient has that error) or None, and the result per recipient, as the lock-step
    transaction would. Raises TimeoutError or `SMTPServerDisconnected` (the connection then closed)."""
    protocol = conn.protocol
    if protocol is None or protocol.transport is None or protocol.transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    transport = cast(asyncio.Transport, protocol.transport)  # uvloop's is no asyncio.Transport
    group = [command(b"MAIL FROM:", mail_from, options, encoding),
             *(command(b"RCPT TO:", r, (), encoding) for r in rcpts), b"DATA\r\n"]
    replies = _Replies(protocol, transport)
    transport.set_protocol(replies)
    try:
        outcome = await _run(replies, group, rcpts, body, command_timeout, data_timeout)
    except BaseException:
        transport.abort()
        raise
    finally:
        if not transport.is_closing():
            transport.set_protocol(protocol)
    return outcome


async def _run(replies: _Replies, group: list[bytes], rcpts: Sequence[str], body: Iterable[bytes],
               command_timeout: float, data_timeout: float) -> tuple[SmtpError | None, Result]:
    replies.send(b"".join(group), len(group))
    mail = await replies.reply(command_timeout)
    answers = [await replies.reply(command_timeout) for _ in rcpts]
    data = await replies.reply(command_timeout)
    if mail.code != 250:
        refused = mail.error()
        await _end(replies, data, command_timeout)
        return refused, dict.fromkeys(rcpts, refused)
    result: Result = {}
    accepted: list[str] = []
    for rcpt, answer in zip(rcpts, answers, strict=True):
        if answer.code in (250, 251):
            accepted.append(rcpt)
        else:
            result[rcpt] = answer.error()
    if not accepted:
        await _end(replies, data, command_timeout)
        return None, result
    if data.code != 354:
        result.update(dict.fromkeys(accepted, data.error()))
        await _end(replies, data, command_timeout)
        return None, result
    async with asyncio.timeout(data_timeout):
        for i, piece in enumerate(body):
            if i:
                await replies.drain()
            replies.send(piece, 0)
        replies.owed += 1
        final = await replies.reply(data_timeout)
    if final.code != 250:
        result.update(dict.fromkeys(accepted, final.error()))
        await _end(replies, final, command_timeout)
        return None, result
    result.update(dict.fromkeys(accepted))
    return None, result


async def _end(replies: _Replies, last: Reply, timeout: float) -> None:
    """Close the failed transaction: RSET, or hang up when the server answered DATA with 354 although
    nothing was accepted (a message must not start) or RSET fails."""
    if last.code == 354:
        replies.transport.close()
        return
    with contextlib.suppress(aiosmtplib.SMTPServerDisconnected, TimeoutError):
        replies.send(b"RSET\r\n", 1)
        if (await replies.reply(timeout)).code == 250:
            return
    replies.transport.close()
