"""Forwarding one accepted message to its aliases' destinations, and the reply after DATA.

Untrusted input: the message bytes an SMTP client on port 25 sent (header size, Received count, our
loop marker), and the destinations' replies (masked: a reply quoted to the client or the error log names
the alias, never the destination, and no other address or IP it echoes; a TLS policy failure is quoted
to the client without its destination's domain and host, which only the error log shows). The message
lives in memory only, until the reply; a sender's retry after a 4xx does not reach the destinations that
already took it (`DeliveredMemory`, keyed fingerprints), nor those another session is forwarding it to
right now; with `[cluster] redis_url` neither on another node (`SharedDelivered`).
Webhook destinations (https:// URLs) are POSTed the same copy as JSON (`mx.webhook`) and remembered alike.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from fwdmail import store
from fwdmail.mail import headers as header_section
from fwdmail.mail import srs
from fwdmail.mail.addresses import is_webhook
from fwdmail.mail.jsonmail import Envelope
from fwdmail.mail.received import count_received, received_header
from fwdmail.mx.dedup import DeliveredMemory, SharedDelivered, fingerprint, message_digest
from fwdmail.mx.notices import PartialNotices, Refused
from fwdmail.mx.webhook import WebhookClient
from fwdmail.policy.contract import InboundPolicy, SessionInfo, Transaction
from fwdmail.policy.routing import Route
from fwdmail.runtime.context import Context
from fwdmail.runtime.errorlog import ErrorLogWriter, ErrorRow
from fwdmail.runtime.logsetup import scrub
from fwdmail.runtime.sharedstate import SharedUnavailable
from fwdmail.smtp import replies
from fwdmail.smtp.client import Content
from fwdmail.smtp.replies import SmtpError
from fwdmail.smtp.tlspolicy import TlsPolicyError

__all__ = ["CLIENT_NOTE", "SRS_BOUNCE_ALIAS", "Forwarder", "Outcome"]

log = logging.getLogger("fwdmail.mx")

SRS_BOUNCE_ALIAS = "(SRS bounce)"
CLIENT_NOTE = "mx.client"  # Transaction.notes: the client's IP, so a refusal at DATA is gated per client
_REPLY_TEXT_LIMIT = 300
_MAX_HEADER_BYTES = 1 << 20  # as Exim's header_maxsize; sane headers are a few KB


def _mask(text: str, destination: str, shown: str) -> str:
    """A destination's reply text naming `destination` as `shown`; any other address or IP it echoes
    (our SRS sender spells out the original sender's address) is scrubbed."""
    pieces = re.split(re.escape(destination), text, flags=re.IGNORECASE)
    masked = shown.join(scrub(p) for p in pieces)
    return " ".join(masked.split())[:_REPLY_TEXT_LIMIT]


@dataclass
class _Group:
    """The destinations of one alias in one message: one copy, with the alias's loop marker."""

    route: Route
    rcpt: str
    destinations: list[str] = field(default_factory=list)
    already: int = 0

    @property
    def logged(self) -> str:
        """The recipient as the error log names it: a bounce's SRS address encodes a stranger's address."""
        return SRS_BOUNCE_ALIAS if self.route.alias == SRS_BOUNCE_ALIAS else self.rcpt


@dataclass(frozen=True)
class Outcome:
    """What one destination of one alias's copy answered (`error` None: it took the message)."""

    group: _Group
    destination: str
    error: SmtpError | None


@dataclass(frozen=True)
class _Failure:
    """An outcome with an error."""

    group: _Group
    destination: str
    error: SmtpError


def _whole_reply(failures: list[_Failure], code: int, enhanced_class: str,
                 now: dt.datetime) -> tuple[SmtpError, list[ErrorRow]]:
    """The reply refusing or deferring the whole message, quoting the first failure with its destination
    masked as the address the client used, and its error-log row for each alias that failed."""
    g, d, e = failures[0].group, failures[0].destination, failures[0].error
    enhanced = e.enhanced_code if e.enhanced_code.startswith(enhanced_class) else f"{enhanced_class}0.0"
    shown = e.public if isinstance(e, TlsPolicyError) else _mask(e.text, d, g.rcpt)
    reply = SmtpError(code, enhanced, f"<{g.rcpt}>: {shown}")
    text = f"<{g.logged}>: {_mask(e.text, d, g.logged)}"
    aliases = sorted({(f.group.route.domain, f.group.route.alias) for f in failures})
    return reply, [ErrorRow(now, "inbound", dom, alias, reply.code, reply.enhanced_code, text)
                   for dom, alias in aliases]


class Forwarder:
    """Forwards messages (in memory) during the session and decides each reply per the delivery contract."""

    def __init__(self, ctx: Context, policies: list[InboundPolicy], errors: ErrorLogWriter) -> None:
        """`policies` is the MX's own list (checked at DATA, shaping each copy); `errors` its error log."""
        cfg = ctx.config
        self.ctx = ctx
        self.cfg = cfg.mx
        self.hostname = cfg.server_hostname
        self.srs_domain = cfg.srs_domain
        self.srs_hash_length = cfg.srs.hash_length
        self.secret = ctx.runtime.srs_secret
        self._fp_key = hmac.new(self.secret, b"dedup\0", hashlib.sha256).digest()
        timeouts = cfg.delivery
        self.flight_wait = timeouts.connect_timeout + 2 * timeouts.command_timeout + timeouts.data_timeout
        """How long a message waits for its copy that another session is forwarding (one try's worth)."""
        self.delivered = DeliveredMemory(self.cfg.dedup_ttl, self.cfg.dedup_max_entries, 2 * self.flight_wait)
        self.shared = (SharedDelivered(ctx.shared, self.cfg.dedup_ttl, 2 * self.flight_wait)
                       if ctx.shared is not None else None)
        """The retry memory across nodes (`[cluster] redis_url`), beside this node's own."""
        self.notices = PartialNotices(self.hostname, ctx.delivery, self.cfg.partial_failure_notice_interval,
                                      ctx.shared)
        self.policies = policies
        self.errors = errors
        self.webhooks = WebhookClient(cfg, ctx.blocking)
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def refuse(self, tx: Transaction | None, error: SmtpError) -> str:
        """The reply for a message refused as a whole (logged once per alias)."""
        routes = {(a.route.domain, a.route.alias) for a in tx.recipients} if tx else set()
        now = store.utcnow()
        client = tx.notes.get(CLIENT_NOTE) if tx else None
        await self.errors.refusal([ErrorRow.inbound(now, d, a, error) for d, a in sorted(routes)],
                                  client if isinstance(client, str) else None)
        return error.reply

    async def message(self, session: SessionInfo, tx: Transaction, data: bytes, digest: bytes = b"") -> str:
        """Forward `data` to every accepted recipient's destinations; the reply per the delivery contract.
        `digest`: its `message_digest` if already made (the SMTP server makes it while reading).

        If the client hangs up meanwhile, forwarding still completes and the destinations that took the
        message are remembered, so the sender's retry does not reach them twice.
        """
        delivered: list[bytes] = []
        task = asyncio.get_running_loop().create_task(self._counted(session, tx, data, digest, delivered))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._client_gone(t, delivered))
            raise

    def _client_gone(self, task: asyncio.Task[str], delivered: list[bytes]) -> None:
        if not task.cancelled() and task.exception() is None:
            now = time.monotonic()
            for fp in delivered:
                self.delivered.remember(fp, now)

    async def _counted(self, session: SessionInfo, tx: Transaction, data: bytes, digest: bytes,
                       delivered: list[bytes]) -> str:
        self.in_flight += 1
        self._idle.clear()
        started = time.monotonic()
        try:
            reply = await self._message(session, tx, data, digest, delivered)
            self.ctx.metrics.mx_reply(reply, time.monotonic() - started)
            return reply
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    def marker(self, alias: str) -> str:
        """The loop marker of an alias, carried in our Received header's id."""
        mac = hmac.new(self.secret, b"loop\0" + alias.lower().encode("utf-8", "replace"), hashlib.sha256)
        return "F" + mac.hexdigest()[:15].upper()

    def _groups(self, tx: Transaction) -> list[_Group]:
        groups: dict[str, _Group] = {}
        taken: set[str] = set()
        for acc in tx.recipients:
            if acc.route.discard:
                continue
            group = groups.setdefault(acc.route.alias, _Group(acc.route, acc.rcpt))
            for dest in acc.route.destinations:
                key = dest if is_webhook(dest) else dest.lower()  # a URL's path and query keep their case
                if key not in taken:
                    taken.add(key)
                    group.destinations.append(dest)
        return list(groups.values())

    async def _message(self, session: SessionInfo, tx: Transaction, data: bytes, digest: bytes,
                       delivered: list[bytes]) -> str:
        headers = header_section.head(data)
        if len(headers) > _MAX_HEADER_BYTES:
            return await self.refuse(tx, replies.HEADER_TOO_BIG)
        if count_received(headers) > self.cfg.max_received_headers or any(
            self.marker(alias).encode() in headers for alias in {a.route.alias for a in tx.recipients}
        ):
            return await self.refuse(tx, replies.LOOP_DETECTED)
        prepend = b""
        for policy in self.policies:
            verdict = await policy.data(session, tx, data)
            if verdict.error is not None:
                return await self.refuse(tx, verdict.error)
            prepend += verdict.prepend
        groups = self._groups(tx)
        if not groups:
            return replies.FORWARDED
        head = prepend + headers
        body = memoryview(data)[len(headers):]
        if not digest:
            digest = await self.ctx.blocking.cpu_for(len(data))(message_digest, data)
        now = store.utcnow()
        sender = srs.forward(tx.sender, self.secret, self.srs_domain, now, self.srs_hash_length)
        fps = {d: fingerprint(digest, d, self._fp_key) for g in groups for d in g.destinations}
        landed = await self._settle(list(fps.values()))
        remote: set[bytes] = set()
        if self.shared is not None:
            try:
                remote = await self.shared.seen(list(fps.values()))
            except SharedUnavailable:
                return await self.refuse(tx, replies.STORE_UNAVAILABLE)
        started: list[bytes] = []
        claimed: list[bytes] = []
        deadline = time.monotonic() + self.flight_wait
        try:
            mono = time.monotonic()
            jobs = []
            outcomes: list[Outcome] = []
            for g in groups:
                pending = []
                for d in g.destinations:
                    if self.delivered.seen(fps[d], mono) or fps[d] in landed or fps[d] in remote:
                        g.already += 1
                    elif self.delivered.flying(fps[d], mono):
                        outcomes.append(Outcome(g, d, replies.FORWARD_IN_PROGRESS))
                    elif (claim := await self._claim(fps[d], deadline)) != "mine":
                        if claim == "delivered":
                            g.already += 1
                            landed.add(fps[d])
                        else:
                            outcomes.append(Outcome(g, d, replies.FORWARD_IN_PROGRESS if claim == "busy"
                                                    else replies.STORE_UNAVAILABLE))
                    else:
                        if self.shared is not None:
                            claimed.append(fps[d])
                        self.delivered.start(fps[d])
                        started.append(fps[d])
                        pending.append(d)
                if pending:
                    received = received_header(session.helo, self.hostname, esmtp=session.esmtp,
                                               tls=session.tls, smtputf8=tx.smtputf8,
                                               marker=self.marker(g.route.alias), now=now)
                    copy = head
                    for policy in self.policies:
                        copy = await policy.forward(session, tx, g.route, g.rcpt, copy)
                    hooks = [d for d in pending if is_webhook(d)]
                    smtp = [d for d in pending if not is_webhook(d)]
                    if smtp:
                        jobs.append(self._send(g, sender, smtp, (received, copy, body)))
                    if hooks:
                        jobs.append(self._post(g, tx.sender, hooks, received + copy + body))
            outcomes += [item for batch in await asyncio.gather(*jobs) for item in batch]
            for o in outcomes:
                self.delivered.land(fps[o.destination], o.error is None)
                if fps[o.destination] in claimed:
                    claimed.remove(fps[o.destination])
                    await self._shared_quietly("land", fps[o.destination], o.error is None)
        finally:
            for fp in started:
                self.delivered.land(fp, False)  # only those not landed above (stopped midway)
            for fp in claimed:
                await self._shared_quietly("land", fp, False)
        mono = time.monotonic()
        done = {o.destination for o in outcomes if o.error is None}
        delivered.extend(fp for d, fp in fps.items()
                         if d in done or fp in landed or self.delivered.seen(fp, mono))
        return await self._conclude(tx, groups, outcomes, fps, remote)

    async def _settle(self, fps: list[bytes]) -> set[bytes]:
        """Wait (at most `flight_wait`) while another session forwards this message to some of its
        destinations, so that it is sent to each once; return those the other sessions delivered."""
        deadline = time.monotonic() + self.flight_wait
        landed: set[bytes] = set()
        waited = False
        while (mono := time.monotonic()) < deadline:
            busy = [fp for fp in fps if fp not in landed and self.delivered.flying(fp, mono)
                    and not self.delivered.seen(fp, mono)]
            if not busy:
                break
            if not waited:
                log.debug("message waits for a copy of it that another session is forwarding")
                waited = True
            landed |= await self.delivered.settle(busy, deadline - mono)
        return landed

    async def _claim(self, fp: bytes, deadline: float) -> str:
        """"mine" when no node forwards `fp` now (always without shared state), else what
        `SharedDelivered.claim` says; "unavailable" when the shared state is gone."""
        if self.shared is None:
            return "mine"
        try:
            return await self.shared.claim(fp, deadline)
        except SharedUnavailable:
            return "unavailable"

    async def _shared_quietly(self, verb: str, *args: Any) -> None:
        """A write to the shared retry memory whose failure only loses the memory (logged)."""
        if self.shared is None:
            return
        try:
            await getattr(self.shared, verb)(*args)
        except SharedUnavailable:
            log.warning("retry memory not shared (%s): a retry on another node may be delivered twice", verb)

    async def _send(self, group: _Group, sender: str, destinations: list[str],
                    message: Content) -> list[Outcome]:
        try:
            results = await self.ctx.delivery.send(sender, destinations, message)
        except Exception as exc:
            log.error("delivery failed unexpectedly: %s", type(exc).__name__)
            results = {}
        return [Outcome(group, d, results.get(d, replies.TRY_LATER)) for d in destinations]

    async def _post(self, group: _Group, sender: str, urls: list[str], message: bytes) -> list[Outcome]:
        """POST the copy to the alias's webhook destinations (see `mx.webhook`)."""
        envelope = Envelope(sender, group.rcpt, group.route.alias)
        try:
            results = await self.webhooks.send(group.route.domain, envelope, urls, message)
        except Exception as exc:
            log.error("webhook delivery failed unexpectedly: %s", type(exc).__name__)
            results = {}
        return [Outcome(group, u, results.get(u, replies.TRY_LATER)) for u in urls]

    async def _conclude(self, tx: Transaction, groups: list[_Group], outcomes: list[Outcome],
                        fps: dict[str, bytes], remembered: set[bytes] | None = None) -> str:
        """`remembered`: the fingerprints the shared retry memory held when the message came."""
        now = store.utcnow()
        mono = time.monotonic()
        failed = [_Failure(o.group, o.destination, o.error) for o in outcomes if o.error is not None]
        temporary = [f for f in failed if f.error.temporary]
        permanent = [f for f in failed if f.error.permanent]
        accepted = [o.destination for o in outcomes if o.error is None]
        rows = [ErrorRow(now, "outbound", f.group.route.domain, f.group.route.alias, f.error.code,
                         f.error.enhanced_code, _mask(f.error.text, f.destination, f.group.logged))
                for f in failed if f.error is not replies.FORWARD_IN_PROGRESS]
        if temporary:
            for d in accepted:
                self.delivered.remember(fps[d], mono)
            await self._shared_quietly("remember", [fps[d] for d in accepted])
            code = temporary[0].error.code
            code = code if 450 <= code < 500 else 451  # a 421 would tell the client we hung up
            reply, inbound = _whole_reply(temporary, code, "4.", now)
            await self.errors.write(rows + inbound)
            log.debug("message deferred: %d temporary failure(s)", len(temporary))
            return reply.reply
        for fp in fps.values():
            self.delivered.forget(fp)
        if remembered:
            await self._shared_quietly("forget", [fp for fp in fps.values() if fp in remembered])
        delivered_any = bool(accepted) or any(g.already for g in groups) or any(
            a.route.discard for a in tx.recipients)
        if permanent and not delivered_any:
            reply, inbound = _whole_reply(permanent, permanent[0].error.code, "5.", now)
            await self.errors.write(rows + inbound)
            log.debug("message refused: every destination failed permanently")
            return reply.reply
        if permanent:
            await self.errors.write(rows)
            self._notify_partial(permanent, mono)
        log.debug("message forwarded to %d destination(s)", len(accepted))
        return replies.FORWARDED

    def _notify_partial(self, permanent: list[_Failure], mono: float) -> None:
        by_alias: dict[str, tuple[_Group, list[Refused]]] = {}
        for f in permanent:
            by_alias.setdefault(f.group.route.alias, (f.group, []))[1].append(Refused(f.destination, f.error))
        for alias, (g, refused) in by_alias.items():
            self.notices.notify(alias, g.route.account_email, refused, mono)

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`, or until a forced stop) for messages being forwarded."""
        if self.in_flight == 0:
            return
        waits = [asyncio.ensure_future(self._idle.wait()), asyncio.ensure_future(self.ctx.force_stop.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
