"""Process faults: `kill -9` at random points of submission bursts, deliveries and MX forwarding, round
after round on one data dir, loses no message that got a 250; SIGTERM lets every session inside a message
have its reply and every delivery in flight finish, and exits 0 within `shutdown_timeout`.

The kill points come from a seeded RNG; the seed is printed (shown on failure) and FWDMAIL_KILL_SEED
repeats a run.
"""

from __future__ import annotations

import base64
import email
import os
import random
import signal
import smtplib
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.support.daemon import Daemon
from tests.support.faults import ALICE, integrity, setup
from tests.support.outbound import client_tls, connect, message, send, wait_until
from tests.support.raw_smtp import RawSmtp
from tests.support.smtp_sink import SmtpSink

KILL_ROUNDS = 20
SEED = int(os.environ.get("FWDMAIL_KILL_SEED") or random.randrange(2**32))
SUBMITTERS = 3
SHUTDOWN = 4


def subjects(sink: SmtpSink) -> set[str]:
    return {str(email.message_from_bytes(m.data)["Subject"]) for m in list(sink.messages)}


class Burst:
    """Clients sending until the daemon dies under them; what got a 250, and any MX 250 the sink lacks."""

    def __init__(self, d: Daemon, password: str, sink: SmtpSink, label: str) -> None:
        self.d, self.password, self.sink, self.label = d, password, sink, label
        self.queued: set[str] = set()
        self.forwarded: set[str] = set()
        self.unforwarded: set[str] = set()
        self.going = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._submitter, args=(n,)) for n in range(SUBMITTERS)]
        self._threads.append(threading.Thread(target=self._mx))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        for t in self._threads:
            t.join(60)
            assert not t.is_alive(), "a client is stuck"

    def _submitter(self, n: int) -> None:
        try:
            with connect(self.d, timeout=20) as s:
                s.login(ALICE, self.password)
                for i in range(1000):
                    subject = f"{self.label} submission {n}-{i}"
                    if send(s, ALICE, ["bob@dest.test"], message(ALICE, subject=subject))[0] == 250:
                        with self._lock:
                            self.queued.add(subject)
                        self.going.set()
        except (OSError, smtplib.SMTPException):
            return

    def _mx(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.d.mx_port, local_hostname="client.test", timeout=20) as s:
                for i in range(1000):
                    subject = f"{self.label} mx {i}"
                    msg = (f"From: sender@src.test\r\nTo: a@ours.test\r\nSubject: {subject}\r\n"
                           f"Message-ID: <{uuid.uuid4().hex}@src.test>\r\n\r\nhello\r\n").encode()
                    s.sendmail("sender@src.test", ["a@ours.test"], msg)
                    delivered = subject in subjects(self.sink)  # forwarded in-session, before the 250
                    with self._lock:
                        self.forwarded.add(subject)
                        if not delivered:
                            self.unforwarded.add(subject)
        except (OSError, smtplib.SMTPException):
            return


def test_kill_9_at_random_points_loses_no_accepted_message(make_daemon: Callable[..., Daemon],
                                                            sink: SmtpSink) -> None:
    print(f"kill -9 rounds: seed {SEED} (FWDMAIL_KILL_SEED={SEED} repeats this run)")
    rng = random.Random(SEED)
    d = make_daemon({
        "delivery": {"routes": {"*": sink.address}},
        # Every kill counts a crash of each message in flight; holding a message after max_crashes is
        # the poison-message safeguard, not what this test is about.
        "queue": {"min_backoff": 1, "max_backoff": 2, "poll_interval": 0.2, "max_crashes": 1000},
    }, start=False)
    password = setup(d)
    sink.behaviour.stall_seconds_after_data = 0.05  # deliveries stay in flight a while: kills land in them
    queued: dict[str, int] = {}
    forwarded: set[str] = set()
    for rnd in range(KILL_ROUNDS):
        d.start()
        burst = Burst(d, password, sink, f"round {rnd}")
        burst.start()
        assert burst.going.wait(30), f"seed {SEED}, round {rnd}: no submission got a 250"
        time.sleep(rng.uniform(0, 0.8))
        d.kill()
        burst.join()
        assert not burst.unforwarded, f"seed {SEED}: MX 250 without delivery: {sorted(burst.unforwarded)}"
        queued.update(dict.fromkeys(burst.queued, rnd))
        forwarded |= burst.forwarded
    assert len(queued) >= KILL_ROUNDS and forwarded, f"seed {SEED}: the bursts hardly got going"

    d.start()
    try:
        wait_until(lambda: set(queued) <= subjects(sink), 60, "every accepted message to be delivered")
    except AssertionError:
        lost = sorted(set(queued) - subjects(sink))
        raise AssertionError(f"seed {SEED}: {len(lost)} of {len(queued)} accepted messages never delivered: "
                             f"{lost[:20]}") from None
    takebacks = d.logs().count("claimed before a crash")
    print(f"seed {SEED}: {len(queued)} queued, {len(forwarded)} forwarded, {takebacks} restarts took back "
          "claims of deliveries in flight")
    assert takebacks, f"seed {SEED}: no kill landed in a delivery"
    assert d.stop() == 0
    assert integrity(d) == "ok"


# SIGTERM

class MidData:
    """A session that has sent DATA and half a message, on the MX or (logged in) on submission."""

    def __init__(self, d: Daemon, password: str | None, subject: str) -> None:
        if password is None:
            self.c = RawSmtp(d.mx_port)
            sender, rcpt = "sender@src.test", "a@ours.test"
        else:
            self.c = RawSmtp(d.submission_tls_port, client_tls())
            sender, rcpt = ALICE, "bob@else.test"
        assert self.c.cmd(b"EHLO client.test\r\n")[0] == 250
        if password is not None:
            token = base64.b64encode(f"\0{ALICE}\0{password}".encode())
            assert self.c.cmd(b"AUTH PLAIN " + token + b"\r\n")[0] == 235
        assert self.c.cmd(f"MAIL FROM:<{sender}>\r\n".encode())[0] == 250
        assert self.c.cmd(f"RCPT TO:<{rcpt}>\r\n".encode())[0] == 250
        assert self.c.cmd(b"DATA\r\n")[0] == 354
        self.c.sock.sendall(f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
                            f"Message-ID: <{uuid.uuid4().hex}@src.test>\r\n\r\nfirst half\r\n".encode())

    def finish(self) -> tuple[int, bytes]:
        """Send the rest; the reply to the message."""
        return self.c.cmd(b"second half\r\n.\r\n")

    def closing(self) -> None:
        """The daemon says it is shutting down (421), then closes the connection."""
        line = self.c.file.readline()
        assert line.startswith(b"421 "), line
        assert self.c.file.readline() == b""
        self.c.close()


def drain_daemon(make_daemon: Callable[..., Daemon], sink: SmtpSink, queue_sink: SmtpSink,
                 **settings: Any) -> tuple[Daemon, str]:
    """MX forwards (dest.test) go to `sink`, queued submissions (else.test) to `queue_sink`."""
    d = make_daemon({"delivery": {"routes": {"dest.test": sink.address, "*": queue_sink.address},
                                  "data_timeout": 120}, **settings}, start=False)
    password = setup(d)
    d.start()
    return d, password


def test_sigterm_answers_every_session_mid_data_and_finishes_deliveries_in_flight(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    with SmtpSink() as queue_sink:
        d, password = drain_daemon(make_daemon, sink, queue_sink, shutdown_timeout=60)
        mx = {f"mx {n}": MidData(d, None, f"mx {n}") for n in range(4)}
        sub = {f"submission {n}": MidData(d, password, f"submission {n}") for n in range(4)}
        queue_sink.behaviour.stall_seconds_after_data = 2  # deliveries are in flight at the signal
        in_flight = [f"in flight {n}" for n in range(3)]
        with connect(d) as s:
            s.login(ALICE, password)
            for subject in in_flight:
                assert send(s, ALICE, ["bob@else.test"], message(ALICE, "bob@else.test", subject))[0] == 250
        wait_until(lambda: queue_sink.connections >= 1, 30, "deliveries to start")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)

        d.wait_for_log("MX closed to new connections; 4 session(s) inside a message")
        for subject, session in mx.items():
            code, text = session.finish()
            assert code == 250, (subject, code, text)
        assert {*mx} <= subjects(sink), "each MX 250 came after the forward"
        for session in mx.values():
            session.closing()
        d.wait_for_log("submission closed to new connections; 4 session(s) inside a message")
        for subject, session in sub.items():
            code, text = session.finish()
            assert code == 250 and text.startswith(b"2.0.0 Queued as "), (subject, code, text)
        for session in sub.values():
            session.closing()
        assert d.proc.wait(60) == 0
        logs = d.logs()
        assert "waiting for" in logs and "delivery attempt(s) in flight" in logs
        assert "Traceback" not in logs
        assert set(in_flight) <= subjects(queue_sink), "deliveries in flight at the signal finished"

        queue_sink.behaviour.stall_seconds_after_data = 0
        d.start()
        wait_until(lambda: {*in_flight, *sub} <= subjects(queue_sink), 30, "every queued message")


def test_sigterm_exits_within_shutdown_timeout_when_nothing_in_flight_finishes(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    with SmtpSink() as queue_sink:
        d, password = drain_daemon(make_daemon, sink, queue_sink, shutdown_timeout=SHUTDOWN)
        queue_sink.behaviour.stall_seconds_after_data = 300  # a delivery that does not end by itself
        with connect(d) as s:
            s.login(ALICE, password)
            assert send(s, ALICE, ["bob@else.test"], message(ALICE, "bob@else.test", "stuck"))[0] == 250
        wait_until(lambda: queue_sink.connections >= 1, 30, "the delivery to start")
        stalled = [MidData(d, None, "mx stalled"), MidData(d, password, "submission stalled")]
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        try:
            # shutdown_timeout bounds the whole stop, not each service's drain (MX, then submission, then
            # the queue: three times as long); the margin is for a slow process exit on a busy machine.
            assert d.proc.wait(2 * SHUTDOWN) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still draining {2 * SHUTDOWN}s after SIGTERM; shutdown_timeout is "
                                 f"{SHUTDOWN}s:\n{d.logs()[-3000:]}") from None
        for session in stalled:
            session.closing()  # a 421, not a dropped connection
        queue_sink.behaviour.stall_seconds_after_data = 0
        d.start()
        wait_until(lambda: "stuck" in subjects(queue_sink), 30, "the stopped delivery, after the restart")
