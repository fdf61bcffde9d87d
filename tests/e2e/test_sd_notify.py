"""systemd's readiness protocol against a real `fwdmail serve`: a Unix datagram socket stands in for
systemd (`NOTIFY_SOCKET`, as a path and as an abstract name). READY=1 comes only once the MX, submission
(STARTTLS and implicit TLS) and HTTP listeners accept connections; SIGTERM brings STOPPING=1."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS

WAIT = 30.0


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify.sock"
        if len(str(path)) > 100:  # the limit of sun_path
            pytest.skip("temporary path too long for a Unix socket")
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    else:
        name = f"fwdmail-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    with sock:
        yield sock


def receive(sock: socket.socket, until: str) -> list[str]:
    """Datagrams up to and including the first holding the line `until` (bounded in time)."""
    got: list[str] = []
    deadline = time.monotonic() + WAIT
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {until} from fwdmail serve; got {got}"
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if until in got[-1].splitlines():
            return got


def test_ready_once_every_listener_accepts_and_stopping_on_sigterm(
        tmp_path: Path, dns_server: LoopbackDNS, notify_socket: socket.socket) -> None:
    d = Daemon(tmp_path, {"dns": {"nameservers": [dns_server.address]}})
    d.start(wait_ports=[])
    try:
        before = receive(notify_socket, "READY=1")
        for port in (d.mx_port, d.submission_port, d.submission_tls_port, d.http_port):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()  # at once: no retry
        assert all("READY=1" not in m for m in before[:-1])
        assert any(line.startswith("STATUS=serving") for line in before[-1].splitlines())
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        after = receive(notify_socket, "STOPPING=1")
        assert d.proc.wait(WAIT) == 0
    finally:
        d.stop()
    for text in before + after:
        assert "127.0.0.1" not in text and "@" not in text
        assert all(line.split("=", 1)[0] in ("READY", "STOPPING", "STATUS") for line in text.splitlines())
