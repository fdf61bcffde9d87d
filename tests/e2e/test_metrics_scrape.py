"""Prometheus metrics of a real `fwdmail serve`, scraped after real traffic: an MX forward, a forward the
destination defers, refused recipients, a submission delivered by the queue. The counters move, the
queue depth follows a deferred submission, and no label value (nor any text of the scrape) holds an
address, a domain or an IP. With `[mx] workers = 2` the worker's counts reach the serving process."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Daemon, free_port
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import cli_batch, message, send
from tests.support.outbound import add_domain, queue_id, submit, wait_status, wait_until
from tests.support.outbound import message as letter
from tests.support.smtp_sink import SmtpSink

TOKEN = "metrics-token-0123456789abcdef"
SENDER = "alice@example.test"
SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["domain", "set", "ours.test", "--auth-policy", "off"],
    ["alias", "add", "ok@ours.test", "ok@dest.test"],
]
# What the traffic below names: none of it may appear in a scrape.
NAMES = ("ours.test", "dest.test", "src.test", "owner.test", "example.test", "stranger.test", "ok@", "bob@",
         "alice", "127.0.0.1", "::1", "192.0.2.7")
LABEL_VALUE = re.compile(r"[a-z][a-z0-9_]*")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def start(tmp: pytest.TempPathFactory, dns_server: LoopbackDNS, sink: SmtpSink, **mx: int) -> Daemon:
    metrics_port = free_port()
    d = Daemon(tmp.mktemp("metrics"), {
        "dns": {"nameservers": [dns_server.address]},
        "mx": mx,
        "abuse": {"max_messages_per_ip_per_minute": 10_000},
        "delivery": {"routes": {"*": sink.address}},
        "metrics": {"listen": [f"127.0.0.1:{metrics_port}"], "token": TOKEN},
    })
    d.metrics_port = metrics_port  # type: ignore[attr-defined]
    cli_batch(d, SETUP)
    return d.start(wait_ports=[d.mx_port, d.submission_port, d.http_port, metrics_port])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
           downstream: SmtpSink) -> Iterator[Daemon]:
    d = start(tmp_path_factory, dns_server, downstream)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def password(daemon: Daemon) -> str:
    return add_domain(daemon, "example.test", SENDER)[SENDER]


def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(d: Daemon) -> tuple[str, Samples]:
    status, text = get(f"http://127.0.0.1:{d.metrics_port}/metrics")  # type: ignore[attr-defined]
    assert status == 200, text
    return text, {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in text_string_to_metric_families(text) for s in family.samples}


def counter(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((f"fwdmail_{name}", tuple(sorted(labels.items()))), 0.0)


def assert_names_nothing(text: str, samples: Samples) -> None:
    for (name, labels), _ in samples.items():
        for key, value in labels:
            if key == "le":
                float(value)
            else:
                assert LABEL_VALUE.fullmatch(value), f"{name}: label {key}={value!r}"
    assert "@" not in text
    for shown in NAMES:
        assert shown not in text, shown


def test_counters_move_with_real_traffic_and_no_label_names_anyone(daemon: Daemon, password: str,
                                                                 clean_downstream: SmtpSink) -> None:
    sink = clean_downstream
    _, before = scrape(daemon)

    assert send(daemon, "sender@src.test", ["ok@ours.test"], message()).code == 250
    sink.behaviour.data_replies = ["451 4.3.0 try again later, bob@dest.test at 192.0.2.7"]
    assert send(daemon, "sender@src.test", ["ok@ours.test"], message()).code == 451
    refused = send(daemon, "sender@src.test", ["nobody@ours.test", "someone@stranger.test"], message())
    assert [code for code, _ in refused.rcpts] == [550, 550]
    qid = queue_id(submit(daemon, SENDER, password, letter(SENDER)))
    wait_status(daemon, qid, "delivered")

    text, after = scrape(daemon)

    def moved(name: str, **labels: str) -> float:
        return counter(after, name, **labels) - counter(before, name, **labels)

    assert moved("messages_forwarded_total", service="mx") == 1
    assert moved("messages_deferred_total", service="mx", reason="destination") == 1
    assert moved("messages_refused_total", service="mx", reason="no_such_user") == 1
    assert moved("messages_refused_total", service="mx", reason="relay_denied") == 1
    assert moved("messages_queued_total") == 1
    assert moved("messages_forwarded_total", service="queue") == 1
    assert moved("mx_forward_seconds_count", outcome="forwarded") == 1
    assert moved("mx_forward_seconds_count", outcome="deferred") == 1
    assert moved("queue_attempt_seconds_count", outcome="forwarded") == 1
    assert moved("queue_delivered_after_seconds_count") == 1
    assert counter(after, "store_up") == 1
    assert {dict(k[1]).get("listener") for k in after if k[0] == "fwdmail_sessions_open"} == {
        "mx", "submission", "http"}
    assert_names_nothing(text, after)


def test_the_queue_depth_follows_a_deferred_submission(daemon: Daemon, password: str,
                                                       clean_downstream: SmtpSink) -> None:
    clean_downstream.behaviour.rcpt = {"bob@dest.test": "451 4.2.1 mailbox busy"}
    qid = queue_id(submit(daemon, SENDER, password, letter(SENDER)))
    wait_status(daemon, qid, "deferred")
    _, seen = scrape(daemon)
    assert sum(counter(seen, "queue_messages", state=s) for s in ("deferred", "sending")) >= 1
    assert counter(seen, "messages_deferred_total", service="queue", reason="destination") >= 1
    clean_downstream.behaviour.rcpt = {}
    wait_status(daemon, qid, "delivered")
    _, seen = scrape(daemon)
    assert counter(seen, "queue_messages", state="deferred") == 0


def test_metrics_on_the_http_listener_need_the_token(daemon: Daemon) -> None:
    url = f"http://127.0.0.1:{daemon.http_port}/metrics"
    assert get(url)[0] == 401
    assert get(url, "not-the-token-0123456789")[0] == 401
    status, text = get(url, TOKEN)
    assert status == 200 and "fwdmail_messages_forwarded_total" in text


def test_counts_of_mx_worker_processes_reach_the_serving_process(
        tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS, downstream: SmtpSink) -> None:
    d = start(tmp_path_factory, dns_server, downstream, workers=2)
    try:
        for _ in range(4):  # consecutive connections alternate between the two processes
            assert send(d, "sender@src.test", ["ok@ours.test"], message()).code == 250
        refused = send(d, "sender@src.test", ["nobody@ours.test"], message())
        assert refused.rcpts[0][0] == 550

        def counted() -> Samples | None:
            _, seen = scrape(d)
            done = (counter(seen, "messages_forwarded_total", service="mx") >= 4
                    and counter(seen, "messages_refused_total", service="mx", reason="no_such_user") >= 1)
            return seen if done else None

        seen = wait_until(counted, 10, "the worker's counts in the serving process's scrape")
        assert counter(seen, "messages_forwarded_total", service="mx") == 4
        assert counter(seen, "mx_forward_seconds_count", outcome="forwarded") == 4
        assert counter(seen, "messages_refused_total", service="mx", reason="no_such_user") == 1
    finally:
        d.stop()


def test_a_metrics_port_in_use_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        d = Daemon(tmp_path, {"metrics": {"listen": [f"127.0.0.1:{port}"]}})
        d.start(wait_ports=[])
        assert d.proc is not None
        code = d.proc.wait(60)
        d.stop()
    assert code == 1
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in d.logs()
    assert "Traceback" not in d.logs()
