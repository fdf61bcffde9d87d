"""Authenticated submission (STARTTLS on `listen`, implicit TLS on `listen_tls`): users send as their alias.

Untrusted input: everything a submission client sends: AUTH credentials, envelope addresses and the
message (header syntax, From, Date, Message-ID). Only a client that logged in over TLS may send, only as
its alias; a 250 comes only once the message and its envelope are committed durably. Failed logins are
counted in memory only, per client (IPv4 address or IPv6 /64; never written anywhere), per login name
(as a keyed hash) and in total; password checks run on their own bounded pool (`Blocking.hash`), so
guesses from many addresses get 454 instead of taking the CPU the MX needs. Concurrent connections are
counted per client the same way. A session is bounded: sessions per client and in all, errors, commands
that do nothing, time to log in, its whole lifetime.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import email.errors
import email.header
import email.utils
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fwdmail import store
from fwdmail.config import SubmissionConfig
from fwdmail.mail.addresses import AddressError, normalize_address, parse_address, parse_alias_spec
from fwdmail.policy.limits import ConnectionLimiter, client_key
from fwdmail.runtime import keys
from fwdmail.runtime.context import Context
from fwdmail.runtime.executor import Busy
from fwdmail.runtime.groupcommit import GroupCommitter
from fwdmail.runtime.listeners import TlsGate, listen, session_caps
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError
from fwdmail.smtp.server import MISSING, Envelope, Session, Sessions, SmtpServer

__all__ = [
    "AuthLimiter", "FailureBudget", "Login", "LoginCache", "Prepared", "SubmissionHandler",
    "SubmissionService", "parse_header_block", "prepare_message", "split_message",
]

log = logging.getLogger("fwdmail.submission")

_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# A login refused unchecked (budgets spent, hashing full) is answered after this pause (seconds), taken
# in the client's turn: no hash waits, but a client cannot loop on AUTH faster than this, as a flood of
# instant 454s would take the event loop (Postfix's smtpd_error_sleep_time does the same).
_REFUSED_PAUSE = 1.0


@dataclass(frozen=True)
class Login:
    """Who a submission session logged in as: an exact alias, or a catch-all (any address of its domain)."""

    alias_id: int
    domain: str
    kind: str
    local: str

    def may_send_as(self, address: str) -> bool:
        try:
            addr = parse_address(address)
        except AddressError:
            return False
        if addr.domain != self.domain:
            return False
        return self.kind == "catch-all" or addr.local.lower() == self.local


class AuthLimiter:
    """Failed logins per client, in memory only: `max_failures` within `window` seconds locks the client
    out for `lockout` seconds. A client is an IPv4 address or an IPv6 /64 (`limits.client_key`). Times
    are monotonic seconds; at most `max_entries` clients are remembered."""

    def __init__(self, max_failures: int, lockout: float, window: float = 3600.0,
                 max_entries: int = 100_000) -> None:
        self.max_failures = max_failures
        self.lockout = lockout
        self.window = window
        self.max_entries = max_entries
        self._failures: dict[str, deque[float]] = {}
        self._locked: dict[str, float] = {}
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, ip: str) -> AsyncIterator[None]:
        """Check one login of `ip`'s client at a time, so parallel guesses cannot outrun the count.
        Remembers a client only while one of its logins is being checked."""
        ip = client_key(ip)
        lock, users = self._turns.get(ip) or (asyncio.Lock(), 0)
        self._turns[ip] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._turns[ip]
            if users == 1:
                del self._turns[ip]
            else:
                self._turns[ip] = (lock, users - 1)

    def blocked(self, ip: str, now: float) -> bool:
        ip = client_key(ip)
        until = self._locked.get(ip)
        if until is None:
            return False
        if now < until:
            return True
        del self._locked[ip]
        return False

    def failed(self, ip: str, now: float) -> bool:
        """Count one failed login; True if the client is now locked out."""
        ip = client_key(ip)
        times = self._failures.pop(ip, None) or deque()
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.max_failures:
            self._locked[ip] = now + self.lockout
            self._trim(self._locked)
            return True
        self._failures[ip] = times  # re-inserted: dict order is least recently failed first
        self._trim(self._failures)
        return False

    def _trim(self, table: dict[str, Any]) -> None:
        while len(table) > self.max_entries:
            del table[next(iter(table))]


class _Windows:
    """At most `limit` events per key in any `window` seconds; at most `max_keys` keys, the least
    recently counted forgotten first."""

    def __init__(self, limit: int, window: float, max_keys: int) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._times: OrderedDict[bytes, deque[float]] = OrderedDict()

    def _recent(self, key: bytes, now: float) -> deque[float] | None:
        times = self._times.get(key)
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def full(self, key: bytes, now: float) -> bool:
        times = self._recent(key, now)
        return times is not None and len(times) >= self.limit

    def add(self, key: bytes, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            times = deque(maxlen=self.limit)
        self._times.pop(key, None)
        self._times[key] = times
        times.append(now)
        while len(self._times) > self.max_keys:
            self._times.popitem(last=False)


class FailureBudget:
    """Failed logins from all clients together: at most `per_alias_per_hour` for one login name (many
    addresses guessing one password) and `total_per_minute` in all. A login that needs a password check
    while either is spent is refused before hashing. Names are held as keyed hashes, in memory only."""

    def __init__(self, total_per_minute: int, per_alias_per_hour: int, max_aliases: int = 10_000) -> None:
        self._total = _Windows(total_per_minute, 60.0, 1)
        self._aliases = _Windows(per_alias_per_hour, 3600.0, max_aliases)
        self._key = secrets.token_bytes(32)

    def _name(self, username: bytes) -> bytes:
        return hmac.digest(self._key, username.strip().lower(), hashlib.sha256)

    def allows(self, username: bytes, now: float) -> bool:
        return not self._total.full(b"", now) and not self._aliases.full(self._name(username), now)

    def failed(self, username: bytes, now: float) -> None:
        self._total.add(b"", now)
        self._aliases.add(self._name(username), now)


class LoginCache:
    """Passwords verified recently, so a client that logs in again with the same password (a new session
    per message is common) does not cost another scrypt.

    Kept in memory only, per alias: the stored password hash it was verified against and an HMAC-SHA256 of
    the password under a key made at start. An entry holds for `ttl` seconds (monotonic) and only while
    the stored hash is the same, so a changed password or a removed alias is never let in by it. A wrong
    password never matches and gets the full scrypt, so the cache does not shorten a guess. The login
    name that verified it is kept as a keyed hash, so `known` can tell a remembered password from a guess
    without the store.
    """

    def __init__(self, ttl: float = 900.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = secrets.token_bytes(32)
        self._entries: dict[int, tuple[str, bytes, float]] = {}
        self._names: dict[bytes, int] = {}  # keyed hash of the login name -> alias id

    def _mac(self, password: str) -> bytes:
        return hmac.digest(self._key, password.encode(), hashlib.sha256)

    def _name(self, name: bytes) -> bytes:
        return hmac.digest(self._key, b"name\0" + name.lower(), hashlib.sha256)

    def known(self, name: bytes, password: str, now: float) -> bool:
        """Whether `password` is the one remembered for login `name`: worth a look at the store (which
        `verified` needs) even when guesses are over their budget. No store, no hash, here."""
        entry = self._entries.get(self._names.get(self._name(name), -1))
        return entry is not None and now < entry[2] and hmac.compare_digest(entry[1], self._mac(password))

    def verified(self, alias_id: int, stored_hash: str, password: str, now: float) -> bool:
        entry = self._entries.get(alias_id)
        if entry is None:
            return False
        known_hash, mac, until = entry
        if now >= until or known_hash != stored_hash:
            del self._entries[alias_id]
            return False
        return hmac.compare_digest(mac, self._mac(password))

    def remember(self, alias_id: int, stored_hash: str, password: str, now: float, name: bytes = b"") -> None:
        self._entries.pop(alias_id, None)
        self._entries[alias_id] = (stored_hash, self._mac(password), now + self.ttl)
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
        if name:
            self._names.pop(self._name(name), None)
            self._names[self._name(name)] = alias_id
            while len(self._names) > self.max_entries:
                del self._names[next(iter(self._names))]


# the message

@dataclass(frozen=True)
class Prepared:
    """A submitted message as it goes into the queue."""

    headers: bytes
    body: bytes
    subject: str
    date: dt.datetime
    send_at: dt.datetime


def split_message(content: bytes) -> tuple[bytes, bytes]:
    """The header block (every line CRLF-terminated, no blank line) and the body."""
    if content.startswith(b"\r\n"):
        return b"", content[2:]
    end = content.find(b"\r\n\r\n")
    if end < 0:
        return (content if not content or content.endswith(b"\r\n") else content + b"\r\n"), b""
    return content[:end + 2], content[end + 4:]


def parse_header_block(block: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) per header field; raise SmtpError for non-UTF-8 or malformed lines."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise replies.HEADER_NOT_UTF8 from None
    fields: list[tuple[str, str]] = []
    for line in text.split("\r\n")[:-1]:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise replies.HEADER_MALFORMED
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        name, sep, value = line.partition(":")
        if not sep or not _FIELD_NAME.fullmatch(name):
            raise replies.HEADER_MALFORMED
        fields.append((name, value))
    return fields


def _without_fields(block: bytes, names: frozenset[bytes]) -> bytes:
    """A well-formed header block (see `parse_header_block`) without the fields named (lowercase)."""
    out: list[bytes] = []
    keep = True
    for line in block.split(b"\r\n")[:-1]:
        if line[:1] not in (b" ", b"\t"):
            keep = line.partition(b":")[0].lower() not in names
        if keep:
            out.append(line + b"\r\n")
    return b"".join(out)


def _by_name(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Field values by lowercase name, in order."""
    found: dict[str, list[str]] = {}
    for name, value in fields:
        found.setdefault(name.lower(), []).append(value)
    return found


def _parse_date(value: str) -> dt.datetime:
    """A Date header as naive UTC; raise BAD_DATE if it is not an RFC 5322 date."""
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        raise replies.BAD_DATE from None
    if when is None:
        raise replies.BAD_DATE
    if when.tzinfo is None:
        return when
    try:
        return when.astimezone(dt.UTC).replace(tzinfo=None)
    except OverflowError:
        raise replies.BAD_DATE from None


def _decode_subject(value: str) -> str:
    if "=?" not in value:
        return " ".join(value.split())[:998]  # no encoded words: nothing to decode
    try:
        text = str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, ValueError, UnicodeError, email.errors.HeaderParseError):
        text = value
    return " ".join(text.split())[:998]


def _rfc5322_date(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.replace(tzinfo=dt.UTC))


def prepare_message(login: Login, content: bytes, now: dt.datetime, cfg: SubmissionConfig, hostname: str,
                    queue_id: str) -> Prepared:
    """Check a submitted message against the sender rules and complete its header.

    The From header must be exactly one address this login may send as; a Date more than
    `max_future_date_days` ahead is refused, a nearer future Date schedules the send; a missing Date or
    Message-ID is added; Bcc fields are removed, so no recipient learns of the blind copies (RFC 5322
    3.6.3). Raise SmtpError with the reply otherwise.
    """
    block, body = split_message(content)
    fields = _by_name(parse_header_block(block))
    froms = fields.get("from", [])
    if len(froms) != 1:
        raise replies.FROM_NOT_ALLOWED
    addresses = [addr for _, addr in email.utils.getaddresses(froms) if addr]
    if len(addresses) != 1 or not login.may_send_as(addresses[0]):
        raise replies.FROM_NOT_ALLOWED
    added: list[str] = []
    stamp = _rfc5322_date(now)
    dates = fields.get("date", [])
    if len(dates) > 1:
        raise replies.BAD_DATE
    if dates:
        date = _parse_date(dates[0])
        if date > now + dt.timedelta(days=cfg.max_future_date_days):
            raise replies.DATE_TOO_FAR
    else:
        date = now
        added.append(f"Date: {stamp}")
    if "message-id" not in fields:
        added.append(f"Message-ID: <{secrets.token_hex(12)}@{login.domain}>")
    if "bcc" in fields:
        block = _without_fields(block, frozenset({b"bcc"}))
    received = f"Received: by {hostname} (fwdmail) with ESMTPSA id {queue_id};\r\n\t{stamp}\r\n"
    headers = received.encode("ascii") + block + "".join(f"{h}\r\n" for h in added).encode("utf-8")
    subjects = fields.get("subject")
    return Prepared(headers, body, _decode_subject(subjects[0]) if subjects else "", date, max(date, now))


# the SMTP side

def _peer_ip(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)


class SubmissionHandler:
    """aiosmtpd hooks: translate SMTP events into the policy above, and its answers into replies."""

    def __init__(self, ctx: Context, committer: GroupCommitter[store.NewEmail, str], limiter: AuthLimiter,
                 on_queued: Callable[[], None]) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.submission
        self.hostname = ctx.config.server_hostname
        self.committer = committer
        self.limiter = limiter
        self.on_queued = on_queued
        self.logins = LoginCache()
        self.failures = FailureBudget(self.cfg.auth_failures_total_per_minute,
                                      self.cfg.auth_failures_per_alias_per_hour)
        self.connections = ConnectionLimiter(self.cfg.max_connections_per_ip)
        self._counted: set[SmtpServer] = set()
        self._dummy_hash: str | None = None

    # the connection

    async def handle_CONNECT(self, server: SmtpServer, session: Session, envelope: Envelope) -> str | None:
        if self.ctx.stopping.is_set():
            return replies.SHUTTING_DOWN.reply
        if not self.connections.acquire(_peer_ip(session)):
            return replies.TOO_MANY_CONNECTIONS.reply
        self._counted.add(server)
        return None

    def handle_CLOSE(self, server: SmtpServer, session: Session, envelope: Envelope) -> None:
        if server in self._counted:
            self._counted.discard(server)
            self.connections.release(_peer_ip(session))

    # AUTH

    async def handle_AUTH(self, server: SmtpServer, session: Session, envelope: Envelope,
                          args: list[str]) -> str | None:
        ip = _peer_ip(session)
        if self.limiter.blocked(ip, time.monotonic()):
            return await self._locked_out(server)
        try:
            if args[0].upper() == "PLAIN":
                creds = await self._plain(server, args)
            else:
                creds = await self._login(server, args)
        except SmtpError as exc:
            return exc.reply
        if creds is None:
            return None
        async with self.limiter.turn(ip):
            if self.limiter.blocked(ip, time.monotonic()):
                return await self._locked_out(server)
            try:
                login = await self.authenticate(*creds)
            except Busy:
                log.debug("submission login not checked: password checks over their budget or capacity")
                await asyncio.sleep(_REFUSED_PAUSE)
                return replies.AUTH_BUSY.reply
            if login is None:
                locked = self.limiter.failed(ip, time.monotonic())
                log.info("submission login failed%s", "; client locked out for a while" if locked else "")
                return replies.AUTH_FAILED.reply
        session.authenticated = True
        session.auth_data = login
        return replies.AUTH_OK

    @staticmethod
    async def _locked_out(server: SmtpServer) -> None:
        await server.push(replies.AUTH_RATE_LIMITED.reply)
        if server.transport is not None:
            server.transport.close()

    @staticmethod
    def _b64(text: str) -> bytes:
        if text == "=":
            return b""
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise replies.AUTH_UNREADABLE from None

    async def _plain(self, server: SmtpServer, args: list[str]) -> tuple[bytes, bytes] | None:
        if len(args) > 1:
            blob = self._b64(args[1])
        else:
            answer = await server.challenge_auth("", encode_to_b64=False)
            if answer is MISSING:
                return None
            blob = answer  # type: ignore[assignment]
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            raise replies.AUTH_UNREADABLE
        return parts[1], parts[2]

    async def _login(self, server: SmtpServer, args: list[str]) -> tuple[bytes, bytes] | None:
        if len(args) > 1:
            username = self._b64(args[1])
        else:
            answer = await server.challenge_auth("Username:")
            if answer is MISSING:
                return None
            username = answer  # type: ignore[assignment]
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return None
        return username, password  # type: ignore[return-value]

    async def authenticate(self, username: bytes, password: bytes) -> Login | None:
        """The alias these credentials log in as, or None (counted against `failures`). Costs one scrypt,
        unless the same password of the alias was verified a short while ago (`LoginCache`). When the
        failure budget of the name or of all names is spent, only such a remembered password is looked
        up; anything else raises `Busy` without a database query or a hash, as does a full hashing pool."""
        try:
            spec = parse_alias_spec(username.decode("utf-8"))
            secret = password.decode("utf-8")
        except (UnicodeDecodeError, AddressError):
            spec, secret = None, ""
        name = spec.address.encode("utf-8") if spec is not None else username
        allowed = self.failures.allows(name, time.monotonic())
        if not allowed and not self.logins.known(name, secret, time.monotonic()):
            raise Busy
        record = None
        if spec is not None and spec.kind in ("exact", "catch-all"):
            record = await self.ctx.blocking.db(store.login_record, spec.domain, spec.kind, spec.local)
        encoded = record.password_hash if record else None
        if record is not None and encoded is not None and self.logins.verified(
                record.alias_id, encoded, secret, time.monotonic()):
            return Login(record.alias_id, record.domain, record.kind, record.local)
        if not allowed:
            raise Busy
        if encoded is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.ctx.blocking.hash(keys.hash_password, secrets.token_hex(16))
            encoded = self._dummy_hash
        ok = await self.ctx.blocking.hash(keys.verify_password, secret, encoded)
        if not ok or record is None or record.password_hash is None:
            self.failures.failed(name, time.monotonic())
            return None
        self.logins.remember(record.alias_id, record.password_hash, secret, time.monotonic(), name)
        return Login(record.alias_id, record.domain, record.kind, record.local)

    # the transaction

    async def handle_MAIL(self, server: SmtpServer, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        login = session.auth_data if session.authenticated else None
        if not isinstance(login, Login):
            return replies.AUTH_REQUIRED.reply
        if not login.may_send_as(address):
            return replies.SENDER_NOT_ALLOWED.reply
        envelope.mail_from = normalize_address(address)
        envelope.mail_options.extend(mail_options)
        return replies.OK_SENDER

    async def handle_RCPT(self, server: SmtpServer, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if not session.authenticated:
            return replies.AUTH_REQUIRED.reply
        try:
            rcpt = normalize_address(address)
        except AddressError:
            return replies.BAD_ADDRESS.reply
        if rcpt.lower() in (r.lower() for r in envelope.rcpt_tos):
            return replies.OK_RECIPIENT
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            return replies.TOO_MANY_RECIPIENTS.reply
        envelope.rcpt_tos.append(rcpt)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.OK_RECIPIENT

    async def handle_DATA(self, server: SmtpServer, session: Session, envelope: Envelope) -> str:
        login = session.auth_data if session.authenticated else None
        if not isinstance(login, Login) or envelope.mail_from is None:
            return replies.AUTH_REQUIRED.reply
        now = store.utcnow()
        queue_id = store.new_queue_id()
        try:
            msg = prepare_message(login, envelope.original_content or b"", now, self.cfg, self.hostname,
                                  queue_id)
        except SmtpError as exc:
            return exc.reply
        item = store.NewEmail(
            queue_id=queue_id, domain=login.domain, mail_from=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos), headers=msg.headers, body=msg.body, subject=msg.subject,
            date_header=msg.date, send_at=msg.send_at, alias_id=login.alias_id,
        )
        try:
            await self.committer.submit(item)
        except Exception as exc:
            log.warning("could not queue a submitted message: %s", store.failure(exc))
            return (replies.STORAGE_FULL if store.storage_full(exc) else replies.STORE_UNAVAILABLE).reply
        self.on_queued()
        log.debug("queued %s: %d recipient(s), %d bytes", queue_id, len(item.recipients),
                 len(msg.headers) + len(msg.body))
        return replies.QUEUED.format(queue_id=queue_id)


class SubmissionService:
    """The submission listeners on the serve loop, with their group committer and login limiter."""

    name = "submission"

    def __init__(self, ctx: Context, on_queued: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        cfg = ctx.config.submission
        self.committer: GroupCommitter[store.NewEmail, str] = GroupCommitter(
            ctx.blocking, store.enqueue, store.utcnow)
        self.limiter = AuthLimiter(cfg.auth_failures_per_hour, cfg.auth_lockout)
        self.handler = SubmissionHandler(ctx, self.committer, self.limiter, on_queued or (lambda: None))
        self._servers: list[asyncio.Server] = []
        self.sessions = Sessions("submission", session_caps(ctx.config).submission)
        self.gate: TlsGate | None = None

    def _factory(self, implicit_tls: bool) -> Callable[[], SmtpServer]:
        cfg = self.ctx.config.submission
        tls = None if implicit_tls else self.ctx.server_tls()

        def make() -> SmtpServer:
            return SmtpServer(
                self.handler, hostname=self.ctx.config.server_hostname, sessions=self.sessions,
                data_size_limit=cfg.max_message_size, tls_context=tls, require_starttls=not implicit_tls,
                auth_require_tls=not implicit_tls, timeout=cfg.idle_timeout,
                max_errors=cfg.max_errors_per_session, max_junk_commands=cfg.max_junk_commands,
                max_session_time=cfg.max_session_time, login_timeout=cfg.login_timeout,
            )

        return make

    async def start(self) -> None:
        cfg = self.ctx.config.submission
        self._servers = await listen(cfg.listen, self._factory(False))
        self.gate = TlsGate(self.ctx.server_tls(), cfg.max_connections_per_ip, self.sessions.cap or 1,
                            cfg.login_timeout, client_key)
        self._servers += await listen(cfg.listen_tls, self._factory(True), gate=self.gate)
        log.info("submission listening on %d STARTTLS and %d implicit TLS address(es)",
                 len(cfg.listen), len(cfg.listen_tls))

    async def stop(self) -> None:
        """Refuse new connections, let messages being received or committed get their reply (at most
        `shutdown_timeout`, or until a second signal), then close every session with a 421."""
        for server in self._servers:
            server.close()
        log.info("submission closed to new connections; %d session(s) inside a message", self.sessions.busy)
        if not await self.sessions.drain(self.ctx.drain_left(), self.ctx.force_stop):
            log.warning("submission stopping with %d message(s) still being received", self.sessions.busy)
        try:
            async with asyncio.timeout(self.ctx.drain_left()):
                await self.committer.drain()
        except TimeoutError:
            log.warning("stopping with submissions still being committed")
        self.sessions.close(replies.SHUTTING_DOWN.reply)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except TimeoutError:
                pass
        self._servers = []
