"""What refusals leave in the SMTP error log, against the real daemon: rows name only hosted domains and
their aliases (refusals of anything else are counted, in a log line), and a flood of refusals becomes
at most the per-client and per-minute budget of rows plus one summary row."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from fwdmail.config import ErrorLogConfig
from tests.support.daemon import Daemon, merge
from tests.support.hostile import TALLY, register_summary, session
from tests.support.mx import cli_batch, error_rows
from tests.support.smtp_sink import SmtpSink

SRS_DOMAIN = "srs.fwdmail.test"
SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["alias", "add", "ok@ours.test", "one@dest.test"],
]
LIMITS = ErrorLogConfig()
_SUMMARY = re.compile(r"^(\d+) more refusal\(s\) in the minute")


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


@pytest.fixture
def started(make_daemon: Callable[..., Daemon], sink: SmtpSink) -> Callable[..., Daemon]:
    def factory(overrides: dict[str, Any] | None = None) -> Daemon:
        d = make_daemon(merge({
            "srs": {"secret": "errorlog-secret"},
            "delivery": {"routes": {"*": sink.address}},
            "abuse": {"max_messages_per_ip_per_minute": 100_000, "max_errors_per_session": 100_000,
                      "max_connections_per_ip": 1_000},
        }, overrides or {}), start=False)
        cli_batch(d, SETUP)
        return d.start(wait_ports=[d.mx_port])

    return factory


def _refused(d: Daemon, source: str, rcpts: list[str], smtputf8: bool = False) -> list[int]:
    """RCPT each of `rcpts` in one pipelined session from `source`; the codes."""
    with session(d.mx_port, source=source) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<alice@src.test>" + (b" SMTPUTF8" if smtputf8 else b"")) == 250
        s.send(b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts))
        codes = [s.reply()[0] for _ in rcpts]
        assert s.cmd(b"QUIT") == 221
    return codes


STRANGERS = [
    "victim@elsewhere.test",                             # relay attempt: a foreign domain
    "Private.Person@srs.fwdmail.test",                   # a local part on the SRS domain
    "SRS0=AAAA=AA=hidden-domain.test=hidden.user@srs.fwdmail.test",  # a forged bounce address
    "jörg.stranger@elsewhere.test",                      # non-ASCII without SMTPUTF8
    "victim%elsewhere.test@other-foreign.test",
]


def test_rows_name_only_hosted_domains_and_the_rest_is_counted(started: Callable[..., Daemon]) -> None:
    d = started()
    before, start = len(error_rows(d)), len(d.logs())
    codes = _refused(d, "127.0.7.1", [*STRANGERS, "nobody@ours.test"])
    assert all(c >= 500 for c in codes), codes
    rows = error_rows(d)[before:]
    assert [(r["domain_name"], r["alias"], r["code"]) for r in rows] == [
        ("ours.test", "nobody@ours.test", 550)]
    d.stop()  # the counts of the minute are told at once when the daemon stops
    logs = d.logs()[start:]
    assert re.search(r"refused 5 recipient\(s\) not hosted here \(counted, not logged\)", logs), logs[-3000:]
    text = json.dumps(error_rows(d), default=str, ensure_ascii=False).lower() + logs.lower()
    for needle in ("elsewhere", "private.person", "hidden", "jörg", "other-foreign", "victim"):
        assert needle not in text, needle
    TALLY.item("13.6 error-log privacy", len(STRANGERS), "refusals of strangers counted, no row names them")


def _written(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(the rows written one by one, the refusals the summary rows count)."""
    single = [r for r in rows if not _SUMMARY.match(r["text"])]
    counted = sum(int(m.group(1)) for r in rows if (m := _SUMMARY.match(r["text"])))
    return single, counted


def test_a_flood_of_refusals_is_a_bounded_number_of_rows(started: Callable[..., Daemon]) -> None:
    d = started()
    began = time.monotonic()
    before = len(error_rows(d))
    one = [f"nobody{i}@ours.test" for i in range(300)]
    assert set(_refused(d, "127.0.8.1", one)) == {550}
    from_one = len(error_rows(d)) - before
    networks = [f"127.0.{n}.1" for n in range(20, 30)]
    sent = len(one)
    for net in networks:
        codes = _refused(d, net, [f"nobody{i}@ours.test" for i in range(70)])
        assert set(codes) == {550}
        sent += len(codes)
    d.stop()  # the summary row of the minute is written when the daemon stops
    windows = math.ceil((time.monotonic() - began) / 60) + 1  # the budgets are per minute
    single, counted = _written(error_rows(d)[before:])
    assert from_one <= LIMITS.max_rows_per_client_per_minute * windows, from_one
    assert len(single) <= LIMITS.max_rows_per_minute * windows, len(single)
    assert len(single) + counted == sent, "every refusal is written or counted"
    assert counted > 0
    TALLY.item("13.2 error-log write flood", sent,
               f"{len(single)} rows + {len(error_rows(d)[before:]) - len(single)} summary row(s)")


def test_the_gate_counts_per_network_and_in_total_with_bounded_memory() -> None:
    from fwdmail.policy.guessing import ClientKeys, RowGate, Window
    from fwdmail.smtp.replies import NO_SUCH_USER

    gate = RowGate(per_client=2, total=3, keys=ClientKeys())
    admitted = [gate.admit(ip, NO_SUCH_USER, 100.0) for ip in ("192.0.2.1", "192.0.2.99", "192.0.2.5",
                                                               "198.51.100.1", "203.0.113.1")]
    assert admitted == [True, True, False, True, False], "2 for the /24, then 3 in total"
    assert gate.admit("203.0.113.1", NO_SUCH_USER, 161.0), "a new minute, a new budget"
    withheld, _ = gate.take()
    assert sum(withheld.values()) == 2
    window = Window(limit=1, length=60.0, max_keys=100)
    for i in range(1000):
        window.count(i.to_bytes(4, "big"), 0.0)
    assert len(window) == 100
