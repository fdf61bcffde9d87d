"""Samples of a process's resident memory and open file descriptors (Linux /proc), and a trend line."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


@dataclass
class Sampler:
    """Every `interval` seconds: (seconds since start, RSS KiB, open fds, a progress count)."""

    pid: int
    interval: float = 2.0
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    progress: int = 0
    started: float = field(default_factory=time.monotonic)

    def take(self) -> tuple[float, int, int, int]:
        sample = (time.monotonic() - self.started, rss_kib(self.pid), open_fds(self.pid), self.progress)
        self.samples.append(sample)
        return sample

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.take()
            except (OSError, RuntimeError):
                return
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass

    def trend(self) -> dict[str, float]:
        """RSS growth over the second half of the samples: KiB per minute and per 10,000 messages."""
        half = self.samples[len(self.samples) // 2:]
        per_second = slope([(t, rss) for t, rss, _, _ in half])
        per_message = slope([(float(p), rss) for _, rss, _, p in half])
        span = half[-1][0] - half[0][0] if len(half) > 1 else 0.0
        return {"kib_per_minute": per_second * 60, "kib_per_10k_messages": per_message * 10_000,
                "second_half_seconds": span, "second_half_samples": len(half),
                "growth_over_second_half_kib": per_second * span}
