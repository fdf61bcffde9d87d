"""The directory at scale (issue 20): import, first RCPT, cold/warm RCPT, changes, stalls, memory, listing.

`python3 -m bench.directory [--aliases N] [--domains D] [--quick]` builds, in a temporary directory on
loopback, a data dir with N exact aliases over D domains (plus a catch-all domain and a regex domain),
imports them with `fwdmail alias import`, runs `fwdmail serve` against it and against an empty directory,
and prints the measurements beside issue 20's targets; the same goes to JSON. See bench/README.md,
"Directory at scale".

Domains are created through the store API (one process, one transaction, one DKIM key shared by all):
`domain add` generates an RSA-2048 key per domain, which would take minutes for 10,000 domains and
measures nothing the issue asks about. Everything else goes through the real CLI and the real daemon.

Untrusted input: none; the SMTP replies read are from the daemon under test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fwd
from .dirsessions import Askers, Pingers, Session, answer_on_fresh, ask, wait_for_answer
from .dns_helper import DnsHelper
from .procs import (
    LOOPBACK,
    REPO,
    BenchError,
    RssSampler,
    free_port,
    python_env,
    stop_process,
    tree_memory_kib,
)

ACCOUNT = "owner@owner.bench.test"
DESTINATION = "dest@dest.bench.test"
CATCH_ALL_DOMAIN = "catchall.dir.bench.test"
REGEX_DOMAIN = "regex.dir.bench.test"
EMPTY_DOMAIN = "empty.dir.bench.test"
CHANGE_TIMEOUT = 30.0
JUNK_COMMANDS = 10_000_000
"""`[abuse] max_junk_commands`, lifted (default 100) for the sessions that measure stalls with NOOPs."""


@dataclass(frozen=True)
class Sizes:
    aliases: int
    domains: int
    cold: int
    adds: int
    bulk: int
    """Aliases in the import done while the NOOP sessions watch for stalls."""


@dataclass(frozen=True)
class Target:
    name: str
    key: str
    limit: float
    unit: str
    at_most: bool = True


TARGETS = [
    Target("first RCPT after start (listening → 250)", "first_rcpt_ms", 50, "ms"),
    Target("RCPT p99, warm cache", "warm_p99_ms", 2, "ms"),
    Target("RCPT p99, cold cache", "cold_p99_ms", 10, "ms"),
    Target("a change answered correctly after", "change_s", 1, "s"),
    Target("event-loop stall during changes (NOOP max)", "stall_max_ms", 10, "ms"),
    Target("memory of serve beyond an empty directory", "memory_beyond_empty_mib", 64, "MiB"),
    Target("alias import", "import_rate", 10_000, "aliases/s", at_most=False),
    # the target is a listing of 100,000: larger directories are judged by their time per 100,000
    Target("alias list --json, per 100,000 aliases", "list_s", 3, "s"),
]


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def domain_name(i: int) -> str:
    return f"d{i:05d}.dir.bench.test"


def alias_address(i: int, domains: int) -> str:
    return f"u{i:07d}@{domain_name(i % domains)}"


def write_virtual(path: Path, aliases: int, domains: int) -> None:
    """N exact aliases over `domains` domains, a catch-all and a regex alias, in virtual(5) format."""
    with open(path, "w") as f:
        f.write("# fwdmail bench: the directory at scale\n")
        f.write(f"@{CATCH_ALL_DOMAIN}  {DESTINATION}\n")
        f.write(f"/^re-[0-9]+$/@{REGEX_DOMAIN}  {DESTINATION}\n")
        for i in range(aliases):
            f.write(f"{alias_address(i, domains)}  {DESTINATION}\n")


# ---------------------------------------------------------------- domains through the store API

def create_domains_main(config_path: str) -> None:
    """`--create-domains CONFIG`: one domain per stdin line, for ACCOUNT, in one transaction."""
    from fwdmail import store
    from fwdmail.config import load
    from fwdmail.runtime import datadir, keys
    from fwdmail.store.models import database

    datadir.prepare(load(Path(config_path)))
    key = keys.generate_dkim_key()
    selector = keys.new_selector(dt.datetime.now(dt.UTC).replace(tzinfo=None))
    names = [line.strip() for line in sys.stdin if line.strip()]
    with database.atomic("IMMEDIATE"):
        for name in names:
            store.add_domain(name, ACCOUNT, selector, key, keys.new_token())
    store.close_store()


# ---------------------------------------------------------------- the daemon and its CLI

@dataclass
class ChildRun:
    seconds: float
    peak_rss_mib: float
    stdout_bytes: int
    cpu_s: float = 0.0
    """User + system CPU seconds: on a shared machine, what the run cost apart from waiting for a core."""


class Instance:
    """A data dir with its config, the CLI on it and `fwdmail serve` (MX on loopback)."""

    def __init__(self, root: Path, dns: str) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.ports = fwd.Ports(free_port(), free_port(), free_port(), free_port())
        self.config = root / "fwdmail.toml"
        abuse = {**fwd.ABUSE_LIMITS, "max_junk_commands": JUNK_COMMANDS}
        self.config.write_text(fwd.render_config(root / "data", self.ports, free_port(), free_port(), dns,
                                                 extra={"abuse": abuse}))
        self.log = root / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "fwdmail", "--config", str(self.config), *args]

    def cli(self, *args: str, timeout: float = 120.0, stdin: bytes | None = None) -> str:
        done = subprocess.run(self.argv(*args), input=stdin, capture_output=True, env=python_env(),
                              timeout=timeout)
        if done.returncode != 0:
            raise BenchError(f"fwdmail {' '.join(args)} exited {done.returncode}: {done.stderr.decode()}")
        return done.stdout.decode()

    def measured(self, args: list[str], timeout: float, out: Path | None = None) -> ChildRun:
        """Run `argv` to its end: wall time, peak RSS (the child's own rusage), bytes it wrote."""
        sink = open(out, "wb") if out is not None else subprocess.DEVNULL  # noqa: SIM115 (closed below)
        try:
            started = time.perf_counter()
            proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.PIPE, env=python_env())
            deadline = started + timeout
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    proc.kill()
                    proc.wait(5)
                    raise BenchError(f"{args[4:]} still running after {timeout:.0f}s")
                time.sleep(0.01)
            seconds = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
        finally:
            if out is not None:
                sink.close()  # type: ignore[union-attr]
        if proc.returncode != 0:
            raise BenchError(f"{args[4:]} exited {proc.returncode}: {err[-2000:]}")
        size = out.stat().st_size if out is not None else 0
        return ChildRun(seconds, usage.ru_maxrss / 1024, size, usage.ru_utime + usage.ru_stime)

    def create_domains(self, names: list[str]) -> float:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "bench.directory", "--create-domains", str(self.config)],
                              input="\n".join(names).encode(), capture_output=True, env=python_env(),
                              cwd=REPO, timeout=600)
        if done.returncode != 0:
            raise BenchError(f"creating domains failed: {done.stderr.decode()[-2000:]}")
        return time.perf_counter() - started

    def start(self, timeout: float = 120.0) -> tuple[float, float, float]:
        """Spawn `serve`; seconds to the MX listening, to the first RCPT answered 250, and that session's
        RCPT round trip alone."""
        with open(self.log, "ab") as log:
            spawned = time.perf_counter()
            self.proc = subprocess.Popen(self.argv("serve"), stdout=log, stderr=subprocess.STDOUT,
                                         env=python_env(), cwd=self.root)
        deadline = spawned + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"serve exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection((LOOPBACK, self.ports.mx), timeout=0.5).close()
                break
            except OSError:
                if time.perf_counter() > deadline:
                    raise BenchError("serve did not listen in time") from None
                time.sleep(0.002)
        listening = time.perf_counter()
        return listening - spawned, *self._first_rcpt(listening)

    def _first_rcpt(self, listening: float) -> tuple[float, float]:
        recipient = f"u0000000@{domain_name(0)}" if self.root.name == "full" else f"user@{EMPTY_DOMAIN}"
        with Session(self.ports.mx) as s:
            code, took = s.rcpt(recipient)
        if code != 250:
            raise BenchError(f"first RCPT to {recipient} answered {code}")
        return time.perf_counter() - listening, took

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=40)
            self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


# ---------------------------------------------------------------- the run

@dataclass
class Result:
    figures: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


def _mib(kib: int) -> float:
    return kib / 1024


def measure_empty(workdir: Path, dns: str, requests: int, say: Callable[[str], None]) -> dict[str, float]:
    """The same daemon on an empty directory (one domain, one alias): start-up and memory after
    `requests` RCPTs, the baseline the full directory's memory is compared with."""
    inst = Instance(workdir / "empty", dns)
    inst.cli("init")
    inst.cli("account", "add", ACCOUNT)
    inst.create_domains([EMPTY_DOMAIN])
    inst.cli("alias", "add", f"user@{EMPTY_DOMAIN}", DESTINATION)
    try:
        listen_s, first_s, first_rcpt = inst.start()
        with RssSampler(inst.pid) as sampler:
            _, refused = ask(inst.ports.mx, [f"user@{EMPTY_DOMAIN}"] * requests)
            time.sleep(0.5)
            memory = tree_memory_kib(inst.pid)
        if refused:
            raise BenchError(f"empty directory: {refused} RCPTs refused")
    finally:
        inst.stop()
    say(f"empty directory: listening after {listen_s:.2f}s, first RCPT 250 {first_s * 1000:.1f} ms later, "
        f"{_mib(memory):.1f} MiB")
    return {"listen_s": listen_s, "first_rcpt_ms": first_s * 1000, "first_rcpt_rtt_ms": first_rcpt * 1000,
            "memory_mib": _mib(memory), "peak_mib": sampler.peak_mib}


def run(sizes: Sizes, workdir: Path, say: Callable[[str], None]) -> Result:
    """The whole measurement in `workdir` (left for the caller to remove)."""
    result = Result()
    fig, notes = result.figures, result.notes
    processes = fwd.mx_workers()
    notes["mx_workers"] = processes
    rng = random.Random(20)
    dns = DnsHelper(fwd.DNS_RECORDS).start()
    try:
        empty = measure_empty(workdir, dns.address, 2 * sizes.cold, say)
        notes["empty"] = empty

        inst = Instance(workdir / "full", dns.address)
        inst.cli("init")
        inst.cli("account", "add", ACCOUNT)
        names = [domain_name(i) for i in range(sizes.domains)] + [CATCH_ALL_DOMAIN, REGEX_DOMAIN]
        notes["create_domains_s"] = inst.create_domains(names)
        say(f"{len(names):,} domains created through the store in {notes['create_domains_s']:.1f}s")

        virtual = workdir / "virtual"
        write_virtual(virtual, sizes.aliases, sizes.domains)
        budget = max(120.0, sizes.aliases / 2000)
        imported = inst.measured(inst.argv("alias", "import", str(virtual)), budget)
        fig["import_rate"] = (sizes.aliases + 2) / imported.seconds
        notes["import_s"] = imported.seconds
        notes["import_peak_rss_mib"] = imported.peak_rss_mib
        notes["import_cpu_s"] = imported.cpu_s
        say(f"imported {sizes.aliases + 2:,} aliases in {imported.seconds:.1f}s "
            f"({fig['import_rate']:,.0f}/s, {imported.cpu_s:.1f} CPU s, "
            f"peak RSS {imported.peak_rss_mib:.0f} MiB)")

        try:
            listen_s, first_s, first_rcpt = inst.start()
            fig["first_rcpt_ms"] = first_s * 1000
            notes["listen_s"] = listen_s
            notes["first_rcpt_rtt_ms"] = first_rcpt * 1000
            say(f"serve listening after {listen_s:.2f}s, first RCPT 250 {first_s * 1000:.1f} ms later")
            with RssSampler(inst.pid) as sampler:
                _serve_rows(inst, sizes, processes, rng, result, say)
                time.sleep(0.5)
                memory = tree_memory_kib(inst.pid)
            fig["memory_beyond_empty_mib"] = _mib(memory) - empty["memory_mib"]
            notes["memory_mib"] = _mib(memory)
            notes["peak_mib"] = sampler.peak_mib
            notes["peak_beyond_empty_mib"] = sampler.peak_mib - empty["peak_mib"]
            say(f"serve: {_mib(memory):.1f} MiB ({fig['memory_beyond_empty_mib']:+.1f} beyond empty), "
                f"peak {sampler.peak_mib:.1f}")
        finally:
            inst.stop()

        listed = inst.measured(inst.argv("alias", "list", "--json"), budget, out=workdir / "list.json")
        notes["list_seconds"] = listed.seconds
        notes["list_bytes"] = listed.stdout_bytes
        notes["list_peak_rss_mib"] = listed.peak_rss_mib
        notes["list_cpu_s"] = listed.cpu_s
        with open(workdir / "list.json") as f:
            notes["list_items"] = len(json.load(f))
        fig["list_s"] = listed.seconds * 100_000 / max(notes["list_items"], 1)
        say(f"alias list --json: {listed.seconds:.2f}s, {listed.stdout_bytes / 1e6:.1f} MB, "
            f"{notes['list_items']:,} aliases, peak RSS {listed.peak_rss_mib:.0f} MiB")
    finally:
        dns.stop()
    return result


def _serve_rows(inst: Instance, sizes: Sizes, processes: int, rng: random.Random, result: Result,
                say: Callable[[str], None]) -> None:
    fig, notes = result.figures, result.notes
    port = inst.ports.mx
    checks = {f"anything@{CATCH_ALL_DOMAIN}": 250, f"re-42@{REGEX_DOMAIN}": 250,
              f"nobody@{REGEX_DOMAIN}": 550, f"nobody@{domain_name(0)}": 550, "x@not-hosted.bench.test": 550}
    answers = {address: answer_on_fresh(port, address) for address in checks}
    notes["kinds_answered_right"] = all(answers[a] // 100 == c // 100 for a, c in checks.items())
    if not notes["kinds_answered_right"]:
        say(f"[wrong answers: {answers}]")

    picked = rng.sample(range(1, sizes.aliases), min(sizes.cold, sizes.aliases - 1))
    addresses = [alias_address(i, sizes.domains) for i in picked]
    with Session(port) as s:
        cold, refused_cold = ask(port, addresses, s)
        warm, refused_warm = ask(port, addresses, s)
    if refused_cold or refused_warm:
        raise BenchError(f"existing aliases refused: {refused_cold} cold, {refused_warm} warm")
    fig["cold_p99_ms"], fig["warm_p99_ms"] = percentile(cold, 99), percentile(warm, 99)
    notes["cold_p50_ms"], notes["warm_p50_ms"] = percentile(cold, 50), percentile(warm, 50)
    notes["rcpts"] = len(cold)
    say(f"RCPT cold p50/p99 {notes['cold_p50_ms']:.2f}/{fig['cold_p99_ms']:.2f} ms, "
        f"warm {notes['warm_p50_ms']:.2f}/{fig['warm_p99_ms']:.2f} ms ({len(cold):,} each)")

    new = f"new-alias@{domain_name(sizes.domains // 2)}"
    for _ in range(processes):  # every process has the answer cached (negative) before the change
        if answer_on_fresh(port, new) != 550:
            raise BenchError(f"{new} answered before it was added")
    added_at = time.perf_counter()
    inst.cli("alias", "add", new, DESTINATION)
    committed = time.perf_counter()
    fig["change_s"] = wait_for_answer(port, new, 250, processes, CHANGE_TIMEOUT)
    notes["change_cli_s"] = committed - added_at
    say(f"alias add answered 250 by every MX process {fig['change_s'] * 1000:.0f} ms after the CLI exited")

    bulk = inst.root.parent / "bulk.virtual"
    with open(bulk, "w") as f:
        for i in range(sizes.bulk):
            f.write(f"bulk{i:05d}@{domain_name(i % sizes.domains)}  {DESTINATION}\n")
    asked = rng.sample(range(sizes.aliases), min(500, sizes.aliases))
    existing = [alias_address(i, sizes.domains) for i in asked]
    with Pingers(port, processes) as pingers, Askers(port, processes, existing):
        time.sleep(2.0)
        quiet_end = control_start = time.perf_counter()
        for i in range(sizes.adds):  # the same CLI runs, changing nothing: what CPU contention alone costs
            inst.cli("alias", "list", "--domain", domain_name(i % sizes.domains), "--search", "no-such-text")
        inst.cli("alias", "import", "--dry-run", str(bulk), timeout=300)
        time.sleep(1.0)
        control_end = changes_start = time.perf_counter()
        for i in range(sizes.adds):
            inst.cli("alias", "add", f"stall{i:03d}@{domain_name(i % sizes.domains)}", DESTINATION)
        inst.cli("alias", "import", str(bulk), timeout=300)
        time.sleep(1.0)  # the daemon polls the change log every 0.2 s: let it see the last change
        changes_end = time.perf_counter()
    quiet = pingers.between(quiet_end - 2.0, quiet_end)
    control = pingers.between(control_start, control_end)
    notes["stall_control_max_ms"] = max(control)
    notes["stall_control_p99_ms"] = percentile(control, 99)
    busy = pingers.between(changes_start, changes_end)
    fig["stall_max_ms"] = max(busy)
    notes["stall_p99_ms"] = percentile(busy, 99)
    notes["stall_samples"] = len(busy)
    notes["quiet_noop_max_ms"] = max(quiet) if quiet else float("nan")
    notes["quiet_noop_p99_ms"] = percentile(quiet, 99)
    notes["changes_s"] = changes_end - changes_start
    say(f"NOOP during {sizes.adds} adds + an import of {sizes.bulk:,}: max {fig['stall_max_ms']:.1f} ms, "
        f"p99 {notes['stall_p99_ms']:.1f} ms ({len(busy):,} round trips; quiet before: max "
        f"{notes['quiet_noop_max_ms']:.1f}, p99 {notes['quiet_noop_p99_ms']:.1f}; the same CLI runs "
        f"changing nothing: max {notes['stall_control_max_ms']:.1f}, "
        f"p99 {notes['stall_control_p99_ms']:.1f})")
    last = f"bulk{sizes.bulk - 1:05d}@{domain_name((sizes.bulk - 1) % sizes.domains)}"
    notes["bulk_visible"] = answer_on_fresh(port, last) == 250


def target_rows(result: Result) -> list[dict[str, Any]]:
    rows = []
    for t in TARGETS:
        value = result.figures.get(t.key)
        if value is None:
            status = "not measured"
        else:
            status = "met" if (value <= t.limit if t.at_most else value >= t.limit) else "not met"
        rows.append({"target": t.name, "measured": value, "limit": t.limit, "unit": t.unit,
                     "at_most": t.at_most, "status": status})
    return rows


def render(rows: list[dict[str, Any]]) -> Iterator[str]:
    yield "| target | measured | limit | status |"
    yield "|---|--:|--:|---|"
    for r in rows:
        value = "" if r["measured"] is None else f"{r['measured']:,.2f} {r['unit']}"
        limit = f"{'≤' if r['at_most'] else '≥'} {r['limit']:,} {r['unit']}"
        status = r["status"] if r["status"] == "met" else f"**{r['status']}**"
        yield f"| {r['target']} | {value} | {limit} | {status} |"


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.directory", description=__doc__.splitlines()[0])
    p.add_argument("--aliases", type=int, help="exact aliases (default 100,000; 5,000 with --quick)")
    p.add_argument("--domains", type=int, help="domains they spread over (default 100; 50 with --quick)")
    p.add_argument("--quick", action="store_true", help="a try-out at a small size")
    p.add_argument("--cold", type=int, help="RCPTs in the cold and in the warm pass (default 2,000)")
    p.add_argument("--mx-workers", type=int, help="[mx] workers (default: one per core)")
    p.add_argument("--json", default="bench/results/directory.json", help="where the JSON goes")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--create-domains", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.aliases is not None and args.aliases < 10:
        p.error("--aliases: at least 10")
    if args.domains is not None and args.domains < 1:
        p.error("--domains: at least 1")
    return args


def sizes_of(args: argparse.Namespace) -> Sizes:
    aliases = args.aliases or (5_000 if args.quick else 100_000)
    domains = args.domains or (50 if args.quick else 100)
    cold = args.cold or (300 if args.quick else 2_000)
    return Sizes(aliases=aliases, domains=domains, cold=min(cold, aliases - 1),
                 adds=5 if args.quick else 20, bulk=200 if args.quick else 1_000)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.create_domains:
        create_domains_main(args.create_domains)
        return 0
    if args.mx_workers:
        os.environ["FWDMAIL_BENCH_MX_WORKERS"] = str(args.mx_workers)
    sizes = sizes_of(args)
    workdir = Path(tempfile.mkdtemp(prefix="fwdmail-dirbench-"))
    started = time.time()
    print(f"directory bench: {sizes.aliases:,} aliases over {sizes.domains:,} domains in {workdir}",
          flush=True)
    try:
        result = run(sizes, workdir, lambda text: print("  " + text, flush=True))
    except BenchError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = target_rows(result)
    print()
    for line in render(rows):
        print(line)
    report = {
        "meta": {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "commit": _commit(),
                 "cores": os.cpu_count(), "python": sys.version.split()[0], "seconds": time.time() - started,
                 "sizes": sizes.__dict__, "load_average": os.getloadavg()},
        "targets": rows, "figures": result.figures, "notes": result.notes,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
