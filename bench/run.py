"""Entry point: `python3 -m bench.run [--quick] [--only ROWS] [--rounds N] [--json PATH]`.

Runs every selected row once per round (rounds interleave the systems, so each round's ratios come from
minutes-apart measurements), prints one table and the issue's targets, and writes the same as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from .measure import Bench
from .plan import MIB, ROWS, THROUGHPUT_SYSTEMS, Plan, full_plan, quick_plan
from .postfix_stack import missing_tools
from .procs import REPO
from .report import (
    FLOOR,
    FWDMAIL,
    POSTFIX,
    STACK,
    Record,
    TargetSpec,
    evaluate,
    print_table,
    summarise,
    write_json,
)
from .sink import SMTP_SINK, SMTP_SOURCE

MEMORY_SYSTEMS = (FLOOR, POSTFIX, FWDMAIL)
LATENCY_SYSTEMS = (FLOOR, POSTFIX, STACK, FWDMAIL)
SUBMISSION_SYSTEMS = (POSTFIX, STACK, FWDMAIL)
"""The postfix-stack takes part in the latency and submission rows only when `postfix-stack` is selected."""
REQUIRED_TOOLS = (SMTP_SINK, SMTP_SOURCE, "/usr/sbin/postfix", "openssl")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, one round (a try-out)")
    parser.add_argument("--only", default=",".join(ROWS),
                        help=f"comma-separated rows to run, of: {', '.join(ROWS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3, or 1 with --quick)")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="minutes: no round starts that would end past this (default 30)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results.json", help="JSON output path")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    parser.add_argument("--mx-workers", type=int, default=os.cpu_count() or 1,
                        help="fwdmail's [mx] workers (default: one per core)")
    parser.add_argument("--queue-workers", type=int, default=0,
                        help="fwdmail's [queue] workers (default 0: the serving process delivers)")
    parser.add_argument("--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="fwdmail's event_loop (default auto: uvloop when it is installed)")
    args = parser.parse_args(argv)
    rows = tuple(r.strip() for r in args.only.split(",") if r.strip())
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        parser.error(f"unknown rows {unknown}; pick from {', '.join(ROWS)}")
    args.rows = rows
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    plan = quick_plan(args.rows, args.budget) if args.quick else full_plan(args.rows, 3, args.budget)
    if args.rounds is not None:
        plan = dataclasses.replace(plan, rounds=max(1, args.rounds))
    return plan


def _command_output(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "?"


def _uncommitted(path: Path) -> list[str]:
    """Files under `path` that differ from the commit (the code measured is not exactly that commit)."""
    try:
        done = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", str(path)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ["?"]
    return [line[3:] for line in done.stdout.splitlines()]


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": int(Path("/proc/meminfo").read_text().split()[1]) // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": _command_output(["openssl", "version"]),
        "postfix": _command_output(["/usr/sbin/postconf", "-d", "-h", "mail_version"]),
        "fwdmail_commit": _command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "fwdmail_uncommitted_changes": _uncommitted(REPO / "fwdmail"),
    }


def target_specs(plan: Plan) -> list[TargetSpec]:
    specs = []
    for w in plan.workloads:
        need = 2.0 if w.size <= 4 * 1024 else 1.0
        specs.append(TargetSpec(f"MX e2e vs Postfix, {w.label}", FWDMAIL, w.label, "vs_postfix", need, True))
    for w in plan.workloads:
        specs.append(TargetSpec(f"MX e2e vs bare aiosmtpd, {w.label}", FWDMAIL, w.label, "vs_floor", 0.8,
                                True))
    for size in plan.latency_sizes():
        label = f"{size // 1024} KB at ½ peak rate"
        specs.append(TargetSpec(f"MX p99 DATA-to-reply, {label}", FWDMAIL, label, "p99_ms", 25.0, False,
                                "ms"))
    stem = f"{plan.submit_count:,} × {plan.submit_size // 1024} KB, {plan.submit_clients} TLS clients"
    specs += [
        TargetSpec("submission accept (durable) vs Postfix", FWDMAIL, f"submit {stem}: accept", "vs_postfix",
                   1.0, True),
        TargetSpec("outbound drain (DKIM-signed) vs Postfix", FWDMAIL, f"submit {stem}: drain", "vs_postfix",
                   1.5, True),
        TargetSpec("DKIM signing vs OpenSSL RSA-2048", "fwdmail DKIM sign", "RSA-2048 signatures, 1 thread",
                   "vs_floor", 0.5, True),
        TargetSpec("ARC sealing vs OpenSSL RSA-2048", "fwdmail ARC seal", "RSA-2048 signatures, 1 thread",
                   "vs_floor", 0.5, True),
        TargetSpec(f"RSS with {plan.idle_sessions:,} idle MX sessions", FWDMAIL,
                   f"{plan.idle_sessions:,} idle MX sessions", "value", 100.0, False, "MiB"),
        TargetSpec(f"peak RSS forwarding one {plan.big_message // MIB} MiB message", FWDMAIL,
                   f"one {plan.big_message // MIB} MiB message", "value", 100.0 + 3 * plan.big_message / MIB,
                   False, "MiB"),
    ]
    return specs + stack_target_specs(plan, stem)


def stack_target_specs(plan: Plan, submit_stem: str) -> list[TargetSpec]:
    """Issue 18's targets: fwdmail against the postfix-stack (ratios within a round, medians)."""
    specs = [TargetSpec(f"MX forwarding vs postfix-stack, {w.label}", FWDMAIL, w.label, "vs_stack", 2.0, True,
                        issue=18) for w in plan.workloads]
    small_reuse = next((w.label for w in plan.workloads if w.size <= 4 * 1024 and w.reuse), None)
    if small_reuse is not None:
        specs += [
            TargetSpec(f"MX forwarding, sender auth off, vs plain Postfix, {small_reuse}", "fwdmail-noauth",
                       small_reuse, "vs_postfix", 3.0, True, issue=18),
            TargetSpec(f"MX forwarding, sender auth off, vs bare aiosmtpd, {small_reuse}", "fwdmail-noauth",
                       small_reuse, "vs_floor", 1.0, True, issue=18),
        ]
    for size in plan.latency_sizes():
        label = f"{size // 1024} KB at ½ peak rate"
        specs.append(TargetSpec(f"p99 end-of-data to reply, {label} (client CPU in the row's note)", FWDMAIL,
                                label, "p99_ms", 25.0, False, "ms", issue=18))
    specs += [
        TargetSpec("submission accept (durable 250) vs Postfix + OpenDKIM", FWDMAIL,
                   f"submit {submit_stem}: accept", "vs_stack", 1.2, True, issue=18),
        TargetSpec("outbound drain (DKIM-signed) vs Postfix + OpenDKIM", FWDMAIL,
                   f"submit {submit_stem}: drain", "vs_stack", 1.5, True, issue=18),
    ]
    return specs


class Runner:
    """Rounds of the selected rows, with progress lines and the time budget."""

    def __init__(self, plan: Plan, bench: Bench, console: Console) -> None:
        self.plan = plan
        self.bench = bench
        self.console = console
        self.records: list[Record] = []
        self.started = time.monotonic()
        self.states: list[dict[str, Any]] = []
        """Load average and fwdmail's code at each round's start and at the end: how busy the machine was,
        and which code a fwdmail (re)started in that round ran (the memory rows restart it)."""

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.started:7.1f}s[/dim] {text}")

    def add(self, records: list[Record]) -> None:
        for r in records:
            self.records.append(r)
            if r.error:
                self.say(f"  {r.system} · {r.workload}: [red]failed: {r.error}[/red]")
            else:
                extra = f", p99 {r.p99_ms:.1f} ms" if r.p99_ms is not None else ""
                self.say(f"  {r.system} · {r.workload}: {r.value:,.1f} {r.unit}{extra}")

    def run(self) -> None:
        round_seconds = 0.0
        for round_ in range(1, self.plan.rounds + 1):
            elapsed = time.monotonic() - self.started
            if round_ > 1 and elapsed + round_seconds > self.plan.budget_s:
                self.say(f"[yellow]budget of {self.plan.budget_s / 60:.0f} min: rounds {round_}.."
                         f"{self.plan.rounds} skipped[/yellow]")
                break
            self.states.append(snapshot(f"round {round_}"))
            self.say(f"[bold]round {round_}/{self.plan.rounds}[/bold] "
                     f"(load average {self.states[-1]['load_average']})")
            round_started = time.monotonic()
            self.run_round(round_)
            round_seconds = max(round_seconds, time.monotonic() - round_started)
        self.states.append(snapshot("end"))

    def run_round(self, round_: int) -> None:
        rows, bench = self.plan.rows, self.bench
        for workload in self.plan.workloads:
            for system in THROUGHPUT_SYSTEMS:
                if system in rows and (system != "fwdmail-noauth" or (workload.reuse and round_ == 1)):
                    self.add([bench.throughput(system, workload, round_)])
        if "latency" in rows:
            for size in self.plan.latency_sizes():
                for system in LATENCY_SYSTEMS:
                    if system != STACK or STACK in rows:
                        self.add([bench.latency(system, size, round_)])
        if "submission" in rows:
            for system in SUBMISSION_SYSTEMS:
                if system != STACK or STACK in rows:
                    self.add(bench.submission(system, round_))
        if "memory" in rows:
            for system in MEMORY_SYSTEMS:
                if system != POSTFIX or round_ == 1:  # a thousand smtpd processes: once is enough
                    self.add([bench.idle_sessions(system, round_)])
            for system in MEMORY_SYSTEMS:
                self.add([bench.big_message(system, round_)])
        if "signing" in rows:
            self.add(bench.signing(round_))


def snapshot(when: str) -> dict[str, Any]:
    return {"when": when, "load_average": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "fwdmail_commit": _command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
            "fwdmail_uncommitted_changes": _uncommitted(REPO / "fwdmail")}


def _effective_loop(choice: str) -> str:
    """The loop fwdmail runs on (it uses this interpreter): "auto" is uvloop when importable."""
    if choice != "auto":
        return choice
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def check_tools(rows: tuple[str, ...]) -> None:
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        sys.exit(f"bench: missing {', '.join(missing)} (Debian packages postfix and openssl)")
    if STACK in rows and missing_tools():
        sys.exit(f"bench: the postfix-stack rows need {', '.join(missing_tools())} (Debian packages rspamd,"
                 " postsrsd, opendkim, sasl2-bin, libsasl2-modules); or leave postfix-stack out of --only")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # stop the private Postfix and the rest on `kill` too
    args = parse_args(argv)
    if args.mx_workers < 1:
        sys.exit("--mx-workers: at least 1")
    os.environ["FWDMAIL_BENCH_MX_WORKERS"] = str(args.mx_workers)
    if not 0 <= args.queue_workers <= 64:
        sys.exit("--queue-workers: from 0 to 64")
    os.environ["FWDMAIL_BENCH_QUEUE_WORKERS"] = str(args.queue_workers)
    os.environ["FWDMAIL_BENCH_EVENT_LOOP"] = args.event_loop
    plan = make_plan(args)
    check_tools(plan.rows)
    console = Console(width=200)
    workdir = Path(tempfile.mkdtemp(prefix="fwdmail-bench-"))
    bench = Bench(plan, workdir, console.print)
    runner = Runner(plan, bench, console)
    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(),
            "quick": args.quick, "rows": list(plan.rows), "rounds": plan.rounds,
            "mx_workers": args.mx_workers, "queue_workers": args.queue_workers,
            "event_loop": _effective_loop(args.event_loop),
            "workloads": [w.label for w in plan.workloads]}
    runner.say(f"workdir {workdir}; rows: {', '.join(plan.rows)}; {plan.rounds} round(s)")
    try:
        runner.run()
    except KeyboardInterrupt:
        runner.say("[yellow]interrupted: reporting what was measured[/yellow]")
    finally:
        bench.close()
        if args.keep:
            runner.say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["duration_s"] = round(time.monotonic() - runner.started, 1)
    meta["states"] = runner.states
    meta["fwdmail_sanity"] = bench.sanity
    meta["postfix_stack_sanity"] = bench.stack_sanity
    lines = summarise(runner.records)
    targets = evaluate(target_specs(plan), lines)
    print_table(lines, targets, console)
    write_json(args.json, meta, runner.records, lines, targets)
    runner.say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
