"""Queue worker processes (`[queue] workers` > 0): the outbound queue delivered on more cores.

The serving process keeps accepting submissions (each committed before its 250) and runs no deliveries:
it starts the workers, wakes them when a submission was queued (one byte on each worker's Unix socket
pair, at most once per turn of its loop, however many messages that turn queued), counts their metrics
notes, and supervises them. Each worker runs `QueueService` with its own claim tag (`<node_id>/<n>`,
`store.WORKER_TAG`), its own store connections and its share of `[queue] concurrency`. A worker that
dies has its claims taken back (each counted as a crash of that message, as after a crash of the
daemon) and is started again, after a pause that doubles while it keeps dying. A stop signal reaches the
workers at once, so their deliveries in flight drain within the same `shutdown_timeout` as the rest; a
worker whose serving process is gone stops at once, giving its claims back.

Untrusted input: none; the pairs carry one-byte wake notes and metrics notes (fixed codes and numbers,
checked by `Metrics.apply`) between our own processes. Log lines name workers by number, never an
address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Coroutine
from typing import Any

from fwdmail import store
from fwdmail.queue.service import QueueService
from fwdmail.runtime.context import Context
from fwdmail.runtime.tasks import cancel_and_wait

__all__ = ["QueueWorkers", "WorkerQueue", "worker_share", "worker_tag"]

log = logging.getLogger("fwdmail.queue")

WAKE = b"w"
NOTE_SIZE = 256
NOTES_PER_WAKEUP = 64
STOP_GRACE = 5.0
"""Seconds a worker may take past `shutdown_timeout` to exit before it is killed."""
FIRST_PAUSE = 1.0
LONGEST_PAUSE = 300.0
STEADY = 300.0
"""A worker that ran this long before dying is restarted after FIRST_PAUSE again."""


def worker_tag(node: str, index: int) -> str:
    """The claim tag of the node's queue worker number `index` (1-based)."""
    return f"{node}{store.WORKER_TAG}{index}"


def worker_share(concurrency: int, workers: int) -> int:
    """Deliveries one worker runs at once: its share of `concurrency`, rounded up."""
    return -(-concurrency // workers)


class _Worker:
    """One worker slot: its number, process and pair, and how long to pause before its next start."""

    def __init__(self, index: int, tag: str) -> None:
        self.index = index
        self.tag = tag
        self.proc: asyncio.subprocess.Process | None = None
        self.pipe: socket.socket | None = None
        self.started = 0.0
        self.pause = FIRST_PAUSE


class QueueWorkers:
    """In the serving process: starts, wakes, supervises and stops the queue worker processes."""

    name = "queue"

    def __init__(self, ctx: Context, command: list[str]) -> None:
        """`command` starts `fwdmail serve`; `--queue-worker N FD` is added for worker N."""
        self.ctx = ctx
        self.cfg = ctx.config.queue
        self.command = command
        self.node = ctx.runtime.node_id
        self.workers = [_Worker(i, worker_tag(self.node, i)) for i in range(1, self.cfg.workers + 1)]
        self._stopping = False
        self._terminated = False
        self._wake_owed = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        released, held = await self.ctx.blocking.db(store.release_stale_claims, store.utcnow(),
                                                    self.cfg.max_crashes, node=self.node)
        if released:
            log.warning("took back %d message(s) claimed before a crash; %d now held", released, held)
        for worker in self.workers:
            await self._spawn(worker)
        for worker in self.workers:
            self._task(self._supervise(worker))
        self._task(self._relay_stop())
        log.info("queue delivered by %d worker process(es), %d deliveries at once each", len(self.workers),
                 worker_share(self.cfg.concurrency, len(self.workers)))

    def _task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self.command, "--queue-worker", str(worker.index), str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker.pipe = ours
        worker.started = time.monotonic()
        asyncio.get_running_loop().add_reader(ours.fileno(), self._from_worker, worker)
        if self.ctx.stopping.is_set():
            self._signal(worker, signal.SIGTERM)

    def _from_worker(self, worker: _Worker) -> None:
        pipe = worker.pipe
        if pipe is None:
            return
        for _ in range(NOTES_PER_WAKEUP):
            try:
                note = pipe.recv(NOTE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                note = b""
            if not note:
                self._close_pipe(worker)
                return
            self.ctx.metrics.apply(-worker.index, note)

    def _close_pipe(self, worker: _Worker) -> None:
        if worker.pipe is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(worker.pipe.fileno())
            worker.pipe.close()
            worker.pipe = None

    async def _supervise(self, worker: _Worker) -> None:
        """Restart the worker whenever it dies, until the stop; its claims are taken back first."""
        while not self._stopping:
            if worker.proc is not None:
                code = await worker.proc.wait()
                self._close_pipe(worker)
                if self._stopping or self.ctx.stopping.is_set():
                    return
                lived = time.monotonic() - worker.started
                worker.pause = FIRST_PAUSE if lived >= STEADY else worker.pause
                log.warning("queue worker %d exited (%s) after %.0f s; taking back its claims, restarting "
                            "it in %.0f s", worker.index, _exit(code), lived, worker.pause)
                await self._take_back(worker)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(worker.pause):
                    await self.ctx.stopping.wait()
            worker.pause = min(LONGEST_PAUSE, worker.pause * 2)
            if self._stopping or self.ctx.stopping.is_set():
                return
            try:
                await self._spawn(worker)
            except OSError as exc:
                log.error("queue worker %d could not be started: %s", worker.index,
                          exc.strerror or type(exc).__name__)
                worker.proc = None

    async def _take_back(self, worker: _Worker) -> None:
        """Release the claims of a worker that died; a store that cannot take it now leaves them to
        the worker's own start (it takes back its tag's claims too) or to the `claim_timeout` sweep."""
        try:
            released, held = await self.ctx.blocking.db(store.release_stale_claims, store.utcnow(),
                                                        self.cfg.max_crashes, node=worker.tag)
        except Exception as exc:
            if not store.unavailable(exc):
                raise
            log.warning("could not take back queue worker %d's claims yet (%s)", worker.index,
                        store.failure(exc))
            return
        if released:
            log.warning("took back %d message(s) claimed by queue worker %d; %d now held", released,
                        worker.index, held)

    async def _relay_stop(self) -> None:
        """Pass the stop signal on to the workers as it comes (the second one forces their stop)."""
        await self.ctx.stopping.wait()
        self._terminate()
        await self.ctx.force_stop.wait()
        self._signal_all(signal.SIGTERM)

    def _terminate(self) -> None:
        """The first SIGTERM to every worker, once (a second one would force their stop)."""
        if not self._terminated:
            self._terminated = True
            self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers:
            self._signal(worker, sig)

    @staticmethod
    def _signal(worker: _Worker, sig: int) -> None:
        if worker.proc is not None and worker.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(sig)

    def wake(self) -> None:
        """A submission was queued: wake every worker, once for all the messages of this loop turn."""
        if not self._wake_owed:
            self._wake_owed = True
            asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_owed = False
        for worker in self.workers:
            if worker.pipe is not None:
                with contextlib.suppress(OSError):  # a full pair: that worker has wake notes to read
                    worker.pipe.send(WAKE)

    async def stop(self) -> None:
        """Stop the workers (their deliveries in flight drain within `shutdown_timeout`), kill any still
        running after it and a grace, and take back what those held."""
        self._stopping = True
        self._terminate()
        running = [w for w in self.workers if w.proc is not None]
        waits = [asyncio.ensure_future(w.proc.wait()) for w in running if w.proc is not None]
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=self.ctx.drain_left() + STOP_GRACE)
            if pending:
                log.warning("%d queue worker(s) did not stop in time; killing them", len(pending))
                self._signal_all(signal.SIGKILL)
                await asyncio.wait(pending)
        await cancel_and_wait(set(self._tasks))
        for worker in running:
            self._close_pipe(worker)
            if worker.proc is not None and worker.proc.returncode == -signal.SIGKILL:
                await self._take_back(worker)
        try:
            await self.ctx.blocking.db(store.wal_checkpoint)
        except Exception as exc:
            if not store.unavailable(exc):
                raise


class WorkerQueue:
    """In a queue worker process: the queue service with this worker's tag and share, woken by the
    serving process and relaying its metrics there; it stops at once when the serving process is gone."""

    name = "queue"

    def __init__(self, ctx: Context, index: int, fd: int) -> None:
        cfg = ctx.config.queue
        self.ctx = ctx
        self.index = index
        self.queue = QueueService(ctx, worker_tag(ctx.runtime.node_id, index),
                                  worker_share(cfg.concurrency, max(1, cfg.workers)))
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)

    async def start(self) -> None:
        self.ctx.metrics.relay = self._tell
        await self.queue.start()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._receive)
        self.queue.wake()

    def _receive(self) -> None:
        for _ in range(NOTES_PER_WAKEUP):
            try:
                note = self.sock.recv(NOTE_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                note = b""
            if not note:
                log.warning("the serving process is gone; queue worker %d stops", self.index)
                self._close()
                self.ctx.stopping.set()
                self.ctx.force_stop.set()
                return
        self.queue.wake()

    def _tell(self, note: bytes) -> None:
        if self.sock.fileno() >= 0:
            with contextlib.suppress(OSError):
                self.sock.send(note)

    def _close(self) -> None:
        if self.sock.fileno() >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()

    async def stop(self) -> None:
        try:
            await self.queue.stop()
        finally:
            self._close()


def _exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"
