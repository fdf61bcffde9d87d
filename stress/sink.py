"""A counting downstream SMTP server in its own process: accepts everything, remembers which load
messages arrived (by their X-Stress-Id header) and how often.

Hand-written rather than aiosmtpd, so that on a shared 2-core machine the sink costs little CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import re
import socket
import threading
from collections import Counter
from typing import Any

_ID = re.compile(rb"(?im)^X-Stress-Id:[ \t]*([A-Za-z]+)-(\d+)\r?$")
_EHLO = (b"250-sink.stress.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
         b"250 SIZE 104857600\r\n")


class Counts:
    """What the sink accepted, shared between the server loop and the control thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[str, set[int]] = {}
        self.duplicates: Counter[str] = Counter()
        self.messages = 0
        self.unlabelled = 0
        self.connections = 0

    def record(self, data: bytes) -> None:
        m = _ID.search(data)
        with self.lock:
            self.messages += 1
            if m is None:
                self.unlabelled += 1
                return
            kind, number = m.group(1).decode(), int(m.group(2))
            seen = self.seen.setdefault(kind, set())
            if number in seen:
                self.duplicates[kind] += 1
            seen.add(number)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"received": {k: len(v) for k, v in self.seen.items()},
                    "duplicates": dict(self.duplicates), "messages": self.messages,
                    "unlabelled": self.unlabelled, "connections": self.connections}


async def _session(counts: Counts, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with counts.lock:
        counts.connections += 1
    try:
        writer.write(b"220 sink.stress.test ESMTP\r\n")
        while True:
            line = await asyncio.wait_for(reader.readline(), 300)
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(_EHLO)
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                data = await asyncio.wait_for(reader.readuntil(b"\r\n.\r\n"), 300)
                counts.record(data)
                writer.write(b"250 2.0.0 accepted\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                writer.write(b"250 2.0.0 ok\r\n")
            else:
                writer.write(b"502 5.5.2 not here\r\n")
            await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


def _control(conn: multiprocessing.connection.Connection, counts: Counts, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            request = conn.recv()
        except EOFError:
            break
        if request == "ids":
            with counts.lock:
                conn.send({kind: sorted(seen) for kind, seen in counts.seen.items()})
            continue
        conn.send(counts.snapshot())
        if request == "stop":
            break
    stop.set()


def _serve(sock: socket.socket, conn: multiprocessing.connection.Connection) -> None:
    counts = Counts()
    stop = threading.Event()
    threading.Thread(target=_control, args=(conn, counts, stop), daemon=True).start()

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _session(counts, r, w), sock=sock,
                                            limit=64 << 20, backlog=1024)
        async with server:
            while not stop.is_set():
                await asyncio.sleep(0.2)

    asyncio.run(main())


class CountingSink:
    """The sink process; `stats()` asks it what arrived so far."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.sock.getsockname()[1]
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()
        self.proc = ctx.Process(target=_serve, args=(self.sock, child), daemon=True)
        self.proc.start()
        child.close()
        self.sock.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._conn.send("stats")
            if not self._conn.poll(30):
                raise RuntimeError("the sink did not answer within 30 s")
            return self._conn.recv()  # type: ignore[no-any-return]

    def ids(self) -> dict[str, set[int]]:
        """The X-Stress-Id numbers received so far, per kind."""
        with self._lock:
            self._conn.send("ids")
            if not self._conn.poll(60):
                raise RuntimeError("the sink did not answer within 60 s")
            return {kind: set(numbers) for kind, numbers in self._conn.recv().items()}

    def stop(self) -> dict[str, Any]:
        with self._lock:
            self._conn.send("stop")
            final = self._conn.recv() if self._conn.poll(30) else {}
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        return final  # type: ignore[no-any-return]
