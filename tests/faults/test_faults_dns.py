"""DNS faults of the destination domain's lookup, on both delivery paths: MX forwarding and the queue.

Each fault of `DNS_FAULTS` is served by the loopback DNS for a domain of its own (one per path, so the
daemon's resolver cache never links two tests) while one message goes through. Temporary faults are then
mended (MX and A records published) and the retry must deliver exactly once; permanent ones must refuse
(MX) or bounce with a DSN (queue). Every time: error-log rows without the client's IP or the body, and a
following normal message going through.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from tests.faults.test_faults_destination import CLIENT_IP, GOOD, SENDER, assert_private, copies, error_log
from tests.support.daemon import Daemon
from tests.support.dns_server import FailureMode, LoopbackDNS
from tests.support.mx import message as mx_message
from tests.support.mx import send, start_daemon
from tests.support.outbound import OWNER, message, queue_id, show, submit, wait_status, wait_until
from tests.support.smtp_sink import SmtpSink

ME = "me@ours.test"
ZONE = "dnsfaults.test"
HEALTHY = f"u@healthy.{ZONE}"
PATHS = ("mx", "queue")


@dataclass(frozen=True)
class DnsFault:
    """How the lookup of a destination domain fails: `failure` answers every query for the domain (or,
    with `at_host`, for its MX host's name); `records` are published instead. `code`/`enhanced`: the
    per-recipient error the delivery client reports."""

    name: str
    outcome: Literal["temporary", "permanent"]
    code: int
    enhanced: str
    failure: FailureMode | None = None
    at_host: bool = False
    null_mx: bool = False
    covered: Mapping[str, str] = field(default_factory=dict)

    def domain(self, path: str) -> str:
        return f"{self.name}-{path}.{ZONE}"

    def rcpt(self, path: str) -> str:
        return f"u@{self.domain(path)}"

    @property
    def alias(self) -> str:
        """The MX path's alias: GOOD and this fault's destination (only the latter for a permanent fault,
        whose refusal is then the whole message's)."""
        return f"{self.name}@ours.test"


_MISSING = "test_mx_delivery.py::test_null_mx_and_missing_domain_are_permanent"
DNS_FAULTS = [
    DnsFault("servfail", "temporary", 451, "4.4.3", failure="SERVFAIL"),
    DnsFault("timeout", "temporary", 451, "4.4.3", failure="timeout"),
    DnsFault("mx-host-servfail", "temporary", 451, "4.4.4", failure="SERVFAIL", at_host=True),
    DnsFault("nxdomain", "permanent", 550, "5.1.2", failure="NXDOMAIN", covered={"mx": _MISSING}),
    DnsFault("null-mx", "permanent", 556, "5.1.10", null_mx=True, covered={"mx": _MISSING}),
]


def publish(dns: LoopbackDNS, domain: str) -> None:
    """`domain`'s MX, pointing at 127.0.0.1 (where the sink listens on the daemon's [delivery] port)."""
    dns.add(domain, "MX", f"10 mx.{domain}.")
    dns.add(f"mx.{domain}", "A", "127.0.0.1")


def inject(dns: LoopbackDNS, fault: DnsFault, path: str) -> None:
    domain = fault.domain(path)
    if fault.null_mx:
        dns.add(domain, "MX", "0 .")
    elif fault.at_host:
        dns.add(domain, "MX", f"10 mx.{domain}.")
        dns.set_failure(f"mx.{domain}", fault.failure or "SERVFAIL")
    elif fault.failure is not None:
        dns.set_failure(domain, fault.failure)


def mend(dns: LoopbackDNS, fault: DnsFault, path: str) -> None:
    domain = fault.domain(path)
    dns.clear_failure(domain)
    dns.clear_failure(f"mx.{domain}")
    dns.remove(domain)
    publish(dns, domain)


def forget(dns: LoopbackDNS) -> None:
    for fault in DNS_FAULTS:
        for path in PATHS:
            for name in (fault.domain(path), f"mx.{fault.domain(path)}"):
                dns.clear_failure(name)
                dns.remove(name)
    for name in (f"healthy.{ZONE}", f"mx.healthy.{ZONE}"):
        dns.remove(name)


SETUP = [
    ["account", "add", OWNER],
    ["domain", "add", "ours.test", "--account", OWNER],
    ["alias", "add", "healthy@ours.test", GOOD, HEALTHY],
    ["alias", "add", ME, GOOD],
    *(["alias", "add", f.alias, *([GOOD] if f.outcome == "temporary" else []), f.rcpt("mx")]
      for f in DNS_FAULTS),
]


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    """Every destination's server: GOOD by route, the DNS-found ones on the [delivery] port."""
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
           sink: SmtpSink) -> Iterator[Daemon]:
    forget(dns_server)
    publish(dns_server, f"healthy.{ZONE}")
    d = start_daemon(tmp_path_factory.mktemp("faults-dns"), {
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "abuse": {"max_messages_per_ip_per_minute": 10_000, "max_errors_per_session": 1_000},
        "delivery": {"routes": {"good.test": sink.address, "owner.test": sink.address,
                                "ours.test": sink.address}, "port": sink.port},
        "queue": {"min_backoff": 0.2, "max_backoff": 0.5, "poll_interval": 0.1},
    }, SETUP)
    try:
        yield d
    finally:
        d.stop()
        forget(dns_server)


@pytest.fixture(scope="module")
def password(daemon: Daemon) -> str:
    return str(json.loads(daemon.cli("alias", "password", ME, "--json").output)["password"])


@pytest.fixture(autouse=True)
def _fresh(sink: SmtpSink) -> None:
    sink.reset()


ADDRESSES = (GOOD, SENDER, HEALTHY, *(f.rcpt(p) for f in DNS_FAULTS for p in PATHS))


@pytest.mark.parametrize("fault", [f for f in DNS_FAULTS if "mx" not in f.covered], ids=lambda f: f.name)
def test_mx_forwarding(fault: DnsFault, daemon: Daemon, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    marker = uuid.uuid4().hex
    msg = mx_message(marker, body=f"{marker}-body\r\n".encode())
    alias, rcpt = fault.alias, fault.rcpt("mx")
    logged = len(error_log(daemon))
    inject(dns_server, fault, "mx")
    out = send(daemon, SENDER, [alias], msg, source=CLIENT_IP)
    assert (out.code, out.text.split(" ")[:2]) == (fault.code, [fault.enhanced, f"<{alias}>:"]), out.text
    rows = error_log(daemon)[logged:]
    assert {(r["direction"], r["alias"], r["code"]) for r in rows} == {
        ("outbound", alias, fault.code), ("inbound", alias, fault.code)}
    assert_private(daemon, rows, marker, masked=(rcpt,), addresses=ADDRESSES)
    assert copies(sink, marker, rcpt) == 0
    if fault.outcome == "temporary":
        assert copies(sink, marker, GOOD) == 1, "the destination that accepted got it at once"
        mend(dns_server, fault, "mx")
        again = send(daemon, SENDER, [alias], msg, source=CLIENT_IP)
        assert again.code == 250, again.text
        assert (copies(sink, marker, GOOD), copies(sink, marker, rcpt)) == (1, 1), "exactly once"
    after = uuid.uuid4().hex
    assert send(daemon, SENDER, ["healthy@ours.test"], mx_message(after), source=CLIENT_IP).code == 250
    assert (copies(sink, after, GOOD), copies(sink, after, HEALTHY)) == (1, 1)


def _deferred(d: Daemon, qid: str, rcpt: str) -> dict[str, Any] | None:
    rec = show(d, qid)
    status = {r["address"]: r["status"] for r in rec["recipients"]}[rcpt]
    return rec if status == "deferred" and not rec["claimed"] else None


@pytest.mark.parametrize("fault", [f for f in DNS_FAULTS if "queue" not in f.covered], ids=lambda f: f.name)
def test_queue(fault: DnsFault, daemon: Daemon, dns_server: LoopbackDNS, sink: SmtpSink,
               password: str) -> None:
    marker = uuid.uuid4().hex
    rcpt = fault.rcpt("queue")
    logged = len(error_log(daemon))
    inject(dns_server, fault, "queue")
    data = message(ME, f"{GOOD}, {rcpt}", subject=marker, body=f"{marker}-body\r\n")
    qid = queue_id(submit(daemon, ME, password, data, rcpts=[GOOD, rcpt], source=CLIENT_IP))
    if fault.outcome == "temporary":
        rec = wait_until(lambda: _deferred(daemon, qid, rcpt), 30, f"{qid} to be deferred")
        assert rec["status"] == "deferred" and rec["next_attempt_at"]
    else:
        rec = wait_status(daemon, qid, "partial")
        assert rec["dsn_sent"]
    failed = "deferred" if fault.outcome == "temporary" else "bounced"
    statuses = {r["address"]: (r["status"], r["code"], r["enhanced_code"]) for r in rec["recipients"]}
    assert statuses == {GOOD: ("delivered", None, None), rcpt: (failed, fault.code, fault.enhanced)}, rec
    rows = error_log(daemon)[logged:]
    assert rows and all((r["direction"], r["domain"], r["alias"]) == ("outbound", "ours.test", ME)
                        for r in rows), rows
    assert (fault.code, fault.enhanced) in {(r["code"], r["enhanced_code"]) for r in rows}
    assert_private(daemon, rows, marker, addresses=ADDRESSES)
    if fault.outcome == "temporary":
        mend(dns_server, fault, "queue")
        rec = wait_status(daemon, qid, "delivered", timeout=30)
        assert [r["status"] for r in rec["recipients"]] == ["delivered", "delivered"]
    else:
        wait_until(lambda: copies(sink, marker, ME), 20, "the DSN to the sender")
        [dsn] = [m for m in sink.messages if ME in m.rcpt_tos and marker.encode() in m.data]
        assert f"Status: {fault.enhanced}".encode() in dsn.data and f"{marker}-body".encode() not in dsn.data
    assert copies(sink, marker, GOOD) == 1
    assert copies(sink, marker, rcpt) == (fault.outcome == "temporary"), "exactly once"
    after = uuid.uuid4().hex
    follow = queue_id(submit(daemon, ME, password, message(ME, subject=after), rcpts=[GOOD, HEALTHY],
                             source=CLIENT_IP))
    wait_status(daemon, follow, "delivered")
    assert (copies(sink, after, GOOD), copies(sink, after, HEALTHY)) == (1, 1)
