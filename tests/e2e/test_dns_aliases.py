"""Aliases from DNS end to end: a domain set `--aliases-from dns`, verified by `fwdmail domain verify`
against the loopback DNS server, whose `forward-email=` TXT records the real daemon's MX follows to a
real downstream SMTP server and a loopback HTTPS webhook (trustme); a DNS failure is a 4xx at RCPT, an
unverified domain is not served."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import cli, message, send, start_daemon
from tests.support.smtp_sink import SmtpSink
from tests.support.tls import ca_cert_file
from tests.support.webhook_server import WebhookServer

TAG = f"{os.getpid()}"
SERVED = f"dnsaliases-{TAG}.test"
BROKEN = f"dnsbroken-{TAG}.test"
UNVERIFIED = f"dnsunverified-{TAG}.test"
HOOK_HOST = f"dnshook-{TAG}.test"
HOOK_PATH = "/dns/in"
RECORDS = [
    "forward-email=hello:one@dest.test,hello:two@dest.test,/^(.+)-sales$/:$1@dest.test",
    "forward-email=!quiet:q@dest.test,!!soft:s@dest.test,!!!hard:h@dest.test,junk:not-an-address",
    "forward-email=catch@dest.test",
]


def publish(d: Daemon, dns_server: LoopbackDNS, domain: str, verify: bool,
            extra: tuple[str, ...] = ()) -> None:
    """The domain's forward-email= records, and (to `verify`) every record `domain dns` lists."""
    for value in (*RECORDS, *extra):
        dns_server.add(domain, "TXT", value, ttl=60)
    if not verify:
        return
    for rec in json.loads(cli(d, "domain", "dns", domain, "--json").stdout):
        dns_server.add(rec["name"], rec["type"], rec["value"])
    cli(d, "domain", "verify", domain)


@pytest.fixture(scope="module")
def hooks() -> Iterator[WebhookServer]:
    with WebhookServer([HOOK_HOST]) as server:
        yield server


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS, downstream: SmtpSink,
       hooks: WebhookServer) -> Iterator[Daemon]:
    dns_server.add(HOOK_HOST, "A", "127.0.0.1")
    tmp = tmp_path_factory.mktemp("dns-aliases")
    setup = [["account", "add", "owner@owner.test"]]
    for name in (SERVED, BROKEN, UNVERIFIED):
        setup += [["domain", "add", name, "--account", "owner@owner.test"],
                  ["domain", "set", name, "--aliases-from", "dns"]]
    d = start_daemon(tmp, {
        "dns": {"nameservers": [dns_server.address]},
        "webhooks": {"allow_private": True, "ca_file": str(ca_cert_file(tmp / "ca")), "timeout": 2},
        "srs": {"secret": "dns-aliases-test-secret"},
        "delivery": {"routes": {"dest.test": downstream.address}},
        "abuse": {"max_messages_per_ip_per_minute": 10_000, "max_errors_per_session": 1_000},
    }, setup)
    hook = f"forward-email=hook:{hooks.url(HOOK_HOST, HOOK_PATH)}"
    publish(d, dns_server, SERVED, verify=True, extra=(hook,))
    publish(d, dns_server, BROKEN, verify=True)
    publish(d, dns_server, UNVERIFIED, verify=False)
    yield d
    d.stop()


@pytest.fixture
def sink(clean_downstream: SmtpSink) -> SmtpSink:
    return clean_downstream


def test_the_setting_is_stored_and_shown(mx: Daemon) -> None:
    shown = json.loads(cli(mx, "domain", "list", "--json").stdout)
    assert {d["name"]: d["aliases_from"] for d in shown} == dict.fromkeys((SERVED, BROKEN, UNVERIFIED), "dns")
    assert json.loads(cli(mx, "domain", "show", SERVED, "--json").stdout)["aliases_from"] == "dns"
    assert "aliases from" in cli(mx, "domain", "show", SERVED).stdout
    bad = cli(mx, "domain", "set", SERVED, "--aliases-from", "ldap", expect=2)
    assert "--aliases-from" in bad.stderr


def test_exact_regex_and_catch_all_from_dns_reach_the_sink(mx: Daemon, sink: SmtpSink) -> None:
    out = send(mx, "alice@src.test", [f"hello@{SERVED}", f"bob-sales@{SERVED}", f"anyone@{SERVED}",
                                      f"junk@{SERVED}"], message())
    assert [c for c, _ in out.rcpts] == [250, 250, 250, 250]
    assert out.data is not None and out.data[0] == 250, out.data
    delivered = sorted(r for m in sink.messages for r in m.rcpt_tos)
    assert delivered == ["bob@dest.test", "catch@dest.test", "one@dest.test", "two@dest.test"]


def test_disabled_modes_from_dns(mx: Daemon, sink: SmtpSink) -> None:
    out = send(mx, "alice@src.test", [f"quiet@{SERVED}", f"soft@{SERVED}", f"hard@{SERVED}"], message())
    assert [c for c, _ in out.rcpts] == [250, 450, 550]
    assert out.data is not None and out.data[0] == 250
    assert sink.messages == []


def test_a_dns_failure_is_a_4xx_at_rcpt(mx: Daemon, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    dns_server.set_failure(BROKEN, "SERVFAIL")
    try:
        out = send(mx, "alice@src.test", [f"hello@{BROKEN}"], message())
    finally:
        dns_server.clear_failure(BROKEN)
    assert out.rcpts == [(451, b"4.4.3 Cannot read the domain's aliases from DNS, try later")]
    assert sink.messages == []
    again = send(mx, "alice@src.test", [f"hello@{BROKEN}"], message())
    assert [c for c, _ in again.rcpts] == [250] and again.data is not None and again.data[0] == 250


def test_an_unverified_domain_is_not_served(mx: Daemon, sink: SmtpSink) -> None:
    out = send(mx, "alice@src.test", [f"hello@{UNVERIFIED}"], message())
    assert out.rcpts == [(550, b"5.7.1 Recipient domain not verified for aliases from DNS")]
    assert sink.messages == []


def test_the_log_names_no_address(mx: Daemon) -> None:
    send(mx, "alice@src.test", [f"junk@{SERVED}", f"hello@{BROKEN}"], message())
    logs = mx.logs()
    assert f"aliases of {SERVED} from DNS" in logs  # the skipped junk entry is counted, by domain only
    assert "@dest.test" not in logs and f"hello@{SERVED}" not in logs and "alice@src.test" not in logs


def test_a_webhook_from_dns_gets_the_signed_post(mx: Daemon, hooks: WebhookServer, sink: SmtpSink) -> None:
    out = send(mx, "alice@src.test", [f"hook@{SERVED}"], message())
    assert out.rcpts == [(250, b"2.1.5 Recipient OK")] and out.data is not None and out.data[0] == 250
    [req] = hooks.received(HOOK_PATH)
    key = cli(mx, "domain", "webhook-key", SERVED).stdout.strip()
    sig = dict(part.split("=", 1) for part in req.headers["x-webhook-signature"].split(","))
    want = hmac.new(key.encode(), f"{sig['t']}.".encode() + req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sig["v1"], want)
    assert json.loads(req.body)["envelope"]["rcpt_to"] == f"hook@{SERVED}"
    assert sink.messages == []
