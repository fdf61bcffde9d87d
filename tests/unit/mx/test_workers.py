"""The MX dispatcher hands connections to a worker process only once that worker said it is ready: while
the workers still start up (Python imports, ~0.5 s), every connection is served by the serving process."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from fwdmail.mx.workers import Dispatcher
from tests.support.daemon import free_port

# A stand-in worker (a real process on the real socket pair): it says it is ready once the file named by
# its first argument exists, then answers each connection it is handed with "worker".
WORKER = r"""
import os, socket, sys, time
fd = int(sys.argv[sys.argv.index("--mx-worker-fd") + 1])
pair = socket.socket(fileno=fd)
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.01)
pair.send(b"ready")
while True:
    msg, fds, _, _ = socket.recv_fds(pair, 64, 1)
    for f in fds:
        with socket.socket(fileno=f) as conn:
            conn.sendall(b"worker\r\n")
    if not msg:
        break
"""


def serve_here(conn: socket.socket) -> None:
    with conn:
        conn.sendall(b"here\r\n")


async def who_answers(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await asyncio.wait_for(reader.readline(), 10)).strip()
    except TimeoutError:
        return b"nobody"
    finally:
        writer.close()


def test_connections_go_to_a_worker_only_once_it_is_ready(tmp_path: Path) -> None:
    go = tmp_path / "go"
    port = free_port()

    async def main() -> tuple[list[bytes], list[bytes]]:
        d = Dispatcher(2, [sys.executable, "-c", WORKER, str(go)], serve_here, lambda note: None)
        await d.start((f"127.0.0.1:{port}",))
        try:
            starting = [await who_answers(port) for _ in range(4)]
            go.touch()
            for _ in range(500):  # until the worker's "ready" arrived (bounded: 5 s)
                if await who_answers(port) == b"worker":
                    break
                await asyncio.sleep(0.01)
            ready = [await who_answers(port) for _ in range(4)]
        finally:
            d.close()
            await d.wait(5)
        return starting, ready

    starting, ready = asyncio.run(main())
    assert starting == [b"here"] * 4
    assert sorted(ready) == [b"here", b"here", b"worker", b"worker"]


def test_a_taken_port_is_the_one_line_start_up_error(tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.touch()

    async def main() -> str:
        d = Dispatcher(2, [sys.executable, "-c", WORKER, str(go)], serve_here, lambda note: None)
        with socket.create_server(("127.0.0.1", 0)) as taken:
            try:
                await d.start((f"127.0.0.1:{taken.getsockname()[1]}",))
            except Exception as exc:  # the one-line start-up error
                return f"{type(exc).__name__}: {exc}"
        return "started"

    outcome = asyncio.run(main())
    assert outcome.endswith("address already in use")
