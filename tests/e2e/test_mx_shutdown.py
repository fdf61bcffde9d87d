"""SIGTERM drains the MX: a message mid-DATA is received, forwarded and answered; new connections are
refused; the process exits 0. A second signal forces the stop without waiting for the client."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import message, start_daemon
from tests.support.raw_smtp import RawSmtp
from tests.support.smtp_sink import SmtpSink

DRAINING = "MX closed to new connections"


def _daemon(tmp: Path, dns: LoopbackDNS, sink: SmtpSink, shutdown_timeout: float) -> Daemon:
    return start_daemon(tmp, {
        "dns": {"nameservers": [dns.address]},
        "delivery": {"routes": {"dest.test": sink.address}},
        "shutdown_timeout": shutdown_timeout,
    }, [
        ["account", "add", "owner@owner.test"],
        ["domain", "add", "ours.test", "--account", "owner@owner.test"],
        ["alias", "add", "a@ours.test", "a@dest.test"],
    ])


def _start_message(c: RawSmtp, first_part: bytes) -> None:
    assert c.cmd(b"EHLO client.test\r\n")[0] == 250
    assert c.cmd(b"MAIL FROM:<alice@src.test>\r\n")[0] == 250
    assert c.cmd(b"RCPT TO:<a@ours.test>\r\n")[0] == 250
    assert c.cmd(b"DATA\r\n")[0] == 354
    c.sock.sendall(first_part)


def test_sigterm_lets_a_message_mid_data_finish(tmp_path: Path, dns_server: LoopbackDNS,
                                                sink: SmtpSink) -> None:
    d = _daemon(tmp_path, dns_server, sink, shutdown_timeout=120)
    assert d.proc is not None
    msg = message("drained", body=b"first half\r\nsecond half\r\n")
    head, tail = msg[: msg.index(b"second half")], msg[msg.index(b"second half"):]
    c = RawSmtp(d.mx_port)
    try:
        _start_message(c, head)
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for_log(DRAINING)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", d.mx_port), timeout=10).close()
        assert d.proc.poll() is None
        code, text = c.cmd(tail + b".\r\n")
        assert code == 250, text
        assert c.file.readline().startswith(b"421 ")  # then told the service is closing
    finally:
        c.close()
    assert d.proc.wait(60) == 0
    [got] = sink.messages
    assert got.rcpt_tos == ["a@dest.test"] and got.data.endswith(msg)


def test_second_signal_forces_the_stop(tmp_path: Path, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = _daemon(tmp_path, dns_server, sink, shutdown_timeout=600)
    assert d.proc is not None
    c = RawSmtp(d.mx_port)
    try:
        _start_message(c, message("forced")[:40])
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for_log(DRAINING)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(60) == 0  # well before the 600 s drain limit
    finally:
        c.close()
    assert sink.messages == []
