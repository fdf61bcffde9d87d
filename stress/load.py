"""The load itself: idle MX sessions held open, MX senders and submission clients, with counts.

Every message carries `X-Stress-Id: <kind>-<n>` so the counting sink can tell which ones arrived.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .dns import sender_domain
from .smtp import Session, SmtpError

BODY = "".join(f"Line {n} of a load message, long enough to look like a short mail.\r\n" for n in range(20))


def addresses(prefix: str, count: int) -> list[str]:
    """`count` loopback source addresses 127.<prefix>.x.y (x.y from 0.1 up)."""
    return [f"127.{prefix}.{n // 250}.{n % 250 + 1}" for n in range(count)]


def mx_message(n: int, domains: int, kind: str = "mx") -> tuple[str, bytes]:
    sender = f"s{n}@{sender_domain(n % domains)}"
    return sender, (
        f"From: Load Sender <{sender}>\r\nTo: fan@load.test\r\nSubject: load message {n}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <m{n}.{time.time_ns()}@stress.test>\r\n"
        f"X-Stress-Id: {kind}-{n}\r\n\r\n{BODY}").encode()


def submitted_message(n: int, login: str) -> bytes:
    return (f"From: {login}\r\nTo: friend@dest.test\r\nSubject: submitted {n}\r\n"
            f"X-Stress-Id: sub-{n}\r\n\r\n{BODY}").encode()


@dataclass
class Tally:
    """Outcomes of one kind of message: reply codes, the numbers answered 250, latencies (s)."""

    codes: Counter[int] = field(default_factory=Counter)
    ok: set[int] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    started: float = 0.0
    ended: float = 0.0

    def record(self, n: int, code: int, seconds: float) -> None:
        self.codes[code] += 1
        self.latencies.append(seconds)
        if code == 250:
            self.ok.add(n)

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    def summary(self) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else 0.0

        span = max(self.ended - self.started, 1e-9)
        codes = {str(k): v for k, v in self.codes.items()}
        return {"sent": self.sent, "ok_250": len(self.ok), "codes": codes,
                "errors": dict(self.errors), "seconds": round(span, 1),
                "per_second": round(self.sent / span, 1),
                "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99),
                               "max": round(lat[-1] * 1000, 1) if lat else 0.0}}


class Held:
    """Idle MX sessions, `per_ip` from each source address, greeted and EHLO'd."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.refused: Counter[str] = Counter()

    async def open(self, port: int, ips: list[str], per_ip: int, batch: int = 100) -> None:
        wanted = [ip for ip in ips for _ in range(per_ip)]
        for start in range(0, len(wanted), batch):
            results = await asyncio.gather(*(self._one(port, ip) for ip in wanted[start:start + batch]),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, Session):
                    self.sessions.append(r)
                else:
                    self.refused[str(r)[:60]] += 1

    @staticmethod
    async def _one(port: int, ip: str) -> Session:
        session, code, text = await Session.connect(port, ip, timeout=120)
        try:
            if code != 220:
                raise SmtpError(code, text)
            await session.ehlo("held.client.test")
        except BaseException:
            session.abort()
            raise
        return session

    async def noop_all(self) -> int:
        """How many held sessions still answer NOOP with 250."""
        async def noop(s: Session) -> bool:
            try:
                return (await s.command("NOOP"))[0] == 250
            except (SmtpError, OSError, TimeoutError):
                return False

        return sum(await asyncio.gather(*(noop(s) for s in self.sessions)))

    async def close(self) -> None:
        await asyncio.gather(*(s.quit() for s in self.sessions))
        self.sessions.clear()


async def limit_probe(port: int, ip: str) -> tuple[int, str]:
    """One more connection from `ip`: the greeting's code and text."""
    session, code, text = await Session.connect(port, ip, timeout=60)
    session.abort()
    return code, text


async def mx_sender(port: int, source: str, numbers: Iterator[int], tally: Tally, domains: int,
                    per_session: int, deadline: float, kind: str = "mx") -> None:
    """Send MX messages (numbers from the shared iterator) until it runs out or `deadline` passes,
    reconnecting every `per_session` messages."""
    session: Session | None = None
    sent_here = 0
    try:
        for n in numbers:
            if time.monotonic() > deadline:
                return
            try:
                if session is None or sent_here >= per_session:
                    if session is not None:
                        await session.quit()
                    session, code, text = await Session.connect(port, source)
                    if code != 220:
                        raise SmtpError(code, text)
                    await session.ehlo()
                    sent_here = 0
                sender, data = mx_message(n, domains, kind)
                t0 = time.monotonic()
                code, _ = await session.send(sender, ["fan@load.test"], data)
                tally.record(n, code, time.monotonic() - t0)
                sent_here += 1
            except (SmtpError, OSError, TimeoutError) as exc:
                tally.errors[type(exc).__name__ + (f" {exc.code}" if isinstance(exc, SmtpError) else "")] += 1
                tally.codes[0] += 1
                if session is not None:
                    session.abort()
                session = None
    finally:
        if session is not None:
            await session.quit()


async def submitter(port: int, source: str, login: str, password: str, numbers: Iterator[int], tally: Tally,
                    per_session: int, deadline: float, tls: ssl.SSLContext) -> None:
    """Submit messages over STARTTLS + AUTH PLAIN, logging in again every `per_session` messages."""
    session: Session | None = None
    sent_here = 0
    try:
        for n in numbers:
            if time.monotonic() > deadline:
                return
            try:
                if session is None or sent_here >= per_session:
                    if session is not None:
                        await session.quit()
                    session, code, text = await Session.connect(port, source)
                    if code != 220:
                        raise SmtpError(code, text)
                    await session.ehlo()
                    await session.starttls(tls)
                    await session.ehlo()
                    await session.login(login, password)
                    sent_here = 0
                t0 = time.monotonic()
                code, _ = await session.send(login, ["friend@dest.test"], submitted_message(n, login))
                tally.record(n, code, time.monotonic() - t0)
                sent_here += 1
            except (SmtpError, OSError, TimeoutError, ssl.SSLError) as exc:
                tally.errors[type(exc).__name__ + (f" {exc.code}" if isinstance(exc, SmtpError) else "")] += 1
                tally.codes[0] += 1
                if session is not None:
                    session.abort()
                session = None
    finally:
        if session is not None:
            await session.quit()


def shared(count: int) -> Iterator[int]:
    """0 .. count-1, shared by several asyncio senders (each `next` is taken by one of them)."""
    return iter(itertools.islice(itertools.count(), count))
