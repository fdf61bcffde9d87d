"""An HTTPS server on loopback serving MTA-STS policies (RFC 8461) for tests.

``PolicyServer`` answers ``GET /.well-known/mta-sts.txt`` with the policy set for the request's Host
(``mta-sts.<domain>``), over TLS with a certificate from the test CA (``tests.support.tls``) for the
names given. Point the daemon at it with ``[delivery] mta_sts_port = server.port``, ``tls_ca_file`` = the
test CA and an A record ``mta-sts.<domain> -> 127.0.0.1`` in the loopback DNS.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from tests.support.tls import server_context

__all__ = ["PolicyServer", "policy_text"]


def policy_text(mode: str, mx: Sequence[str], max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server  # type: ignore[assignment]

    def do_GET(self) -> None:
        owner = self.server.owner
        host = (self.headers.get("Host") or "").rpartition(":")[0] or self.headers.get("Host") or ""
        domain = host.lower().removeprefix("mta-sts.")
        with owner.lock:
            owner.fetches.append(domain)
            status, body = owner.answers.get(domain, (404, ""))
        if self.path != "/.well-known/mta-sts.txt":
            status, body = 404, ""
        raw = body.encode()
        self.send_response(status)
        if status in (301, 302):
            self.send_header("Location", f"https://mta-sts.{domain}/elsewhere")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: PolicyServer


class PolicyServer:
    """Loopback HTTPS server of MTA-STS policies; ``fetches`` lists the domains asked for, in order."""

    def __init__(self, hostnames: Sequence[str]) -> None:
        self.hostnames = tuple(hostnames)
        self.lock = threading.Lock()
        self.answers: dict[str, tuple[int, str]] = {}
        self.fetches: list[str] = []
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def serve(self, domain: str, body: str, status: int = 200) -> None:
        """Answer requests for `domain`'s policy with `status` and `body`."""
        with self.lock:
            self.answers[domain.lower()] = (status, body)

    def start(self) -> PolicyServer:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        context: ssl.SSLContext = server_context(self.hostnames)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"PolicyServer-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
