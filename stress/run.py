"""Load and soak run of the real `fwdmail serve` (not a test): bounded, prints progress and a summary
table, writes the figures as JSON.

Phase 1 (sessions): idle MX sessions held open, 10 from each loopback source address (the default
`[abuse] max_connections_per_ip`), while other clients forward messages; one more connection from a full
address must get 421 4.7.0, and every held session must still answer NOOP afterwards.
Phase 2 (soak): MX messages forwarded and messages submitted (STARTTLS + AUTH PLAIN) at the same time,
into a counting sink in its own process; the daemon's RSS and open descriptors are sampled throughout.
Lost = answered 250 but never arrived at the sink. With --with-tests, the fault-injection and
hostile-input test modules run too and are counted.

The daemon runs with `[abuse] max_messages_per_ip_per_minute` raised to 10,000,000 (a load client
sends far more than 60 a minute); every other limit keeps its default. Sender checks (SPF, DMARC) run
against a loopback DNS server with records for the senders' domains.

    python3 -m stress.run --quick              # ~2 minutes: 100 sessions, 5,000 + 500 messages
    python3 -m stress.run                      # full: 1,000 sessions, 100,000 + 10,000 messages
    python3 -m stress.run --quick --with-tests
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import ssl
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stress import load, procstat, suites  # noqa: E402
from stress.dns import DnsProcess  # noqa: E402
from stress.sink import CountingSink  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402
from tests.support.mx import cli, cli_batch  # noqa: E402

PER_IP = 10
HELD_FORWARDING_SECONDS = 200.0
SENDER_DOMAINS = 100
LOGIN = "sender@stress.test"
SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "load.test", "--account", "owner@owner.test"],
    ["alias", "add", "fan@load.test", "dest@dest.test"],
    ["domain", "add", "stress.test", "--account", "owner@owner.test"],
    ["alias", "add", LOGIN, "owner@dest.test"],
]


@dataclass(frozen=True)
class Profile:
    name: str
    held: int
    held_messages: int
    mx_messages: int
    submissions: int
    mx_clients: int
    submission_clients: int
    mx_per_session: int
    submissions_per_session: int
    budget: float  # seconds for phases 1 and 2 together
    test_timeout: float  # seconds per test module with --with-tests


QUICK = Profile("quick", held=100, held_messages=500, mx_messages=5_000, submissions=500, mx_clients=8,
                submission_clients=4, mx_per_session=100, submissions_per_session=50, budget=600,
                test_timeout=600)
FULL = Profile("full", held=1_000, held_messages=5_000, mx_messages=100_000, submissions=10_000,
               mx_clients=16, submission_clients=8, mx_per_session=200, submissions_per_session=250,
               budget=1_380, test_timeout=900)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the daemon's generated pair is self-signed
    return ctx


async def settle_fds(pid: int, timeout: float = 60.0) -> int:
    """The daemon's open descriptors once the count stops changing (4 equal readings 0.5 s apart)."""
    deadline = time.monotonic() + timeout
    last, same = -1, 0
    while time.monotonic() < deadline:
        now = procstat.open_fds(pid)
        same = same + 1 if now == last else 0
        last = now
        if same >= 3:
            break
        await asyncio.sleep(0.5)
    return last


async def wait_delivered(sink: CountingSink, want: dict[str, int], deadline: float,
                         stall: float = 90.0) -> dict[str, Any]:
    """Poll the sink until every kind reached its count, nothing arrived for `stall` s, or `deadline`."""
    last_total, last_change = -1, time.monotonic()
    while True:
        stats = await asyncio.to_thread(sink.stats)
        got = stats["received"]
        if all(got.get(k, 0) >= n for k, n in want.items()):
            return stats
        total = sum(got.values())
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        if time.monotonic() - last_change > stall or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(1.0)


class Progress:
    """Prints a progress line every `interval` seconds while a phase runs."""

    def __init__(self, pid: int, sink: CountingSink, interval: float = 10.0) -> None:
        self.pid = pid
        self.sink = sink
        self.interval = interval
        self.tallies: dict[str, load.Tally] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
                return
            except TimeoutError:
                pass
            try:
                got = (await asyncio.to_thread(self.sink.stats))["received"]
                rss, fds = procstat.rss_kib(self.pid), procstat.open_fds(self.pid)
            except (OSError, RuntimeError):
                return
            parts = [f"{k} {t.sent} sent/{len(t.ok)} ok/{got.get(k, 0)} recv"
                     for k, t in self.tallies.items()]
            say(f"  {'; '.join(parts)}; daemon RSS {rss / 1024:.0f} MiB, {fds} fds")


async def phase_sessions(d: Daemon, prof: Profile, progress: Progress, sink: CountingSink,
                         deadline: float) -> dict[str, Any]:
    pid = d.proc.pid  # type: ignore[union-attr]
    say(f"phase 1: holding {prof.held} MX sessions ({PER_IP} from each of {prof.held // PER_IP} addresses)")
    held = load.Held()
    ips = load.addresses("1", prof.held // PER_IP)
    t0 = time.monotonic()
    await held.open(d.mx_port, ips, PER_IP)
    opened = len(held.sessions)
    say(f"  {opened} sessions open in {time.monotonic() - t0:.1f} s; refused: {dict(held.refused) or 'none'}")
    fds_held = procstat.open_fds(pid)
    rss_held = procstat.rss_kib(pid)
    tally = load.Tally()
    progress.tallies = {"held": tally}
    numbers = load.shared(prof.held_messages)
    senders = load.addresses("2", prof.mx_clients)
    tally.started = time.monotonic()
    # the held sessions are idle since their EHLO: stay well inside [abuse] idle_timeout (300 s)
    forward_until = min(deadline, time.monotonic() + HELD_FORWARDING_SECONDS)
    await asyncio.gather(*(load.mx_sender(d.mx_port, ip, numbers, tally, SENDER_DOMAINS, prof.mx_per_session,
                                          forward_until, kind="held") for ip in senders))
    tally.ended = time.monotonic()
    say(f"  forwarded while held: {len(tally.ok)}/{tally.sent} answered 250 "
        f"({tally.sent / max(tally.ended - tally.started, 1e-9):.0f}/s)")
    limit_code, limit_text = await load.limit_probe(d.mx_port, ips[0])
    limit_ok = limit_code == 421 and limit_text.startswith("4.7.0")
    say(f"  one more connection from a full address: {limit_code} {limit_text[:40]}")
    answering = await held.noop_all()
    say(f"  held sessions answering NOOP afterwards: {answering}/{opened}")
    await held.close()
    stats = await wait_delivered(sink, {"held": len(tally.ok)}, deadline)
    ids = (await asyncio.to_thread(sink.ids)).get("held", set())
    return {"wanted": prof.held, "opened": opened, "target_messages": prof.held_messages,
            "refused": dict(held.refused), "answering_noop": answering,
            "fds_while_held": fds_held, "rss_kib_while_held": rss_held,
            "limit_probe": {"code": limit_code, "text": limit_text, "ok": limit_ok},
            "forwarded": tally.summary(), "received": stats["received"].get("held", 0),
            "lost": len(tally.ok - ids), "duplicates": stats["duplicates"].get("held", 0)}


async def phase_soak(d: Daemon, prof: Profile, password: str, sampler: procstat.Sampler, progress: Progress,
                     sink: CountingSink, deadline: float) -> dict[str, Any]:
    pid = d.proc.pid  # type: ignore[union-attr]
    fds_before = await settle_fds(pid)
    rss_before = procstat.rss_kib(pid)
    cpu_before = procstat.cpu_seconds(pid)
    others_before = (procstat.cpu_seconds(sink.proc.pid), time.process_time())  # type: ignore[arg-type]
    say(f"phase 2: soak, {prof.mx_messages} forwarded + {prof.submissions} submitted; daemon idle at "
        f"{rss_before / 1024:.0f} MiB RSS, {fds_before} fds")
    mx, sub = load.Tally(), load.Tally()
    progress.tallies = {"mx": mx, "sub": sub}
    mx_numbers, sub_numbers = load.shared(prof.mx_messages), load.shared(prof.submissions)
    tls = client_tls()
    sampler.samples.clear()
    sampler.started = time.monotonic()

    async def count() -> None:
        while True:
            sampler.progress = len(mx.ok) + len(sub.ok)
            await asyncio.sleep(0.5)

    counter = asyncio.ensure_future(count())
    mx.started = sub.started = time.monotonic()

    async def mx_side() -> None:
        await asyncio.gather(*(load.mx_sender(d.mx_port, ip, mx_numbers, mx, SENDER_DOMAINS,
                                              prof.mx_per_session, deadline)
                               for ip in load.addresses("3", prof.mx_clients)))
        mx.ended = time.monotonic()

    async def sub_side() -> None:
        await asyncio.gather(*(load.submitter(d.submission_port, ip, LOGIN, password, sub_numbers, sub,
                                              prof.submissions_per_session, deadline, tls)
                               for ip in load.addresses("4", prof.submission_clients)))
        sub.ended = time.monotonic()

    await asyncio.gather(mx_side(), sub_side())
    say(f"  sent: MX {len(mx.ok)}/{mx.sent} answered 250, submission {len(sub.ok)}/{sub.sent}; "
        "waiting for the sink")
    stats = await wait_delivered(sink, {"mx": len(mx.ok), "sub": len(sub.ok)}, deadline + 300)
    counter.cancel()
    sampler.progress = len(mx.ok) + len(sub.ok)
    drained = time.monotonic()
    ids = await asyncio.to_thread(sink.ids)
    cpu_used = procstat.cpu_seconds(pid) - cpu_before
    sink_cpu = procstat.cpu_seconds(sink.proc.pid) - others_before[0]  # type: ignore[arg-type]
    client_cpu = time.process_time() - others_before[1]
    fds_after = await settle_fds(pid, timeout=90)
    rss_after = procstat.rss_kib(pid)
    samples = list(sampler.samples)
    ok_total = len(mx.ok) + len(sub.ok)
    return {
        "mx": mx.summary(), "submission": sub.summary(),
        "target": {"mx": prof.mx_messages, "sub": prof.submissions},
        "received": {"mx": len(ids.get("mx", set())), "sub": len(ids.get("sub", set()))},
        "lost": {"mx": len(mx.ok - ids.get("mx", set())), "sub": len(sub.ok - ids.get("sub", set()))},
        "delivered_without_250": {"mx": len(ids.get("mx", set()) - mx.ok),
                                  "sub": len(ids.get("sub", set()) - sub.ok)},
        "duplicates": stats["duplicates"], "sink_messages": stats["messages"],
        "seconds_until_all_delivered": round(drained - mx.started, 1),
        "daemon_cpu_seconds": round(cpu_used, 1),
        "daemon_cpu_ms_per_message": round(cpu_used * 1000 / max(ok_total, 1), 2),
        "sink_cpu_seconds": round(sink_cpu, 1), "load_client_cpu_seconds": round(client_cpu, 1),
        "sink_connections": stats["connections"],
        "loadavg_after": os.getloadavg(),
        "rss_kib": {"idle_before": rss_before, "peak": max((s[1] for s in samples), default=0),
                    "idle_after": rss_after},
        "rss_trend": sampler.trend(),
        "fds": {"idle_before": fds_before, "peak": max((s[2] for s in samples), default=0),
                "idle_after": fds_after},
        "samples": [{"t": round(t, 1), "rss_kib": r, "fds": f, "ok": p} for t, r, f, p in samples],
    }


def stable(soak: dict[str, Any]) -> tuple[bool, str]:
    """The verdict on RSS: growth over the second half under 2 MiB or 3 % of the idle RSS."""
    trend = soak["rss_trend"]
    growth = trend["growth_over_second_half_kib"]
    allowed = max(2048.0, 0.03 * soak["rss_kib"]["idle_before"])
    return growth <= allowed, (f"{trend['kib_per_minute'] / 1024:+.2f} MiB/min, {growth / 1024:+.1f} MiB "
                               f"(limit {allowed / 1024:.1f})")


def _latency(t: dict[str, Any]) -> str:
    return f"{t['per_second']}/s, p50 {t['latency_ms']['p50']} ms, p99 {t['latency_ms']['p99']} ms"


def rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, figures, verdict) for the summary table."""
    out: list[tuple[str, str, str]] = []
    p1, soak = result.get("sessions"), result.get("soak")
    if result.get("load_error"):
        out.append(("load run", f"ended early: {result['load_error'][:90]}", "FAIL"))
    if p1:
        f = p1["forwarded"]
        out.append(("sessions held",
                    f"{p1['opened']} of {p1['wanted']} opened, {p1['answering_noop']} answered NOOP after "
                    f"{f['sent']} messages were forwarded beside them",
                    "ok" if p1["answering_noop"] == p1["wanted"] else "FAIL"))
        lp = p1["limit_probe"]
        out.append(("per-IP connection limit",
                    f"one more from a full address: {lp['code']} {lp['text'][:24]}",
                    "ok" if lp["ok"] else "FAIL"))
        out.append(("forwarded while held",
                    f"{f['ok_250']}/{f['sent']} x 250 (of {p1['target_messages']} planned), "
                    f"{p1['received']} received; {_latency(f)}",
                    "ok" if f["ok_250"] == f["sent"] else "FAIL"))
    if soak:
        for key, kind, label in (("mx", "mx", "soak: forwarded (MX)"),
                                 ("submission", "sub", "soak: submitted")):
            t = soak[key]
            out.append((label, f"{t['ok_250']}/{t['sent']} x 250 (of {soak['target'][kind]} planned), "
                               f"{soak['received'][kind]} at the sink; {_latency(t)}",
                        "ok" if t["ok_250"] == t["sent"] == soak["target"][kind] else
                        "short" if t["ok_250"] == t["sent"] else "FAIL"))
    lost = result["messages_lost"]
    out.append(("messages lost", f"{lost['total']} (load {lost['load']}, test tally {lost['tests']}); "
                                 "lost = answered 250, never arrived", "ok" if not lost["total"] else "FAIL"))
    out.append(("duplicates at the sink", str(result["duplicates"]),
                "ok" if not result["duplicates"] else "FAIL"))
    if soak:
        ok, why = stable(soak)
        r = {k: f"{v / 1024:.0f}" for k, v in soak["rss_kib"].items()}
        out.append(("daemon RSS", f"idle {r['idle_before']} MiB, peak {r['peak']}, idle after "
                                  f"{r['idle_after']}; second half: {why}", "stable" if ok else "GROWING"))
        fd = soak["fds"]
        leak = fd["idle_after"] > fd["idle_before"] + 2
        out.append(("daemon open fds",
                    f"idle {fd['idle_before']}, peak {fd['peak']}, idle after {fd['idle_after']}",
                    "LEAK?" if leak else "no leak"))
        out.append(("CPU during the soak",
                    f"daemon {soak['daemon_cpu_ms_per_message']} ms/message; load client "
                    f"{soak['load_client_cpu_seconds']} s, sink {soak['sink_cpu_seconds']} s; "
                    f"load average {soak['loadavg_after'][0]:.1f} at the end", ""))
    for group, label in (("faults", "faults injected and survived"), ("hostile", "hostile inputs tried")):
        g = result.get("tests", {}).get(group)
        if g is None:
            out.append((label, "not run (add --with-tests)", "n/a"))
            continue
        missing = [m["path"].rsplit("/", 1)[-1] for m in g["modules"] if m["status"] != "ran"]
        counted = f"{g['passed']}/{g['cases']} test cases passed"
        tallies = [t["tally"] for t in result["tests"].values()]
        if group == "faults" and any(t.get("faults injected") for t in tallies):
            injected = sum(t.get("faults injected", 0) for t in tallies)
            survived = sum(t.get("faults survived", 0) for t in tallies)
            counted += f"; the hostile modules tallied {survived} of {injected} faults survived"
        if group == "hostile" and g["tally"].get("hostile inputs tried"):
            counted = f"{g['tally']['hostile inputs tried']} inputs; {counted}"
        out.append((label, counted + (f"; not run: {', '.join(missing)}" if missing else ""),
                    "ok" if not g["failed"] else "FAIL"))
    return out


def table(result: dict[str, Any]) -> str:
    body = rows(result)
    w1 = max(len(a) for a, _, _ in body)
    w2 = max(len(b) for _, b, _ in body)
    rule = "-" * (w1 + w2 + 14)
    lines = [rule, f"{'':<{w1}}  {'':<{w2}}  verdict", rule]
    lines += [f"{a:<{w1}}  {b:<{w2}}  {c}" for a, b, c in body]
    return "\n".join([*lines, rule])


async def load_phases(d: Daemon, prof: Profile, password: str, sink: CountingSink) -> dict[str, Any]:
    pid = d.proc.pid  # type: ignore[union-attr]
    deadline = time.monotonic() + prof.budget
    sampler = procstat.Sampler(pid)
    progress = Progress(pid, sink)
    stop = asyncio.Event()
    background = [asyncio.ensure_future(sampler.run(stop)), asyncio.ensure_future(progress.run(stop))]
    try:
        sessions = await phase_sessions(d, prof, progress, sink, deadline)
        soak = await phase_soak(d, prof, password, sampler, progress, sink, deadline)
    finally:
        stop.set()
        await asyncio.gather(*background, return_exceptions=True)
    return {"sessions": sessions, "soak": soak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m stress.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 sessions, 5,000 + 500 messages")
    parser.add_argument("--with-tests", action="store_true",
                        help="also run the fault-injection and hostile-input test modules and count them")
    parser.add_argument("--tests-only", action="store_true", help="only the test modules, no load")
    parser.add_argument("--sessions", type=int, help="override: MX sessions held in phase 1")
    parser.add_argument("--mx-messages", type=int, help="override: MX messages forwarded in the soak")
    parser.add_argument("--submissions", type=int, help="override: messages submitted in the soak")
    parser.add_argument("--budget", type=float, help="override: seconds allowed for phases 1 and 2")
    parser.add_argument("--json", type=Path, help="where to write the figures (default: WORKDIR/result.json)")
    parser.add_argument("--workdir", type=Path,
                        help="an empty working directory, kept afterwards (default: a new temporary one)")
    args = parser.parse_args(argv)
    prof = QUICK if args.quick else FULL
    overrides = {"held": args.sessions, "mx_messages": args.mx_messages, "submissions": args.submissions,
                 "budget": args.budget}
    prof = dataclasses.replace(prof, **{k: v for k, v in overrides.items() if v is not None})
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fwdmail-stress-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"profile": asdict(prof), "started": dt.datetime.now(dt.UTC).isoformat(),
                              "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
    say(f"fwdmail stress, {prof.name} profile, working in {workdir} ({os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f})")
    exit_code = 0
    if not args.tests_only:
        try:
            exit_code = run_load(prof, workdir, result)
        except Exception as exc:  # still print what was measured, and why the load run ended
            result["load_error"] = f"{type(exc).__name__}: {exc}"[:500]
            say(f"the load run failed: {result['load_error']}")
            exit_code = 1
    if args.with_tests or args.tests_only:
        result["tests"] = {}
        for group in suites.GROUPS:
            say(f"running the {group} test modules")
            g = suites.run_group(group, REPO, workdir, prof.test_timeout, workdir / "tests.log")
            result["tests"][group] = {"modules": [asdict(m) for m in g.modules], "passed": g.passed,
                                      "failed": g.failed, "cases": g.cases, "tally": g.tally}
            say(f"  {g.passed}/{g.cases} passed; " + ", ".join(
                f"{m.path.split('/')[-1]}: {m.status} {m.passed}/{m.passed + m.failed} in {m.seconds:.0f} s"
                for m in g.modules))
            if g.failed:
                exit_code = 1
    sessions, soak = result.get("sessions") or {}, result.get("soak") or {}
    load_lost = sessions.get("lost", 0) + sum((soak.get("lost") or {}).values())
    tests_lost = sum(g["tally"].get("messages lost", 0) for g in result.get("tests", {}).values())
    result["messages_lost"] = {"load": load_lost, "tests": tests_lost, "total": load_lost + tests_lost}
    result["duplicates"] = sessions.get("duplicates", 0) + sum((soak.get("duplicates") or {}).values())
    result["finished"] = dt.datetime.now(dt.UTC).isoformat()
    out = args.json or workdir / "result.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    print(table(result), flush=True)
    say(f"figures written to {out}")
    if result["messages_lost"]["total"] or any(verdict in ("FAIL", "GROWING", "LEAK?")
                                                for _, _, verdict in rows(result)):
        exit_code = 1
    return exit_code


def run_load(prof: Profile, workdir: Path, result: dict[str, Any]) -> int:
    """Phases 1 and 2 against one daemon, with its DNS server and sink; fills `result`."""
    dns = DnsProcess(SENDER_DOMAINS)
    sink = CountingSink()
    d: Daemon | None = None
    try:
        (workdir / "daemon").mkdir()
        d = Daemon(workdir / "daemon", {
            "log_level": "info",
            "shutdown_timeout": 30,
            "dns": {"nameservers": [dns.address], "timeout": 5},
            "delivery": {"routes": {"dest.test": sink.address}, "connect_timeout": 30,
                         "command_timeout": 60, "data_timeout": 60},
            "abuse": {"max_messages_per_ip_per_minute": 10_000_000},
        })
        cli_batch(d, SETUP)
        password = json.loads(cli(d, "alias", "password", LOGIN, "--json").stdout)["password"]
        d.start(timeout=60)
        say(f"daemon pid {d.proc.pid} on MX port {d.mx_port}; sink in pid {sink.proc.pid}, "  # type: ignore[union-attr]
            f"DNS in pid {dns.proc.pid}")
        result.update(asyncio.run(load_phases(d, prof, password, sink)))
        code = d.stop(timeout=90)
        result["daemon_exit_code"] = code
        result["daemon_log_bytes"] = d.log_path.stat().st_size
        tracebacks = d.logs().count("Traceback")
        result["daemon_log_tracebacks"] = tracebacks
        say(f"daemon stopped with exit code {code}; its log has {tracebacks} traceback(s)")
        return 0 if code == 0 and not tracebacks else 1
    finally:
        if d is not None:
            d.kill()
        sink.stop()
        dns.stop()


if __name__ == "__main__":
    sys.exit(main())
