"""Postfix's `smtp-sink` as the downstream of every row, and `smtp-source` as the load generator.

`smtp-sink -c` rewrites a counter line (`sess=N quit=N mesg=N` ending in CR) after every message; it goes
to a file, and `delivered()` reads the last one. Counts are cumulative, so a run takes a baseline first.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, BenchError, free_port, stop_process, wait_listening

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
_COUNTER = re.compile(rb"mesg=(\d+)")


def _privilege_args() -> list[str]:
    """smtp-sink refuses to run as root without dropping privileges."""
    return ["-u", "postfix"] if os.geteuid() == 0 else []


class SmtpSink:
    """A counting, discarding `smtp-sink` on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.counter_path = workdir / "smtp-sink.count"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SmtpSink:
        with open(self.counter_path, "wb") as out:
            self.proc = subprocess.Popen(
                [SMTP_SINK, "-c", *_privilege_args(), f"{LOOPBACK}:{self.port}", "1024"],
                stdout=out, stderr=subprocess.STDOUT,
            )
        wait_listening(self.port, 10, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def delivered(self) -> int:
        """Messages the sink has taken since it started."""
        with open(self.counter_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 256))
            tail = f.read()
        counts = _COUNTER.findall(tail)
        return int(counts[-1]) if counts else 0

    def wait_for(self, target: int, timeout: float, poll: float = 0.02) -> float:
        """Block until the sink has counted `target` messages; return the monotonic time it saw them."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self.delivered() >= target:
                return now
            if now > deadline:
                raise BenchError(f"smtp-sink counted {self.delivered()} of {target} after {timeout:.0f}s")
            time.sleep(poll)

    def wait_settled(self, quiet: float, timeout: float, poll: float = 0.05) -> tuple[int, float]:
        """Wait until the count has not moved for `quiet` s; return it and when it last moved."""
        deadline = time.monotonic() + timeout
        count, moved = self.delivered(), time.monotonic()
        while time.monotonic() - moved < quiet and time.monotonic() < deadline:
            time.sleep(poll)
            now_count = self.delivered()
            if now_count != count:
                count, moved = now_count, time.monotonic()
        return count, moved


@dataclass(frozen=True)
class SourceRun:
    """One `smtp-source` run: start and end (monotonic), messages it completed, and how it ended."""

    started: float
    finished: float
    completed: int
    ok: bool
    capped: bool
    output: str

    @property
    def elapsed(self) -> float:
        return self.finished - self.started


def _completed(output: bytes) -> int:
    """smtp-source -c prints a running DATA count, each value ending in CR."""
    counts = re.findall(rb"(\d+)\r", output[-4096:])
    return int(counts[-1]) if counts else 0


def smtp_source(port: int, *, count: int, size: int, sessions: int, reuse: bool, sender: str,
                recipient: str, cap: float, output: Path) -> SourceRun:
    """Send `count` messages of `size` payload bytes over `sessions` parallel sessions, for at most `cap` s.

    `reuse` is smtp-source's -d (keep the connection for the next message); without it each message
    gets its own connection. smtp-source stops at the first reply it does not expect, so `ok` means
    every message was accepted. Past `cap` seconds it is stopped and the run is `capped`.
    """
    args = [SMTP_SOURCE, "-c", "-s", str(sessions), "-m", str(count), "-l", str(size),
            "-M", "client.bench.test", "-f", sender, "-t", recipient]
    if reuse:
        args.append("-d")
    with open(output, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen([*args, f"{LOOPBACK}:{port}"], stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(cap)
            capped = False
        except subprocess.TimeoutExpired:
            stop_process(proc)
            capped = True
        except BaseException:
            stop_process(proc)
            raise
        finished = time.monotonic()
    text = output.read_bytes()
    message = text.decode(errors="replace").replace("\r", " ").strip()
    ok = capped or (proc.returncode == 0 and b"fatal" not in text)
    return SourceRun(started, finished, _completed(text), ok, capped, message[-300:])
