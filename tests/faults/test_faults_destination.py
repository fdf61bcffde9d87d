"""Destination faults on both delivery paths: MX forwarding during the session, and the outbound queue.

Each fault of `DESTINATION_FAULTS` is set on a real downstream server while one message goes through, then
taken away. Every time: the right reply (MX) or per-recipient status (queue), error-log rows that hold
neither the client's IP nor the body, nothing lost (the retry after the fault delivers exactly once) and
the daemon still serving (a following normal message goes through). A fault whose path another module
already covers names that test in `covered` and runs here only on the other path.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import message as mx_message
from tests.support.mx import send, start_daemon
from tests.support.outbound import OWNER, message, queue_id, show, submit, wait_status, wait_until
from tests.support.smtp_sink import BREAK_TLS, Behaviour, SmtpSink
from tests.support.tls import server_context

CLIENT_IP = "127.0.0.9"  # where the test clients connect from: no error row or log line may name it
SENDER = "alice@src.test"
ME = "me@ours.test"
GOOD = "u@good.test"
BAD = "u@bad.test"
TWO_MX = "u@twomx.faults.test"
SOLO = "solo@ours.test"
PAIRS = {BAD: "pair@ours.test", TWO_MX: "twin@ours.test"}  # alias -> GOOD and the faulty destination
STALL = 30.0  # far past every timeout below; the stalled server stops waiting when we hang up

SETUP = [
    ["account", "add", OWNER],
    ["domain", "add", "ours.test", "--account", OWNER],
    ["alias", "add", "pair@ours.test", GOOD, BAD],
    ["alias", "add", "twin@ours.test", GOOD, TWO_MX],
    ["alias", "add", SOLO, BAD],
    ["alias", "add", ME, GOOD],
]

DNS = [
    ("twomx.faults.test", "MX", "10 mx1.twomx.faults.test."),
    ("twomx.faults.test", "MX", "20 mx2.twomx.faults.test."),
    ("mx1.twomx.faults.test", "A", "127.0.0.2"),
    ("mx2.twomx.faults.test", "A", "127.0.0.3"),
]


@dataclass(frozen=True)
class Fault:
    """One way a destination fails, set on the `server` of `Downstream`.

    `outcome`: "temporary" (deferred, then delivered), "permanent" (refused / bounced) or "delivered" (the
    client copes: the mail reaches `fallback` while the fault lasts). `code`/`enhanced`: the failure as
    the destination reported it, which the queue stores per recipient.
    """

    name: str
    outcome: Literal["temporary", "permanent", "delivered"]
    code: int = 0
    enhanced: str = ""
    behaviour: Mapping[str, Any] = field(default_factory=dict)
    server: str = "bad"
    down: bool = False
    rcpt: str = BAD
    fallback: str = ""
    covered: Mapping[str, str] = field(default_factory=dict)

    @property
    def mx_reply(self) -> tuple[int, str]:
        """The MX's whole-message reply: a destination's 421 must not read as ours hanging up."""
        if self.outcome == "temporary" and not 450 <= self.code < 500:
            return 451, self.enhanced
        return self.code, self.enhanced


TIMED_OUT = (451, "4.4.2")
DESTINATION_FAULTS = [
    Fault("refused", "temporary", 451, "4.4.1", down=True),
    Fault("421-on-connect", "temporary", 421, "4.3.2", {"connect": "421 4.3.2 Too busy, try later"}),
    Fault("mail-4xx", "temporary", 451, "4.7.1", {"mail": "451 4.7.1 Greylisted, try again later"}),
    Fault("mail-5xx", "permanent", 550, "5.7.1", {"mail": f"550 5.7.1 <{BAD}>: sender not allowed"}),
    Fault("rcpt-4xx", "temporary", 450, "4.2.1", {"rcpt": {BAD: f"450 4.2.1 <{BAD}>: mailbox busy"}},
          covered={"mx": "test_mx_delivery.py::test_retry_after_temporary_failure_does_not_deliver_twice"}),
    Fault("rcpt-5xx", "permanent", 550, "5.1.1", {"rcpt": {BAD: f"550 5.1.1 <{BAD}>: no such user"}},
          covered={"mx": "test_mx_delivery.py::test_all_destinations_permanent_is_5xx_masked_as_the_alias",
                   "queue": "test_queue.py::test_a_permanent_failure_bounces_at_once_with_a_valid_dsn"}),
    Fault("data-command-4xx", "temporary", 451, "4.3.0", {"data_command": "451 4.3.0 Not now"}),
    Fault("data-command-5xx", "permanent", 554, "5.5.1",
          {"data_command": f"554 5.5.1 <{BAD}>: no valid recipients"}),
    Fault("after-data-4xx", "temporary", 451, "4.3.0", {"data": "451 4.3.0 Local problem, try later"},
          covered={"queue": "test_queue.py::test_temporary_failures_are_retried_until_delivered"}),
    Fault("after-data-5xx", "permanent", 554, "5.7.1", {"data": f"554 5.7.1 <{BAD}>: refused as spam"}),
    Fault("closed-mid-data", "temporary", *TIMED_OUT, {"close_mid_data": True}),
    Fault("stall-after-data", "temporary", *TIMED_OUT, {"stall_seconds_after_data": STALL}),
    Fault("stall-at-rcpt", "temporary", *TIMED_OUT, {"stall_seconds_at": {"RCPT": STALL}}),
    Fault("stall-at-greeting", "temporary", *TIMED_OUT, {"stall_seconds_at": {"CONNECT": STALL}}),
    Fault("starttls-handshake-broken", "delivered", behaviour={"starttls": BREAK_TLS}, fallback="bad"),
    Fault("starttls-refused", "delivered", behaviour={"starttls": "454 4.7.0 TLS not available"},
          fallback="bad"),
    Fault("preferred-mx-refuses", "delivered", server="mx1", down=True, rcpt=TWO_MX, fallback="mx2",
          covered={"mx": "test_mx_delivery.py::test_next_mx_when_the_first_refuses"}),
    Fault("preferred-mx-421", "delivered", server="mx1", rcpt=TWO_MX, fallback="mx2",
          behaviour={"connect": "421 4.3.2 Too busy, try later"}),
]
MX_FAULTS = [f for f in DESTINATION_FAULTS if "mx" not in f.covered]
QUEUE_FAULTS = [f for f in DESTINATION_FAULTS if "queue" not in f.covered]


@dataclass
class Downstream:
    """The destinations' servers: `good` never fails; `bad` offers STARTTLS; `mx1`/`mx2` are the preferred
    and backup MX of twomx.faults.test, on one port (the daemon's [delivery] port) at two addresses."""

    good: SmtpSink
    bad: SmtpSink
    mx1: SmtpSink
    mx2: SmtpSink

    def healthy(self, fault: Fault) -> SmtpSink:
        """The server the faulty destination's mail reaches once the fault is gone."""
        return getattr(self, fault.server)

    def inject(self, fault: Fault) -> None:
        server = self.healthy(fault)
        server.stop()  # drops the daemon's pooled connections: each fault meets a fresh session
        if fault.down:
            return
        for name, value in fault.behaviour.items():
            setattr(server.behaviour, name, value)
        server.start()

    def remove(self, fault: Fault) -> None:
        server = self.healthy(fault)
        server.behaviour = Behaviour()
        if fault.down:
            server.start()


@pytest.fixture(scope="module")
def downstream() -> Iterator[Downstream]:
    with SmtpSink() as good, SmtpSink(tls_context=server_context()) as bad:
        for _ in range(20):
            mx2 = SmtpSink(host="127.0.0.3").start()
            mx1 = SmtpSink(host="127.0.0.2", port=mx2.port)
            try:
                mx1.start()
            except OSError:
                mx2.stop()
                continue
            break
        else:
            pytest.fail("no port free on both 127.0.0.2 and 127.0.0.3")
        try:
            yield Downstream(good, bad, mx1, mx2)
        finally:
            mx1.stop()
            mx2.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
           downstream: Downstream) -> Iterator[Daemon]:
    for name, rtype, value in DNS:
        dns_server.add(name, rtype, value)
    routes = {"good.test": downstream.good.address, "owner.test": downstream.good.address,
              "ours.test": downstream.good.address,
              "bad.test": downstream.bad.address}
    d = start_daemon(tmp_path_factory.mktemp("faults-destination"), {
        "dns": {"nameservers": [dns_server.address]},
        "abuse": {"max_messages_per_ip_per_minute": 10_000, "max_errors_per_session": 1_000},
        "delivery": {"routes": routes, "port": downstream.mx1.port, "connect_timeout": 2,
                     "command_timeout": 2, "data_timeout": 2},
        "queue": {"min_backoff": 0.2, "max_backoff": 0.5, "poll_interval": 0.1},
    }, SETUP)
    try:
        yield d
    finally:
        d.stop()
        for name in {n for n, _, _ in DNS}:
            dns_server.remove(name)


@pytest.fixture(scope="module")
def password(daemon: Daemon) -> str:
    return str(json.loads(daemon.cli("alias", "password", ME, "--json").output)["password"])


@pytest.fixture(autouse=True)
def _fresh(downstream: Downstream) -> None:
    for server in (downstream.good, downstream.bad, downstream.mx1, downstream.mx2):
        server.reset()


def copies(server: SmtpSink, marker: str, rcpt: str) -> int:
    return sum(1 for m in server.messages if rcpt in m.rcpt_tos and marker.encode() in m.data)


def error_log(d: Daemon) -> list[dict[str, Any]]:
    """`fwdmail logs --json`, oldest first."""
    return list(reversed(json.loads(d.cli("logs", "--json").output)))


def assert_private(d: Daemon, rows: list[dict[str, Any]], marker: str, masked: tuple[str, ...] = (),
                   addresses: tuple[str, ...] = (GOOD, BAD, TWO_MX, SENDER)) -> None:
    """No error row and no log line names the client's IP or the body; no row names a `masked`
    destination, no log line any of `addresses`."""
    for row in rows:
        text = json.dumps(row)
        assert CLIENT_IP not in text and f"{marker}-body" not in text, row
        assert not any(h in text for h in masked), row
    logs = d.logs()
    assert CLIENT_IP not in logs and f"{marker}-body" not in logs
    assert not any(a in logs for a in addresses), "a log line names an address"


@pytest.mark.parametrize("fault", MX_FAULTS, ids=lambda f: f.name)
def test_mx_forwarding(fault: Fault, daemon: Daemon, downstream: Downstream) -> None:
    marker = uuid.uuid4().hex
    msg = mx_message(marker, body=f"{marker}-body\r\n".encode())
    alias = SOLO if fault.outcome == "permanent" else PAIRS[fault.rcpt]
    logged = len(error_log(daemon))
    downstream.inject(fault)
    try:
        out = send(daemon, SENDER, [alias], msg, source=CLIENT_IP)
    finally:
        downstream.remove(fault)
    rows = error_log(daemon)[logged:]
    assert_private(daemon, rows, marker, masked=(fault.rcpt,))
    good, healthy = downstream.good, downstream.healthy(fault)
    if fault.outcome == "delivered":
        assert out.code == 250, out.text
        fallback = getattr(downstream, fault.fallback)
        assert (copies(good, marker, GOOD), copies(fallback, marker, fault.rcpt)) == (1, 1)
        if fallback is healthy:
            assert not any(m.tls for m in fallback.messages), "TLS failed, so plain text"
        assert rows == []
    else:
        code, enhanced = fault.mx_reply
        assert (out.code, out.text.split(" ")[0]) == (code, enhanced), out.text
        assert out.text.split(" ")[1] == f"<{alias}>:", "the destination is masked as the alias"
        assert {(r["direction"], r["alias"], r["code"]) for r in rows} == {
            ("outbound", alias, fault.code), ("inbound", alias, code)}
        assert copies(healthy, marker, fault.rcpt) == 0
    if fault.outcome == "temporary":
        assert copies(good, marker, GOOD) == 1, "the destination that accepted got it at once"
        again = send(daemon, SENDER, [alias], msg, source=CLIENT_IP)
        assert again.code == 250, again.text
        assert (copies(good, marker, GOOD), copies(healthy, marker, fault.rcpt)) == (1, 1), "exactly once"
    after = uuid.uuid4().hex
    assert send(daemon, SENDER, [PAIRS[fault.rcpt]], mx_message(after), source=CLIENT_IP).code == 250
    assert (copies(good, after, GOOD), copies(healthy, after, fault.rcpt)) == (1, 1)


def _deferred(d: Daemon, qid: str, fault: Fault) -> dict[str, Any] | None:
    rec = show(d, qid)
    status = {r["address"]: r["status"] for r in rec["recipients"]}[fault.rcpt]
    return rec if status == "deferred" and not rec["claimed"] else None


@pytest.mark.parametrize("fault", QUEUE_FAULTS, ids=lambda f: f.name)
def test_queue(fault: Fault, daemon: Daemon, downstream: Downstream, password: str) -> None:
    marker = uuid.uuid4().hex
    data = message(ME, f"{GOOD}, {fault.rcpt}", subject=marker, body=f"{marker}-body\r\n")
    logged = len(error_log(daemon))
    good, healthy = downstream.good, downstream.healthy(fault)
    downstream.inject(fault)
    try:
        qid = queue_id(submit(daemon, ME, password, data, rcpts=[GOOD, fault.rcpt], source=CLIENT_IP))
        if fault.outcome == "temporary":
            rec = wait_until(lambda: _deferred(daemon, qid, fault), 30, f"{qid} to be deferred")
        else:
            rec = wait_status(daemon, qid, "partial" if fault.outcome == "permanent" else "delivered")
    finally:
        downstream.remove(fault)
    statuses = {r["address"]: (r["status"], r["code"], r["enhanced_code"]) for r in rec["recipients"]}
    failed = {"temporary": "deferred", "permanent": "bounced"}.get(fault.outcome)
    if failed:
        assert statuses == {GOOD: ("delivered", None, None),
                            fault.rcpt: (failed, fault.code, fault.enhanced)}, rec
    else:
        assert statuses == {GOOD: ("delivered", None, None), fault.rcpt: ("delivered", None, None)}
        assert rec["attempts"] == 1
        fallback = getattr(downstream, fault.fallback)
        assert copies(fallback, marker, fault.rcpt) == 1
        if fallback is healthy:
            assert not any(m.tls for m in fallback.messages), "TLS failed, so plain text"
    rows = error_log(daemon)[logged:]
    assert_private(daemon, rows, marker)
    if failed:
        assert rows and all((r["direction"], r["domain"], r["alias"]) == ("outbound", "ours.test", ME)
                            for r in rows), rows
        assert (fault.code, fault.enhanced) in {(r["code"], r["enhanced_code"]) for r in rows}
    else:
        assert rows == []
    if fault.outcome == "temporary":
        assert rec["status"] == "deferred" and rec["next_attempt_at"]
        rec = wait_status(daemon, qid, "delivered", timeout=30)
        assert [r["status"] for r in rec["recipients"]] == ["delivered", "delivered"]
    if fault.outcome == "permanent":
        assert rec["dsn_sent"]
        wait_until(lambda: copies(good, marker, ME), 20, "the DSN to the sender")
        [dsn] = [m for m in good.messages if ME in m.rcpt_tos and marker.encode() in m.data]
        assert f"Status: {fault.enhanced}".encode() in dsn.data and f"{marker}-body".encode() not in dsn.data
    assert copies(good, marker, GOOD) == 1
    if fault.outcome != "delivered":
        assert copies(healthy, marker, fault.rcpt) == (fault.outcome == "temporary"), "exactly once"
    after = uuid.uuid4().hex
    follow = queue_id(submit(daemon, ME, password, message(ME, subject=after), rcpts=[GOOD, fault.rcpt],
                             source=CLIENT_IP))
    wait_status(daemon, follow, "delivered")
    assert (copies(good, after, GOOD), copies(healthy, after, fault.rcpt)) == (1, 1)
