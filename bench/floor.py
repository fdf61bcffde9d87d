"""The framework floor: a bare aiosmtpd server that accepts every message and discards it.

`python3 -m bench.floor PORT` serves on 127.0.0.1:PORT on one asyncio loop (no threaded Controller),
as fwdmail's own listeners do; it does nothing per message but answer 250.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from .procs import LOOPBACK, free_port, python_env, stop_process, wait_listening


class Discard:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 discarded"


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = Discard()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="floor.bench.test", data_size_limit=60 * 1024 * 1024),
        LOOPBACK, port, backlog=1024,
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


class Floor:
    """The floor server as a subprocess on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "floor.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Floor:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.floor", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, env=python_env())
        wait_listening(self.port, 20, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
