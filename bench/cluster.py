"""`python3 -m bench.cluster [--quick]`: fwdmail's store engines side by side (issue 15).

The same submission and MX workloads against one `fwdmail serve` on SQLite, one on a private PostgreSQL,
and two nodes sharing that PostgreSQL (load split evenly between them), in one run on one machine. Each
row gives the rate and the CPU milliseconds per message of fwdmail's process trees and of PostgreSQL's
(server, its helpers and the backends fwdmail's connections use), apart and summed: on SQLite the
database's work is inside fwdmail's own CPU time. The target: PostgreSQL's total at most 1.3x SQLite's
CPU per submitted message.

Everything is on loopback, in a temporary directory removed afterwards; the sink is Postfix's
`smtp-sink`, PostgreSQL is started from the `postgresql` package's binaries (never the system's cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.support.postgres import PostgresServer, postgres_bin
from tests.support.smtp_sink import SmtpSink as CapturingServer

from . import fwd
from .clients import submit
from .dns_helper import DnsHelper
from .plan import KIB
from .procs import LOOPBACK, REPO, BenchError, CpuMeter, free_port
from .sink import SmtpSink, smtp_source

SETUPS = ("sqlite", "postgresql", "postgresql, 2 nodes")
TARGET = 1.3
"""PostgreSQL (fwdmail + server) CPU per submitted message, at most this many times SQLite's."""


@dataclass
class Row:
    setup: str
    workload: str
    rate: float | None = None
    fwdmail_cpu_ms: float | None = None
    postgres_cpu_ms: float = 0.0
    note: str = ""
    error: str = ""

    @property
    def total_cpu_ms(self) -> float | None:
        return None if self.fwdmail_cpu_ms is None else self.fwdmail_cpu_ms + self.postgres_cpu_ms


@dataclass(frozen=True)
class Counts:
    submissions: int
    forwards: int
    clients: int = 20
    sessions: int = 20


class Meter:
    """CPU seconds of fwdmail's nodes and of the PostgreSQL server since creation."""

    def __init__(self, nodes: list[fwd.Fwdmail], pg: PostgresServer | None) -> None:
        self.fwdmail = [CpuMeter(n.pid) for n in nodes]
        self.postgres = CpuMeter(pg.proc.pid) if pg is not None and pg.proc is not None else None

    def per_message_ms(self, count: int) -> tuple[float, float]:
        fwdmail = sum(m.used()[0] for m in self.fwdmail)
        postgres = self.postgres.used()[0] if self.postgres is not None else 0.0
        return fwdmail * 1000 / count, postgres * 1000 / count


class Setup:
    """The nodes of one setup, set up through fwdmail's own CLI and started."""

    def __init__(self, name: str, root: Path, sink: SmtpSink, capture: int, dns: str,
                 pg: PostgresServer | None) -> None:
        self.name = name
        self.pg = pg if name != "sqlite" else None
        extra: dict[str, dict[str, object]] = {}
        if self.pg is not None:
            extra["database"] = {"url": self.pg.new_database()}
        self.nodes = []
        for i in range(2 if "2 nodes" in name else 1):
            node_extra = {**extra, "http": {"listen": [f"{LOOPBACK}:{free_port()}"]}}
            if self.pg is not None:
                node_extra["cluster"] = {"node_id": f"bench-{i}"}
            self.nodes.append(fwd.Fwdmail(root / f"node{i}", sink.port, capture, dns, node_extra))
        first = self.nodes[0].set_up()
        for node in self.nodes[1:]:
            node.cli("init")
            node.password = first.password
        for node in self.nodes:
            try:
                node.start()
            except BenchError as exc:
                self.stop()
                raise BenchError(f"{exc}: {node.logs()[-600:]}") from None

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def submissions(setup: Setup, sink: SmtpSink, counts: Counts) -> list[Row]:
    """`counts.submissions` messages over STARTTLS, split over the nodes: accept rate, then drain."""
    label = f"submit {counts.submissions:,} × 4 KB, {counts.clients} TLS clients"
    accept, drain = Row(setup.name, f"{label}: accept"), Row(setup.name, f"{label}: drain")
    share = counts.submissions // len(setup.nodes)
    total = share * len(setup.nodes)
    timeout = 60 + total / 5
    base = sink.delivered()
    meter = Meter(setup.nodes, setup.pg)

    async def all_nodes() -> list[object]:
        return await asyncio.gather(*(
            submit(n.ports.submission, count=share, clients=counts.clients // len(setup.nodes),
                   size=4 * KIB, sender=fwd.ALIAS, recipient=fwd.OUTBOUND_RECIPIENT,
                   login=(fwd.ALIAS, n.password), timeout=timeout) for n in setup.nodes))

    started = time.monotonic()
    try:
        results = asyncio.run(all_nodes())
        accepted = sum(r.accepted for r in results)  # type: ignore[attr-defined]
        errors = [e for r in results for e in r.errors]  # type: ignore[attr-defined]
        if errors or accepted != total:
            raise BenchError(f"{accepted} of {total} accepted; {'; '.join(errors[:3])}")
        last_accept = max(r.last_accept for r in results)  # type: ignore[attr-defined]
        accept.rate = total / (last_accept - started)
        done = sink.wait_for(base + total, timeout)
        drain.rate = total / (done - started)
        drain.fwdmail_cpu_ms, drain.postgres_cpu_ms = meter.per_message_ms(total)
        drain.note = "CPU: accept, DKIM signing and delivery of each message"
    except BenchError as exc:
        accept.error = drain.error = str(exc)
    return [accept, drain]


def forwards(setup: Setup, sink: SmtpSink, counts: Counts) -> Row:
    """`counts.forwards` 4 KB messages through the MX (smtp-source, reused sessions), split over the nodes."""
    row = Row(setup.name, f"MX {counts.forwards:,} × 4 KB, reuse")
    share = counts.forwards // len(setup.nodes)
    total = share * len(setup.nodes)
    base = sink.delivered()
    meter = Meter(setup.nodes, setup.pg)
    runs: list[object] = []

    def source(node: fwd.Fwdmail, i: int) -> None:
        runs.append(smtp_source(node.ports.mx, count=share, size=4 * KIB,
                                sessions=counts.sessions // len(setup.nodes), reuse=True,
                                sender=fwd.SENDER, recipient=fwd.ALIAS, cap=300,
                                output=node.root / f"smtp-source-{i}.out"))

    started = time.monotonic()
    threads = [threading.Thread(target=source, args=(n, i)) for i, n in enumerate(setup.nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(320)
    try:
        bad = [r for r in runs if not r.ok or r.capped]  # type: ignore[attr-defined]
        if bad or len(runs) != len(setup.nodes):
            raise BenchError(f"smtp-source: {[r.output[-200:] for r in bad]}")  # type: ignore[attr-defined]
        done = sink.wait_for(base + total, 60 + total / 5)
        row.rate = total / (done - started)
        row.fwdmail_cpu_ms, row.postgres_cpu_ms = meter.per_message_ms(total)
        row.note = "SPF/DMARC checked, ARC-sealed, forwarded in the session"
    except BenchError as exc:
        row.error = str(exc)
    return row


def run(counts: Counts, workdir: Path, console: Console, setups: tuple[str, ...] = SETUPS) -> list[Row]:
    bindir = postgres_bin()
    if bindir is None:
        raise SystemExit("bench.cluster: no PostgreSQL server binaries (apt-get install postgresql)")
    os.environ.setdefault("FWDMAIL_BENCH_MX_WORKERS", "1")
    rows: list[Row] = []
    sink = SmtpSink(workdir).start()
    dns = DnsHelper(fwd.DNS_RECORDS).start()
    capture = CapturingServer(LOOPBACK).start()
    pg = PostgresServer(bindir)
    try:
        pg.start()
        for name in setups:
            setup = Setup(name, workdir / name.replace(", ", "-").replace(" ", "-"), sink, capture.port,
                          dns.address, pg)
            try:
                for row in [*submissions(setup, sink, counts), forwards(setup, sink, counts)]:
                    rows.append(row)
                    shown = row.error or f"{row.rate:,.0f} msg/s" + (
                        f", {row.total_cpu_ms:.2f} CPU ms/msg" if row.total_cpu_ms is not None else "")
                    console.print(f"  {row.setup} · {row.workload}: {shown}")
            finally:
                setup.stop()
            time.sleep(1)
    finally:
        pg.stop()
        capture.stop()
        dns.stop()
        sink.stop()
    return rows


def verdict(rows: list[Row]) -> tuple[float | None, str]:
    """PostgreSQL's (one node) total CPU per submitted message over SQLite's."""
    def drain(setup: str) -> float | None:
        return next((r.total_cpu_ms for r in rows if r.setup == setup and r.workload.endswith("drain")), None)

    sqlite, pg = drain("sqlite"), drain("postgresql")
    if not sqlite or pg is None:
        return None, "not measured"
    ratio = pg / sqlite
    return ratio, "met" if ratio <= TARGET else "not met"


def print_rows(rows: list[Row], console: Console) -> None:
    table = Table(title="fwdmail on SQLite and PostgreSQL")
    for col in ("setup", "workload", "rate msg/s", "fwdmail CPU ms/msg", "PostgreSQL CPU ms/msg",
                "total CPU ms/msg", "notes"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.setup, r.workload, "" if r.rate is None else f"{r.rate:,.0f}",
                      "" if r.fwdmail_cpu_ms is None else f"{r.fwdmail_cpu_ms:.2f}",
                      f"{r.postgres_cpu_ms:.2f}" if r.setup != "sqlite" else "",
                      "" if r.total_cpu_ms is None else f"{r.total_cpu_ms:.2f}", r.error or r.note)
    console.print(table)
    ratio, status = verdict(rows)
    shown = "-" if ratio is None else f"{ratio:.2f}x"
    console.print(f"target: PostgreSQL CPU per submitted message <= {TARGET}x SQLite's: {shown} ({status})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.cluster", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 submissions and 1,000 forwards per setup")
    parser.add_argument("--setups", default=";".join(SETUPS), help=f"comma-separated, of: {'; '.join(SETUPS)}"
                        " (use ';' between them)")
    parser.add_argument("--submissions", type=int, help="submissions per setup (default 2,000; quick 300)")
    parser.add_argument("--forwards", type=int, help="MX messages per setup (default 5,000; quick 1,000)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "cluster-results.json")
    args = parser.parse_args(argv)
    counts = Counts(300, 1_000) if args.quick else Counts(2_000, 5_000)
    counts = Counts(args.submissions or counts.submissions, args.forwards or counts.forwards)
    setups = tuple(s.strip() for s in args.setups.split(";") if s.strip())
    if not setups or set(setups) - set(SETUPS):
        parser.error(f"--setups: pick from {'; '.join(SETUPS)}")
    console = Console(width=200)
    workdir = Path(tempfile.mkdtemp(prefix="fwdmail-bench-cluster-"))
    try:
        rows = run(counts, workdir, console, setups)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_rows(rows, console)
    ratio, status = verdict(rows)
    args.json.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "counts": asdict(counts),
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "rows": [{**asdict(r), "total_cpu_ms": r.total_cpu_ms} for r in rows],
        "target": {"limit": TARGET, "measured": ratio, "status": status},
    }, indent=2) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
