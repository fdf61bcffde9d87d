"""`[queue] workers = 2`: the outbound queue delivered by two worker processes of a real `fwdmail serve`
to a real sink. A burst is delivered once; a worker killed with SIGKILL mid-drain has its claims taken
back and is restarted, and every message still arrives exactly once; SIGTERM lets the deliveries in
flight finish; no log line of any process names an address."""

from __future__ import annotations

import collections
import email
import os
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Daemon, free_port
from tests.support.outbound import add_domain, connect, message, send, show, wait_status, wait_until
from tests.support.smtp_sink import Behaviour, SmtpSink

pytestmark = pytest.mark.slow

ALICE = "alice@example.test"
DEST = "bob@dest.test"
STALL = 6.0
"""How long the destination holds its reply after DATA: the deliveries are in flight meanwhile."""


def start(make_daemon: Callable[..., Daemon], sink: SmtpSink, **overrides: Any) -> tuple[Daemon, str]:
    d = make_daemon({"delivery": {"routes": {"*": sink.address}},
                     "queue": {"workers": 2, "min_backoff": 0.5, "max_backoff": 1}, **overrides}, start=False)
    password = add_domain(d, "example.test", ALICE)[ALICE]
    d.start()
    return d, password


def queue_workers(d: Daemon, timeout: float = 20) -> dict[int, int]:
    """Worker number -> pid of the daemon's queue worker processes, once both run."""
    assert d.proc is not None
    parent = d.proc.pid

    def probe() -> dict[int, int] | None:
        found = {}
        for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--queue-worker" in argv:
                found[int(argv[argv.index(b"--queue-worker") + 1])] = int(pid)
        return found if len(found) == 2 else None

    return wait_until(probe, timeout, "both queue workers to run")


def submit_many(d: Daemon, password: str, subjects: list[str], clients: int = 1) -> list[str]:
    """Submit one message per subject over `clients` sessions; the queue ids, all accepted."""
    ids: list[str] = []
    lock = threading.Lock()

    def client(mine: list[str]) -> None:
        with connect(d) as s:
            s.login(ALICE, password)
            for subject in mine:
                code, text = send(s, ALICE, [DEST], message(ALICE, subject=subject))
                assert code == 250, text
                with lock:
                    ids.append(text.rsplit(" ", 1)[1])

    threads = [threading.Thread(target=client, args=(subjects[n::clients],)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == len(subjects), "every submission answered 250"
    return ids


def arrivals(sink: SmtpSink) -> collections.Counter[str]:
    return collections.Counter(str(email.message_from_bytes(m.data)["Subject"]) for m in sink.messages)


def claims(d: Daemon) -> dict[str, str | None]:
    """Queue id -> claim tag of each message claimed now, read from the database as it is."""
    with sqlite3.connect(f"file:{d.data_dir / 'fwdmail.db'}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute("SELECT queue_id, claim_node FROM outbound_email WHERE claimed_at IS NOT NULL")
        return dict(rows.fetchall())


def assert_private(d: Daemon) -> None:
    """No process's log names an address; none failed or waited out SQLite's write lock."""
    logs = d.logs()
    assert "queue worker" in logs or "worker process" in logs
    assert "Traceback" not in logs and "database is locked" not in logs
    for address in (ALICE, DEST, "example.test>", "dest.test"):
        assert address not in logs, f"{address} in the log"


def test_a_burst_of_submissions_is_delivered_once_by_the_workers(make_daemon: Callable[..., Daemon],
                                                                 sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, log_level="debug")  # each attempt logged by its worker
    assert len(queue_workers(d)) == 2
    subjects = [f"burst {i}" for i in range(60)]
    ids = submit_many(d, password, subjects, clients=4)
    wait_until(lambda: sum(arrivals(sink).values()) >= len(subjects), 60, "every message to arrive")
    for qid in ids:
        wait_status(d, qid, "delivered")
    time.sleep(0.5)  # a duplicate would be in flight right behind the last arrival
    assert arrivals(sink) == collections.Counter(subjects), "each message delivered exactly once"
    assert all(m.rcpt_tos == [DEST] for m in sink.messages)
    assert d.stop() == 0
    assert_private(d)
    assert d.logs().count(" delivered: 1 delivered, 0 deferred, 0 bounced") == len(subjects)


def test_a_worker_killed_mid_drain_loses_and_repeats_nothing(make_daemon: Callable[..., Daemon],
                                                             sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, delivery={"routes": {"*": sink.address}, "data_timeout": 60})
    workers = queue_workers(d)
    sink.behaviour.stall_seconds_after_data = STALL
    subjects = [f"drain {i}" for i in range(8)]
    ids = submit_many(d, password, subjects)
    wait_until(lambda: sink.payloads >= len(subjects), 20, "every message to be in flight")
    held = claims(d)
    assert set(held) == set(ids), "every message claimed while its delivery is in flight"
    tags = collections.Counter(held.values())
    victim_tag, _ = tags.most_common(1)[0]
    assert victim_tag is not None
    victim = int(victim_tag.rsplit("/", 1)[1])
    taken = {qid for qid, tag in held.items() if tag == victim_tag}

    os.kill(workers[victim], signal.SIGKILL)
    sink.behaviour = Behaviour()  # the attempts to come are answered at once; those in flight still stall
    for qid in ids:
        rec = wait_status(d, qid, "delivered", timeout=40)
        assert rec["crash_count"] == (1 if qid in taken else 0), "only the killed worker's claims crashed"
    time.sleep(0.5)
    assert arrivals(sink) == collections.Counter(subjects), "each message delivered exactly once"
    d.wait_for_log(f"queue worker {victim} exited (signal SIGKILL)")
    assert f"took back {len(taken)} message(s) claimed by queue worker {victim}" in d.logs()
    restarted = queue_workers(d)
    assert restarted[victim] != workers[victim], "the dead worker was started again"
    assert d.stop() == 0
    assert_private(d)


def test_sigterm_lets_the_deliveries_in_flight_finish(make_daemon: Callable[..., Daemon],
                                                      sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, shutdown_timeout=30)
    workers = queue_workers(d)
    sink.behaviour.stall_seconds_after_data = STALL / 2
    subjects = [f"stopping {i}" for i in range(4)]
    ids = submit_many(d, password, subjects)
    wait_until(lambda: sink.payloads >= len(subjects), 20, "every message to be in flight")
    assert d.stop(timeout=40) == 0
    assert arrivals(sink) == collections.Counter(subjects), "the stop waited for every delivery"
    for qid in ids:
        rec = show(d, qid)
        assert rec["status"] == "delivered" and not rec["claimed"] and rec["crash_count"] == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers.values()), "the workers stopped too"
    assert "did not stop in time" not in d.logs()
    assert_private(d)


def test_the_workers_counts_reach_the_serving_process(make_daemon: Callable[..., Daemon],
                                                      sink: SmtpSink) -> None:
    port = free_port()
    d, password = start(make_daemon, sink, metrics={"listen": [f"127.0.0.1:{port}"], "token": "t" * 24})
    queue_workers(d)
    ids = submit_many(d, password, [f"counted {i}" for i in range(5)])
    for qid in ids:
        wait_status(d, qid, "delivered")

    def scrape() -> dict[str, float] | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        seen = {f"{s.name}{sorted(s.labels.items())}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}
        return seen if seen.get("fwdmail_queue_delivered_after_seconds_count[]") == 5 else None

    seen = wait_until(scrape, 10, "the workers' counts in the serving process's scrape")
    assert seen["fwdmail_messages_forwarded_total[('service', 'queue')]"] == 5
    assert seen["fwdmail_queue_attempt_seconds_count[('outcome', 'forwarded')]"] == 5
    assert d.stop() == 0


def test_the_workers_stop_when_the_serving_process_dies(make_daemon: Callable[..., Daemon],
                                                        sink: SmtpSink) -> None:
    d, _ = start(make_daemon, sink)
    workers = queue_workers(d)
    d.kill()
    wait_until(lambda: not any(_alive(pid) for pid in workers.values()), 20,
               "the queue workers to stop after the serving process")
    assert "the serving process is gone; queue worker" in d.logs()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
