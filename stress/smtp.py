"""A small asyncio SMTP client for load: one session, commands in sequence, every reply's code kept.

It binds its socket to a chosen loopback source address, so one process can stand for many clients.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl


class SmtpError(Exception):
    """A reply that was not what the session needed (its code and text), or a broken session."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class Session:
    """One SMTP client connection; every wait is bounded by `timeout` seconds."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def connect(cls, port: int, source: str, timeout: float = 60.0,
                      tls: ssl.SSLContext | None = None) -> tuple[Session, int, str]:
        """Connect from `source` (TLS from the first byte with `tls`); the greeting's code and text."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), ssl=tls, limit=1 << 20), timeout)
        session = cls(reader, writer, timeout)
        try:
            code, text = await session.reply()
        except BaseException:
            session.abort()
            raise
        return session, code, text

    async def reply(self) -> tuple[int, str]:
        lines: list[bytes] = []
        for _ in range(100):
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not line:
                raise SmtpError(0, "connection closed")
            lines.append(line)
            if line[3:4] != b"-":
                code = int(line[:3]) if line[:3].isdigit() else 0
                return code, b" ".join(x[4:].strip() for x in lines).decode("utf-8", "replace")
        raise SmtpError(0, "endless reply")

    async def command(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def expect(self, line: str, code: int) -> str:
        got, text = await self.command(line)
        if got != code:
            raise SmtpError(got, text)
        return text

    async def ehlo(self, name: str = "load.client.test") -> str:
        return await self.expect(f"EHLO {name}", 250)

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        await self.expect("STARTTLS", 220)
        await asyncio.wait_for(self.writer.start_tls(ctx), self.timeout)

    async def login(self, user: str, password: str) -> None:
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        await self.expect(f"AUTH PLAIN {blob}", 235)

    async def send(self, sender: str, recipients: list[str], message: bytes) -> tuple[int, str]:
        """One transaction: the first refusal, or the reply after the message data."""
        for line in [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients)]:
            code, text = await self.command(line)
            if code != 250:
                await self.command("RSET")
                return code, text
        code, text = await self.command("DATA")
        if code != 354:
            return code, text
        body = message.replace(b"\r\n.", b"\r\n..")
        self.writer.write((b"." + body if body.startswith(b".") else body) + b".\r\n")
        await self.writer.drain()
        return await self.reply()

    async def quit(self) -> None:
        with contextlib.suppress(SmtpError, OSError, TimeoutError):
            await self.command("QUIT")
        self.abort()

    def abort(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.close()
