"""MX forwarding through the real daemon to a destination that offers PIPELINING (RFC 2920): mixed
per-recipient outcomes give the same replies and deliveries as lock-step, a sender's retry delivers no
copy twice, and a refused DATA stays temporary."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import message, send, start_daemon
from tests.support.smtp_sink import SmtpSink

SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["alias", "add", "three@ours.test", "fine@dest.test", "busy@dest.test", "gone@dest.test"],
    ["alias", "add", "ok@ours.test", "ok@dest.test"],
]


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
       downstream: SmtpSink) -> Iterator[Daemon]:
    routes = {"dest.test": downstream.address, "owner.test": downstream.address}
    d = start_daemon(tmp_path_factory.mktemp("mx-pipelined"), {
        "dns": {"nameservers": [dns_server.address]},
        "abuse": {"max_messages_per_ip_per_minute": 10_000, "max_errors_per_session": 1_000},
        "delivery": {"routes": routes, "data_timeout": 3, "command_timeout": 3, "connect_timeout": 2},
    }, SETUP)
    yield d
    d.stop()


def forwarded(sink: SmtpSink, n: int) -> list[list[str]]:
    """The recipients of the first `n` forwarded copies (the owner's partial-failure notices left out,
    a late one from an earlier test included)."""
    deadline = time.monotonic() + 10
    while len(got := [m.rcpt_tos for m in sink.messages if m.rcpt_tos != ["owner@owner.test"]]) < n:
        assert time.monotonic() < deadline, got
        time.sleep(0.05)
    return got


@pytest.mark.parametrize("pipelining", [True, False])
def test_mixed_destinations_then_the_senders_retry(mx: Daemon, clean_downstream: SmtpSink,
                                                   pipelining: bool) -> None:
    sink = clean_downstream
    sink.behaviour.pipelining = pipelining
    sink.behaviour.rcpt = {"busy@dest.test": "451 4.2.1 Busy", "gone@dest.test": "550 5.1.1 No such user"}
    msg = message(f"mixed {pipelining}")
    first = send(mx, "alice@src.test", ["three@ours.test"], msg)
    assert first.code == 451, first.text
    assert forwarded(sink, 1) == [["fine@dest.test"]]

    sink.behaviour.rcpt = {"gone@dest.test": "550 5.1.1 No such user"}
    again = send(mx, "alice@src.test", ["three@ours.test"], msg)
    assert again.code == 250, again.text
    assert forwarded(sink, 2) == [["fine@dest.test"], ["busy@dest.test"]]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_data_command_is_temporary(mx: Daemon, clean_downstream: SmtpSink,
                                             pipelining: bool) -> None:
    clean_downstream.behaviour.pipelining = pipelining
    clean_downstream.behaviour.data_command = "451 4.3.0 Not now"
    out = send(mx, "alice@src.test", ["ok@ours.test"], message())
    assert (out.code, out.text.split(" ")[0]) == (451, "4.3.0"), out.text
    clean_downstream.behaviour.data_command = None
    assert send(mx, "alice@src.test", ["ok@ours.test"], message()).code == 250
    assert forwarded(clean_downstream, 1) == [["ok@dest.test"]]
