"""A loopback HTTPS server (trustme certificate) standing in for webhook destinations.

Each path answers as told (`behave`: a list of statuses used in turn, the last one repeated, and a
delay), and every request it receives is kept (`requests`), with its headers and exact body.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.tls import server_context

__all__ = ["HookRequest", "WebhookServer"]


@dataclass(frozen=True)
class HookRequest:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Behaviour:
    statuses: list[int] = field(default_factory=lambda: [200])
    delay: float = 0.0
    location: str = ""
    answer_bytes: int = 2


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(min(length, 64 * 1024 * 1024))
        owner = self.server.owner
        with owner.lock:
            owner.in_flight += 1
            owner.most_in_flight = max(owner.most_in_flight, owner.in_flight)
            headers = {k.lower(): v for k, v in self.headers.items()}
            owner.requests.append(HookRequest(self.path, headers, body))
            how = owner.behaviours.get(self.path, _Behaviour())
            status = how.statuses.pop(0) if len(how.statuses) > 1 else how.statuses[0]
        if how.delay:
            time.sleep(how.delay)
        with owner.lock:
            owner.in_flight -= 1
        self.send_response(status)
        if how.location:
            self.send_header("Location", how.location)
        self.send_header("Content-Length", str(how.answer_bytes))
        self.end_headers()
        chunk = b"o" * 65536
        sent = 0
        with contextlib.suppress(OSError):  # a client that read enough hangs up
            while sent < how.answer_bytes:
                self.wfile.write(chunk[:how.answer_bytes - sent])
                sent += min(len(chunk), how.answer_bytes - sent)
        with owner.lock:
            owner.answer_sent[self.path] = sent

    def log_message(self, format: str, *args: object) -> None:
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: WebhookServer


class WebhookServer:
    """`with WebhookServer(["hook.test"]) as hooks:`; `hooks.url(name, path)` is a URL for the daemon."""

    def __init__(self, hostnames: Sequence[str] = ("hook.test",), host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.requests: list[HookRequest] = []
        self.behaviours: dict[str, _Behaviour] = {}
        self.in_flight = 0
        self.most_in_flight = 0  # requests being answered at once, at most so far
        self.answer_sent: dict[str, int] = {}  # path -> answer bytes written before the client hung up
        self._server = _Server((host, 0), _Handler)
        self._server.owner = self
        tls: ssl.SSLContext = server_context(list(hostnames))
        self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.port}{path}"

    def behave(self, path: str, statuses: Sequence[int] = (200,), delay: float = 0.0,
               location: str = "", answer_bytes: int = 2) -> None:
        with self.lock:
            self.behaviours[path] = _Behaviour(list(statuses), delay, location, answer_bytes)

    def received(self, path: str) -> list[HookRequest]:
        with self.lock:
            return [r for r in self.requests if r.path == path]
