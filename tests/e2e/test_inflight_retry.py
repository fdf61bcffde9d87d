"""A sender retrying while its first session is still forwarding the same message: the destination gets
it once. The second session waits for the first (250) or is told to try later (4xx), never a second copy.

The downstream sink holds its reply to the first copy's DATA until the test lets it go, so the two
sessions overlap for certain; with `[mx] workers = 2` the two connections are served by two processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import Outcome, message, send, start_daemon
from tests.support.smtp_sink import SmtpSink

WAITING = "waits for a copy of it that another session is forwarding"
"""The daemon's debug line when a message waits for its copy in flight (it names no address)."""

SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["domain", "set", "ours.test", "--auth-policy", "off"],
    ["alias", "add", "ok@ours.test", "ok@dest.test"],
]


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def mx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
       downstream: SmtpSink) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("inflight"), {
        "dns": {"nameservers": [dns_server.address]},
        "mx": {"workers": request.param},
        "delivery": {"routes": {"dest.test": downstream.address}},
    }, SETUP)
    if request.param > 1:
        _wait_for_workers(d)
    yield d
    d.stop()


def _wait_for_workers(d: Daemon, timeout: float = 20) -> None:
    assert d.proc is not None
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children")
    while not children.read_text().split():
        assert time.monotonic() < deadline, "no MX worker started"
        time.sleep(0.05)
    d.wait_for_log("MX spread over 2 processes")


def _in_background(d: Daemon, msg: bytes, out: list[Outcome]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(send(d, "alice@src.test", ["ok@ours.test"], msg)),
                              daemon=True)
    thread.start()
    return thread


def test_a_retry_during_the_first_forward_is_not_delivered_twice(mx: Daemon,
                                                                 clean_downstream: SmtpSink) -> None:
    sink = clean_downstream
    gate = threading.Event()
    sink.behaviour.data_gate = gate
    msg = message()
    first: list[Outcome] = []
    second: list[Outcome] = []
    logged = mx.logs().count(WAITING)
    try:
        a = _in_background(mx, msg, first)
        assert sink.wait_for_payloads(1, 20), "the first session's copy reached the destination"
        b = _in_background(mx, msg, second)
        deadline = time.monotonic() + 20
        while mx.logs().count(WAITING) == logged and sink.payloads < 2:
            assert time.monotonic() < deadline, "the second session neither waited nor forwarded"
            time.sleep(0.05)
    finally:
        gate.set()
    a.join(60)
    b.join(60)
    assert first and first[0].code == 250, first
    assert second and (second[0].code == 250 or 400 <= (second[0].code or 0) < 500), second
    copies = [m for m in sink.messages if m.data.endswith(msg)]
    assert len(copies) == 1 and sink.payloads == 1, "the destination got the message exactly once"
