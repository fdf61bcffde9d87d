"""The MX's decisions: what to answer a client at connect, MAIL and RCPT, and the entry to DATA.

Untrusted input: what an SMTP client on port 25 sends in the envelope (addresses, including relay
tricks and bounces to our SRS addresses, which are budgeted per client network and in total by
`guessing.SrsGuard` so the hash of an SRS address cannot be found by trying). No log line names an
address or an IP; a refusal is an error-log row only if it names a hosted domain (others are counted),
within per-client and per-minute write budgets. `Mx.policies` is the seam for inbound checks (sender
authentication, per-IP limits): each `InboundPolicy` is asked at connect, MAIL, RCPT and DATA, and
shapes each forwarded copy (see `forward.Forwarder`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from fwdmail import store
from fwdmail.auth.resolver import async_resolver
from fwdmail.mail import srs
from fwdmail.mail.addresses import Address, AddressError, parse_address
from fwdmail.mx.dedup import DeliveredMemory
from fwdmail.mx.forward import CLIENT_NOTE, SRS_BOUNCE_ALIAS, Forwarder
from fwdmail.policy.contract import Accepted, InboundPolicy, SessionInfo, Transaction
from fwdmail.policy.directory import DirectoryCache
from fwdmail.policy.dnsaliases import DnsAliases
from fwdmail.policy.guessing import ClientKeys, RowGate, SrsGuard
from fwdmail.policy.routing import RegexBudget, Route
from fwdmail.runtime.context import Context
from fwdmail.runtime.errorlog import ErrorLogWriter, ErrorRow
from fwdmail.runtime.logsetup import scrub
from fwdmail.runtime.sharedstate import SharedUnavailable
from fwdmail.runtime.shares import share
from fwdmail.runtime.tasks import cancel_and_wait
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError

__all__ = ["Mx"]

log = logging.getLogger("fwdmail.mx")


def _utf8(raw: str) -> bool:
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True



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
        self.directory = DirectoryCache.of(ctx.blocking, self.cfg, DnsAliases(
            async_resolver(cfg.dns), ctx.blocking.cpu, cfg.mx.dns_aliases_cache_max_entries,
            cfg.mx.dns_aliases_cache_max_bytes, cfg.mx.directory_negative_ttl))
        self.regex_budget = RegexBudget.of(self.cfg)
        # With several MX processes each takes its share: per client rounded up (a client's connections
        # are spread over them), in total rounded down, so the total stays what the expected time to
        # forge an SRS address was worked out from (see fwdmail.example.toml).
        processes = cfg.mx.workers
        keys = ClientKeys()
        srs_share = 1 if ctx.shared is not None else processes  # shared: every process counts in one place
        self.guard = SrsGuard(share(cfg.srs.max_invalid_per_client, srs_share),
                              max(1, cfg.srs.max_invalid_total // srs_share), cfg.srs.invalid_window, keys,
                              ctx.shared)
        self.errors = ErrorLogWriter(ctx.blocking, RowGate(
            share(cfg.error_log.max_rows_per_client_per_minute, processes),
            max(1, cfg.error_log.max_rows_per_minute // processes), keys), log)
        self.policies: list[InboundPolicy] = list(policies)
        self.forwarder = Forwarder(ctx, self.policies, self.errors)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def delivered(self) -> DeliveredMemory:
        """The retry memory (shared with the other MX processes by the service)."""
        return self.forwarder.delivered

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
            self.ctx.metrics.refusal("mx", err)
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
            self.ctx.metrics.refusal("mx", result)
            await self._log_ours(result, "", "", session)
        else:
            result.notes[CLIENT_NOTE] = session.peer_ip
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
        result = await self._recipient(session, tx, raw)
        if isinstance(result, SmtpError):
            self.ctx.metrics.refusal("mx", result)
        return result

    async def _recipient(self, session: SessionInfo, tx: Transaction, raw: str) -> Accepted | SmtpError:
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
            return await self.directory.hosts(addr.domain)
        except Exception:
            return False

    async def _route(self, addr: Address, session: SessionInfo, tx: Transaction) -> Route | SmtpError:
        if addr.domain == self.srs_domain and srs.is_srs(addr.local):
            return await self._srs_route(addr, session)
        try:
            route = await self.directory.route(addr, self.regex_budget.meter(session.peer_ip, tx.notes))
        except Exception as exc:
            log.warning("cannot read the alias directory: %s", type(exc).__name__)
            return replies.STORE_UNAVAILABLE
        if route is replies.RELAY_DENIED and addr.domain == self.srs_domain:
            return replies.NO_SUCH_USER
        return route

    async def _srs_route(self, addr: Address, session: SessionInfo) -> Route | SmtpError:
        """A bounce to our SRS address, within the guessing budgets: past them it is deferred unchecked,
        as it is while the budgets shared by the nodes cannot be read."""
        now = time.monotonic()
        try:
            if await self.guard.check(session.peer_ip, now):
                return replies.SRS_DEFERRED
            route = self._reverse_srs(addr)
            if not isinstance(route, Route):
                await self.guard.count((session.peer_ip, session.peer_port), now)
        except SharedUnavailable:
            return replies.STORE_UNAVAILABLE
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
        self.ctx.metrics.refusal("mx", error)
        return await self.forwarder.refuse(tx, error)

    async def message(self, session: SessionInfo, tx: Transaction, data: bytes, digest: bytes = b"") -> str:
        """Forward `data` to every accepted recipient's destinations: see `Forwarder.message`."""
        return await self.forwarder.message(session, tx, data, digest)

    # shutdown

    async def drain(self, timeout: float) -> None:
        """Wait (at most `timeout`, or until a forced stop) for messages being forwarded."""
        await self.forwarder.drain(timeout)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.forwarder.notices.close()
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
