"""`[delivery] tls_policy = "mta-sts+dane"` in the real daemon: MX forwarding and the outbound queue ask the
policy; a refusal is a 4xx to the sending MTA, an error-log row and a "delayed" notice naming the policy and
the host.

Recipient domains are found by MX lookup in the loopback DNS, their MX hosts are one TLS sink on loopback
(certificate for mx.good.tlspol.test only), their MTA-STS policies come from a loopback HTTPS server with a
test-CA certificate; TLSA records carry the AD bit where the test says so.
"""

from __future__ import annotations

import json
import smtplib
import uuid
from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon, merge, to_toml
from tests.support.dns_server import LoopbackDNS
from tests.support.mtasts_server import PolicyServer, policy_text
from tests.support.mx import cli_batch
from tests.support.outbound import add_domain, message, queue_id, submit, wait_status, wait_until
from tests.support.smtp_sink import SmtpSink
from tests.support.tls import ca_cert_file, server_context

GOOD, BAD, DANE = "good.tlspol.test", "bad.tlspol.test", "dane.tlspol.test"
ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def mx_sink() -> Iterator[SmtpSink]:
    with SmtpSink(tls_context=server_context((f"mx.{GOOD}",))) as s:
        yield s


@pytest.fixture(scope="module")
def inbox() -> Iterator[SmtpSink]:
    """The alias's own destination (dest.test, routed): where "delayed" notices end up."""
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def policies(dns_server: LoopbackDNS, mx_sink: SmtpSink) -> Iterator[PolicyServer]:
    with PolicyServer([f"mta-sts.{d}" for d in (GOOD, BAD, DANE)]) as server:
        for dom in (GOOD, BAD, DANE):
            dns_server.add(dom, "MX", f"10 mx.{dom}.", ttl=0)
            dns_server.add(f"mx.{dom}", "A", "127.0.0.1", ttl=0)
            dns_server.add(f"mta-sts.{dom}", "A", "127.0.0.1", ttl=0)
            dns_server.add(f"_mta-sts.{dom}", "TXT", "v=STSv1; id=20261203", ttl=0)
            server.serve(dom, policy_text("enforce", [f"mx.{dom}"]))
        yield server


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS, mx_sink: SmtpSink,
           inbox: SmtpSink, policies: PolicyServer) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("tlspolicy")
    d = Daemon(tmp, {
        "dns": {"nameservers": [dns_server.address]},
        "queue": {"min_backoff": 0.5, "max_backoff": 1, "delay_notice_after": 0.5},
    })
    d.settings = merge(d.settings, {"delivery": {
        "port": mx_sink.port, "tls_ca_file": str(ca_cert_file(tmp)), "mta_sts_port": policies.port,
        "mta_sts_timeout": 5, "mta_sts_allow_private": True,  # the policy server is on loopback
        "routes": {"example.test": f"127.0.0.1:{d.mx_port}", "dest.test": inbox.address},
    }})
    d.config_path.write_text(to_toml(d.settings))
    cli_batch(d, [["account", "add", "owner@owner.test"],
                  ["domain", "add", "ours.test", "--account", "owner@owner.test"],
                  ["domain", "set", "ours.test", "--auth-policy", "off"],
                  *(["alias", "add", f"{name}@ours.test", f"u@{dom}"]
                    for name, dom in (("good", GOOD), ("bad", BAD), ("dane", DANE)))])
    d.start()
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def _clean(mx_sink: SmtpSink, inbox: SmtpSink) -> None:
    mx_sink.reset()
    inbox.reset()


def forward(daemon: Daemon, rcpt: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", daemon.mx_port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert s.mail("sender@src.test")[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        try:
            code, text = s.data(message("sender@src.test", rcpt))
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
    return code, text.decode()


def logged(daemon: Daemon, alias: str) -> list[str]:
    rows = json.loads(daemon.cli("logs", "--json", "--domain", "ours.test").output)
    return [r["text"] for r in rows if r["alias"] == alias]


def test_mx_forwarding_under_an_enforced_policy_goes_over_verified_tls(daemon: Daemon,
                                                                        mx_sink: SmtpSink) -> None:
    assert forward(daemon, "good@ours.test")[0] == 250
    (got,) = mx_sink.wait_for(1)
    assert got.tls and got.rcpt_tos == [f"u@{GOOD}"]


def test_mx_forwarding_to_a_host_failing_the_policy_is_4xx_and_the_error_log_names_policy_and_host(
        daemon: Daemon, mx_sink: SmtpSink) -> None:
    """The sending MTA learns the policy, not where the alias forwards to; the error log says both."""
    code, text = forward(daemon, "bad@ours.test")
    assert code == 451 and "MTA-STS" in text and BAD not in text, (code, text)
    assert mx_sink.messages == []
    assert any("MTA-STS" in t and f"mx.{BAD}" in t for t in logged(daemon, "bad@ours.test"))


def test_dane_mismatch_defers_and_unauthenticated_tlsa_is_ignored(daemon: Daemon, dns_server: LoopbackDNS,
                                                                  mx_sink: SmtpSink) -> None:
    """The DANE host's certificate is for another name, so MTA-STS alone would refuse it too: the TLSA
    record decides (DANE wins), and without the AD bit it is not used at all."""
    tlsa = f"_{mx_sink.port}._tcp.mx.{DANE}"
    dns_server.add(tlsa, "TLSA", "3 1 1 " + "ab" * 32, ttl=0)
    dns_server.set_authenticated(tlsa)
    code, text = forward(daemon, "dane@ours.test")
    assert code == 451 and "DANE" in text, (code, text)
    assert any("DANE" in t and f"mx.{DANE}" in t for t in logged(daemon, "dane@ours.test"))
    assert mx_sink.messages == []
    dns_server.set_authenticated(tlsa, False)
    code, text = forward(daemon, "dane@ours.test")
    assert code == 451 and "MTA-STS" in text, "without AD the TLSA record is ignored and MTA-STS applies"


def test_the_queue_defers_and_the_delayed_notice_names_policy_and_host(daemon: Daemon, mx_sink: SmtpSink,
                                                                       inbox: SmtpSink) -> None:
    password = add_domain(daemon, "example.test", ALICE)[ALICE]
    daemon.cli("domain", "set", "example.test", "--auth-policy", "off")
    marker = uuid.uuid4().hex
    qid = queue_id(submit(daemon, ALICE, password, message(ALICE, f"u@{BAD}", marker), rcpts=[f"u@{BAD}"]))
    assert wait_status(daemon, qid, "deferred")["status"] == "deferred"

    def notice() -> list[bytes]:
        return [m.data for m in inbox.messages if m.mail_from in ("", "<>") and marker.encode() in m.data]

    (report,) = wait_until(notice, 30, "the delayed notice")
    text = report.decode("utf-8", "replace")
    assert "MTA-STS" in text and f"mx.{BAD}" in text
    assert mx_sink.messages == []
