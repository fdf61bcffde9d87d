"""The test suite's loopback DNS server (tests/support/dns_server.py) in its own process, filled with
the sender domains' SPF and DMARC records, so the daemon's sender checks run for real during load."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection

SPF = "v=spf1 ip4:127.0.0.0/8 -all"
DMARC = "v=DMARC1; p=none"


def sender_domain(n: int) -> str:
    return f"snd{n}.stress.test"


def _serve(conn: multiprocessing.connection.Connection, domains: int) -> None:
    from tests.support.dns_server import LoopbackDNS

    with LoopbackDNS() as dns:
        for n in range(domains):
            dns.add(sender_domain(n), "TXT", SPF)
            dns.add(f"_dmarc.{sender_domain(n)}", "TXT", DMARC)
        conn.send(dns.address)
        while not conn.poll(0.5) or conn.recv() != "stop":
            pass


class DnsProcess:
    """A LoopbackDNS with `domains` sender domains (snd0.stress.test ...) in a child process."""

    def __init__(self, domains: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, domains), daemon=True)
        self.proc.start()
        child.close()
        if not self._conn.poll(60):
            self.proc.kill()
            raise RuntimeError("the DNS server process did not start within 60 s")
        self.address: str = self._conn.recv()

    def stop(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
