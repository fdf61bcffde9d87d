"""`fwdmail serve`: one asyncio loop running the MX, submission, queue workers and retention jobs.

Start order: store -> queue recovery -> workers -> listeners -> HTTP listener -> scheduler; stop in
reverse. The HTTP service is handed in by the caller (`fwdmail serve` passes the web part's, which sits
above). The open-files
limit is raised to its hard limit first; the listeners' session caps are derived from it.
SIGTERM/SIGINT drain in-flight work; a second signal forces the stop. SIGHUP reloads the TLS
certificate and key for new sessions.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from typing import Protocol

from fwdmail.mx.service import MxService
from fwdmail.mx.workers import worker_command
from fwdmail.policy.limits import AbusePolicy
from fwdmail.policy.sender_auth import SenderAuthPolicy
from fwdmail.queue.service import QueueService
from fwdmail.retention.scheduler import RetentionScheduler
from fwdmail.runtime.context import Context
from fwdmail.runtime.datadir import Runtime
from fwdmail.runtime.listeners import raise_fd_limit, session_caps
from fwdmail.submission.service import SubmissionService

log = logging.getLogger("fwdmail.serve")


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


WebFactory = Callable[[Context], Service]


def build_services(ctx: Context, config_file: str | None = None, mx_worker_fd: int | None = None,
                   web: WebFactory | None = None) -> list[Service]:
    """The daemon's services in start order (an MX worker process runs only the MX); `web` makes the
    HTTP listener, started after the SMTP listeners."""
    policies = [AbusePolicy(ctx), SenderAuthPolicy(ctx)]
    if mx_worker_fd is not None:
        return [MxService(ctx, policies, inbox_fd=mx_worker_fd)]
    queue = QueueService(ctx)  # its start() takes back claims of a crashed run, then starts the workers
    return [
        queue,
        SubmissionService(ctx, on_queued=queue.wake),
        MxService(ctx, policies, worker_command=worker_command(config_file)),
        *([web(ctx)] if web is not None else []),
        RetentionScheduler(ctx.blocking, ctx.config.retention),  # last: starts after listeners, stops first
    ]


def freeze_startup_objects(collect: bool = True) -> None:
    """Take what starting made (modules, config, the store's and TLS's objects) out of the cyclic
    collector's sight, so a full collection walks only what serving creates. Over the ~50,000
    startup objects one took ~45 ms, stalling every session at once: the MX's p99 latency.
    `collect` first frees start-up garbage: that full collection (~60 ms) runs before the listeners
    open; once they are open, only the cheap freeze (`collect=False`) of what starting them made."""
    if collect:
        gc.collect()
    gc.freeze()


async def run(runtime: Runtime, config_file: str | None = None, mx_worker_fd: int | None = None,
              web: WebFactory | None = None) -> int:
    """Run until a stop signal; return the process exit code. `config_file` is passed on to MX worker
    processes; `mx_worker_fd` makes this process one of them; `web` makes the HTTP listener."""
    ctx = Context(runtime)
    loop = asyncio.get_running_loop()
    raise_fd_limit()
    caps = session_caps(ctx.config)
    log.info("open-files limit %s: at most %d MX and %d submission sessions", caps.fd_limit or "unlimited",
             caps.mx, caps.submission)
    services = build_services(ctx, config_file, mx_worker_fd, web)

    def on_signal(signame: str) -> None:
        if ctx.stopping.is_set():
            log.warning("second %s: forcing stop", signame)
            ctx.force_stop.set()
        else:
            log.info("%s: draining and stopping", signame)
            ctx.drain_left()
            ctx.stopping.set()

    reloads: set[asyncio.Task[bool]] = set()

    def on_hangup() -> None:
        if ctx.stopping.is_set():
            return
        task = loop.create_task(ctx.reload_tls())
        reloads.add(task)
        task.add_done_callback(reloads.discard)
        for service in services:
            if isinstance(service, MxService):
                service.hangup()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)

    started: list[Service] = []
    freeze_startup_objects()
    try:
        for service in services:
            await service.start()
            started.append(service)
        log.info("fwdmail ready: %s", ", ".join(s.name for s in started) or "no services")
        freeze_startup_objects(collect=False)
        await ctx.stopping.wait()
    finally:
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:
                log.exception("error while stopping %s", service.name)
        await ctx.delivery.close()
        ctx.blocking.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("fwdmail stopped")
    return 0
