"""The real `fwdmail serve` as a subprocess, set up through its own CLI, forwarding to the sink.

The config is the default one except: loopback ports, a loopback DNS server, `[delivery.routes]` to the
sink, and `[abuse]` per-IP limits raised so one benchmark client on 127.0.0.1 is not throttled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .procs import LOOPBACK, BenchError, free_port, python_env, stop_process, wait_listening

SENDER_DOMAIN = "sender.bench.test"
HOSTED_DOMAIN = "fwd.bench.test"
ALIAS = f"user@{HOSTED_DOMAIN}"
SENDER = f"someone@{SENDER_DOMAIN}"
DESTINATION = "dest@dest.bench.test"
OWNER = "owner@owner.bench.test"
OUTBOUND_RECIPIENT = "friend@dest.bench.test"
READY = "fwdmail ready"
CHECK_ALIAS = f"check@{HOSTED_DOMAIN}"
CHECK_DOMAIN = "check.bench.test"
"""Mail for this domain goes to the sanity check's capturing server instead of the counting sink."""

ABUSE_LIMITS = {"max_connections_per_ip": 5000, "max_messages_per_ip_per_minute": 10_000_000}
SUBMISSION_CLIENTS_PER_IP = 1000
"""All the bench's submission clients come from 127.0.0.1; the default (10) would refuse half of them."""

DNS_RECORDS = [
    (SENDER_DOMAIN, "TXT", "v=spf1 ip4:127.0.0.0/8 -all"),
    (f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=none"),
    ("client.bench.test", "A", "127.0.0.1"),
]
"""What the sending side publishes: SPF passes for loopback clients, DMARC asks for nothing."""


@dataclass(frozen=True)
class Ports:
    mx: int
    submission: int
    submission_tls: int
    http: int
    """The API/pages listener: a free port too, so benches and tests running beside it do not collide on
    the default 8080."""


def _toml(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def mx_workers() -> int:
    """`[mx] workers` for the bench: `--mx-workers` (passed on in FWDMAIL_BENCH_MX_WORKERS), else one
    per core, as bench/README.md recommends for production."""
    return int(os.environ.get("FWDMAIL_BENCH_MX_WORKERS") or os.cpu_count() or 1)


def queue_workers() -> int:
    """`[queue] workers` for the bench: `--queue-workers` (passed on in FWDMAIL_BENCH_QUEUE_WORKERS), else 0
    (the default: the serving process delivers)."""
    return int(os.environ.get("FWDMAIL_BENCH_QUEUE_WORKERS") or 0)


def event_loop() -> str:
    """`event_loop` for the bench: `--event-loop` (passed on in FWDMAIL_BENCH_EVENT_LOOP), else "auto"."""
    return os.environ.get("FWDMAIL_BENCH_EVENT_LOOP") or "auto"


def render_config(data_dir: Path, ports: Ports, sink_port: int, capture_port: int, dns: str,
                  extra: dict[str, dict[str, object]] | None = None) -> str:
    """The bench's fwdmail.toml; `extra` adds tables (e.g. `database`, `cluster` for bench/cluster.py)."""
    tables = {
        "mx": {"listen": [f"{LOOPBACK}:{ports.mx}"], "workers": mx_workers()},
        "submission": {"listen": [f"{LOOPBACK}:{ports.submission}"],
                       "listen_tls": [f"{LOOPBACK}:{ports.submission_tls}"],
                       "max_connections_per_ip": SUBMISSION_CLIENTS_PER_IP},
        "http": {"listen": [f"{LOOPBACK}:{ports.http}"]},
        "srs": {"domain": "srs.bench.test"},
        "dns": {"nameservers": [dns]},
        "delivery.routes": {CHECK_DOMAIN: f"{LOOPBACK}:{capture_port}", "*": f"{LOOPBACK}:{sink_port}"},
        "abuse": ABUSE_LIMITS,
        "queue": {"workers": queue_workers()},
        **(extra or {}),
    }
    lines = [f"data_dir = {_toml(str(data_dir))}", 'hostname = "mx.bench.test"',
             f"event_loop = {_toml(event_loop())}"]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{json.dumps(k)} = {_toml(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


class Fwdmail:
    """`fwdmail serve` with a hosted domain, an alias to the sink and an SMTP password for the alias."""

    def __init__(self, workdir: Path, sink_port: int, capture_port: int, dns: str,
                 extra: dict[str, dict[str, object]] | None = None) -> None:
        self.root = workdir / "fwdmail"
        self.root.mkdir(parents=True, exist_ok=True)
        self.ports = Ports(free_port(), free_port(), free_port(), free_port())
        self.config_path = self.root / "fwdmail.toml"
        config = render_config(self.root / "data", self.ports, sink_port, capture_port, dns, extra)
        self.config_path.write_text(config)
        self.log_path = self.root / "serve.log"
        self.password = ""
        self.dkim_record: tuple[str, str] = ("", "")
        """(name, TXT value) of the hosted domain's DKIM key, as `domain add` tells the owner to publish."""
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        """Run the real `fwdmail --config OURS ARGS`; its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "fwdmail", "--config", str(self.config_path), *args],
            capture_output=True, env=python_env(), timeout=120,
        )
        if done.returncode != 0:
            raise BenchError(f"fwdmail {' '.join(args)} exited {done.returncode}: {done.stderr.decode()}")
        return done.stdout.decode()

    def set_up(self) -> Fwdmail:
        self.cli("init")  # only init and serve make a data dir
        self.cli("account", "add", OWNER)
        added = json.loads(self.cli("domain", "add", HOSTED_DOMAIN, "--account", OWNER, "--json"))
        self.dkim_record = next((r["name"], r["value"]) for r in added["dns"] if "_domainkey" in r["name"])
        self.cli("alias", "add", ALIAS, DESTINATION)
        self.cli("alias", "add", CHECK_ALIAS, f"inbox@{CHECK_DOMAIN}")
        self.password = json.loads(self.cli("alias", "password", ALIAS, "--json"))["password"]
        return self

    def set_auth_policy(self, policy: str) -> None:
        """off / report-only / enforce for the hosted domain (read by the running daemon per message)."""
        self.cli("domain", "set", HOSTED_DOMAIN, "--auth-policy", policy)

    def start(self, timeout: float = 60.0) -> Fwdmail:
        ready_before = self.logs().count(READY)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fwdmail", "--config", str(self.config_path), "serve"],
                stdout=log, stderr=subprocess.STDOUT, env=python_env(), cwd=self.root,
            )
        for port in (self.ports.mx, self.ports.submission, self.ports.submission_tls):
            wait_listening(port, timeout, self.proc)
        self._wait_ready(ready_before, timeout)
        return self

    def _wait_ready(self, ready_before: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.logs().count(READY) <= ready_before:
            if time.monotonic() > deadline:
                raise BenchError(f"fwdmail did not log {READY!r} within {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=40)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
