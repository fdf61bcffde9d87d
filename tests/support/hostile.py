"""Shared by the hostile-input tests: a raw SMTP session that counts itself, reply checks, and the tally
printed as one table at the end of the run (sessions held, faults survived, inputs tried, messages lost).
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, fields

import pytest

from tests.support.daemon import Daemon
from tests.support.smtp_sink import Received, SmtpSink

REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -]")
CLIENT = b"client.test"


@dataclass
class Tally:
    """What the hostile tests did to the daemons, for the summary table."""

    sessions_held: int = 0
    faults_injected: int = 0
    faults_survived: int = 0
    hostile_inputs_tried: int = 0
    messages_accepted: int = 0
    messages_lost: int = 0

    def rows(self) -> list[tuple[str, int]]:
        return [(f.name.replace("_", " "), getattr(self, f.name)) for f in fields(self)]

    def item(self, name: str, tries: int, outcome: str) -> None:
        """Record one defect class a test attacked: how many tries, and what came of them."""
        ITEMS[name] = (ITEMS.get(name, (0, ""))[0] + tries, outcome)


TALLY = Tally()
ITEMS: dict[str, tuple[int, str]] = {}  # per attacked item: tries, outcome (printed after the tally)


class _SummaryPlugin:
    """Prints the tally once, at the end of the terminal report."""

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not TALLY.sessions_held and not ITEMS:
            return
        width = max(len(name) for name, _ in TALLY.rows())
        terminalreporter.section("hostile input summary")
        for name, value in TALLY.rows():
            terminalreporter.write_line(f"{name:<{width}}  {value:>8}")
        if ITEMS:
            terminalreporter.section("hostile items (tries, outcome)")
            width = max(len(name) for name in ITEMS)
            for name, (tries, outcome) in sorted(ITEMS.items()):
                terminalreporter.write_line(f"{name:<{width}}  {tries:>8}  {outcome}")


def register_summary(config: pytest.Config) -> None:
    """Add the summary table to this run's report (once, whichever module asks first)."""
    if not config.pluginmanager.has_plugin("fwdmail-hostile-summary"):
        config.pluginmanager.register(_SummaryPlugin(), "fwdmail-hostile-summary")


class Closed(AssertionError):
    """The server closed the connection; `replies` holds what it answered before."""


class Session:
    """A plain-socket SMTP session to 127.0.0.1:`port` that checks every reply line's syntax.

    `reply()` returns (code, lines); `send()` writes raw bytes. The session counts in the tally.
    """

    def __init__(self, port: int, *, source: str = "127.0.0.1", timeout: float = 60,
                 greeting: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                                            source_address=(source, 0))
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")
        self.last: int | None = None
        TALLY.sessions_held += 1
        if greeting:
            code, lines = self.reply()
            assert code == 220, lines

    def reply(self) -> tuple[int, list[bytes]]:
        """The next reply; every line must be `NNN-` or `NNN ` with a 2xx-5xx code."""
        lines: list[bytes] = []
        for _ in range(1000):
            line = self.file.readline(100_000)
            if not line:
                raise Closed(f"connection closed after {lines!r} (last reply {self.last})")
            assert line.endswith(b"\r\n"), line
            assert REPLY_LINE.match(line), line
            assert not lines or line[:3] == lines[0][:3], (lines, line)
            lines.append(line)
            if line[3:4] == b" ":
                self.last = int(line[:3])
                return self.last, lines
        raise AssertionError("a reply of more than 1000 lines")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: bytes) -> int:
        """Send one command line (CRLF added) and return the reply code."""
        self.send(line + b"\r\n")
        return self.reply()[0]

    def text(self, line: bytes) -> tuple[int, bytes]:
        """Send one command line and return the code and the last reply line's text."""
        self.send(line + b"\r\n")
        code, lines = self.reply()
        return code, lines[-1][4:].rstrip(b"\r\n")

    def starttls(self, context: ssl.SSLContext) -> None:
        self.sock = context.wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")

    def closed(self) -> bool:
        """True if the server has closed the connection (after its last reply); False if it sends more
        or keeps the connection open until the timeout."""
        try:
            return self.file.read(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def session(port: int, **kw: object) -> Iterator[Session]:
    s = Session(port, **kw)  # type: ignore[arg-type]
    try:
        yield s
    finally:
        s.close()


def still_serving(d: Daemon) -> None:
    """The daemon is up and a new MX session gets its greeting and a NOOP answered: one more fault
    survived."""
    assert d.proc is not None and d.proc.poll() is None, d.logs()
    with session(d.mx_port) as s:
        assert s.cmd(b"NOOP") == 250
        assert s.cmd(b"QUIT") == 221
    TALLY.faults_survived += 1


def delivered(sink: SmtpSink, n: int, timeout: float = 30) -> list[Received]:
    """The `n` messages the daemon accepted in this test (the sink was reset before it), once they are
    at the sink; any missing count as lost."""
    TALLY.messages_accepted += n
    try:
        return sink.wait_for(n, timeout)
    except AssertionError:
        TALLY.messages_lost += n - len(sink.messages)
        raise


def assert_clean_log(d: Daemon, since: int = 0) -> None:
    """No traceback and no handler error in the daemon's log (from character `since` on)."""
    logs = d.logs()[since:]
    assert "Traceback" not in logs, logs[-5000:]
    assert "unexpected error" not in logs, logs[-5000:]


def no_tls_check() -> ssl.SSLContext:
    """The daemon's certificate is self-signed: these tests look at the protocol, not the chain."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
