"""Listener limits against the real daemon: one client (or many) cannot stop the others being served.

Per-client concurrent connections on every listener, a cap of sessions per listener kind derived from the
file-descriptor limit, commands that do nothing, a session's whole lifetime, the time an unauthenticated
submission session gets, and errors per submission session.
"""

from __future__ import annotations

import functools
import itertools
import os
import resource
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fwdmail import config
from fwdmail.policy.clients import client_key
from fwdmail.runtime.listeners import SessionCaps, TlsGate, caps_for
from fwdmail.smtp.limits import Sessions
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.hostile import TALLY, Session, no_tls_check, register_summary
from tests.support.mx import cli_batch
from tests.support.smtp_sink import SmtpSink

PER_CLIENT = 3
JUNK = 6
SUBMISSION_ERRORS = 5
SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["alias", "add", "ok@ours.test", "one@dest.test"],
]
_sources = (f"127.0.{10 + i // 250}.{1 + i % 250}" for i in itertools.count())


def source() -> str:
    """A loopback address no other test of this module connects from."""
    return next(_sources)


def message() -> bytes:
    return (f"From: <sender@src.test>\r\nTo: <ok@ours.test>\r\nSubject: {uuid.uuid4().hex}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@src.test>\r\n\r\nhello\r\n").encode()


def forward_one(port: int, sink: SmtpSink, src: str) -> None:
    """A whole MX transaction from `src`; the sink gets the message."""
    before = len(sink.messages)
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(src, 0)) as c:
        c.ehlo("client.test")
        c.sendmail("sender@src.test", ["ok@ours.test"], message())
    sink.wait_for(before + 1, 30)


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
           downstream: SmtpSink) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("listener-limits"), {
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"*": downstream.address}},
        "abuse": {"max_connections_per_ip": PER_CLIENT, "max_junk_commands": JUNK},
        "submission": {"max_connections_per_ip": PER_CLIENT, "max_junk_commands": JUNK,
                       "max_errors_per_session": SUBMISSION_ERRORS},
    })
    cli_batch(d, SETUP)
    d.start()
    yield d
    d.stop()


def _port(d: Daemon, listener: str) -> tuple[int, ssl.SSLContext | None]:
    return {"mx": (d.mx_port, None), "submission": (d.submission_port, None),
            "submission_tls": (d.submission_tls_port, no_tls_check())}[listener]


def _refused(s: Session, enhanced: bytes = b"4.7.0") -> bool:
    """The reply is a 421 with `enhanced`, and the server then closes the connection."""
    code, lines = s.reply()
    return code == 421 and lines[-1][4:].startswith(enhanced) and s.closed()


def _greeted_soon(port: int, src: str, tls: ssl.SSLContext | None) -> Session:
    """A new session from `src` once the server has seen an earlier one of it close (a bounded retry)."""
    for _ in range(100):
        s = Session(port, source=src, tls=tls, greeting=False, timeout=30)
        if s.reply()[0] == 220:
            return s
        s.close()
        time.sleep(0.05)
    raise AssertionError("the closed session was never forgotten")


@pytest.mark.parametrize("listener", ["mx", "submission", "submission_tls"])
def test_one_address_over_its_connection_limit_gets_421(daemon: Daemon, listener: str) -> None:
    port, tls = _port(daemon, listener)
    src = source()
    held = [Session(port, source=src, tls=tls) for _ in range(PER_CLIENT)]
    try:
        with Session(port, source=src, tls=tls, greeting=False, timeout=10) as over:
            assert _refused(over)
        with Session(port, source=source(), tls=tls) as other:  # another address is served meanwhile
            assert other.cmd(b"NOOP") == 250
        assert all(s.cmd(b"NOOP") == 250 for s in held)  # those already open keep working
        held.pop().close()
        _greeted_soon(port, src, tls).close()
    finally:
        for s in held:
            s.close()
    TALLY.item("13.1 connections per client", PER_CLIENT + 2, f"{listener}: over {PER_CLIENT} -> 421 4.7.0")


def test_submission_errors_per_session_are_capped(daemon: Daemon) -> None:
    with Session(daemon.submission_tls_port, source=source(), tls=no_tls_check(), timeout=10) as s:
        s.cmd(b"EHLO client.test")
        for _ in range(SUBMISSION_ERRORS):
            assert s.cmd(b"MAIL FROM:<a@ours.test>") == 530
        assert s.cmd(b"MAIL FROM:<a@ours.test>") == 530
        assert _refused(s)
    TALLY.item("19 submission errors per session", SUBMISSION_ERRORS + 1, "421 4.7.0 and closed")


JUNK_COMMANDS = [b"NOOP", b"RSET", b"HELP", b"VRFY <someone@ours.test>", b"EHLO client.test"]


@pytest.mark.parametrize("listener", ["mx", "submission_tls"])
def test_commands_that_do_nothing_are_limited_per_session(daemon: Daemon, listener: str) -> None:
    port, tls = _port(daemon, listener)
    with Session(port, source=source(), tls=tls, timeout=10) as s:
        assert s.cmd(b"EHLO client.test") == 250  # the first EHLO is no junk
        for command in itertools.islice(itertools.cycle(JUNK_COMMANDS), JUNK):
            assert s.cmd(command) in (250, 252), command
        s.send(b"NOOP\r\n")
        assert _refused(s)
    TALLY.item("13.1 junk commands", JUNK + 1, f"{listener}: NOOP/RSET/HELP/VRFY/EHLO past {JUNK} -> 421")


def test_a_delivered_message_starts_the_junk_count_again(daemon: Daemon, clean_downstream: SmtpSink) -> None:
    with Session(daemon.mx_port, source=source(), timeout=30) as s:
        s.cmd(b"EHLO client.test")
        for _ in range(JUNK - 1):
            assert s.cmd(b"NOOP") == 250
        assert s.cmd(b"MAIL FROM:<sender@src.test>") == 250
        assert s.cmd(b"RCPT TO:<ok@ours.test>") == 250
        assert s.cmd(b"DATA") == 354
        assert s.cmd(message() + b".") == 250
        for _ in range(JUNK):
            assert s.cmd(b"NOOP") == 250
        s.send(b"NOOP\r\n")
        assert _refused(s)
    clean_downstream.wait_for(1)


# time limits: a daemon of their own, with short ones

LOGIN_TIMEOUT = 2
LIFETIME = 5


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
          downstream: SmtpSink) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("listener-times"), {
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"*": downstream.address}},
        "abuse": {"max_session_time": LIFETIME, "max_junk_commands": 1000},
        "submission": {"login_timeout": LOGIN_TIMEOUT, "max_session_time": LIFETIME},
    })
    cli_batch(d, SETUP)
    d.start()
    yield d
    d.stop()


@pytest.mark.parametrize("listener", ["submission", "submission_tls"])
def test_an_unauthenticated_submission_session_is_closed_soon(timed: Daemon, listener: str) -> None:
    port, tls = _port(timed, listener)
    with Session(port, source=source(), tls=tls, timeout=LIFETIME * 4) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert _refused(s, b"4.7.0")  # no command needed: the deadline closes it
    TALLY.item("13.1 unauthenticated submission", 1, f"closed with 421 after {LOGIN_TIMEOUT} s")


def test_a_session_kept_alive_with_noops_ends_at_its_lifetime(timed: Daemon) -> None:
    with Session(timed.mx_port, source=source(), timeout=LIFETIME * 4) as s:
        s.cmd(b"EHLO client.test")
        for _ in range(LIFETIME * 20):
            s.send(b"NOOP\r\n")
            code, lines = s.reply()
            if code != 250:
                break
            time.sleep(0.25)
        assert code == 421 and lines[-1][4:].startswith(b"4.4.2"), lines
        assert s.closed()
    TALLY.item("13.1 session lifetime", 1, f"a NOOP-kept session ends after {LIFETIME} s")


def test_a_message_under_way_at_the_lifetime_is_finished_first(timed: Daemon, clean_downstream: SmtpSink
                                                                ) -> None:
    started = time.monotonic()
    with Session(timed.mx_port, source=source(), timeout=LIFETIME * 4) as s:
        s.cmd(b"EHLO client.test")
        assert s.cmd(b"MAIL FROM:<sender@src.test>") == 250
        assert s.cmd(b"RCPT TO:<ok@ours.test>") == 250
        assert s.cmd(b"DATA") == 354
        s.send(message())
        time.sleep(max(0.0, LIFETIME + 1 - (time.monotonic() - started)))
        assert s.cmd(b".") == 250
        assert _refused(s, b"4.4.2")
    clean_downstream.wait_for(1)


# the cap of sessions per listener kind, from the file-descriptor limit

FD_LIMIT = 256


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def low_fd_daemon(tmp_path: Any, dns_server: LoopbackDNS, sink: SmtpSink,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """A daemon whose file-descriptor limit (soft and hard) is FD_LIMIT."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    d = Daemon(tmp_path, {"dns": {"nameservers": [dns_server.address]},
                          "delivery": {"routes": {"*": sink.address}}})
    cli_batch(d, SETUP)
    monkeypatch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen, preexec_fn=limit))
    d.start()
    monkeypatch.undo()
    yield d
    d.stop()


def _fill(port: int, tls: ssl.SSLContext | None, tries: int, pid: int) -> tuple[list[Session], int, int]:
    """Open sessions from new addresses, one each, until `tries`; return those greeted, how many got
    421 4.7.0, and the most descriptors the daemon had open meanwhile."""
    held: list[Session] = []
    refused = most = 0
    for i in range(tries):
        s = Session(port, source=source(), tls=tls, greeting=False, timeout=10)
        code, lines = s.reply()
        if code == 220:
            held.append(s)
        else:
            assert code == 421 and lines[0][4:9] == b"4.7.0", lines
            assert s.closed()
            s.close()
            refused += 1
        if i % 16 == 0:
            most = max(most, _fds(pid))
    return held, refused, max(most, _fds(pid))


def test_sessions_stop_at_a_cap_below_the_fd_limit_and_the_mx_still_forwards(low_fd_daemon: Daemon,
                                                                             sink: SmtpSink) -> None:
    d = low_fd_daemon
    assert d.proc is not None
    tries = FD_LIMIT + 20  # more connections than the daemon has descriptors
    held, refused, most = _fill(d.submission_port, None, tries // 2, d.proc.pid)
    more, refused_tls, most_tls = _fill(d.submission_tls_port, no_tls_check(), tries // 2, d.proc.pid)
    held += more
    try:
        assert held and refused + refused_tls == tries - len(held)
        assert max(most, most_tls) < FD_LIMIT
        assert all(s.cmd(b"NOOP") == 250 for s in held[:5])  # sessions already open keep working
        forward_one(d.mx_port, sink, source())  # the MX, from another address, still forwards
        mx_held, mx_refused, mx_most = _fill(d.mx_port, None, tries, d.proc.pid)
        try:
            assert mx_held and mx_refused == tries - len(mx_held)
            assert mx_most < FD_LIMIT
            s = mx_held[0]  # an MX session already open still forwards, with the MX at its cap
            s.cmd(b"EHLO client.test")
            assert s.cmd(b"MAIL FROM:<sender@src.test>") == 250
            assert s.cmd(b"RCPT TO:<ok@ours.test>") == 250
            assert s.cmd(b"DATA") == 354
            assert s.cmd(message() + b".") == 250
            sink.wait_for(2, 30)
        finally:
            for s in mx_held:
                s.close()
    finally:
        for s in held:
            s.close()
    warnings = [line for line in d.logs().splitlines() if "session cap" in line]
    assert len(warnings) == 2, warnings  # one rate-limited line per listener kind
    TALLY.item("13.1 connection exhaustion", tries * 2,
               f"submission {len(held)} + MX {len(mx_held)} sessions held, the rest 421; "
               f"at most {max(most, most_tls, mx_most)} of {FD_LIMIT} fds")


def test_a_configured_cap_is_kept(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon({"submission": {"max_sessions": 2}})
    # (retried: the start-up check's probes may still count for a moment)
    held = [_greeted_soon(d.submission_port, source(), None),
            _greeted_soon(d.submission_tls_port, source(), no_tls_check())]
    try:
        with Session(d.submission_port, source=source(), greeting=False, timeout=10) as s:
            assert _refused(s)
    finally:
        for s in held:
            s.close()
    with Session(d.mx_port, source=source()) as s:  # the other listener kind has a cap of its own
        assert s.cmd(b"NOOP") == 250


def test_clients_that_connect_and_close_at_once_leave_no_descriptor_behind(daemon: Daemon) -> None:
    """aiosmtpd cancelled such a session before it ran and never closed it: a slow descriptor leak."""
    assert daemon.proc is not None
    before = _fds(daemon.proc.pid)
    for port in (daemon.mx_port, daemon.submission_port):
        for _ in range(100):
            socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source(), 0)).close()
    for _ in range(200):
        if _fds(daemon.proc.pid) <= before + 5:
            break
        time.sleep(0.05)
    assert _fds(daemon.proc.pid) <= before + 5, (before, _fds(daemon.proc.pid))
    TALLY.item("13.1 connect and close at once", 200, "no descriptor left open")


def test_connections_that_never_start_tls_on_465_are_limited_per_client(daemon: Daemon) -> None:
    """Before its handshake an implicit-TLS connection is no session yet: it still counts for its client."""
    assert daemon.proc is not None
    before = _fds(daemon.proc.pid)
    src = source()
    silent = [socket.create_connection(("127.0.0.1", daemon.submission_tls_port), timeout=10,
                                       source_address=(src, 0)) for _ in range(50)]
    try:
        closed = 0
        for s in silent[PER_CLIENT:]:  # those over the client's limit are closed at once, unanswered
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == len(silent) - PER_CLIENT
        assert _fds(daemon.proc.pid) <= before + PER_CLIENT + 5
        with Session(daemon.submission_tls_port, source=source(), tls=no_tls_check()) as other:
            assert other.cmd(b"NOOP") == 250
    finally:
        for s in silent:
            s.close()
    TALLY.item("13.1 silent TLS connections", len(silent), f"over {PER_CLIENT} per client closed at once")


# the pieces, without a socket

def test_caps_follow_the_configuration_and_the_open_files_limit() -> None:
    cfg = config.from_dict({})
    assert caps_for(cfg, None) == SessionCaps(1000, 200, None)
    assert caps_for(cfg, 1_048_576) == SessionCaps(1000, 200, 1_048_576)
    assert caps_for(cfg, 1024) == SessionCaps(353, 88, 1024)  # (1024 - 100 - 40): 2/5 and 1/10
    assert caps_for(cfg, 256) == SessionCaps(46, 11, 256)
    assert caps_for(cfg, 64) == SessionCaps(1, 1, 64)  # never 0, which would mean no cap
    workers = config.from_dict({"mx": {"workers": 4}, "abuse": {"max_sessions": 10}})
    assert caps_for(workers, None).mx == 3  # each process its share, rounded up


def test_the_cap_warning_is_one_line_per_window(caplog: pytest.LogCaptureFixture) -> None:
    sessions = Sessions("MX", cap=1, warn_every=300)
    first, second = object(), object()
    assert sessions.add(first) and sessions.add(first)  # (again after STARTTLS: the same one)
    with caplog.at_level("WARNING", "fwdmail.smtp"):
        assert not any(sessions.add(second) for _ in range(50))
    assert sessions.refused == 50 and len(sessions) == 1
    assert [r.getMessage() for r in caplog.records] == [
        "MX session cap of 1 reached: new connections get 421 (1 refused since the last warning)"]
    sessions.discard(first)
    assert sessions.add(second)


def test_the_tls_gate_counts_per_client_and_in_all() -> None:
    gate = TlsGate(ssl.create_default_context(), per_client=2, total=3, timeout=1, key=client_key)
    assert gate.admit("a") and gate.admit("a") and not gate.admit("a")
    assert gate.admit("b") and not gate.admit("c") and len(gate) == 3 and gate.refused == 2
    gate.release("a")
    assert gate.admit("c") and len(gate) == 3
    for key in ("a", "b", "c", "c", "unknown"):
        gate.release(key)
    assert len(gate) == 0 and gate.admit("a")
