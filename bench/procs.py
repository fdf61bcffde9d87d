"""Process plumbing for the bench: free loopback ports, readiness waits, RSS from /proc, clean stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
Roots = int | tuple[int, ...]
"""One process, or several unrelated ones measured as one server (Postfix's master and its milters)."""


class BenchError(RuntimeError):
    """A run could not produce a valid measurement (a peer failed, a wait timed out)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts TCP connections on loopback `port`."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process {proc.args!r} exited {proc.returncode} before listening on {port}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"nothing listening on {LOOPBACK}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process we started, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def python_env() -> dict[str, str]:
    """Environment for Python subprocesses: this checkout first on the path, unbuffered output."""
    return dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def _status_kib(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the highest RSS since start or since the last `reset_peak_rss`."""
    return _status_kib(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Restart VmHWM at the current RSS (Linux: write 5 to clear_refs; needs to own the process or root)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split among their users, so a sum over processes is honest."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process and of its children it has reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / _TICKS


def tree_cpu_seconds(root: Roots) -> float:
    """CPU time of a process tree so far (a child that exited counts in its parent once reaped)."""
    return sum(_cpu_seconds(pid) for pid in process_tree(root))


class CpuMeter:
    """CPU seconds a server's process tree (and optionally one helper process) used since creation."""

    def __init__(self, server: Roots, helper: int | None = None) -> None:
        self.server, self.helper = server, helper
        self._start = self._now()

    def _now(self) -> tuple[float, float]:
        helper = tree_cpu_seconds(self.helper) if self.helper is not None else 0.0
        return tree_cpu_seconds(self.server), helper

    def used(self) -> tuple[float, float]:
        server, helper = self._now()
        return server - self._start[0], helper - self._start[1]


def process_tree(root: Roots) -> list[int]:
    """`root` (or each of several roots) and all descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            children.setdefault(_parent_of(int(entry)), []).append(int(entry))
    tree: list[int] = []
    todo = [root] if isinstance(root, int) else list(root)
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_memory_kib(root: Roots) -> int:
    """Memory of a process and its descendants: its RSS if alone, else the sum of their PSS.

    PSS splits shared pages among the processes using them, so the sum over a multi-process server
    (Postfix) counts each page once, where summed RSS would count shared libraries many times.
    """
    tree = process_tree(root)
    if len(tree) == 1:
        return rss_kib(tree[0])
    return sum(pss_kib(pid) for pid in tree)


class RssSampler:
    """Samples a process tree's memory (`tree_memory_kib`) in a thread; `peak_kib` is the highest sample.

    Every process's VmHWM is reset on entry and folded in on exit (its own peak plus what the others use
    at the end), so a spike between two samples is not missed, in a worker process either.
    """

    def __init__(self, root: Roots, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        for pid in process_tree(self.root):
            reset_peak_rss(pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()
        self.peak_kib = max(self.peak_kib, self._peak_bound())

    def _peak_bound(self) -> int:
        tree = process_tree(self.root)
        if len(tree) == 1:
            return peak_rss_kib(tree[0])
        now = {pid: pss_kib(pid) for pid in tree}
        total = sum(now.values())
        return max(peak_rss_kib(pid) + total - now[pid] for pid in tree)

    def _sample(self) -> None:
        self.peak_kib = max(self.peak_kib, tree_memory_kib(self.root))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024
