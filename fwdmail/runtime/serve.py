"""`fwdmail serve`: one asyncio loop running the MX, submission, queue workers and retention jobs.

Start order: store -> queue recovery -> workers -> listeners -> HTTP listener -> scheduler; stop in
reverse. The HTTP service is handed in by the caller (`fwdmail serve` passes the web part's, which sits
above). The open-files
limit is raised to its hard limit first; the listeners' session caps are derived from it.
SIGTERM/SIGINT drain in-flight work; a second signal forces the stop. SIGHUP reloads the TLS
certificate and key for new sessions. Under systemd (`Type=notify`), READY=1 is sent once every service
has started (every listener accepts) and STOPPING=1 when the stop begins (`runtime.notify`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fwdmail.mx.service import MxService
from fwdmail.mx.workers import worker_command
from fwdmail.policy.limits import AbusePolicy
from fwdmail.policy.sender_auth import SenderAuthPolicy
from fwdmail.policy.senderlists import SenderListPolicy
from fwdmail.queue.workers import QueueWorkers, WorkerQueue
from fwdmail.runtime.context import Context, StartupError
from fwdmail.runtime.datadir import Runtime
from fwdmail.runtime.listeners import accepting, raise_fd_limit, session_caps
from fwdmail.runtime.notify import Notifier
from fwdmail.runtime.sharedstate import PersistentRedis, SharedState, SharedUnavailable, open_shared

if TYPE_CHECKING:
    from fwdmail.queue.service import QueueService

log = logging.getLogger("fwdmail.serve")


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ListenerCheck = Callable[[], list[str]]
WebFactory = Callable[[Context, ListenerCheck], Service]


class ListenerState:
    """The listeners the daemon was asked to open, per service, for `/healthz`: each service that has
    them says which sockets it listens on (`listening()`), and a socket closed or no longer listening
    is reported down."""

    def __init__(self) -> None:
        self._expected: dict[str, tuple[int, Callable[[], Sequence[Any]]]] = {}

    def expect(self, name: str, count: int, sockets: Callable[[], Sequence[Any]]) -> None:
        if count:
            self._expected[name] = (count, sockets)

    def problems(self) -> list[str]:
        """One line per service with listeners down (none: all up)."""
        out = []
        for name, (count, sockets) in self._expected.items():
            up = sum(1 for sock in sockets() if accepting(sock))
            if up < count:
                out.append(f"{name}: {count - up} of {count} listener(s) down")
        return out


def expected_listeners(ctx: Context, name: str) -> int:
    """How many listening sockets the configuration asks service `name` to open."""
    cfg = ctx.config
    sub = cfg.submission
    return {"mx": len(cfg.mx.listen), "submission": len(sub.listen) + len(sub.listen_tls),
            "http": len(cfg.http.listen)}.get(name, 0)


def build_services(ctx: Context, config_file: str | None = None, mx_worker_fd: int | None = None,
                   web: WebFactory | None = None, listeners: ListenerState | None = None,
                   queue_worker: tuple[int, int] | None = None) -> list[Service]:
    """The daemon's services in start order (an MX worker process runs only the MX, a queue worker
    process, given as (number, fd of its pair), only the queue); `web` makes the HTTP listener, started
    after the SMTP listeners, and is told of every listener's state."""
    state = listeners or ListenerState()
    if queue_worker is not None:
        return [WorkerQueue(ctx, *queue_worker)]
    senders = SenderListPolicy(ctx)  # first: the others read which domains allow the sender
    policies = [senders, AbusePolicy(ctx, senders=senders.cache), SenderAuthPolicy(ctx)]
    if mx_worker_fd is not None:
        return [MxService(ctx, policies, inbox_fd=mx_worker_fd)]
    # Only the serving process runs these (memory: a worker never imports them).
    from fwdmail.queue.service import QueueService
    from fwdmail.retention.scheduler import RetentionScheduler
    from fwdmail.submission.service import SubmissionService

    # Its start() takes back claims of a crashed run, then delivers here or starts the queue workers.
    queue: QueueService | QueueWorkers = (QueueWorkers(ctx, worker_command(config_file))
                                          if ctx.config.queue.workers else QueueService(ctx))
    return [
        queue,
        SubmissionService(ctx, on_queued=queue.wake),
        MxService(ctx, policies, worker_command=worker_command(config_file)),
        *([web(ctx, state.problems)] if web is not None else []),
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


async def _shared_state(ctx: Context, announce: bool) -> SharedState | None:
    """The shared state of `[cluster] redis_url` (None without one: a warning when the database is
    shared, since limits and retry memory then hold per node)."""
    cluster = ctx.config.cluster
    if not cluster.redis_url:
        if ctx.config.database.url and announce:
            log.warning("cluster.redis_url is empty while the database is shared: per-client limits, login "
                        "lockouts, retry memory and notice limits hold per node, not across nodes")
        return None
    try:
        state = await open_shared(cluster, ctx.blocking.db)
    except (SharedUnavailable, PersistentRedis) as exc:
        raise StartupError(str(exc)) from None
    if announce:
        log.info("short-term state shared through Redis")
    return state


async def run(runtime: Runtime, config_file: str | None = None, mx_worker_fd: int | None = None,
              web: WebFactory | None = None, queue_worker: tuple[int, int] | None = None) -> int:
    """Run until a stop signal; return the process exit code. `config_file` is passed on to worker
    processes; `mx_worker_fd` makes this process an MX worker, `queue_worker` (its number and the fd of
    its pair) a queue worker; `web` makes the HTTP listener."""
    ctx = Context(runtime)
    loop = asyncio.get_running_loop()
    worker = mx_worker_fd is not None or queue_worker is not None
    if queue_worker is None:  # the queue shares nothing through Redis
        ctx.shared = await _shared_state(ctx, announce=not worker)
    raise_fd_limit()
    caps = session_caps(ctx.config)
    log.info("open-files limit %s: at most %d MX and %d submission sessions", caps.fd_limit or "unlimited",
             caps.mx, caps.submission)
    listeners = ListenerState()
    services = build_services(ctx, config_file, mx_worker_fd, web, listeners, queue_worker)
    systemd = Notifier("") if worker else Notifier()  # a worker's parent speaks for it

    def on_signal(signame: str) -> None:
        if ctx.stopping.is_set():
            log.warning("second %s: forcing stop", signame)
            systemd.status("stopping: forced")
            ctx.force_stop.set()
        else:
            log.info("%s: draining and stopping", signame)
            systemd.stopping(f"stopping: draining for at most {ctx.drain_left():.0f} s")
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
            systemd.status(f"starting {service.name}")
            await service.start()
            started.append(service)
            listening = getattr(service, "listening", None)
            if listening is not None and not worker:
                listeners.expect(service.name, expected_listeners(ctx, service.name), listening)
        names = ", ".join(s.name for s in started) or "no services"
        log.info("fwdmail ready: %s", names)
        freeze_startup_objects(collect=False)
        systemd.ready(f"serving: {names}")
        await ctx.stopping.wait()
    finally:
        if not ctx.stopping.is_set():
            systemd.stopping("stopping: a service failed")
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:
                log.exception("error while stopping %s", service.name)
        await ctx.delivery.close()
        if ctx.shared is not None:
            await ctx.shared.close()
        ctx.blocking.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        systemd.close()
    log.info("fwdmail stopped")
    return 0
