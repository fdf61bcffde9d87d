"""A short load run of the real daemon: 200 MX sessions held open while another client forwards 50
messages to a real downstream server; the per-IP connection limit still holds. (The long run, with
1,000 sessions and a soak, is `python3 -m stress.run`.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiosmtplib

from tests.support.daemon import Daemon
from tests.support.mx import cli_batch
from tests.support.smtp_sink import SmtpSink

HELD_IPS = [f"127.0.0.{n}" for n in range(2, 22)]  # 20 addresses x the default 10 sessions each
PER_IP = 10
MESSAGES = 50
SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "load.test", "--account", "owner@owner.test"],
    ["domain", "set", "load.test", "--auth-policy", "off"],
    ["alias", "add", "fan@load.test", "dest@dest.test"],
]


class Held:
    """One MX session opened from `ip`, greeted and EHLO'd, then left idle."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, ip: str) -> tuple[Held, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
        held = cls(reader, writer)
        return held, await held.reply()

    async def reply(self) -> bytes:
        lines = []
        for _ in range(50):
            line = await asyncio.wait_for(self.reader.readline(), 60)
            assert line, "connection closed"
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)
        raise AssertionError("endless reply")

    async def command(self, text: bytes) -> bytes:
        self.writer.write(text)
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        with contextlib.suppress(OSError, asyncio.TimeoutError, AssertionError):
            await self.command(b"QUIT\r\n")
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def message(n: int) -> bytes:
    return (f"From: sender{n}@src.test\r\nTo: fan@load.test\r\nSubject: load {n}\r\n"
            f"Message-ID: <load-{n}@src.test>\r\n\r\nmessage number {n}\r\n").encode()


async def forward(port: int) -> list[int]:
    """MESSAGES messages over one session from 127.0.0.1; the reply code after each DATA."""
    codes = []
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=("127.0.0.1", 0),
                               local_hostname="client.test", start_tls=False, timeout=60) as client:
        for n in range(MESSAGES):
            try:
                await client.mail(f"sender{n}@src.test")
                await client.rcpt("fan@load.test")
                codes.append((await client.data(message(n))).code)
            except aiosmtplib.SMTPResponseException as exc:
                codes.append(exc.code)
                await client.rset()
    return codes


async def scenario(port: int) -> tuple[list[bytes], list[int], bytes, list[bytes]]:
    opened = await asyncio.gather(*(Held.open(port, ip) for ip in HELD_IPS for _ in range(PER_IP)))
    held = [h for h, _ in opened]
    try:
        greetings = [g for _, g in opened]
        ehlos = await asyncio.gather(*(h.command(b"EHLO held.test\r\n") for h in held))
        assert all(e.startswith(b"250") for e in ehlos)
        codes = await forward(port)
        extra, refusal = await Held.open(port, HELD_IPS[0])
        extra.writer.close()
        noops = await asyncio.gather(*(h.command(b"NOOP\r\n") for h in held))
        return greetings, codes, refusal, noops
    finally:
        await asyncio.gather(*(h.close() for h in held))


def test_200_held_sessions_while_50_messages_are_forwarded(make_daemon: Callable[..., Daemon],
                                                          sink: SmtpSink) -> None:
    d = make_daemon({
        "delivery": {"routes": {"dest.test": sink.address}},
        "abuse": {"max_messages_per_ip_per_minute": 1_000},
    }, start=False)
    cli_batch(d, SETUP)
    d.start(wait_ports=[d.mx_port])
    greetings, codes, refusal, noops = asyncio.run(asyncio.wait_for(scenario(d.mx_port), 120))
    assert len(greetings) == len(HELD_IPS) * PER_IP == 200
    assert all(g.startswith(b"220 ") for g in greetings)
    assert codes == [250] * MESSAGES
    received = sink.wait_for(MESSAGES, timeout=60)
    assert len(received) == MESSAGES
    assert sorted(m.data.split(b"Subject: load ")[1].split(b"\r\n")[0] for m in received) == sorted(
        str(n).encode() for n in range(MESSAGES))
    assert refusal.startswith(b"421 4.7.0"), refusal
    assert all(n.startswith(b"250") for n in noops), [n for n in noops if not n.startswith(b"250")][:3]
    assert d.proc is not None and d.proc.poll() is None
