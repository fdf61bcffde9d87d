"""The MX: inbound SMTP for hosted domains, forwarded to the aliases' destinations during the session.

Untrusted input: everything an SMTP client on port 25 sends (envelope addresses including relay tricks
and SRS bounces, message bytes: size, header size, loops, smuggling) and the destinations' replies.
A forwarded message lives in memory only, until the reply after DATA: no row, no file, no log line
names an address or an IP. Errors (ours and the destinations') go to the SMTP error log, without IP or body;
a refusal is a row only if it names a hosted domain (others are counted), within per-client and
per-minute write budgets. Invalid SRS recipients are budgeted per client network and in total
(`guessing.SrsGuard`), so the hash of an SRS address cannot be found by trying.

`MxHandler` only translates aiosmtpd events into calls of `Mx` (sender / recipient / message / refuse)
and back into replies. `Mx.policies` is the seam for inbound checks (sender authentication, per-IP
limits): each `InboundPolicy` is asked at connect, MAIL, RCPT and DATA, and shapes each forwarded copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import hashlib
import hmac
import logging
import re
import secrets
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from fwdmail import store
from fwdmail.mail import srs
from fwdmail.mail.addresses import Address, AddressError, parse_address
from fwdmail.mail.received import count_received, header_block, received_header
from fwdmail.mx.dedup import DeliveredMemory, RateLimiter, fingerprint, message_digest, message_hasher
from fwdmail.mx.workers import Dispatcher, Inbox
from fwdmail.policy.contract import Accepted, InboundPolicy, SessionInfo, Transaction
from fwdmail.policy.guessing import ClientKeys, RowGate, SrsGuard
from fwdmail.policy.routing import DirectoryCache, RegexBudget, Route, resolve
from fwdmail.runtime.context import Context
from fwdmail.runtime.errorlog import ErrorLogWriter, ErrorRow
from fwdmail.runtime.listeners import close_servers, listen, session_caps
from fwdmail.runtime.logsetup import scrub
from fwdmail.runtime.shares import share
from fwdmail.smtp import replies
from fwdmail.smtp.client import Content
from fwdmail.smtp.replies import SmtpError
from fwdmail.smtp.server import Session, Sessions, SmtpServer

__all__ = ["Mx", "MxHandler", "MxService"]

log = logging.getLogger("fwdmail.mx")

SRS_BOUNCE_ALIAS = "(SRS bounce)"
_REPLY_TEXT_LIMIT = 300
_CLIENT_NOTE = "mx.client"  # Transaction.notes: the client's IP, so a refusal at DATA is gated per client
_MAX_HEADER_BYTES = 1 << 20  # as Exim's header_maxsize; sane headers are a few KB


def _mask(text: str, destination: str, shown: str) -> str:
    """A destination's reply text naming `destination` as `shown`; any other address or IP it echoes
    (our SRS sender spells out the original sender's address) is scrubbed."""
    pieces = re.split(re.escape(destination), text, flags=re.IGNORECASE)
    masked = shown.join(scrub(p) for p in pieces)
    return " ".join(masked.split())[:_REPLY_TEXT_LIMIT]


def _utf8(raw: str) -> bool:
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def _whole_reply(
    failures: list[tuple[_Group, str, SmtpError]], code: int, enhanced_class: str, now: dt.datetime,
) -> tuple[SmtpError, list[ErrorRow]]:
    """The reply refusing or deferring the whole message, quoting the first failure with its destination
    masked as the address the client used, and its error-log row for each alias that failed."""
    g, d, e = failures[0]
    enhanced = e.enhanced_code if e.enhanced_code.startswith(enhanced_class) else f"{enhanced_class}0.0"
    reply = SmtpError(code, enhanced, f"<{g.rcpt}>: {_mask(e.text, d, g.rcpt)}")
    text = f"<{g.logged}>: {_mask(e.text, d, g.logged)}"
    aliases = sorted({(g.route.domain, g.route.alias) for g, _, _ in failures})
    return reply, [ErrorRow(now, "inbound", dom, alias, reply.code, reply.enhanced_code, text)
                   for dom, alias in aliases]


class Mx:
    """MX policy without sockets: what to answer a sender, a recipient and a message."""

    def __init__(self, ctx: Context, policies: Sequence[InboundPolicy] = ()) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.cfg = cfg.mx
        self.hostname = cfg.server_hostname
        self.srs_domain = cfg.srs_domain
        self.srs_max_age = cfg.srs.max_age_days
        self.srs_hash_length = cfg.srs.hash_length
        self.srs_lengths = srs.Lengths(cfg.srs.hash_length, cfg.srs.hash_length)
        self.secret = ctx.runtime.srs_secret
        self._fp_key = hmac.new(self.secret, b"dedup\0", hashlib.sha256).digest()
        self.directory = DirectoryCache(ctx.blocking)
        timeouts = cfg.delivery
        self.flight_wait = timeouts.connect_timeout + 2 * timeouts.command_timeout + timeouts.data_timeout
        """How long a message waits for its copy that another session is forwarding (one try's worth)."""
        self.regex_budget = RegexBudget.of(self.cfg)
        self.delivered = DeliveredMemory(self.cfg.dedup_ttl, self.cfg.dedup_max_entries, 2 * self.flight_wait)
        self.notices = RateLimiter(self.cfg.partial_failure_notice_interval)
        # With several MX processes each takes its share: per client rounded up (a client's connections
        # are spread over them), in total rounded down, so the total stays what the expected time to
        # forge an SRS address was worked out from (see fwdmail.example.toml).
        processes = cfg.mx.workers
        keys = ClientKeys()
        self.guard = SrsGuard(share(cfg.srs.max_invalid_per_client, processes),
                              max(1, cfg.srs.max_invalid_total // processes), cfg.srs.invalid_window, keys)
        self.errors = ErrorLogWriter(ctx.blocking, RowGate(
            share(cfg.error_log.max_rows_per_client_per_minute, processes),
            max(1, cfg.error_log.max_rows_per_minute // processes), keys), log)
        self.policies: list[InboundPolicy] = list(policies)
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # session events

    async def load_srs_lengths(self) -> None:
        """Read (or record, on a change) since when `[srs] hash_length` is used: see `srs.lengths`."""
        path = self.ctx.config.data_path / "srs.hash_length"
        self.srs_lengths = await self.ctx.blocking.db(srs.lengths, path, self.srs_hash_length, store.utcnow())

    async def connect(self, session: SessionInfo) -> SmtpError | None:
        """None to greet the client, or the refusal (logged)."""
        err = replies.SHUTTING_DOWN if self.ctx.stopping.is_set() else None
        for policy in self.policies:
            if err is not None:
                break
            err = await policy.connect(session)
        if err is not None:
            await self._log_ours(err, "", "", session)
        return err

    def disconnect(self, session: SessionInfo) -> None:
        self.guard.end_session((session.peer_ip, session.peer_port))
        for policy in self.policies:
            policy.disconnect(session)

    async def sender(self, session: SessionInfo, raw: str, options: Sequence[str]) -> Transaction | SmtpError:
        """MAIL FROM: a new transaction, or the refusal (logged; the sender is not)."""
        result = await self._sender(session, raw, options)
        if isinstance(result, SmtpError):
            await self._log_ours(result, "", "", session)
        else:
            result.notes[_CLIENT_NOTE] = session.peer_ip
        return result

    async def _sender(self, session: SessionInfo, raw: str,
                      options: Sequence[str]) -> Transaction | SmtpError:
        if self.ctx.stopping.is_set():
            return replies.SHUTTING_DOWN
        smtputf8 = any(o.upper() == "SMTPUTF8" for o in options)
        if raw in ("", "<>"):
            tx = Transaction("", smtputf8)
        else:
            try:
                if not _utf8(raw):
                    raise AddressError("not UTF-8")
                addr = parse_address(raw)
            except AddressError:
                return replies.BAD_SENDER
            if not addr.local.isascii() and not smtputf8:
                return replies.NEEDS_SMTPUTF8
            tx = Transaction(str(addr), smtputf8)
        for policy in self.policies:
            err = await policy.mail(session, tx)
            if err is not None:
                return err
        return tx

    async def recipient(self, session: SessionInfo, tx: Transaction, raw: str) -> Accepted | SmtpError:
        """RCPT TO: accept the recipient into `tx`, or the refusal (logged if it names a hosted domain,
        else only counted: the error log names no stranger's domain or address)."""
        if self.guard.session_blocked((session.peer_ip, session.peer_port)):
            self.errors.count(replies.SRS_SESSION_BLOCKED)
            return replies.SRS_SESSION_BLOCKED
        try:
            if not _utf8(raw):
                raise AddressError("not UTF-8")
            addr = parse_address(raw)
        except AddressError:
            self.errors.count(replies.RELAY_DENIED)
            return replies.RELAY_DENIED
        if len(tx.recipients) >= self.cfg.max_recipients:
            err: SmtpError = replies.TOO_MANY_RECIPIENTS
        elif not addr.local.isascii() and not tx.smtputf8:
            err = replies.NEEDS_SMTPUTF8
        else:
            route = await self._route(addr, session, tx)
            if isinstance(route, Route):
                accepted = Accepted(str(addr), route)
                for policy in self.policies:
                    refused = await policy.rcpt(session, tx, accepted)
                    if refused is not None:
                        await self._log_ours(refused, route.domain, route.alias, session)
                        return refused
                tx.recipients.append(accepted)
                return accepted
            err = route
        if (addr.domain == self.srs_domain and srs.is_srs(addr.local)) or not await self._hosted(addr):
            self.errors.count(err)  # an SRS local part encodes a stranger's address
        else:
            await self._log_ours(err, addr.domain, str(addr).lower(), session)
        return err

    async def _hosted(self, addr: Address) -> bool:
        """Whether `addr` is in a hosted domain, so the error log may name it."""
        try:
            return (await self.directory.get()).hosts(addr.domain)
        except Exception:
            return False

    async def _route(self, addr: Address, session: SessionInfo, tx: Transaction) -> Route | SmtpError:
        if addr.domain == self.srs_domain and srs.is_srs(addr.local):
            return self._srs_route(addr, session)
        try:
            directory = await self.directory.get()
        except Exception as exc:
            log.warning("cannot load the alias directory: %s", type(exc).__name__)
            return replies.STORE_UNAVAILABLE
        route = resolve(directory, addr, self.regex_budget.meter(session.peer_ip, tx.notes))
        if route is replies.RELAY_DENIED and addr.domain == self.srs_domain:
            return replies.NO_SUCH_USER
        return route

    def _srs_route(self, addr: Address, session: SessionInfo) -> Route | SmtpError:
        """A bounce to our SRS address, within the guessing budgets: past them it is deferred unchecked."""
        now = time.monotonic()
        if self.guard.locked(session.peer_ip, now):
            return replies.SRS_DEFERRED
        route = self._reverse_srs(addr)
        if not isinstance(route, Route):
            self.guard.invalid((session.peer_ip, session.peer_port), now)
        return route

    def _reverse_srs(self, addr: Address) -> Route | SmtpError:
        now = store.utcnow()
        local = addr.local
        for _ in range(3):
            try:
                reversed_ = srs.reverse(local, self.secret, now, self.srs_max_age, self.srs_lengths)
                target = parse_address(reversed_)
            except (srs.SrsError, AddressError):
                return replies.BAD_SRS
            if target.domain == self.srs_domain and srs.is_srs(target.local):
                local = target.local
                continue
            return Route(SRS_BOUNCE_ALIAS, self.srs_domain, (str(target),))
        return replies.BAD_SRS

    # DATA

    async def refuse(self, tx: Transaction | None, error: SmtpError) -> str:
        """The reply for a message refused as a whole (logged once per alias)."""
        routes = {(a.route.domain, a.route.alias) for a in tx.recipients} if tx else set()
        now = store.utcnow()
        client = tx.notes.get(_CLIENT_NOTE) if tx else None
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
        try:
            return await self._message(session, tx, data, digest, delivered)
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
                if dest.lower() not in taken:
                    taken.add(dest.lower())
                    group.destinations.append(dest)
        return list(groups.values())

    async def _message(self, session: SessionInfo, tx: Transaction, data: bytes, digest: bytes,
                       delivered: list[bytes]) -> str:
        headers = header_block(data)
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
        started: list[bytes] = []
        try:
            mono = time.monotonic()
            jobs = []
            outcomes: list[tuple[_Group, str, SmtpError | None]] = []
            for g in groups:
                pending = []
                for d in g.destinations:
                    if self.delivered.seen(fps[d], mono) or fps[d] in landed:
                        g.already += 1
                    elif self.delivered.flying(fps[d], mono):
                        outcomes.append((g, d, replies.FORWARD_IN_PROGRESS))
                    else:
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
                    jobs.append(self._send(g, sender, pending, (received, copy, body)))
            outcomes += [item for batch in await asyncio.gather(*jobs) for item in batch]
            for _, d, e in outcomes:
                self.delivered.land(fps[d], e is None)
        finally:
            for fp in started:
                self.delivered.land(fp, False)  # only those not landed above (stopped midway)
        mono = time.monotonic()
        done = {d for _, d, e in outcomes if e is None}
        delivered.extend(fp for d, fp in fps.items()
                         if d in done or fp in landed or self.delivered.seen(fp, mono))
        return await self._conclude(tx, groups, outcomes, fps)

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

    async def _send(self, group: _Group, sender: str, destinations: list[str], message: Content,
                    ) -> list[tuple[_Group, str, SmtpError | None]]:
        try:
            results = await self.ctx.delivery.send(sender, destinations, message)
        except Exception as exc:
            log.error("delivery failed unexpectedly: %s", type(exc).__name__)
            results = {}
        return [(group, d, results.get(d, replies.TRY_LATER)) for d in destinations]

    async def _conclude(self, tx: Transaction, groups: list[_Group],
                        outcomes: list[tuple[_Group, str, SmtpError | None]], fps: dict[str, bytes]) -> str:
        now = store.utcnow()
        mono = time.monotonic()
        failed = [(g, d, e) for g, d, e in outcomes if e is not None]
        temporary = [(g, d, e) for g, d, e in failed if e.temporary]
        permanent = [(g, d, e) for g, d, e in failed if e.permanent]
        accepted = [d for _, d, e in outcomes if e is None]
        rows = [ErrorRow(now, "outbound", g.route.domain, g.route.alias, e.code, e.enhanced_code,
                         _mask(e.text, d, g.logged))
                for g, d, e in failed if e is not replies.FORWARD_IN_PROGRESS]
        if temporary:
            for d in accepted:
                self.delivered.remember(fps[d], mono)
            code = temporary[0][2].code
            code = code if 450 <= code < 500 else 451  # a 421 would tell the client we hung up
            reply, inbound = _whole_reply(temporary, code, "4.", now)
            await self.errors.write(rows + inbound)
            log.debug("message deferred: %d temporary failure(s)", len(temporary))
            return reply.reply
        for fp in fps.values():
            self.delivered.forget(fp)
        delivered_any = bool(accepted) or any(g.already for g in groups) or any(
            a.route.discard for a in tx.recipients)
        if permanent and not delivered_any:
            reply, inbound = _whole_reply(permanent, permanent[0][2].code, "5.", now)
            await self.errors.write(rows + inbound)
            log.debug("message refused: every destination failed permanently")
            return reply.reply
        if permanent:
            await self.errors.write(rows)
            self._notify_partial(permanent, mono)
        log.debug("message forwarded to %d destination(s)", len(accepted))
        return replies.FORWARDED

    # partial-failure notices

    def _notify_partial(self, permanent: list[tuple[_Group, str, SmtpError]], mono: float) -> None:
        by_alias: dict[str, tuple[_Group, list[tuple[str, SmtpError]]]] = {}
        for g, d, e in permanent:
            by_alias.setdefault(g.route.alias, (g, []))[1].append((d, e))
        for alias, (g, failures) in by_alias.items():
            owner = g.route.account_email
            if not owner or not self.notices.allow(alias, mono):
                continue
            message = self.partial_notice(owner, alias, failures, store.utcnow())
            task = asyncio.get_running_loop().create_task(self._send_notice(owner, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def partial_notice(self, owner: str, alias: str, failures: list[tuple[str, SmtpError]],
                       now: dt.datetime) -> bytes:
        """A short text message telling the alias's owner which destinations refused a message."""
        lines = [
            f"From: fwdmail <postmaster@{self.hostname}>",
            f"To: <{owner}>",
            f"Subject: Some destinations of {alias} refused a message",
            f"Date: {email.utils.format_datetime(now.replace(tzinfo=dt.UTC))}",
            f"Message-ID: <{secrets.token_hex(12)}@{self.hostname}>",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            f"A message to {alias} was forwarded, but these destinations refused it permanently:",
            "",
            *(f"  {d}: {e.code} {e.enhanced_code} {' '.join(e.text.split())[:200]}" for d, e in failures),
            "",
            "The other destinations accepted it, so the sender was told it was delivered.",
            "Nothing of the message was kept. Check these destinations, or remove them from the alias.",
            "",
        ]
        return "\r\n".join(lines).encode("utf-8")

    async def _send_notice(self, owner: str, message: bytes) -> None:
        try:
            result = await self.ctx.delivery.send("", [owner], message)
        except Exception as exc:
            log.warning("partial-failure notice failed: %s", type(exc).__name__)
            return
        err = result.get(owner)
        if err is not None:
            log.info("partial-failure notice not delivered: %s %s", err.code, err.enhanced_code)

    # shutdown

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

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self.errors.close()

    def protocol_error(self, reply: str) -> None:
        """Log a 4xx/5xx that no MX decision produced (syntax and sequence errors, limits, timeouts).

        Within the error log's per-minute budget, so a client sending garbage cannot turn the error log
        into a write load; client input that the reply echoes is scrubbed of addresses and IPs.
        """
        err = SmtpError.parse(reply.splitlines()[0] if reply else reply)
        row = ErrorRow(store.utcnow(), "inbound", "", "", err.code, err.enhanced_code, scrub(err.text))
        task = asyncio.get_running_loop().create_task(self.errors.refusal([row], None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _log_ours(self, error: SmtpError, domain: str, alias: str, session: SessionInfo) -> None:
        await self.errors.refusal([ErrorRow.inbound(store.utcnow(), domain, alias, error)], session.peer_ip)


def _info(session: Session) -> SessionInfo:
    peer = session.peer
    ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
    port = int(peer[1]) if isinstance(peer, tuple) and len(peer) > 1 else 0
    helo = session.host_name or ""
    return SessionInfo(ip, helo, session.ssl is not None, bool(session.extended_smtp), port)


class MxHandler:
    """aiosmtpd hooks: translate SMTP events into `Mx` calls and back into replies."""

    def __init__(self, mx: Mx) -> None:
        self.mx = mx

    async def handle_CONNECT(self, server: SmtpServer, session: Session, envelope: object) -> str | None:
        err = await self.mx.connect(_info(session))
        return err.reply if err is not None else None

    def handle_CLOSE(self, server: SmtpServer, session: Session, envelope: object) -> None:
        if session is not None:
            self.mx.disconnect(_info(session))

    async def handle_MAIL(self, server: SmtpServer, session: Session, envelope: object, address: str,
                          mail_options: list[str]) -> str:
        result = await self.mx.sender(_info(session), address, mail_options)
        if isinstance(result, SmtpError):
            return result.reply
        envelope.mail_from = address  # type: ignore[attr-defined]
        envelope.mail_options.extend(mail_options)  # type: ignore[attr-defined]
        envelope.state = result  # type: ignore[attr-defined]
        return replies.OK_SENDER

    async def handle_RCPT(self, server: SmtpServer, session: Session, envelope: object, address: str,
                          rcpt_options: list[str]) -> str:
        tx = envelope.state  # type: ignore[attr-defined]
        if not isinstance(tx, Transaction):
            self.mx.protocol_error(replies.NEED_MAIL)
            return replies.NEED_MAIL
        result = await self.mx.recipient(_info(session), tx, address)
        if isinstance(result, SmtpError):
            return result.reply
        envelope.rcpt_tos.append(address)  # type: ignore[attr-defined]
        envelope.rcpt_options.extend(rcpt_options)  # type: ignore[attr-defined]
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: object) -> str:
        tx = envelope.state  # type: ignore[attr-defined]
        data = envelope.original_content  # type: ignore[attr-defined]
        return await self.mx.message(_info(session), tx, data, getattr(envelope, "digest", b""))

    async def handle_DATA_ERROR(self, server: SmtpServer, session: Session, envelope: object,
                                error: SmtpError) -> str:
        return await self.mx.refuse(getattr(envelope, "state", None), error)


class MxService:
    """The MX listeners on `[mx] listen`, with STARTTLS offered."""

    name = "mx"

    def __init__(self, ctx: Context, policies: Sequence[InboundPolicy] = (), *,
                 worker_command: list[str] | None = None, inbox_fd: int | None = None) -> None:
        """`worker_command` starts a worker process when `[mx] workers` > 1; a worker itself is given
        `inbox_fd`, where the serving process sends it connections, instead of listening."""
        self.ctx = ctx
        self.mx = Mx(ctx, policies)
        self.handler = MxHandler(self.mx)
        self.sessions = Sessions("MX", session_caps(ctx.config).mx)
        self._servers: list[asyncio.Server] = []
        self._worker_command = worker_command
        self._inbox_fd = inbox_fd
        self._dispatcher: Dispatcher | None = None
        self._inbox: Inbox | None = None
        self._adopting: set[asyncio.Task[object]] = set()

    def _protocol(self) -> SmtpServer:
        return SmtpServer(
            self.handler, hostname=self.mx.hostname, data_size_limit=self.ctx.config.mx.max_message_size,
            sessions=self.sessions, tls_context=self.ctx.server_tls(), require_starttls=False,
            auth_exclude_mechanism=["LOGIN", "PLAIN"], loop=asyncio.get_running_loop(),
            timeout=self.ctx.config.abuse.idle_timeout, data_timeout=self.ctx.config.abuse.command_timeout,
            max_errors=self.ctx.config.abuse.max_errors_per_session, on_error_reply=self.mx.protocol_error,
            data_hash=message_hasher, max_junk_commands=self.ctx.config.abuse.max_junk_commands,
            max_session_time=self.ctx.config.abuse.max_session_time,
        )

    async def start(self) -> None:
        self.ctx.server_tls()
        await self.mx.load_srs_lengths()
        workers = self.ctx.config.mx.workers
        if self._inbox_fd is not None:
            self._inbox = Inbox(self._inbox_fd, self._adopt, self.mx.delivered.apply, self.ctx.stopping.set)
            self.mx.delivered.tell = self._inbox.tell
            self._inbox.start()
        elif workers > 1 and self._worker_command:
            self._dispatcher = Dispatcher(workers, self._worker_command, self._adopt, self.mx.delivered.apply)
            self.mx.delivered.tell = self._dispatcher.tell
            await self._dispatcher.start(self.ctx.config.mx.listen)
        else:
            self._servers = await listen(self.ctx.config.mx.listen, self._protocol)
            log.info("MX listening on %d address(es)", len(self._servers))

    def _adopt(self, sock: socket.socket) -> None:
        """Serve a connection accepted elsewhere (by the dispatcher, or sent by the serving process)."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(self._protocol, sock))
        self._adopting.add(task)
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task[object]) -> None:
        self._adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("an MX connection could not be set up: %s", type(task.exception()).__name__)

    def hangup(self) -> None:
        """Pass SIGHUP on to the worker processes (each reloads its TLS certificate)."""
        if self._dispatcher is not None:
            self._dispatcher.signal(signal.SIGHUP)

    async def stop(self) -> None:
        """Refuse new connections, let messages being received or forwarded finish (at most
        `shutdown_timeout`, or until a second signal), then close every session with a 421."""
        for server in self._servers:
            server.close()
        if self._dispatcher is not None:
            self._dispatcher.close()
        if self._inbox is not None:
            self._inbox.stop()
        log.info("MX closed to new connections; %d session(s) inside a message", self.sessions.busy)
        if not await self.sessions.drain(self.ctx.drain_left(), self.ctx.force_stop):
            log.warning("MX stopping with %d message(s) still being received", self.sessions.busy)
        await self.mx.drain(self.ctx.drain_left())
        self.sessions.close(replies.SHUTTING_DOWN.reply)
        await close_servers(self._servers)
        await self.mx.close()
        if self._dispatcher is not None:
            if self.ctx.force_stop.is_set():
                self._dispatcher.signal(signal.SIGTERM)  # their second signal: stop at once
            await self._dispatcher.wait(self.ctx.drain_left())
