"""Outbound over a connection just opened and upgraded with STARTTLS: the extensions the destination
advertises after the second EHLO (SMTPUTF8, 8BITMIME, SIZE) are used, by MX forwarding and by the queue.

Each destination is a real TLS-offering sink of its own, so the message checked is the first one on
that route: a fresh connection, never one reused from an earlier message.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import cli_batch
from tests.support.outbound import add_domain, client_tls, queue_id, wait_status
from tests.support.smtp_sink import SmtpSink
from tests.support.tls import server_context

ALICE = "alice@example.test"


def tls_sink() -> SmtpSink:
    return SmtpSink(tls_context=server_context(("localhost", "127.0.0.1")))


@pytest.fixture(scope="module")
def mx_dest() -> Iterator[SmtpSink]:
    with tls_sink() as s:
        yield s


@pytest.fixture(scope="module")
def queue_dest() -> Iterator[SmtpSink]:
    with tls_sink() as s:
        yield s


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS, mx_dest: SmtpSink,
           queue_dest: SmtpSink) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("starttls"), {
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"dest.test": mx_dest.address, "far.test": queue_dest.address}},
    })
    cli_batch(d, [["account", "add", "owner@owner.test"],
                  ["domain", "add", "ours.test", "--account", "owner@owner.test"],
                  ["domain", "set", "ours.test", "--auth-policy", "off"],
                  ["alias", "add", "ok@ours.test", "ok@dest.test"]])
    d.start()
    yield d
    d.stop()


def options(got: tuple[str, ...]) -> dict[str, str]:
    return {o.partition("=")[0].upper(): o.partition("=")[2] for o in got}


def test_mx_forward_on_a_fresh_starttls_connection_uses_smtputf8_8bitmime_and_size(
        daemon: Daemon, mx_dest: SmtpSink) -> None:
    msg = "From: jürgen@src.test\r\nTo: ok@ours.test\r\nSubject: Grüße\r\n\r\nÜber 8 bit: ½ €\r\n".encode()
    with smtplib.SMTP("127.0.0.1", daemon.mx_port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert s.mail("jürgen@src.test", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert s.rcpt("ok@ours.test")[0] == 250
        code, text = s.data(msg)
    assert code == 250, text
    (got,) = mx_dest.wait_for(1)
    assert got.tls and mx_dest.connections == 1, "the message went over a fresh STARTTLS connection"
    opts = options(got.mail_options)
    assert "SMTPUTF8" in opts and opts.get("BODY") == "8BITMIME"
    assert int(opts["SIZE"]) >= len(msg)
    assert got.data.endswith(msg)


def test_queue_on_a_fresh_starttls_connection_uses_smtputf8_8bitmime_and_size(
        daemon: Daemon, queue_dest: SmtpSink) -> None:
    password = add_domain(daemon, "example.test", ALICE)[ALICE]
    body = "From: alice@example.test\r\nTo: jörg@far.test\r\nSubject: Grüße\r\n\r\nÜber 8 bit: ½ €\r\n"
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=client_tls())
        s.ehlo("client.test")
        s.login(ALICE, password)
        assert s.mail(ALICE, ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert s.rcpt("jörg@far.test")[0] == 250
        code, text = s.data(body.encode())
    qid = queue_id((code, text.decode()))
    rec = wait_status(daemon, qid, "delivered", "bounced", "deferred")
    assert rec["status"] == "delivered", rec
    (got,) = queue_dest.wait_for(1)
    assert got.tls and queue_dest.connections == 1, "the message went over a fresh STARTTLS connection"
    assert got.rcpt_tos == ["jörg@far.test"]
    opts = options(got.mail_options)
    assert "SMTPUTF8" in opts and opts.get("BODY") == "8BITMIME"
    assert int(opts["SIZE"]) >= len(body.encode())
