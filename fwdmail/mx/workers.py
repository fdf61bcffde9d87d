"""MX worker processes (`[mx] workers` > 1): one event loop per process, on more cores.

The serving process keeps the MX listening sockets, accepts each connection and hands it, in turn, to
itself or one of the workers over a Unix socket pair (SCM_RIGHTS). Each process enforces its share of
the per-client limits (`share`), so a client never gets more than the configured limit (rounded up to
a multiple of the process count). The retry memory (destinations that took a message answered 4xx, and
forwards in flight) is shared: a process that remembers or forgets a fingerprint, or starts or ends a
forward, tells the serving process, which tells the others, so a sender's retry is recognised (or waits
for the copy in flight) whichever process serves it. Workers' metrics notes (`runtime.metrics`: fixed
codes and numbers) come back the same way and count in the serving process's registry. Only keyed
fingerprints and metrics notes cross processes, never addresses. Workers stop when told (SIGTERM:
drain; a second one forces) or when the serving process is gone (their end of the pair reaches end of
file). A worker is handed connections only once it said it is ready (its MX started): until then the
serving process serves its turns, so a connection made while the workers still start up is not left
waiting for their imports.

Untrusted input: none; the pairs carry sockets, 32-byte fingerprints and metrics notes between our own
processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from fwdmail.config import parse_host_port
from fwdmail.runtime.listeners import listen_error
from fwdmail.runtime.metrics import NOTE as METRICS_NOTE

__all__ = ["Dispatcher", "Inbox", "worker_command"]

log = logging.getLogger("fwdmail.workers")

_ACCEPTS_PER_WAKEUP = 64
_BACKLOG = 1024
_STOP_GRACE = 5.0

Adopt = Callable[[socket.socket], None]
Note = Callable[[bytes], None]  # b"r"/"f" (remember, forget), b"i"/"d"/"e" (in flight, delivered, not) + fp
Counted = Callable[[int, bytes], bool]  # worker number, metrics note (b"": that worker is gone)
_CONNECTION = b"c"
_READY = b"ready"
_NOTE_SIZE = 64


class Dispatcher:
    """Accepts on the MX addresses and spreads connections over this process and `count - 1` workers."""

    def __init__(self, count: int, command: list[str], adopt: Adopt, noted: Note,
                 counted: Counted | None = None) -> None:
        """`adopt` serves a connection here; `noted` applies a worker's retry-memory note here, `counted`
        its metrics notes."""
        self.count = count
        self.command = command
        self.adopt = adopt
        self.noted = noted
        self.counted = counted
        self._turn = 0
        self._listeners: list[socket.socket] = []
        self._pipes: list[socket.socket] = []
        self._ready: list[bool] = []
        self._procs: list[asyncio.subprocess.Process] = []

    async def start(self, addresses: tuple[str, ...]) -> None:
        """Bind the MX addresses (a taken one is the start-up error), start the workers, then listen:
        the few milliseconds of starting them pass before the port opens, not after."""
        loop = asyncio.get_running_loop()
        for addr in addresses:
            host, port = parse_host_port(addr)
            try:
                sock = _bound(host, port)
            except OSError as exc:
                self._close_listeners()
                raise listen_error(addr, exc) from None
            self._listeners.append(sock)
        for _ in range(self.count - 1):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            proc = await asyncio.create_subprocess_exec(
                *self.command, "--mx-worker-fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),),
            )
            theirs.close()
            ours.setblocking(False)
            self._pipes.append(ours)
            self._ready.append(False)
            self._procs.append(proc)
        for pipe in self._pipes:
            loop.add_reader(pipe.fileno(), self._from_worker, pipe)
        for sock in self._listeners:
            sock.listen(_BACKLOG)
            loop.add_reader(sock.fileno(), self._accept, sock)
        log.info("MX spread over %d processes", self.count)

    def listening(self) -> list[socket.socket]:
        return list(self._listeners)

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                conn, _peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("MX accept failed: %s", exc.strerror or type(exc).__name__)
                return
            self._turn = (self._turn + 1) % self.count
            worker = self._turn - 1
            if worker < 0 or not self._ready[worker] or not self._hand_over(worker, conn):
                conn.setblocking(False)
                self.adopt(conn)

    def _from_worker(self, pipe: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                note = pipe.recv(_NOTE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                note = b""
            if not note:
                asyncio.get_running_loop().remove_reader(pipe.fileno())
                if self.counted is not None:
                    self.counted(self._pipes.index(pipe), b"")
                return
            if note.startswith(METRICS_NOTE):
                if self.counted is not None:
                    self.counted(self._pipes.index(pipe), note)
                continue
            if note == _READY:
                worker = self._pipes.index(pipe)
                self._ready[worker] = True
                log.info("MX worker %d ready", worker + 1)
                continue
            self.noted(note)
            self._tell(note, skip=pipe)

    def tell(self, note: bytes) -> None:
        """Pass a retry-memory note of this process to every worker."""
        self._tell(note, skip=None)

    def _tell(self, note: bytes, skip: socket.socket | None) -> None:
        for pipe in self._pipes:
            if pipe is not skip:
                with contextlib.suppress(OSError):
                    pipe.send(note)

    def _hand_over(self, worker: int, conn: socket.socket) -> bool:
        try:
            socket.send_fds(self._pipes[worker], [_CONNECTION], [conn.fileno()])
        except OSError:
            log.warning("MX worker %d is not taking connections; serving it here", worker + 1)
            return False
        conn.close()
        return True

    def close(self) -> None:
        """Stop accepting, and tell the workers to drain and stop."""
        self._close_listeners()
        self.signal(signal.SIGTERM)

    def signal(self, sig: int) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def wait(self, timeout: float) -> None:
        """Wait for the workers to exit (killing any still running after `timeout` plus a grace)."""
        if not self._procs:
            return
        waits = asyncio.gather(*(p.wait() for p in self._procs))
        try:
            await asyncio.wait_for(waits, timeout + _STOP_GRACE)
        except TimeoutError:
            log.warning("MX workers did not stop in time; killing them")
            self.signal(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in self._procs))
        for pipe in self._pipes:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(pipe.fileno())
            pipe.close()
        failed = [p.returncode for p in self._procs if p.returncode not in (0, -signal.SIGKILL)]
        if failed:
            log.warning("MX workers exited with %s", failed)

    def _close_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()


class Inbox:
    """A worker's end of the pair: adopts each socket the serving process sends, applies its notes,
    sends this worker's notes (`tell`); calls `on_close` when the serving process is gone."""

    def __init__(self, fd: int, adopt: Adopt, noted: Note, on_close: Callable[[], None]) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.adopt = adopt
        self.noted = noted
        self.on_close = on_close

    def start(self) -> None:
        """Take connections from now on (the serving process hands this worker none before)."""
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._receive)
        self.tell(_READY)

    def _receive(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.sock, _NOTE_SIZE, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds = b"", []
            for fd in fds:
                self.adopt(socket.socket(fileno=fd))
            if not msg:
                log.warning("the serving process is gone; this MX worker stops")
                self.stop()
                self.on_close()
                return
            if msg != _CONNECTION:
                self.noted(msg)

    def tell(self, note: bytes) -> None:
        if self.sock.fileno() >= 0:
            with contextlib.suppress(OSError):
                self.sock.send(note)

    def stop(self) -> None:
        if self.sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()


def _bound(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to (host, port), not yet listening (as `socket.create_server`
    makes it: address reuse, IPv6 only on an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def worker_command(config_file: str | None) -> list[str]:
    """How the serving process starts a worker: this interpreter, the same config, `serve`."""
    command = [sys.executable, "-m", "fwdmail"]
    if config_file:
        command += ["--config", os.path.abspath(config_file)]
    return [*command, "serve"]
