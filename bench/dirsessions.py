"""SMTP sessions for bench/directory.py: RCPTs in a transaction, fresh-session answers, and the threads
that ping (NOOP) and ask (RCPT) each MX process while the directory changes.

Untrusted input: none; the SMTP replies read are from the daemon under test.
"""

from __future__ import annotations

import smtplib
import threading
import time

from . import fwd
from .procs import LOOPBACK, BenchError

RCPTS_PER_MAIL = 50
"""RCPTs per transaction before RSET (the MX's `max_recipients` default is 100)."""
PING_GAP = 0.002
"""Pause between two NOOP round trips of one pinging session."""


class Session:
    """One SMTP session on the MX, in a transaction, asking RCPTs (RSET and MAIL again every 50)."""

    def __init__(self, port: int) -> None:
        self.smtp = smtplib.SMTP(LOOPBACK, port, local_hostname="client.bench.test", timeout=30)
        self.smtp.ehlo()
        self._in_mail = 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.smtp.quit()
        except (smtplib.SMTPException, OSError):
            self.smtp.close()

    def rcpt(self, address: str) -> tuple[int, float]:
        if self._in_mail >= RCPTS_PER_MAIL:
            self.smtp.rset()
            self._in_mail = 0
        if self._in_mail == 0:
            code, reply = self.smtp.mail(fwd.SENDER)
            if code != 250:
                raise BenchError(f"MAIL FROM answered {code} {reply!r}")
        started = time.perf_counter()
        code, _ = self.smtp.rcpt(address)
        took = time.perf_counter() - started
        self._in_mail += 1
        return code, took

    def noop(self) -> float:
        started = time.perf_counter()
        self.smtp.noop()
        return time.perf_counter() - started


def ask(port: int, addresses: list[str], session: Session | None = None) -> tuple[list[float], int]:
    """RCPT each address; round trips in ms and how many were not answered 250."""
    own = session is None
    s = session or Session(port)
    times, refused = [], 0
    try:
        for address in addresses:
            code, took = s.rcpt(address)
            times.append(took * 1000)
            refused += code != 250
    finally:
        if own:
            s.close()
    return times, refused


def answer_on_fresh(port: int, address: str) -> int:
    with Session(port) as s:
        return s.rcpt(address)[0]


def wait_for_answer(port: int, address: str, code: int, processes: int, timeout: float) -> float:
    """Seconds until `processes` fresh sessions in a row (the serving process hands them out in turn,
    so one per MX process) answer `code` for `address`."""
    started = time.perf_counter()
    in_a_row = 0
    while in_a_row < processes:
        if time.perf_counter() - started > timeout:
            raise BenchError(f"RCPT {address} not answered {code} within {timeout:.0f}s")
        in_a_row = in_a_row + 1 if answer_on_fresh(port, address) == code else 0
        if in_a_row == 0:
            time.sleep(0.01)
    return time.perf_counter() - started


class Pingers:
    """NOOP round trips, one session per MX process, each in its own thread, until stopped."""

    def __init__(self, port: int, processes: int) -> None:
        self.sessions = [Session(port) for _ in range(processes)]
        self.samples: list[tuple[float, float]] = []  # (when, round trip s)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(s,), daemon=True) for s in self.sessions]

    def __enter__(self) -> Pingers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        for s in self.sessions:
            s.close()

    def _loop(self, session: Session) -> None:
        while not self._stop.is_set():
            took = session.noop()
            with self._lock:
                self.samples.append((time.perf_counter(), took))
            self._stop.wait(PING_GAP)

    def between(self, start: float, end: float) -> list[float]:
        with self._lock:
            return [took * 1000 for when, took in self.samples if start <= when <= end]


class Askers:
    """One session per MX process asking RCPTs of existing aliases (one every 10 ms), until stopped: so
    that during the stall measurement each process polls the change log and drops what changed, as a
    serving MX does (NOOPs alone never ask the directory)."""

    def __init__(self, port: int, processes: int, addresses: list[str]) -> None:
        self.sessions = [Session(port) for _ in range(processes)]
        self.addresses = addresses
        self.asked = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(s, i), daemon=True)
                         for i, s in enumerate(self.sessions)]

    def __enter__(self) -> Askers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        for s in self.sessions:
            s.close()

    def _loop(self, session: Session, offset: int) -> None:
        i = offset
        while not self._stop.is_set():
            session.rcpt(self.addresses[i % len(self.addresses)])
            self.asked += 1
            i += len(self.sessions)
            self._stop.wait(0.01)
