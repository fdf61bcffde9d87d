"""Asyncio load clients the Postfix tools do not provide: paced latency, idle sessions, submission.

Every client is bounded by a message count and a deadline; each connects only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .procs import LOOPBACK, BenchError

LINE = 78
T = TypeVar("T")


def make_message(sender: str, recipient: str, size: int, serial: int = 0) -> bytes:
    """A plain RFC 5322 message with CRLF line endings and about `size` bytes of body."""
    head = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: bench {serial}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{serial}.{time.monotonic_ns()}@bench.test>\r\n\r\n"
    ).encode()
    line = b"x" * (LINE - 2) + b"\r\n"
    return head + line * max(1, size // LINE)


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One SMTP reply (all lines of a multi-line reply); raises on a closed connection."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cmd: bytes,
                   expect: bytes) -> None:
    writer.write(cmd + b"\r\n")
    reply = await _reply(reader)
    if not reply.startswith(expect):
        raise BenchError(f"{cmd.decode()!r} got {reply.decode(errors='replace').strip()!r}")


@dataclass
class LatencyResult:
    """DATA-to-reply latencies (seconds) of the messages sent at an offered rate."""

    offered_rate: float
    sent: int = 0
    failed: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def achieved_rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed else 0.0


async def _transaction(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sender: str,
                       recipient: str, body: bytes) -> tuple[bytes, float]:
    """MAIL, RCPT, DATA and `body` (dot-stuffed, CRLF); the reply to the final dot and its latency."""
    await _command(reader, writer, f"MAIL FROM:<{sender}>".encode(), b"250")
    await _command(reader, writer, f"RCPT TO:<{recipient}>".encode(), b"250")
    await _command(reader, writer, b"DATA", b"354")
    writer.write(body)
    await writer.drain()
    started = time.perf_counter()
    writer.write(b".\r\n")
    reply = await _reply(reader)
    return reply, time.perf_counter() - started


async def _latency_session(port: int, tickets: asyncio.Queue[int | None], size: int, sender: str,
                           recipient: str, result: LatencyResult) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        await _reply(reader)
        await _command(reader, writer, b"EHLO client.bench.test", b"250")
        while (ticket := await tickets.get()) is not None:
            # Each message its own (Message-ID, Subject): fwdmail answers a repeat of one it has just
            # forwarded with 250 and does not forward it again, so identical bodies would never all arrive.
            body = make_message(sender, recipient, size, ticket)
            reply, latency = await _transaction(reader, writer, sender, recipient, body)
            if reply.startswith(b"250"):
                result.latencies.append(latency)
                result.sent += 1
            else:
                result.failed += 1
                result.errors.append(f"#{ticket}: {reply.decode(errors='replace').strip()}")
        writer.write(b"QUIT\r\n")
    finally:
        writer.close()


async def _pace(tickets: asyncio.Queue[int | None], rate: float, count: int, duration: float,
                sessions: int) -> None:
    """Release ticket i at start + i/rate (open loop), until `count` tickets or `duration` seconds."""
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        if due - start > duration:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tickets.put_nowait(i)
    for _ in range(sessions):
        tickets.put_nowait(None)


async def measure_latency(port: int, *, rate: float, count: int, duration: float, size: int,
                          sessions: int, sender: str, recipient: str) -> LatencyResult:
    """Offer messages at `rate` per second over `sessions` reused connections; time each end-of-data."""
    result = LatencyResult(offered_rate=rate)
    tickets: asyncio.Queue[int | None] = asyncio.Queue()
    started = time.perf_counter()
    workers = [_latency_session(port, tickets, size, sender, recipient, result) for _ in range(sessions)]
    outcome = await asyncio.wait_for(
        asyncio.gather(_pace(tickets, rate, count, duration, sessions), *workers, return_exceptions=True),
        timeout=duration + 60,
    )
    result.elapsed = time.perf_counter() - started
    result.errors.extend(f"{type(e).__name__}: {e}" for e in outcome if isinstance(e, BaseException))
    return result


async def _idle_session(port: int, gate: asyncio.Semaphore,
                        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    async with gate:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        held.append((reader, writer))
        await _reply(reader)
        await _command(reader, writer, b"EHLO client.bench.test", b"250")


async def hold_idle_sessions(port: int, count: int, hold: float, measure: Callable[[], T],
                             timeout: float = 120.0) -> tuple[int, T]:
    """Open `count` sessions (greeting read, EHLO answered), keep them idle for `hold` s, call `measure()`.

    Returns how many sessions were established and what `measure` returned, then closes them all.
    """
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    gate = asyncio.Semaphore(50)
    tasks = [asyncio.create_task(_idle_session(port, gate, held)) for _ in range(count)]
    try:
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        established = sum(1 for t in done if t.exception() is None)
        await asyncio.sleep(hold)
        return established, measure()
    finally:
        for _, writer in held:
            writer.close()


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class SubmitResult:
    """Accept timings of a submission run (monotonic clock)."""

    started: float
    last_accept: float = 0.0
    accepted: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def accept_rate(self) -> float:
        span = self.last_accept - self.started
        return self.accepted / span if span > 0 else 0.0


async def _open_submission(port: int, login: tuple[str, str] | None
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, EHLO, STARTTLS (certificate not verified), EHLO again, AUTH PLAIN if `login`."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    await _reply(reader)
    await _command(reader, writer, b"EHLO client.bench.test", b"250")
    await _command(reader, writer, b"STARTTLS", b"220")
    await writer.start_tls(_insecure_context())
    await _command(reader, writer, b"EHLO client.bench.test", b"250")
    if login is not None:
        token = base64.b64encode(f"\0{login[0]}\0{login[1]}".encode()).decode()
        await _command(reader, writer, f"AUTH PLAIN {token}".encode(), b"235")
    return reader, writer


async def _submitter(port: int, login: tuple[str, str] | None, sender: str, recipient: str, size: int,
                     serials: range, result: SubmitResult) -> None:
    reader, writer = await _open_submission(port, login)
    try:
        for serial in serials:
            reply, _ = await _transaction(reader, writer, sender, recipient,
                                          make_message(sender, recipient, size, serial))
            if not reply.startswith(b"250"):
                result.errors.append(f"#{serial}: {reply.decode(errors='replace').strip()}")
                continue
            result.accepted += 1
            result.last_accept = time.monotonic()
        writer.write(b"QUIT\r\n")
    finally:
        writer.close()


async def submit(port: int, *, count: int, clients: int, size: int, sender: str, recipient: str,
                 login: tuple[str, str] | None, timeout: float) -> SubmitResult:
    """Submit `count` messages over STARTTLS from `clients` concurrent sessions (AUTH once per session)."""
    result = SubmitResult(started=time.monotonic())
    shares = [range(i, count, clients) for i in range(clients)]
    outcome = await asyncio.wait_for(
        asyncio.gather(*(_submitter(port, login, sender, recipient, size, s, result) for s in shares),
                       return_exceptions=True),
        timeout=timeout,
    )
    result.errors.extend(f"{type(e).__name__}: {e}" for e in outcome if isinstance(e, BaseException))
    return result
