"""A private Redis server for the tests: `redis-server` on 127.0.0.1 and a free port, its working directory
a temporary one, stopped (by PID) when done. Debian's packaged service is never started or touched.

By default it keeps nothing on disk (`--save '' --appendonly no`), as fwdmail requires; `persistent=True`
turns AOF and an RDB schedule on, for the refusal test.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def redis_bin() -> str | None:
    return shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                             else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(sock: socket.socket, *args: str | bytes) -> bytes:
    """Send one RESP command on `sock`; the raw reply (enough for PING, SHUTDOWN and the like)."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
    return sock.recv(65536)


class RedisServer:
    """One redis-server; `start` it, `stop` it (by PID), `start` it again on the same port."""

    def __init__(self, binary: str, persistent: bool = False) -> None:
        self.binary = binary
        self.persistent = persistent
        self.dir = Path(tempfile.mkdtemp(prefix="fwdmail-redis-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persist = (["--save", "3600 1", "--appendonly", "yes"] if self.persistent
                   else ["--save", "", "--appendonly", "no"])
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--protected-mode", "yes", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
                *persist]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1) as s:
                if command(s, "PING").startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer in time")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if not self.persistent else signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def client(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), 5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_redis(persistent: bool = False) -> Iterator[RedisServer]:
    binary = redis_bin()
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    server = RedisServer(binary, persistent)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
