"""Bounces and "delayed" notices of submitted mail go to the envelope sender (the alias that sent it) and
reach the alias's own destinations through our MX; a report naming a UTF-8 recipient uses RFC 6533's
`message/global-delivery-status` and `message/global-headers`.

The daemon routes the hosted domain to its own MX port (as its MX record would in production) and the
destinations' domain to a real sink; nothing reaches the domain's account address.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import uuid
from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon, merge, to_toml
from tests.support.dns_server import LoopbackDNS
from tests.support.outbound import (
    OWNER,
    add_domain,
    client_tls,
    message,
    queue_id,
    submit,
    wait_status,
    wait_until,
)
from tests.support.smtp_sink import Received, SmtpSink

ALICE = "alice@example.test"
INBOX = "someone@dest.test"  # where the alias ALICE forwards to (see add_domain)


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink,
           dns_server: LoopbackDNS) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("dsn"), {
        "dns": {"nameservers": [dns_server.address]},
        "queue": {"min_backoff": 0.5, "max_backoff": 1, "delay_notice_after": 0.5},
    })
    d.settings = merge(d.settings, {"delivery": {"routes": {
        "example.test": f"127.0.0.1:{d.mx_port}", "*": sink.address}}})
    d.config_path.write_text(to_toml(d.settings))
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def password(daemon: Daemon) -> str:
    secret = add_domain(daemon, "example.test", ALICE)[ALICE]
    daemon.cli("domain", "set", "example.test", "--auth-policy", "off")
    return secret


@pytest.fixture(autouse=True)
def _clean_sink(sink: SmtpSink) -> None:
    sink.reset()


def report_for(sink: SmtpSink, marker: str) -> Received:
    """The one report about the message marked `marker` that reached the alias's destination."""
    def found() -> list[Received]:
        return [m for m in sink.messages if m.mail_from in ("", "<>") and marker.encode() in m.data]

    reports = wait_until(found, 30, "the report at the alias's destination")
    assert len(reports) == 1, reports
    return reports[0]


def test_a_bounce_goes_to_the_alias_that_sent_it_and_on_to_its_destination(
        daemon: Daemon, password: str, sink: SmtpSink) -> None:
    marker = uuid.uuid4().hex
    sink.behaviour.rcpt = {"nobody@dest.test": "550 5.1.1 No such user here"}
    qid = queue_id(submit(daemon, ALICE, password, message(ALICE, "nobody@dest.test", marker),
                          rcpts=["nobody@dest.test"]))
    assert wait_status(daemon, qid, "bounced")["dsn_sent"]
    got = report_for(sink, marker)
    assert got.rcpt_tos == [INBOX], "forwarded by our MX to the alias's destination"
    dsn = email.message_from_bytes(got.data, policy=email.policy.default)
    assert dsn["To"].addresses[0].addr_spec == ALICE
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn.get_content_type() == "multipart/report"
    assert [p.get_content_type() for p in dsn.get_payload()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert not any(OWNER in m.rcpt_tos for m in sink.messages), "never the domain's account"


def test_a_delay_notice_goes_to_the_alias_that_sent_it(daemon: Daemon, password: str, sink: SmtpSink) -> None:
    marker = uuid.uuid4().hex
    sink.behaviour.rcpt = {"busy@dest.test": "450 4.2.1 Mailbox busy, try later"}
    qid = queue_id(submit(daemon, ALICE, password, message(ALICE, "busy@dest.test", marker),
                          rcpts=["busy@dest.test"]))
    got = report_for(sink, marker)
    assert got.rcpt_tos == [INBOX]
    notice = email.message_from_bytes(got.data, policy=email.policy.default)
    assert notice["To"].addresses[0].addr_spec == ALICE
    assert notice["Subject"] == "Delayed Mail (still being retried)"
    sink.behaviour.rcpt = {}
    wait_status(daemon, qid, "delivered", timeout=30)
    assert not any(OWNER in m.rcpt_tos for m in sink.messages), "never the domain's account"


def test_a_bounce_for_a_utf8_recipient_uses_the_global_report_types(
        daemon: Daemon, password: str, sink: SmtpSink) -> None:
    marker = uuid.uuid4().hex
    sink.behaviour.rcpt = {"jörg@dest.test": "550 5.1.1 No such user here"}
    data = f"From: {ALICE}\r\nTo: jörg@dest.test\r\nSubject: {marker} Grüße\r\n\r\nHallo\r\n".encode()
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=client_tls())
        s.ehlo("client.test")
        s.login(ALICE, password)
        assert s.mail(ALICE, ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert s.rcpt("jörg@dest.test")[0] == 250
        code, text = s.data(data)
    qid = queue_id((code, text.decode()))
    assert wait_status(daemon, qid, "bounced")["dsn_sent"]
    got = report_for(sink, marker)
    assert got.rcpt_tos == [INBOX]
    dsn = email.message_from_bytes(got.data, policy=email.policy.default)
    human, status, headers = dsn.get_payload()
    assert status.get_content_type() == "message/global-delivery-status"
    assert headers.get_content_type() == "message/global-headers"
    assert "Final-Recipient: utf-8; jörg@dest.test\r\n".encode() in got.data
    assert f"Subject: {marker} Grüße".encode() in got.data, "the original headers, in UTF-8 as they were"
    assert "jörg@dest.test" in human.get_content()
