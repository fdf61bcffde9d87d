"""The SMTP client shared by MX forwarding and the outbound queue.

Untrusted input: DNS answers (MX, A/AAAA) and everything a destination server replies. Replies become
`SmtpError`s per recipient; no destination behaviour raises out of `Delivery.send`.

About 500 lines: one connection's life (resolve, connect, greet, STARTTLS, EHLO again, MAIL/RCPT/DATA,
reuse, close) reads best as one piece. A transaction with a server that offers PIPELINING is
`smtp/pipeline.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.resolver

from fwdmail.auth.resolver import async_resolver
from fwdmail.config import Config, parse_host_port
from fwdmail.smtp import pipeline
from fwdmail.smtp.replies import SmtpError
from fwdmail.smtp.tlspolicy import HostCheck, TlsPolicy

log = logging.getLogger("fwdmail.delivery")

NULL_MX = SmtpError(556, "5.1.10", "Recipient domain does not accept mail (null MX)")
NO_DOMAIN = SmtpError(550, "5.1.2", "Recipient domain does not exist")
DNS_TEMPFAIL = SmtpError(451, "4.4.3", "DNS lookup of the recipient domain failed, will retry")
NO_ROUTE = SmtpError(451, "4.4.4", "No mail server of the recipient domain could be reached")
CONNECT_FAILED = SmtpError(451, "4.4.1", "Connection to the destination mail server failed")
TIMED_OUT = SmtpError(451, "4.4.2", "Destination mail server timed out")
LOST = SmtpError(451, "4.4.2", "Connection to the destination mail server was lost")
NO_SMTPUTF8 = SmtpError(553, "5.6.7", "Destination does not support internationalised addresses")

Result = dict[str, SmtpError | None]
Content = bytes | tuple[bytes | memoryview, ...]
"""A message, whole or as parts sent one after the other (never joined: a large body stays one copy)."""

_DATA_PIECE = 256 * 1024
_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")  # as aiosmtplib normalises: a lone CR or LF becomes CRLF


def _parts(message: Content) -> tuple[bytes | memoryview, ...]:
    return message if isinstance(message, tuple) else (message,)


def _raw_pieces(parts: Sequence[bytes | memoryview], size: int) -> Iterator[bytes]:
    """The bytes of `parts` in pieces of about `size` (small parts joined, so a short message is one
    write); no piece but the last ends with a CR, so no CRLF is split between two."""
    pending: list[bytes | memoryview] = []
    room = size
    for part in parts:
        view = memoryview(part)
        pos = 0
        while pos < len(view):
            taken = view[pos:pos + room]
            pending.append(taken)
            pos += len(taken)
            room -= len(taken)
            if room == 0:
                piece = b"".join(pending)
                pending, room = [], size
                if piece.endswith(b"\r"):
                    pending, piece = [b"\r"], piece[:-1]
                if piece:
                    yield piece
    if pending:
        yield b"".join(pending)


def data_stream(message: Content, size: int = _DATA_PIECE) -> Iterator[bytes]:
    """What follows the 354 for `message`, as aiosmtplib sends it (lone CRs and LFs made CRLF, a CRLF
    added at the end if missing, dots at the start of a line doubled, then ".CRLF"), in pieces of
    about `size` bytes; the end marker goes with the last piece."""
    line_start, last = True, b""
    for piece in _raw_pieces(_parts(message), size):
        if not piece.count(b"\r") == piece.count(b"\n") == piece.count(b"\r\n"):
            piece = _LINE_END.sub(b"\r\n", piece)
        piece = piece.replace(b"\n.", b"\n..")
        if line_start and piece[:1] == b".":
            piece = b"." + piece
        line_start = piece.endswith(b"\n")
        if last:
            yield last
        last = piece
    yield last + (b".\r\n" if last and line_start else b"\r\n.\r\n")


def _size(message: Content) -> int:
    return sum(len(memoryview(p)) for p in _parts(message))


def _is_ascii(message: Content) -> bool:
    """Whether every byte is ASCII (a part that is not bytes is checked piece by piece: copying a piece
    and `isascii` is many times faster than a regex over a memoryview)."""
    for part in _parts(message):
        if isinstance(part, bytes):
            if not part.isascii():
                return False
            continue
        view = memoryview(part)
        if not all(bytes(view[i:i + _DATA_PIECE]).isascii() for i in range(0, len(view), _DATA_PIECE)):
            return False
    return True


@dataclass(frozen=True)
class Target:
    """One mail server to try: a host name or IP literal and a port."""

    host: str
    port: int


class _HostFailure(Exception):
    """This server could not take the transaction; try the next one."""

    def __init__(self, error: SmtpError) -> None:
        super().__init__(error.reply)
        self.error = error


class _PolicyFailure(Exception):
    """The TLS session with a server does not pass its `HostCheck`."""

    def __init__(self, error: SmtpError) -> None:
        super().__init__(error.reply)
        self.error = error


@dataclass
class _Pool:
    idle: list[tuple[aiosmtplib.SMTP, float]] = field(default_factory=list)
    slots: asyncio.Semaphore | None = None


def _smtp_error(exc: aiosmtplib.SMTPResponseException) -> SmtpError:
    return SmtpError.parse(f"{exc.code} {exc.message}", default_code=exc.code)


def _connect_error(exc: Exception) -> SmtpError:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _smtp_error(exc)
    return TIMED_OUT if isinstance(exc, TimeoutError) else CONNECT_FAILED


def group_by_domain(recipients: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for rcpt in recipients:
        groups[rcpt.rpartition("@")[2].lower()].append(rcpt)
    return groups


class Delivery:
    """Delivers messages over SMTP with MX lookup, routes, opportunistic STARTTLS and connection reuse."""

    def __init__(self, config: Config, resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self.config = config
        self.cfg = config.delivery
        self.resolver = resolver or async_resolver(config.dns)
        self.resolver.flags = dns.flags.RD | dns.flags.AD  # RFC 6840 5.7: ask for the AD bit (DANE)
        self.hostname = config.server_hostname
        self.tls = TlsPolicy(self.cfg, self.resolver)
        self._pools: dict[tuple[Target, str], _Pool] = defaultdict(_Pool)
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    async def send(self, mail_from: str, recipients: Sequence[str], message: Content) -> Result:
        """Deliver `message` to every recipient; return None (accepted) or an SmtpError for each."""
        groups = group_by_domain(recipients)
        results = await asyncio.gather(*(self._send_domain(d, mail_from, rcpts, message)
                                         for d, rcpts in groups.items()))
        out: Result = {}
        for r in results:
            out.update(r)
        return out

    async def close(self) -> None:
        self._closed = True
        if self._reaper:
            self._reaper.cancel()
        for pool in self._pools.values():
            for conn, _ in pool.idle:
                await self._quit(conn)
            pool.idle.clear()
        await self.tls.close()

    # routing

    async def targets(self, domain: str) -> list[Target] | SmtpError:
        """Mail servers for `domain` in the order to try them, or the error that stops delivery."""
        route = self.cfg.routes.get(domain) or self.cfg.routes.get("*")
        if route:
            return [Target(*parse_host_port(route))]
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            return NO_DOMAIN
        except dns.resolver.NoAnswer:
            return [Target(domain, self.cfg.port)]  # RFC 5321 5.1: the domain itself is the implicit MX
        except dns.exception.DNSException:  # timeouts, SERVFAIL (no nameservers), malformed answers
            return DNS_TEMPFAIL
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if any(r.exchange == dns.name.root for r in records):
            return NULL_MX
        hosts = [r.exchange.to_text(omit_final_dot=True).lower() for r in records]
        return [Target(h, self.cfg.port) for h in dict.fromkeys(hosts)]

    async def _addresses(self, host: str) -> list[str]:
        """IP addresses of a server name (IPv4 first); an IP literal stands for itself."""
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            return [host]
        except OSError:
            pass
        addrs: list[str] = []
        for rtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rtype)
                addrs.extend(r.to_text() for r in answer)
            except dns.exception.DNSException:
                continue
        return addrs

    # one domain

    async def _send_domain(self, domain: str, mail_from: str, rcpts: list[str], message: Content) -> Result:
        targets = await self.targets(domain)
        if isinstance(targets, SmtpError):
            return dict.fromkeys(rcpts, targets)
        routed = bool(self.cfg.routes.get(domain) or self.cfg.routes.get("*"))
        checks = await self.tls.plan(domain, [(t.host, t.port) for t in targets], routed)
        if isinstance(checks, SmtpError):
            return dict.fromkeys(rcpts, checks)
        last: SmtpError = NO_ROUTE
        for target in targets:
            if (target.host, target.port) not in checks:
                continue
            check = checks[(target.host, target.port)]
            addrs = await self._addresses(target.host)
            if not addrs:
                continue
            for addr in addrs:
                try:
                    return await self._send_via(Target(addr, target.port), mail_from, rcpts, message, check)
                except _HostFailure as exc:
                    last = exc.error
        if last.permanent and len(targets) > 1:
            last = NO_ROUTE
        return dict.fromkeys(rcpts, last)

    async def _send_via(self, target: Target, mail_from: str, rcpts: list[str], message: Content,
                        check: HostCheck | None = None) -> Result:
        key = (target, check.key if check else "")
        pool = self._pools[key]
        if pool.slots is None:
            pool.slots = asyncio.Semaphore(self.cfg.max_connections_per_host)
        async with pool.slots:
            for _attempt in range(2):
                conn, reused = await self._checkout(key, check)
                try:
                    result = await self._transaction(conn, mail_from, rcpts, message)
                except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                    await self._quit(conn)
                    if reused:
                        continue  # the server closed an idle connection; try once on a fresh one
                    raise _HostFailure(LOST) from exc
                except asyncio.CancelledError:
                    conn.close()  # stopping: no QUIT that waits for a server still busy with our DATA
                    raise
                except BaseException:
                    await self._quit(conn)
                    raise
                self._checkin(key, conn)
                return result
        raise _HostFailure(LOST)

    async def _checkout(self, key: tuple[Target, str],
                        check: HostCheck | None) -> tuple[aiosmtplib.SMTP, bool]:
        pool = self._pools[key]
        now = time.monotonic()
        while pool.idle:
            conn, since = pool.idle.pop()
            if conn.is_connected and now - since < self.cfg.idle_timeout:
                return conn, True
            await self._quit(conn)
        if check is not None:
            return await self._connect_checked(key[0], check), False
        return await self._connect(key[0]), False

    def _checkin(self, key: tuple[Target, str], conn: aiosmtplib.SMTP) -> None:
        if self._closed or not conn.is_connected:
            asyncio.get_running_loop().create_task(self._quit(conn))
            return
        self._pools[key].idle.append((conn, time.monotonic()))
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Close connections idle longer than `idle_timeout`."""
        while any(p.idle for p in self._pools.values()):
            await asyncio.sleep(min(self.cfg.idle_timeout, 5.0))
            cutoff = time.monotonic() - self.cfg.idle_timeout
            for pool in self._pools.values():
                stale = [c for c, since in pool.idle if since <= cutoff]
                pool.idle[:] = [(c, s) for c, s in pool.idle if s > cutoff]
                for conn in stale:
                    await self._quit(conn)

    async def _connect(self, target: Target) -> aiosmtplib.SMTP:
        """A session with `target`: over STARTTLS when offered, in plain text when TLS is refused or fails."""
        if self.cfg.starttls == "opportunistic":
            try:
                return await self._open(target, True)
            except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPHeloError) as exc:
                raise _HostFailure(_connect_error(exc)) from exc  # before STARTTLS: not TLS's fault
            except (aiosmtplib.SMTPException, OSError):
                log.info("STARTTLS failed with a destination server; retrying without TLS")
        try:
            return await self._open(target, False)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _HostFailure(_connect_error(exc)) from exc

    async def _connect_checked(self, target: Target, check: HostCheck) -> aiosmtplib.SMTP:
        """A session over STARTTLS whose certificate passes `check`; a `testing` check that fails is
        logged and the session made without it."""
        try:
            return await self._open_checked(target, check)
        except _PolicyFailure as exc:
            log.warning("%s", exc.error.text)
            if check.enforce:
                raise _HostFailure(exc.error) from exc
            log.warning("%s policy of %s is in testing mode: delivering anyway", check.policy, check.domain)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _HostFailure(_connect_error(exc)) from exc
        return await self._connect(target)

    async def _open_checked(self, target: Target, check: HostCheck) -> aiosmtplib.SMTP:
        conn = aiosmtplib.SMTP(
            hostname=target.host, port=target.port, local_hostname=self.hostname,
            timeout=self.cfg.connect_timeout, start_tls=False, validate_certs=False,
        )
        try:
            await conn.connect()
            await self._greet(conn)
            if not conn.supports_extension("starttls"):
                raise _PolicyFailure(check.failure("STARTTLS not offered"))
            try:
                await conn.starttls(server_hostname=check.host, tls_context=self.tls.context(check))
            except ssl.SSLCertVerificationError as exc:
                raise _PolicyFailure(check.failure(f"certificate not valid ({exc.verify_message})")) from exc
            except (ssl.SSLError, aiosmtplib.SMTPResponseException,
                    aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                raise _PolicyFailure(check.failure("STARTTLS failed")) from exc
            if check.tlsa:
                why = self.tls.dane_mismatch(check, conn.get_transport_info("ssl_object"))
                if why:
                    raise _PolicyFailure(check.failure(why))
            await self._greet(conn)
        except BaseException:
            await self._quit(conn)
            raise
        conn.timeout = self.cfg.command_timeout
        return conn

    async def _open(self, target: Target, starttls: bool) -> aiosmtplib.SMTP:
        conn = aiosmtplib.SMTP(
            hostname=target.host, port=target.port, local_hostname=self.hostname,
            timeout=self.cfg.connect_timeout, start_tls=None if starttls else False,
            validate_certs=False, tls_context=self._tls if starttls else None,
        )
        try:
            await conn.connect()
            await self._greet(conn)
        except BaseException:
            await self._quit(conn)
            raise
        conn.timeout = self.cfg.command_timeout
        return conn

    @staticmethod
    async def _greet(conn: aiosmtplib.SMTP) -> None:
        """EHLO (HELO if refused) unless this session already has the server's extensions: after
        STARTTLS (RFC 3207 4.2) and on a plain session aiosmtplib has none until its next command,
        and the MAIL parameters (SMTPUTF8, BODY, SIZE) are chosen from them before it."""
        if not conn.is_ehlo_or_helo_needed:
            return
        try:
            await conn.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not conn.is_connected:
                raise
            await conn.helo()

    async def _transaction(self, conn: aiosmtplib.SMTP, mail_from: str, rcpts: list[str],
                           message: Content) -> Result:
        utf8 = not (mail_from.isascii() and all(r.isascii() for r in rcpts))
        options = []
        if utf8:
            if not conn.supports_extension("smtputf8"):
                await self._reset(conn)
                return dict.fromkeys(rcpts, NO_SMTPUTF8)
            options.append("SMTPUTF8")
        if conn.supports_extension("8bitmime") and not _is_ascii(message):
            options.append("BODY=8BITMIME")
        if conn.supports_extension("size"):
            options.append(f"SIZE={_size(message)}")
        encoding = "utf-8" if utf8 else "ascii"
        try:
            if conn.supports_extension("pipelining"):
                refused, result = await pipeline.transaction(
                    conn, mail_from, rcpts, options, encoding, data_stream(message),
                    self.cfg.command_timeout, self.cfg.data_timeout)
                if refused is not None and refused.temporary:
                    raise _HostFailure(refused)
                return result
            try:
                await conn.mail(mail_from, options=options, encoding=encoding)
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset(conn)
                err = _smtp_error(exc)
                if err.temporary:
                    raise _HostFailure(err) from exc
                return dict.fromkeys(rcpts, err)
            result: Result = {}
            accepted: list[str] = []
            for rcpt in rcpts:
                try:
                    await conn.rcpt(rcpt, options=[], encoding=encoding)
                    accepted.append(rcpt)
                except aiosmtplib.SMTPResponseException as exc:
                    result[rcpt] = _smtp_error(exc)
            if not accepted:
                await self._reset(conn)
                return result
            try:
                await self._data(conn, message)
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset(conn)  # a refused DATA command leaves the transaction open
                err = _smtp_error(exc)
                result.update(dict.fromkeys(accepted, err))
                return result
            result.update(dict.fromkeys(accepted))
            return result
        except (TimeoutError, aiosmtplib.SMTPTimeoutError) as exc:
            await self._quit(conn)
            raise _HostFailure(TIMED_OUT) from exc

    async def _data(self, conn: aiosmtplib.SMTP, message: Content) -> None:
        """DATA, written piece by piece as the socket takes it (aiosmtplib's `data` makes two whole
        copies of the message and hands the transport a third). Raises as `conn.data` does; the whole
        transfer and its reply take at most `data_timeout`."""
        try:
            async with asyncio.timeout(self.cfg.data_timeout):
                reply = await conn.execute_command(b"DATA")
                if reply.code != 354:
                    raise aiosmtplib.SMTPDataError(reply.code, reply.message)
                protocol = conn.protocol
                if protocol is None:
                    raise aiosmtplib.SMTPServerDisconnected("Connection lost")
                for i, piece in enumerate(data_stream(message)):
                    if i:
                        await protocol._drain_helper()  # aiosmtplib's copy of StreamWriter.drain's wait
                    protocol.write(piece)
                reply = await protocol.read_response()
        except (aiosmtplib.SMTPServerDisconnected, TimeoutError):
            conn.close()
            raise
        if reply.code != 250:
            raise aiosmtplib.SMTPDataError(reply.code, reply.message)

    @staticmethod
    async def _reset(conn: aiosmtplib.SMTP) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await conn.rset()

    @staticmethod
    async def _quit(conn: aiosmtplib.SMTP) -> None:
        with contextlib.suppress(Exception):
            if conn.is_connected:
                await asyncio.wait_for(conn.quit(), 2)
        with contextlib.suppress(Exception):
            conn.close()
