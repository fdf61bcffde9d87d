"""SIGTERM drains submission: a message mid-DATA is received, committed and answered with its queue id,
then the session is closed with 421; the message is delivered after the restart."""

from __future__ import annotations

import base64
import signal
import socket
from collections.abc import Callable

from tests.support.daemon import Daemon
from tests.support.outbound import add_domain, client_tls
from tests.support.raw_smtp import RawSmtp
from tests.support.smtp_sink import SmtpSink

ALICE = "alice@example.test"


def test_sigterm_lets_a_submission_mid_data_be_committed(make_daemon: Callable[..., Daemon],
                                                          sink: SmtpSink) -> None:
    d = make_daemon({"delivery": {"routes": {"*": sink.address}}, "shutdown_timeout": 120}, start=False)
    password = add_domain(d, "example.test", ALICE)[ALICE]
    d.start()
    assert d.proc is not None
    head = f"From: {ALICE}\r\nTo: bob@dest.test\r\nSubject: drained\r\n\r\nfirst half\r\n".encode()
    c = RawSmtp(d.submission_tls_port, client_tls())
    try:
        assert c.cmd(b"EHLO client.test\r\n")[0] == 250
        token = base64.b64encode(f"\0{ALICE}\0{password}".encode())
        assert c.cmd(b"AUTH PLAIN " + token + b"\r\n")[0] == 235
        assert c.cmd(f"MAIL FROM:<{ALICE}>\r\n".encode())[0] == 250
        assert c.cmd(b"RCPT TO:<bob@dest.test>\r\n")[0] == 250
        assert c.cmd(b"DATA\r\n")[0] == 354
        c.sock.sendall(head)
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for_log("submission closed to new connections; 1 session(s) inside a message")
        try:
            socket.create_connection(("127.0.0.1", d.submission_tls_port), timeout=10).close()
            raise AssertionError("a new connection was accepted while stopping")
        except ConnectionRefusedError:
            pass
        code, text = c.cmd(b"second half\r\n.\r\n")
        assert code == 250 and text.startswith(b"2.0.0 Queued as "), text
        assert c.file.readline().startswith(b"421 ")
    finally:
        c.close()
    assert d.proc.wait(60) == 0
    d.start()
    (got,) = sink.wait_for(1, timeout=30)
    assert got.rcpt_tos == ["bob@dest.test"] and b"second half" in got.data
