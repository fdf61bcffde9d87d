"""Serve the bench's DNS records from the tests' LoopbackDNS, in a process of its own.

`python3 -m bench.dns_helper '[["name", "TXT", "value"], ...]'` prints `127.0.0.1:PORT` once ready and
serves until its stdin closes. A separate process keeps the DNS server's threads off the bench's GIL.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.dns_server import LoopbackDNS

from .procs import BenchError, python_env, stop_process


def main() -> None:
    records = json.loads(sys.argv[1])
    with LoopbackDNS() as dns:
        for name, rtype, value in records:
            dns.add(name, rtype, value)
        print(dns.address, flush=True)
        sys.stdin.read()


class DnsHelper:
    """The helper process, started with a record list; `address` is for `[dns] nameservers`."""

    def __init__(self, records: list[tuple[str, str, str]]) -> None:
        self.records = records
        self.address = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DnsHelper:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.dns_helper", json.dumps(self.records)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=python_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("127.0.0.1:"):
            stop_process(self.proc)
            raise BenchError(f"DNS helper did not start (said {line!r})")
        self.address = line
        return self

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)


if __name__ == "__main__":
    main()
