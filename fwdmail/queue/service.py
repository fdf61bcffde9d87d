"""The outbound queue worker: claims due messages, DKIM-signs and delivers them, records every outcome.

Untrusted input: the stored submitted messages (signed and sent as they are) and the destinations'
replies (already reduced to `SmtpError`s by the delivery client). Temporary failures are retried with
a clamped exponential backoff until `max_lifetime`; permanent ones bounce at once with an RFC 3464 DSN
to the envelope sender, the alias that sent it (never for a null sender). The DSN, from the null sender,
goes out as any other mail: to the alias's MX, ours for a hosted alias, which forwards it to the alias's
destinations. Claims are tagged with this node (`[cluster] node_id`): a start takes back only this
node's claims of a worker that died, and a claim older than `claim_timeout` by the database's clock is
any node's to take back;
a message that keeps crashing the worker is held, never dropped. With `[queue] workers` this service runs
in each worker process (`queue.workers`), with the worker's own claim tag and share of `concurrency`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from fwdmail import store
from fwdmail.auth import dkim_sign as dkim
from fwdmail.config import QueueConfig
from fwdmail.queue import dsn
from fwdmail.runtime.context import Context
from fwdmail.runtime.groupcommit import GroupCommitter
from fwdmail.smtp.replies import SmtpError

__all__ = ["AttemptPlan", "QueueService", "backoff", "plan_attempt"]

log = logging.getLogger("fwdmail.queue")

NO_RESULT = SmtpError(451, "4.3.0", "No delivery result for this recipient, will retry")
CHECKPOINT_EVERY = 1.0
CLAIM_WAIT = 0.05
"""Seconds a free delivery slot may wait for others to free up, so that claims come in batches."""
SIGN_BATCH = 4
"""Messages signed in one call on the CPU pool (one thread handoff for several RSA signatures)."""


def backoff(attempts: int, cfg: QueueConfig) -> float:
    """Seconds to wait after `attempts` failed attempts (1-based): doubling from min_backoff, clamped."""
    raw = cfg.min_backoff * 2 ** min(max(attempts, 1) - 1, 40)
    return min(cfg.max_backoff, max(cfg.min_backoff, raw))


@dataclass(frozen=True)
class AttemptPlan:
    """What one delivery attempt means for each recipient, and what happens next."""

    delivered: list[str] = field(default_factory=list)
    deferred: dict[str, SmtpError] = field(default_factory=dict)
    bounced: dict[str, SmtpError] = field(default_factory=dict)
    retry_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    bounce_report: bool = False
    delay_notice: bool = False


def plan_attempt(email: store.ClaimedEmail, results: Mapping[str, SmtpError | None], now: dt.datetime,
                 cfg: QueueConfig) -> AttemptPlan:
    """Sort recipients by result: accepted, permanent (bounce), temporary (retry, or bounce once the
    message is `max_lifetime` old, counted from when sending could start)."""
    expires_at = email.send_at + dt.timedelta(seconds=cfg.max_lifetime)
    plan = AttemptPlan(expires_at=expires_at)
    for address in email.recipients:
        error = results.get(address, NO_RESULT)
        if error is None:
            plan.delivered.append(address)
        elif error.permanent or now >= expires_at:
            plan.bounced[address] = error
        else:
            plan.deferred[address] = error
    retry_at = min(now + dt.timedelta(seconds=backoff(email.attempts + 1, cfg)), max(expires_at, now))
    may_notify = email.mail_from != ""
    delay_notice = (may_notify and bool(plan.deferred) and not email.delay_notified
                    and now - email.send_at >= dt.timedelta(seconds=cfg.delay_notice_after))
    return AttemptPlan(plan.delivered, plan.deferred, plan.bounced, retry_at, expires_at,
                       may_notify and bool(plan.bounced), delay_notice)


def sign_all(emails: list[store.ClaimedEmail], now: dt.datetime) -> list[bytes | Exception]:
    """Each message DKIM-signed, or the error that kept it from being signed (a bad key fails alone)."""
    out: list[bytes | Exception] = []
    for email in emails:
        try:
            out.append(dkim.signed_message(email.message, email.domain, email.dkim_selector,
                                           email.dkim_private_key, now))
        except Exception as exc:
            out.append(exc)
    return out


_Signed = tuple["asyncio.Future[list[bytes | Exception]]", int]
"""A message's place in a signing batch: the batch's future and its index there."""


@dataclass(frozen=True)
class _Finished:
    """A delivery attempt that is over, and what to write about it."""

    email: store.ClaimedEmail
    now: dt.datetime
    plan: AttemptPlan
    notices: list[store.NewEmail]


class QueueService:
    """Runs the queue on the serve loop: recovery at start, then up to `concurrency` deliveries at once."""

    name = "queue"

    def __init__(self, ctx: Context, tag: str | None = None, concurrency: int | None = None) -> None:
        """`tag` (default: the node id) marks this process's claims; `concurrency` (default
        `[queue] concurrency`) bounds its deliveries at once."""
        self.ctx = ctx
        self.cfg = ctx.config.queue
        self.concurrency = concurrency or self.cfg.concurrency
        self.token = secrets.token_hex(8)
        self.node = tag or ctx.runtime.node_id
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._unrecorded: dict[int, _Finished] = {}  # outcomes the store could not take yet
        self._recorder: GroupCommitter[store.Attempt, store.AttemptOutcome | None] = GroupCommitter(
            ctx.blocking, store.record_attempts, store.utcnow)
        self._runner: asyncio.Task[None] | None = None
        self._claim_owed = False  # free slots wait for CLAIM_WAIT, to be claimed together
        self._last_claim = 0.0
        self._checkpoint_owed = False
        self._last_checkpoint = 0.0
        self._last_sweep = time.monotonic()

    def wake(self) -> None:
        """Look for due messages now (a submission was just queued)."""
        self._wake.set()

    async def start(self) -> None:
        released, held = await self.ctx.blocking.db(store.release_stale_claims, store.utcnow(),
                                                    self.cfg.max_crashes, node=self.node)
        if released:
            log.warning("took back %d message(s) claimed before a crash; %d now held", released, held)
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            log.info("waiting for %d delivery attempt(s) in flight", len(self._tasks))
            pending = await self._wait_in_flight()
            for task in pending:
                task.cancel()
            if pending:
                log.warning("stopped %d delivery attempt(s) in flight; they are retried on start",
                            len(pending))
                await asyncio.wait(pending)
        for finished in list(self._unrecorded.values()):
            await self._record(finished)
        await self._recorder.drain()  # outcomes of attempts stopped while waiting for their commit
        try:
            await self.ctx.blocking.db(store.release_claims, self.token, store.utcnow())
            await self.ctx.blocking.db(store.wal_checkpoint)
        except Exception as exc:
            if not store.unavailable(exc):
                raise
            log.warning("could not give back this worker's claims (%s); the next start takes them back",
                        store.failure(exc))

    async def _wait_in_flight(self) -> list[asyncio.Task[None]]:
        """Let deliveries in flight finish until `shutdown_timeout` or a second stop signal; return
        those still running."""
        forced = asyncio.ensure_future(self.ctx.force_stop.wait())
        try:
            async with asyncio.timeout(self.ctx.drain_left()):
                while running := [t for t in self._tasks.values() if not t.done()]:
                    await asyncio.wait([*running, forced], return_when=asyncio.FIRST_COMPLETED)
                    if forced.done():
                        break
        except TimeoutError:
            pass
        finally:
            forced.cancel()
        return [t for t in self._tasks.values() if not t.done()]

    async def _run(self) -> None:
        failing = ""
        while not self._stop.is_set():
            self._wake.clear()
            try:
                await self._tick()
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if problem != failing:
                    log.error("queue worker: %s (logged once while it lasts)", problem)
                failing = problem
            else:
                if failing:
                    log.info("queue worker: working again")
                failing = ""
            try:
                await asyncio.wait_for(self._wake.wait(),
                                       CLAIM_WAIT if self._claim_owed else self.cfg.poll_interval)
            except TimeoutError:
                pass

    def _claim_now(self, free: int, mono: float) -> bool:
        """Whether to claim due messages for `free` slots now. While deliveries run, slots are claimed
        a quarter of `concurrency` at a time, or once the last claim is CLAIM_WAIT old: one claim
        transaction and one signing handoff serve several messages."""
        if free <= 0:
            return False
        return (not self._tasks or free >= max(1, self.concurrency // 4)
                or mono - self._last_claim >= CLAIM_WAIT)

    async def _tick(self) -> None:
        for finished in list(self._unrecorded.values()):
            await self._record(finished)
        free = self.concurrency - len(self._tasks)
        self._claim_owed = False
        if self._claim_now(free, time.monotonic()):
            self._last_claim = time.monotonic()
            self._start(await self.ctx.blocking.db(store.claim_due, store.utcnow(), self.token, free,
                                                   self.node))
        else:
            self._claim_owed = free > 0
        mono = time.monotonic()
        if self._checkpoint_owed and mono - self._last_checkpoint >= CHECKPOINT_EVERY:
            self._checkpoint_owed = False
            self._last_checkpoint = mono
            if not await self.ctx.blocking.db(store.wal_checkpoint):
                self._checkpoint_owed = True  # a reader kept redacted bytes in the WAL: try again
        if mono - self._last_sweep >= self.cfg.claim_timeout:
            self._last_sweep = mono
            now = store.utcnow()
            released, held = await self.ctx.blocking.db(
                store.release_stale_claims, now, self.cfg.max_crashes,
                exclude=[*self._tasks, *self._unrecorded], older_than=self.cfg.claim_timeout)
            if released:
                log.warning("took back %d stale claim(s); %d now held", released, held)

    def _start(self, claimed: list[store.ClaimedEmail]) -> None:
        """A delivery task per claimed message; their signing is shared out in batches of SIGN_BATCH."""
        loop = asyncio.get_running_loop()
        to_sign = [email for email in claimed if email.recipients]
        signed: dict[int, _Signed] = {}
        for start in range(0, len(to_sign), SIGN_BATCH):
            batch = to_sign[start:start + SIGN_BATCH]
            future = asyncio.ensure_future(self.ctx.blocking.cpu(sign_all, batch, store.utcnow()))
            future.add_done_callback(_retrieve)  # read by every attempt of the batch, unless all stopped
            signed.update((email.id, (future, index)) for index, email in enumerate(batch))
        for email in claimed:
            task = loop.create_task(self._attempt(email, signed.get(email.id)))
            self._tasks[email.id] = task
            task.add_done_callback(lambda _t, i=email.id: self._done(i))

    def _done(self, email_id: int) -> None:
        self._tasks.pop(email_id, None)
        self._wake.set()

    async def _attempt(self, email: store.ClaimedEmail, signed: _Signed | None) -> None:
        try:
            await self._deliver(email, signed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("queue worker failed on %s: %s", email.queue_id, store.failure(exc))
            now = store.utcnow()
            retry_at = now + dt.timedelta(seconds=backoff(email.attempts + 1, self.cfg))
            try:
                status = await self.ctx.blocking.db(store.record_crash, email.id, email.token, now, retry_at,
                                                    self.cfg.max_crashes)
            except Exception as exc2:
                log.error("could not record the failure of %s: %s", email.queue_id, store.failure(exc2))
                return
            if status == "held":
                log.warning("%s held after %d failed attempts to process it", email.queue_id,
                            self.cfg.max_crashes)

    async def _deliver(self, email: store.ClaimedEmail, signed: _Signed | None) -> None:
        started = time.monotonic()
        results: dict[str, SmtpError | None] = {}
        if email.recipients and signed is not None:
            batch, index = signed
            message = (await asyncio.shield(batch))[index]
            if isinstance(message, Exception):
                raise message
            results = await self.ctx.delivery.send(email.mail_from, email.recipients, message)
        now = store.utcnow()
        plan = plan_attempt(email, results, now, self.cfg)
        self._count(email, plan, time.monotonic() - started, now)
        notices: list[store.NewEmail] = []
        if plan.bounce_report:
            notices.append(self._report("failed", email, plan.bounced, now, None))
        if plan.delay_notice:
            notices.append(self._report("delayed", email, plan.deferred, now, plan.expires_at))
        await self._record(_Finished(email, now, plan, notices))

    def _count(self, email: store.ClaimedEmail, plan: AttemptPlan, seconds: float, now: dt.datetime) -> None:
        """An attempt in the metrics: each recipient delivered, deferred or bounced (by reason), its time."""
        metrics = self.ctx.metrics
        if plan.delivered:
            metrics.forward("queue", len(plan.delivered))
        for error in (*plan.deferred.values(), *plan.bounced.values()):
            metrics.refusal("queue", error, "destination")
        outcome = "forwarded" if plan.delivered or not plan.bounced else "refused"
        metrics.attempt("deferred" if plan.deferred else outcome, seconds,
                        (now - email.created_at).total_seconds() if plan.delivered else None)

    async def _record(self, finished: _Finished) -> None:
        """Write an attempt's outcome, in one transaction with the outcomes of attempts that end meanwhile.
        While the store cannot take it (locked, full, read-only) it is kept and written on a later tick:
        the message is neither left claimed nor delivered twice."""
        email, plan, notices = finished.email, finished.plan, finished.notices
        try:
            outcome = await self._recorder.submit(store.Attempt(
                email.id, email.token, finished.now, plan.delivered, plan.deferred, plan.bounced,
                plan.retry_at, notices, plan.delay_notice,
            ))
        except Exception as exc:
            if not store.unavailable(exc):
                self._unrecorded.pop(email.id, None)
                raise
            if email.id not in self._unrecorded:
                log.warning("cannot record the attempt on %s yet (%s); trying again", email.queue_id,
                            store.failure(exc))
            self._unrecorded[email.id] = finished
            return
        self._unrecorded.pop(email.id, None)
        if outcome is None:
            log.info("%s was removed or reclaimed during delivery", email.queue_id)
            return
        if outcome.redacted:
            self._checkpoint_owed = True
        if notices:
            self._wake.set()
        quiet = outcome.status == "delivered" and not notices  # the common case, at debug level
        log.log(logging.DEBUG if quiet else logging.INFO, "%s %s: %d delivered, %d deferred, %d bounced%s",
                email.queue_id, outcome.status, len(plan.delivered), len(plan.deferred), len(plan.bounced),
                ", report queued" if notices else "")

    def _report(self, action: str, email: store.ClaimedEmail, failures: Mapping[str, SmtpError],
                now: dt.datetime, retry_until: dt.datetime | None) -> store.NewEmail:
        report = dsn.build_report(
            action=action, domain=email.domain, hostname=self.ctx.config.server_hostname,
            to=email.mail_from, queue_id=email.queue_id, original_headers=email.headers,
            arrival=email.created_at, failures=failures, now=now, retry_until=retry_until,
        )
        return store.NewEmail(
            queue_id=store.new_queue_id(), domain=email.domain, mail_from="",
            recipients=(email.mail_from,), headers=report.headers, body=report.body,
            subject=report.subject, date_header=now, send_at=now,
        )


def _retrieve(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
