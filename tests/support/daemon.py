"""Run the real `fwdmail serve` in a subprocess on loopback ports, and the CLI against its data dir."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from click.testing import CliRunner, Result

from fwdmail.cli import cli

REPO = Path(__file__).resolve().parents[2]
WORKER_READY = re.compile(r"MX worker \d+ ready")
"""The serving process's log line when an MX worker can take connections."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(data: dict[str, Any]) -> str:
    """A minimal TOML writer for test configs (scalars, lists, nested tables)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for name, table in tables:
        sub = {k: v for k, v in table.items() if not isinstance(v, dict)}
        lines.append(f"\n[{name}]")
        lines.extend(
            f"{json.dumps(k) if '.' in k or '*' in k else k} = {_toml_value(v)}" for k, v in sub.items()
        )
        for k, v in table.items():
            if isinstance(v, dict):
                lines.append(f"\n[{name}.{k}]")
                lines.extend(f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Daemon:
    """A `fwdmail serve` subprocess with its own data dir, config file and free loopback ports.

    `daemon.cli("alias", "add", ...)` runs the real CLI in-process against the same config.
    Every started process is also in `Daemon.running`, so the session can end any a test left behind.
    """

    running: ClassVar[set[subprocess.Popen[bytes]]] = set()

    def __init__(self, tmp: Path, overrides: dict[str, Any] | None = None) -> None:
        self.dir = tmp
        self.data_dir = tmp / "data"
        self.mx_port = free_port()
        self.submission_port = free_port()
        self.submission_tls_port = free_port()
        self.http_port = free_port()
        base: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "hostname": "mx.fwdmail.test",
            "log_level": "debug",
            "shutdown_timeout": 5,
            "mx": {"listen": [f"127.0.0.1:{self.mx_port}"]},
            "submission": {
                "listen": [f"127.0.0.1:{self.submission_port}"],
                "listen_tls": [f"127.0.0.1:{self.submission_tls_port}"],
            },
            "http": {"listen": [f"127.0.0.1:{self.http_port}"]},
            "srs": {"domain": "srs.fwdmail.test"},
            "delivery": {"connect_timeout": 3, "command_timeout": 5, "data_timeout": 5, "port": 25},
            "queue": {"min_backoff": 1, "max_backoff": 2, "poll_interval": 0.2},
            "dns": {"timeout": 2, "nameservers": ["127.0.0.1:9"]},  # never the system resolver
        }
        self.settings = merge(base, overrides or {})
        self.config_path = tmp / "fwdmail.toml"
        self.config_path.write_text(to_toml(self.settings))
        self.log_path = tmp / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ports(self) -> list[int]:
        return [self.mx_port, self.submission_port, self.submission_tls_port]

    def needs_init(self, *args: str) -> bool:
        """The data dir does not exist yet and `args` (if any) is not a command that makes it: only init
        and serve do; the others refuse a missing data dir."""
        return (args[:1] not in (("init",), ("serve",), ("check-config",))
                and not (self.dir / self.settings["data_dir"]).exists())

    def init_args(self) -> list[list[str]]:
        """`[[--config, ours, init]]` while the data dir is missing, else `[]`: to put before a batch."""
        return [["--config", str(self.config_path), "init"]] if self.needs_init() else []

    def cli(self, *args: str, input: str | None = None, expect: int | None = 0) -> Result:
        """Run `fwdmail --config <ours> ARGS` in-process; assert the exit code unless expect is None.

        The first command on a missing data dir runs `init` before it, as an admin would have done.
        """
        if self.needs_init(*args):
            self.cli("init")
        result = CliRunner().invoke(
            cli, ["--config", str(self.config_path), *args], input=input, catch_exceptions=False
        )
        if expect is not None:
            assert result.exit_code == expect, (
                f"fwdmail {' '.join(args)} exited {result.exit_code}: {result.output}"
            )
        return result

    def start(self, wait_ports: list[int] | None = None, timeout: float = 20.0) -> Daemon:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))  # the code under test
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fwdmail", "--config", str(self.config_path), "serve"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
        )
        Daemon.running.add(self.proc)
        ready_before = len(WORKER_READY.findall(self.logs()))
        deadline = time.monotonic() + timeout
        for port in self.ports if wait_ports is None else wait_ports:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"fwdmail serve exited {self.proc.returncode}:\n{self.logs()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        msg = f"port {port} not listening after {timeout}s:\n{self.logs()}"
                        raise AssertionError(msg) from None
                    time.sleep(0.05)
        if self.mx_port in (self.ports if wait_ports is None else wait_ports):
            self._wait_for_workers(ready_before, deadline)
        return self

    def _wait_for_workers(self, ready_before: int, deadline: float) -> None:
        """With `[mx] workers` > 1, wait until each worker said it is ready: before, the serving process
        serves every MX connection, and tests that want both processes would get one."""
        workers = int(self.settings.get("mx", {}).get("workers", 1)) - 1
        assert self.proc is not None
        while len(WORKER_READY.findall(self.logs())) - ready_before < workers:
            assert self.proc.poll() is None, f"fwdmail serve exited {self.proc.returncode}:\n{self.logs()}"
            assert time.monotonic() < deadline, f"MX workers not ready in time:\n{self.logs()}"
            time.sleep(0.05)

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        """Block until `text` is in the daemon's log (the daemon must stay up meanwhile)."""
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            assert self.proc is not None and self.proc.poll() is None, self.logs()
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.logs()}"
            time.sleep(0.05)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; return the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"fwdmail serve did not stop on SIGTERM:\n{self.logs()}") from None
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self._log.close()


def end_leftovers() -> None:
    """Kill every daemon a test started and did not stop (the end of the session's safety net)."""
    for proc in list(Daemon.running):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    Daemon.running.clear()
