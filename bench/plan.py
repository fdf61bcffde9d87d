"""What a bench run measures: workloads, counts, rounds and time bounds (full and --quick)."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

THROUGHPUT_SYSTEMS = ("harness", "floor", "postfix", "postfix-stack", "fwdmail", "fwdmail-noauth")
SECTIONS = ("latency", "submission", "memory", "signing")
ROWS = THROUGHPUT_SYSTEMS + SECTIONS


@dataclass(frozen=True)
class Workload:
    """`count` messages of `size` payload bytes over `sessions` parallel smtp-source sessions."""

    size: int
    count: int
    reuse: bool
    sessions: int = 20

    @property
    def label(self) -> str:
        connections = "reuse" if self.reuse else "new conn"
        return f"{self.count:,} × {self.size // KIB} KB, {connections}"


@dataclass(frozen=True)
class Plan:
    workloads: tuple[Workload, ...]
    rounds: int
    rows: tuple[str, ...]
    budget_s: float
    latency_seconds: float
    latency_max_messages: int
    latency_sessions: int
    submit_count: int
    submit_clients: int
    submit_size: int
    idle_sessions: int
    big_message: int
    sign_slices: int
    """1-second turns each of OpenSSL, DKIM signing and ARC sealing get (median taken)."""
    run_cap_s: float
    """An smtp-source run still sending after this long is stopped; its rate is what it managed."""
    min_rate: float = 10.0
    """Waits for other runs assume at least this many messages per second (it bounds every wait)."""

    def timeout_for(self, count: int) -> float:
        return 60.0 + count / self.min_rate

    def latency_sizes(self) -> list[int]:
        return sorted({w.size for w in self.workloads})


def full_plan(rows: tuple[str, ...], rounds: int, budget_minutes: float) -> Plan:
    return Plan(
        workloads=(Workload(4 * KIB, 20_000, True), Workload(4 * KIB, 20_000, False),
                   Workload(100 * KIB, 5_000, True), Workload(100 * KIB, 5_000, False)),
        rounds=rounds, rows=rows, budget_s=budget_minutes * 60,
        latency_seconds=10.0, latency_max_messages=5_000, latency_sessions=20,
        submit_count=2_000, submit_clients=20, submit_size=4 * KIB,
        idle_sessions=1_000, big_message=25 * MIB, sign_slices=5, run_cap_s=150.0,
    )


def quick_plan(rows: tuple[str, ...], budget_minutes: float) -> Plan:
    return Plan(
        workloads=(Workload(4 * KIB, 1_000, True), Workload(4 * KIB, 1_000, False),
                   Workload(100 * KIB, 300, True), Workload(100 * KIB, 300, False)),
        rounds=1, rows=rows, budget_s=budget_minutes * 60,
        latency_seconds=3.0, latency_max_messages=1_000, latency_sessions=20,
        submit_count=300, submit_clients=20, submit_size=4 * KIB,
        idle_sessions=1_000, big_message=25 * MIB, sign_slices=1, run_cap_s=40.0,
    )
