"""The measurements, one method per kind of row; each returns `Record`s and never raises for a failed run.

Servers start on first use and stay up for the whole bench (one sink, one Postfix, one fwdmail, one
floor); counters are cumulative, so every run takes a baseline first and waits for its own messages.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.support.smtp_sink import SmtpSink as CapturingServer

from . import fwd
from .clients import hold_idle_sessions, measure_latency, submit
from .dns_helper import DnsHelper
from .floor import Floor
from .plan import KIB, MIB, Plan, Workload
from .postfix import Postfix
from .postfix_stack import PostfixStack, StackKeys
from .procs import LOOPBACK, BenchError, CpuMeter, Roots, RssSampler, tree_memory_kib
from .report import FLOOR, OPENSSL, STACK, Record
from .sanity import check_fwdmail, check_postfix_stack
from .signing import SIGNATURES_PER_SEAL, signing_rates
from .sink import SmtpSink, SourceRun, smtp_source

WARM_UP = 500
"""MX messages a restarted fwdmail forwards before a memory row."""
SETTLE = 1.0
"""Pause between runs so one run's tail (queue flushes, closing sockets) does not land in the next."""


@dataclass(frozen=True)
class Target:
    """Where a system listens for MX traffic, which processes to watch, whether mail reaches the sink."""

    port: int
    pid: int
    reaches_sink: bool
    helpers: tuple[int, ...] = ()
    """Daemons outside `pid`'s tree that serve it (the postfix-stack's milters and postsrsd)."""

    @property
    def roots(self) -> Roots:
        return (self.pid, *self.helpers) if self.helpers else self.pid


def _percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class Bench:
    """Runs measurements against lazily started servers; `close()` stops everything it started."""

    def __init__(self, plan: Plan, workdir: Path, progress: Callable[[str], None]) -> None:
        self.plan = plan
        self.workdir = workdir
        self.progress = progress
        self.source_output = workdir / "smtp-source.out"
        self._stack = ExitStack()
        self._sink: SmtpSink | None = None
        self._floor: Floor | None = None
        self._postfix: Postfix | None = None
        self._fwdmail: fwd.Fwdmail | None = None
        self._capture: CapturingServer | None = None
        self._dns: DnsHelper | None = None
        self._postfix_stack: PostfixStack | None = None
        self._stack_keys: StackKeys | None = None
        self.sanity: dict[str, bool] = {}
        """What the sanity check proved about the fwdmail under test (empty if fwdmail was not run)."""
        self.stack_sanity: dict[str, bool] = {}
        """The same for the postfix-stack (empty if it was not run)."""
        self.peaks: dict[tuple[str, int, int], float] = {}
        """(system, size, round) -> msgs/s of the reuse workload, for the latency row's offered rate."""

    # ------------------------------------------------------------------ servers
    def close(self) -> None:
        self._stack.close()

    def sink(self) -> SmtpSink:
        if self._sink is None:
            self._sink = SmtpSink(self.workdir).start()
            self._stack.callback(self._sink.stop)
        return self._sink

    def floor(self) -> Floor:
        if self._floor is None:
            self._floor = Floor(self.workdir).start()
            self._stack.callback(self._floor.stop)
        return self._floor

    def postfix(self) -> Postfix:
        if self._postfix is None:
            instance = Postfix(self.workdir, self.sink().port, fwd.ALIAS, fwd.DESTINATION)
            self._stack.callback(instance.stop)
            self._postfix = instance.start()
        return self._postfix

    def dns(self) -> DnsHelper:
        """The loopback DNS: the sender's SPF and DMARC, and the postfix-stack's ARC and DKIM keys."""
        if self._dns is None:
            self._stack_keys = StackKeys.make(self.workdir / "stack-keys", fwd.HOSTED_DOMAIN)
            self._dns = DnsHelper(fwd.DNS_RECORDS + self._stack_keys.records()).start()
            self._stack.callback(self._dns.stop)
        return self._dns

    def capture(self) -> CapturingServer:
        """The sanity checks' capturing server (mail for fwd.CHECK_DOMAIN goes there)."""
        if self._capture is None:
            self._capture = CapturingServer(LOOPBACK).start()
            self._stack.callback(self._capture.stop)
        return self._capture

    def postfix_stack(self) -> PostfixStack:
        if self._postfix_stack is None:
            dns, capture = self.dns(), self.capture()
            assert self._stack_keys is not None
            instance = PostfixStack(
                self.workdir, self.sink().port, fwd.ALIAS, fwd.DESTINATION, dns=dns.address,
                keys=self._stack_keys, routes={fwd.CHECK_DOMAIN: capture.port},
                extra_aliases={fwd.CHECK_ALIAS: f"inbox@{fwd.CHECK_DOMAIN}"})
            self._stack.callback(instance.stop)
            self._postfix_stack = instance.start()
            try:
                self.stack_sanity = check_postfix_stack(instance, capture, dns.address)
            except (BenchError, AssertionError, OSError) as exc:
                self.progress(f"[red]sanity check of the postfix-stack failed: {exc}[/red]")
                self.stack_sanity = {"sanity check ran": False}
            for name, passed in self.stack_sanity.items():
                self.progress(f"  sanity: {name}: {'ok' if passed else '[red]FAILED[/red]'}")
        return self._postfix_stack

    def fwdmail(self) -> fwd.Fwdmail:
        if self._fwdmail is None:
            dns, capture = self.dns(), self.capture()
            instance = fwd.Fwdmail(self.workdir, self.sink().port, capture.port, dns.address).set_up()
            self._stack.callback(instance.stop)
            self._fwdmail = instance.start()
            self.sanity = self._check(self._fwdmail)
        elif not self._fwdmail.alive():
            self.progress("[red]fwdmail serve had exited; restarting it[/red]")
            self._fwdmail.start()
        return self._fwdmail

    def _check(self, instance: fwd.Fwdmail) -> dict[str, bool]:
        try:
            checks = check_fwdmail(instance, self.capture())
        except (BenchError, AssertionError, OSError) as exc:
            self.progress(f"[red]sanity check of fwdmail failed: {exc}[/red]")
            return {"sanity check ran": False}
        for name, passed in checks.items():
            self.progress(f"  sanity: {name}: {'ok' if passed else '[red]FAILED[/red]'}")
        return checks

    def fresh(self, system: str) -> None:
        """Bring `system` to a state that does not depend on which rows ran before a memory row.

        fwdmail is restarted and forwards a few hundred messages (Python keeps the heap it grew under
        earlier load); Postfix is restarted, which ends the idle `smtpd` processes earlier runs left.
        """
        if system == "postfix":
            self.postfix().restart()
        if system != "fwdmail":
            return
        instance = self.fwdmail()
        instance.stop()
        instance.start()
        target = self.target(system)
        base = self.sink().delivered()
        run = smtp_source(target.port, count=WARM_UP, size=4 * KIB, sessions=20, reuse=True,
                          sender=fwd.SENDER, recipient=fwd.ALIAS, cap=120, output=self.source_output)
        if not run.ok or run.capped:
            raise BenchError(f"warm-up after restart failed: {run.output}")
        self.sink().wait_for(base + WARM_UP, 60)

    def target(self, system: str) -> Target:
        if system == "harness":
            sink = self.sink()
            return Target(sink.port, sink.pid, reaches_sink=True)
        if system == FLOOR:
            floor = self.floor()
            return Target(floor.port, floor.pid, reaches_sink=False)
        if system == "postfix":
            postfix = self.postfix()
            master = postfix.master_pid()
            if master is None:
                raise BenchError("Postfix has no master.pid")
            return Target(postfix.mx_port, master, reaches_sink=True)
        if system == STACK:
            stack = self.postfix_stack()
            master, *helpers = stack.pids()
            return Target(stack.mx_port, master, reaches_sink=True, helpers=tuple(helpers))
        fwdmail = self.fwdmail()
        return Target(fwdmail.ports.mx, fwdmail.pid, reaches_sink=True)

    # ---------------------------------------------------------------- throughput
    def throughput(self, system: str, workload: Workload, round_: int) -> Record:
        """smtp-source into `system`; end to end = until the sink counted every message."""
        record = Record(system, workload.label, round_, "msg/s", None)
        policy_changed = False
        try:
            if system == "fwdmail-noauth":
                self.fwdmail().set_auth_policy("off")
                policy_changed = True
            self._throughput(self.target(system.removesuffix("-noauth")), workload, record)
        except BenchError as exc:
            record.error = str(exc)
        finally:
            if policy_changed:
                self.fwdmail().set_auth_policy("enforce")
        if record.value is not None and workload.reuse:
            self.peaks[(system, workload.size, round_)] = record.value
        time.sleep(SETTLE)
        return record

    def _throughput(self, target: Target, workload: Workload, record: Record) -> None:
        sink = self.sink()
        base = sink.delivered()
        cpu = CpuMeter(target.roots, self._dns_pid())
        with RssSampler(target.roots) as rss:
            run = smtp_source(target.port, count=workload.count, size=workload.size,
                              sessions=workload.sessions, reuse=workload.reuse, sender=fwd.SENDER,
                              recipient=fwd.ALIAS, cap=self.plan.run_cap_s, output=self.source_output)
            if not run.ok:
                raise BenchError(f"smtp-source: {run.output}")
            sent, done = self._end_to_end(target, run, base, workload.count)
        server_cpu, dns_cpu = cpu.used()
        record.value = sent / (done - run.started)
        record.peak_rss_mib = rss.peak_mib
        record.cpu_ms_per_msg = server_cpu * 1000 / sent
        record.detail = {"sent": sent, "accept_s": run.elapsed, "end_to_end_s": done - run.started,
                         "capped": run.capped}
        notes = []
        if run.capped:
            notes.append(f"stopped at {self.plan.run_cap_s:.0f} s: {sent:,} of {workload.count:,} sent")
        elif done - run.finished > 0.5:
            notes.append(f"accepts at {workload.count / run.elapsed:,.0f}/s")
        if dns_cpu > 0.01 * server_cpu:
            record.detail["dns_server_cpu_ms_per_msg"] = dns_cpu * 1000 / sent
            notes.append(f"+{dns_cpu * 1000 / sent:.2f} ms/msg in the bench's DNS server")
        record.note = "; ".join(notes)
        if not run.capped:
            self._check_no_duplicates(sink, base, workload.count if target.reaches_sink else 0, record)

    def _dns_pid(self) -> int | None:
        return self._dns.proc.pid if self._dns and self._dns.proc else None

    def _end_to_end(self, target: Target, run: SourceRun, base: int, count: int) -> tuple[int, float]:
        """Messages that made it and when the last one did: at the sink, or at the floor's 250."""
        sink = self.sink()
        if not target.reaches_sink:
            return (run.completed if run.capped else count), run.finished
        if run.capped:
            delivered, moved = sink.wait_settled(quiet=2.0, timeout=self.plan.timeout_for(count))
            return delivered - base, moved
        return count, sink.wait_for(base + count, self.plan.timeout_for(count))

    @staticmethod
    def _check_no_duplicates(sink: SmtpSink, base: int, expected: int, record: Record) -> None:
        time.sleep(0.3)
        extra = sink.delivered() - base - expected
        if extra > 0:
            record.error = f"sink counted {extra} more messages than sent"

    # ------------------------------------------------------------------ latency
    def latency(self, system: str, size: int, round_: int) -> Record:
        """DATA-to-reply latency at half of the peak rate measured just before (reused sessions)."""
        label = f"{size // KIB} KB at ½ peak rate"
        record = Record(system, label, round_, "msg/s", None)
        try:
            target = self.target(system)
            peak = self.peaks.get((system, size, round_)) or self._short_peak(system, size, round_)
            rate = peak / 2
            count = min(int(rate * self.plan.latency_seconds), self.plan.latency_max_messages)
            base = self.sink().delivered()
            cpu = CpuMeter(target.roots)
            with RssSampler(target.roots) as rss:
                client_cpu = time.thread_time()
                result = asyncio.run(measure_latency(
                    target.port, rate=rate, count=max(count, 1), duration=self.plan.latency_seconds,
                    size=size, sessions=self.plan.latency_sessions, sender=fwd.SENDER, recipient=fwd.ALIAS))
                client_cpu = time.thread_time() - client_cpu
            if target.reaches_sink:
                self.sink().wait_for(base + result.sent, self.plan.timeout_for(result.sent))
            server_cpu = cpu.used()[0]
            if result.failed or result.errors or not result.latencies:
                raise BenchError(f"{result.failed} refused; {'; '.join(result.errors[:3])}")
            record.value = result.achieved_rate
            record.p50_ms = _percentile(result.latencies, 50) * 1000
            record.p99_ms = _percentile(result.latencies, 99) * 1000
            record.peak_rss_mib = rss.peak_mib
            record.cpu_ms_per_msg = server_cpu * 1000 / result.sent
            client_share = client_cpu / result.elapsed if result.elapsed else 0.0
            record.note = f"offered {rate:,.0f}/s; client CPU {client_share:.0%} of a core"
            record.detail = {"sent": result.sent, "max_ms": max(result.latencies) * 1000,
                             "client_cpu_ms_per_msg": client_cpu * 1000 / result.sent,
                             "client_cpu_share_of_a_core": client_share}
        except BenchError as exc:
            record.error = str(exc)
        time.sleep(SETTLE)
        return record

    def _short_peak(self, system: str, size: int, round_: int) -> float:
        """The reuse workload's rate, measured briefly when the throughput rows were not selected."""
        count = max(200, min(2_000, 200 * MIB // (size * 10)))
        record = self.throughput(system, Workload(size, count, True), round_)
        if record.value is None:
            raise BenchError(f"no peak rate to offer half of: {record.error}")
        return record.value

    # ---------------------------------------------------------------- submission
    def submission(self, system: str, round_: int) -> list[Record]:
        """N messages over STARTTLS from K clients: accept rate (durable 250s) and drain to the sink."""
        plan = self.plan
        stem = f"{plan.submit_count:,} × {plan.submit_size // KIB} KB, {plan.submit_clients} TLS clients"
        accept = Record(system, f"submit {stem}: accept", round_, "msg/s", None)
        drain = Record(system, f"submit {stem}: drain", round_, "msg/s", None)
        try:
            port, roots, login = self._submission_endpoint(system)
            sink = self.sink()
            base = sink.delivered()
            timeout = plan.timeout_for(plan.submit_count)
            cpu = CpuMeter(roots)
            with RssSampler(roots) as rss:
                result = asyncio.run(submit(
                    port, count=plan.submit_count, clients=plan.submit_clients, size=plan.submit_size,
                    sender=fwd.ALIAS, recipient=fwd.OUTBOUND_RECIPIENT, login=login, timeout=timeout))
                if result.errors or result.accepted != plan.submit_count:
                    raise BenchError(f"{result.accepted} accepted; {'; '.join(result.errors[:3])}")
                accept.cpu_ms_per_msg = cpu.used()[0] * 1000 / plan.submit_count
                done = sink.wait_for(base + plan.submit_count, timeout)
            accept.value = result.accept_rate
            drain.value = plan.submit_count / (done - result.started)
            accept.peak_rss_mib = drain.peak_rss_mib = rss.peak_mib
            drain.cpu_ms_per_msg = cpu.used()[0] * 1000 / plan.submit_count
            drain.note = {"fwdmail": "DKIM-signed", STACK: "DKIM-signed (OpenDKIM)"}.get(system, "not signed")
            accept.note = {"fwdmail": "AUTH PLAIN once per session",
                           STACK: "AUTH PLAIN once per session (Cyrus SASL, sasldb2)"}.get(
                               system, "no AUTH (mynetworks)")
            self._check_no_duplicates(sink, base, plan.submit_count, drain)
        except BenchError as exc:
            accept.error = drain.error = str(exc)
        time.sleep(SETTLE)
        return [accept, drain]

    def _submission_endpoint(self, system: str) -> tuple[int, Roots, tuple[str, str] | None]:
        if system == "postfix":
            postfix = self.postfix()
            return postfix.submission_port, self.target("postfix").pid, None
        if system == STACK:
            stack = self.postfix_stack()
            return stack.submission_port, self.target(STACK).roots, (fwd.ALIAS, stack.password)
        fwdmail = self.fwdmail()
        return fwdmail.ports.submission, fwdmail.pid, (fwd.ALIAS, fwdmail.password)

    # ------------------------------------------------------------------- memory
    def idle_sessions(self, system: str, round_: int) -> Record:
        """Memory with N idle MX sessions (greeting read, EHLO answered), after they settled for 2 s."""
        record = Record(system, f"{self.plan.idle_sessions:,} idle MX sessions", round_, "MiB", None)
        try:
            self.fresh(system)
            target = self.target(system)
            before = tree_memory_kib(target.pid)
            established, memory = asyncio.run(hold_idle_sessions(
                target.port, self.plan.idle_sessions, hold=2.0, measure=lambda: tree_memory_kib(target.pid)))
            if established < self.plan.idle_sessions:
                said = self._postfix.warnings() if system == "postfix" and self._postfix else ""
                raise BenchError(f"{established} of {self.plan.idle_sessions} sessions established {said}")
            record.value = memory / 1024
            record.note = f"{before / 1024:,.1f} MiB before"
            record.detail = {"before_mib": before / 1024}
        except BenchError as exc:
            record.error = str(exc)
        if system == "postfix":
            self.fresh(system)  # the thousand smtpd processes would otherwise linger for max_idle
        time.sleep(SETTLE)
        return record

    def big_message(self, system: str, round_: int) -> Record:
        """Peak memory while one large message is forwarded (or discarded, for the floor)."""
        size = self.plan.big_message
        record = Record(system, f"one {size // MIB} MiB message", round_, "MiB", None)
        try:
            self.fresh(system)
            target = self.target(system)
            sink = self.sink()
            base = sink.delivered()
            with RssSampler(target.pid, interval=0.05) as rss:
                run = smtp_source(target.port, count=1, size=size, sessions=1, reuse=False,
                                  sender=fwd.SENDER, recipient=fwd.ALIAS, cap=120, output=self.source_output)
                if run.capped:
                    raise BenchError("the message was not accepted within 120 s")
                if not run.ok:
                    raise BenchError(f"smtp-source: {run.output[-300:]}")
                if target.reaches_sink:
                    sink.wait_for(base + 1, 120)
            record.value = rss.peak_mib
            record.note = "peak; summed PSS for several processes"
        except BenchError as exc:
            record.error = str(exc)
        time.sleep(SETTLE)
        return record

    # ------------------------------------------------------------------ signing
    def signing(self, round_: int) -> list[Record]:
        """fwdmail's DKIM signing and ARC sealing rates beside OpenSSL's raw RSA-2048 signing rate."""
        workload = "RSA-2048 signatures, 1 thread"
        records = []
        try:
            rates = signing_rates(self.plan.sign_slices)
            records.append(Record(OPENSSL, workload, round_, "sig/s", rates["openssl"], floor_ref=OPENSSL,
                                  note="openssl speed rsa2048"))
            records.append(Record("fwdmail DKIM sign", workload, round_, "sig/s", rates["dkim_sign"],
                                  floor_ref=OPENSSL, note="4 KB message"))
            seals = rates["arc_seal"] / SIGNATURES_PER_SEAL
            records.append(Record("fwdmail ARC seal", workload, round_, "sig/s", rates["arc_seal"],
                                  floor_ref=OPENSSL, note=f"4 KB message; {seals:,.0f} seals/s, each"
                                  f" {SIGNATURES_PER_SEAL} signatures (AMS + AS)"))
            for record in records:  # sig/s per CPU-second: its CPU ms per signature is the inverse
                record.cpu_ms_per_msg = 1000 / record.value if record.value else None
        except BenchError as exc:
            records.append(Record(OPENSSL, workload, round_, "sig/s", None, floor_ref=OPENSSL,
                                  error=str(exc)))
        return records
