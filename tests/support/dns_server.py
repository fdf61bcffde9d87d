"""A small authoritative DNS server on loopback for tests.

``LoopbackDNS`` answers from an in-memory record table over UDP and TCP on the
same ``127.0.0.1`` port.  Tests fill it with MX/TXT/A/... records and point the
daemon at it with ``[dns] nameservers = ["127.0.0.1:PORT"]`` (``.address``).
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import struct
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Literal

from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    MX,
    NS,
    OPCODE,
    PTR,
    QTYPE,
    RCODE,
    RR,
    TLSA,
    TXT,
    A,
    DNSHeader,
    DNSRecord,
)
from dnslib.server import DNSLogger, DNSServer

__all__ = ["FailureMode", "LoopbackDNS"]

FailureMode = Literal["SERVFAIL", "NXDOMAIN", "REFUSED", "timeout"]

_FAILURE_MODES: frozenset[str] = frozenset({"SERVFAIL", "NXDOMAIN", "REFUSED", "timeout"})
_SUPPORTED_TYPES: frozenset[str] = frozenset({"MX", "TXT", "A", "AAAA", "CNAME", "PTR", "NS", "TLSA"})
_MAX_CNAME_CHAIN = 8
_EDNS_PAYLOAD = 1232
_TCP_IDLE_TIMEOUT = 10.0


def _norm(name: str) -> str:
    """Canonical form of a domain name: lowercase, no trailing dot."""
    return str(name).strip().rstrip(".").lower()


def _txt_chunks(value: str | bytes | Sequence[str | bytes]) -> list[bytes]:
    """Split a TXT value into <=255-byte character-strings.

    A ``str``/``bytes`` is one logical string, split automatically (so long
    DKIM keys work).  A sequence gives the character-strings explicitly (each
    still split if longer than 255 bytes).
    """
    parts: Sequence[str | bytes] = [value] if isinstance(value, str | bytes) else value
    chunks: list[bytes] = []
    for part in parts:
        raw = part.encode() if isinstance(part, str) else bytes(part)
        if not raw:
            chunks.append(b"")
        chunks.extend(raw[i : i + 255] for i in range(0, len(raw), 255))
    return chunks or [b""]


def _make_rdata(rtype: str, value: object) -> object:
    """Build the dnslib rdata object for ``rtype`` from a test-friendly value."""
    if rtype == "MX":
        pref, _, host = str(value).strip().partition(" ")
        if not pref.isdigit() or not host.strip():
            raise ValueError(f"MX value must look like '10 mx.example.com.', got {value!r}")
        return MX(host.strip(), int(pref))
    if rtype == "TXT":
        return TXT(_txt_chunks(value))  # type: ignore[arg-type]
    if rtype == "A":
        return A(str(ipaddress.IPv4Address(str(value))))
    if rtype == "AAAA":
        return AAAA(str(ipaddress.IPv6Address(str(value))))
    if rtype == "CNAME":
        return CNAME(str(value))
    if rtype == "PTR":
        return PTR(str(value))
    if rtype == "NS":
        return NS(str(value))
    if rtype == "TLSA":
        usage, selector, mtype, data = str(value).split()
        return TLSA(int(usage), int(selector), int(mtype), bytes.fromhex(data))
    raise ValueError(f"unsupported record type {rtype!r}; use one of {sorted(_SUPPORTED_TYPES)}")


class _Record:
    __slots__ = ("rdata", "rtype", "ttl")

    def __init__(self, rtype: str, rdata: object, ttl: int) -> None:
        self.rtype = rtype
        self.rdata = rdata
        self.ttl = ttl

    def rr(self, rname: str) -> RR:
        return RR(rname, getattr(QTYPE, self.rtype), ttl=self.ttl, rdata=self.rdata)


class _Resolver:
    """dnslib resolver backed by ``LoopbackDNS``'s tables.

    Returns ``None`` for names in "timeout" mode: the handler then sends nothing.
    """

    def __init__(self, owner: LoopbackDNS) -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord | None:
        return self.owner._answer(request)


class _Handler(socketserver.BaseRequestHandler):
    """UDP/TCP handler: parse, answer (or stay silent), honour UDP size limits."""

    server: _UDPServer | _TCPServer  # type: ignore[assignment]

    def handle(self) -> None:
        owner = self.server.owner
        if isinstance(self.server, _TCPServer):
            self._handle_tcp(owner)
        else:
            data, sock = self.request
            reply = self._reply(owner, data, udp=True)
            if reply is not None:
                try:
                    sock.sendto(reply, self.client_address)
                except OSError:
                    pass

    def _handle_tcp(self, owner: LoopbackDNS) -> None:
        conn: socket.socket = self.request
        conn.settimeout(_TCP_IDLE_TIMEOUT)
        owner._track(conn, add=True)
        try:
            while True:
                head = self._recv_exact(conn, 2)
                if head is None:
                    return
                data = self._recv_exact(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                reply = self._reply(owner, data, udp=False)
                if reply is None:  # "timeout": keep the connection open, say nothing
                    owner._stopping.wait(_TCP_IDLE_TIMEOUT)
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return
        finally:
            owner._track(conn, add=False)

    @staticmethod
    def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    @staticmethod
    def _reply(owner: LoopbackDNS, data: bytes, *, udp: bool) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:  # garbage in: ignore, like a real server would
            return None
        reply = owner._resolver.resolve(request, None)
        if reply is None:
            return None
        edns = next((rr for rr in request.ar if rr.rtype == QTYPE.OPT), None)
        if edns is not None:
            reply.add_ar(EDNS0(udp_len=_EDNS_PAYLOAD))
        packed = reply.pack()
        if udp:
            limit = max(512, min(int(edns.rclass), _EDNS_PAYLOAD)) if edns is not None else 512
            if len(packed) > limit:
                trunc = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1))
                trunc.add_question(*request.questions)
                if edns is not None:
                    trunc.add_ar(EDNS0(udp_len=_EDNS_PAYLOAD))
                packed = trunc.pack()
        return packed


class _UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True
    allow_reuse_address = False  # SO_REUSEADDR on UDP would let two servers share a port
    owner: LoopbackDNS


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: LoopbackDNS


class LoopbackDNS:
    """Authoritative in-memory DNS server on ``127.0.0.1`` (UDP and TCP, same port).

    Behaviour:
      * a name with no records at all -> NXDOMAIN;
      * a name with records of other types only -> NOERROR, empty answer (NODATA);
      * CNAMEs are returned and followed within the table (a missing target
        gives NXDOMAIN, as a recursive resolver would report);
      * UDP answers larger than 512 bytes (or the client's EDNS size, max 1232)
        are sent truncated (TC=1) so clients retry over TCP;
      * ``set_failure`` overrides a name with SERVFAIL/NXDOMAIN/REFUSED or silence.

    All mutators are thread-safe and may be called while serving.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"LoopbackDNS only binds loopback addresses, not {host!r}")
        self.host = host
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._records: dict[str, list[_Record]] = {}
        self._failures: dict[str, str] = {}
        self._authenticated: set[str] = set()
        self._resolver = _Resolver(self)
        self._servers: list[DNSServer] = []
        self._conns: set[socket.socket] = set()
        self._stopping = threading.Event()

    # ----------------------------------------------------------------- lifecycle
    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, the format of the daemon's ``[dns] nameservers``."""
        return f"{self.host}:{self.port}"

    def start(self) -> LoopbackDNS:
        """Bind UDP and TCP on one free port and serve in background threads."""
        if self._servers:
            raise RuntimeError("LoopbackDNS already started")
        self._stopping.clear()
        logger = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
        last_error: OSError | None = None
        for _ in range(50):
            udp = DNSServer(
                self._resolver,
                address=self.host,
                port=self.port,
                logger=logger,
                handler=_Handler,
                server=_UDPServer,
            )
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    self._resolver,
                    address=self.host,
                    port=port,
                    tcp=True,
                    logger=logger,
                    handler=_Handler,
                    server=_TCPServer,
                )
            except OSError as exc:
                udp.server.server_close()
                last_error = exc
                if self.port:  # a fixed port was requested (restart): don't hunt
                    raise
                continue
            break
        else:
            raise RuntimeError(f"could not bind UDP+TCP on the same port: {last_error}")
        for srv in (udp, tcp):
            srv.server.owner = self  # type: ignore[attr-defined]
            # Short poll interval so stop() returns quickly (default is 0.5 s).
            srv.thread = threading.Thread(
                target=srv.server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"LoopbackDNS-{port}",
                daemon=True,
            )
            srv.thread.start()
        self._servers = [udp, tcp]
        self.port = port
        return self

    def stop(self) -> None:
        """Stop serving and close sockets; records survive a restart on the same port."""
        self._stopping.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for srv in self._servers:
            srv.stop()
            srv.server.server_close()
            srv.thread.join(timeout=5)
        self._servers = []

    def __enter__(self) -> LoopbackDNS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ records
    def add(self, name: str, rtype: str, value: str | bytes | Sequence[str | bytes], ttl: int = 60) -> None:
        """Add one record; records for the same name/type accumulate.

        ``value`` by type: MX ``"10 mx.example.com."``; TXT a ``str`` (split into
        255-byte chunks automatically) or a list of character-strings; A/AAAA an
        address; CNAME/PTR/NS a target name; TLSA ``"3 1 1 <hex>"``.
        """
        rtype = rtype.upper()
        record = _Record(rtype, _make_rdata(rtype, value), int(ttl))
        with self._lock:
            self._records.setdefault(_norm(name), []).append(record)

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Remove all records of ``name`` (only of ``rtype`` if given)."""
        key = _norm(name)
        with self._lock:
            if rtype is None:
                self._records.pop(key, None)
                return
            kept = [r for r in self._records.get(key, []) if r.rtype != rtype.upper()]
            if kept:
                self._records[key] = kept
            else:
                self._records.pop(key, None)

    def clear(self) -> None:
        """Forget all records, failures and recorded queries."""
        with self._lock:
            self._records.clear()
            self._failures.clear()
            self._authenticated.clear()
            self.queries.clear()

    def set_failure(self, name: str, mode: FailureMode) -> None:
        """Make every query for exactly ``name`` fail with ``mode``.

        ``mode`` is "SERVFAIL", "NXDOMAIN", "REFUSED" or "timeout" (never answer).
        """
        if mode not in _FAILURE_MODES:
            raise ValueError(f"mode must be one of {sorted(_FAILURE_MODES)}, got {mode!r}")
        with self._lock:
            self._failures[_norm(name)] = mode

    def set_authenticated(self, name: str, authenticated: bool = True) -> None:
        """Answers for exactly ``name`` carry the AD bit (as a validating resolver sets it for DNSSEC-secure
        data), or no longer do."""
        with self._lock:
            if authenticated:
                self._authenticated.add(_norm(name))
            else:
                self._authenticated.discard(_norm(name))

    def clear_failure(self, name: str) -> None:
        """Undo ``set_failure`` for ``name``."""
        with self._lock:
            self._failures.pop(_norm(name), None)

    # ---------------------------------------------------------------- internals
    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _answer(self, request: DNSRecord) -> DNSRecord | None:
        reply = request.reply(ra=1, aa=1)
        if request.header.opcode != OPCODE.QUERY or len(request.questions) != 1:
            reply.header.rcode = RCODE.NOTIMP
            return reply
        question = request.q
        qname = str(question.qname)
        qtype = str(QTYPE[question.qtype])
        key = _norm(qname)
        with self._lock:
            self.queries.append((key, qtype))
            reply.header.ad = int(key in self._authenticated)  # dnslib's reply() copies the query's AD
            failure = self._failures.get(key)
            if failure == "timeout":
                return None
            if failure is not None:
                reply.header.rcode = getattr(RCODE, failure)
                return reply
            rname = qname
            for _ in range(_MAX_CNAME_CHAIN):
                records = self._records.get(key)
                if not records:  # the name (or an in-zone CNAME target) does not exist
                    reply.header.rcode = RCODE.NXDOMAIN
                    break
                matches = [r for r in records if qtype in ("ANY", r.rtype)]
                if matches:
                    for r in matches:
                        reply.add_answer(r.rr(rname))
                    break
                cname = next((r for r in records if r.rtype == "CNAME"), None)
                if cname is None:
                    break  # NODATA
                reply.add_answer(cname.rr(rname))
                rname = str(cname.rdata.label)  # type: ignore[attr-defined]
                key = _norm(rname)
        return reply
