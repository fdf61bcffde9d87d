"""`[mx] workers = 2`: connections are served by both processes, the retry memory is shared, the
per-client limits hold across processes, and the workers stop with the serving process."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import message, send, start_daemon
from tests.support.smtp_sink import SmtpSink

SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["domain", "set", "ours.test", "--auth-policy", "off"],
    ["alias", "add", "ok@ours.test", "ok@dest.test"],
    ["alias", "add", "retry@ours.test", "r1@dest.test", "r2@dest.test"],
]


@pytest.fixture
def sink(clean_downstream: SmtpSink) -> SmtpSink:
    return clean_downstream


def start(tmp: Path, dns_server: LoopbackDNS, downstream: SmtpSink, **abuse: int) -> Daemon:
    return start_daemon(tmp, {
        "dns": {"nameservers": [dns_server.address]},
        "mx": {"workers": 2},
        "abuse": {"max_messages_per_ip_per_minute": 10_000, **abuse},
        "delivery": {"routes": {"dest.test": downstream.address}},
    }, SETUP)


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
       downstream: SmtpSink) -> Iterator[Daemon]:
    d = start(tmp_path_factory.mktemp("mx-workers"), dns_server, downstream)
    yield d
    d.stop()


def workers_of(d: Daemon) -> list[int]:
    assert d.proc is not None
    children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()
    return [int(pid) for pid in children
            if b"--mx-worker-fd" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def started_workers(d: Daemon, timeout: float = 20) -> list[int]:
    """The worker pids once the serving process has started them (the MX port opens first)."""
    deadline = time.monotonic() + timeout
    while not (found := workers_of(d)):
        assert time.monotonic() < deadline, "no MX worker started"
        time.sleep(0.05)
    return found


def holder_of(client: socket.socket, pids: list[int]) -> int | None:
    """Which of `pids` holds the server end of `client`'s connection."""
    local = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == local and fields[3] == "01":  # ESTABLISHED, server side
            inode = fields[9]
    assert inode is not None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def greeted(port: int) -> tuple[socket.socket, bytes]:
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    return client, client.recv(1000)


def test_both_processes_serve_connections(mx: Daemon, sink: SmtpSink) -> None:
    assert mx.proc is not None
    workers = started_workers(mx)
    assert len(workers) == 1
    clients = [greeted(mx.mx_port) for _ in range(4)]
    try:
        assert all(g.startswith(b"220 ") for _, g in clients)
        holders = {holder_of(c, [mx.proc.pid, *workers]) for c, _ in clients}
        assert holders == {mx.proc.pid, workers[0]}
    finally:
        for c, _ in clients:
            c.close()
    for i in range(6):
        assert send(mx, "alice@src.test", ["ok@ours.test"], message(f"m{i}")).code == 250
    assert len(sink.wait_for(6)) == 6


def test_the_retry_memory_is_shared_between_processes(mx: Daemon, sink: SmtpSink) -> None:
    for _ in range(2):  # consecutive connections alternate processes: both directions are covered
        sink.reset()
        msg = message()
        sink.behaviour.rcpt = {"r2@dest.test": "452 4.2.2 mailbox full"}
        assert send(mx, "alice@src.test", ["retry@ours.test"], msg).code == 452
        sink.behaviour.rcpt = {}
        assert send(mx, "alice@src.test", ["retry@ours.test"], msg).code == 250
        assert [m.rcpt_tos for m in sink.messages] == [["r1@dest.test"], ["r2@dest.test"]]


def test_the_per_client_connection_limit_holds_across_processes(
        tmp_path: Path, dns_server: LoopbackDNS, downstream: SmtpSink) -> None:
    d = start(tmp_path, dns_server, downstream, max_connections_per_ip=4)
    held: list[socket.socket] = []
    try:
        replies = []
        for _ in range(8):
            client, greeting = greeted(d.mx_port)
            held.append(client)
            replies.append(greeting[:3])
        assert replies.count(b"220") == 4
        assert replies.count(b"421") == 4
    finally:
        for c in held:
            c.close()
        assert d.stop() == 0


def alive(pid: int) -> bool:
    """Running (an exited orphan waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_workers_stop_with_sigterm_and_when_the_server_dies(
        tmp_path: Path, dns_server: LoopbackDNS, downstream: SmtpSink) -> None:
    d = start(tmp_path, dns_server, downstream)
    workers = started_workers(d)
    assert all(alive(pid) for pid in workers)
    assert d.stop() == 0
    assert not any(alive(pid) for pid in workers)
    d.start(wait_ports=[d.mx_port])
    workers = started_workers(d)
    d.kill()  # SIGKILL: the worker sees its end of the pair close
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "an MX worker outlived the serving process"
        time.sleep(0.05)


def test_a_taken_port_is_a_one_line_error(tmp_path: Path, dns_server: LoopbackDNS) -> None:
    d = Daemon(tmp_path, {"mx": {"workers": 2}, "dns": {"nameservers": [dns_server.address]}})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", d.mx_port))
        taken.listen()
        d.start(wait_ports=[])
        assert d.proc is not None
        assert d.proc.wait(30) == 1
    assert f"cannot listen on 127.0.0.1:{d.mx_port}: address already in use" in d.logs()
    assert "Traceback" not in d.logs()
