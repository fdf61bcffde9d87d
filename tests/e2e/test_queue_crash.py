"""Crash safety and message lifetime: `kill -9` during submissions and deliveries loses no accepted
message; a message that keeps crashing the worker is held; SIGTERM gives claims back; deferral brings one
delay notice, then a bounce.
"""

from __future__ import annotations

import email
import email.policy
import signal
import threading
from collections.abc import Callable
from typing import Any

from tests.support.daemon import Daemon, merge, to_toml
from tests.support.outbound import (
    add_domain,
    connect,
    message,
    queue_id,
    send,
    show,
    submit,
    wait_status,
    wait_until,
)
from tests.support.smtp_sink import Behaviour, SmtpSink

ALICE = "alice@example.test"


STALL = 120.0
"""How long a stalling destination holds its DATA reply (the daemon waits as long: mid-delivery)."""


def start(make_daemon: Callable[..., Daemon], sink: SmtpSink, overrides: dict[str, Any] | None = None,
          **queue: Any) -> tuple[Daemon, str]:
    d = make_daemon(merge({"delivery": {"routes": {"*": sink.address}},
                           "queue": {"min_backoff": 0.5, "max_backoff": 1, **queue}}, overrides or {}),
                    start=False)
    password = add_domain(d, "example.test", ALICE)[ALICE]
    d.start()
    return d, password


def subjects(sink: SmtpSink) -> set[str]:
    return {str(email.message_from_bytes(m.data)["Subject"]) for m in sink.messages}


def test_kill_9_during_a_burst_of_submissions_loses_no_accepted_message(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink)
    accepted: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(n: int) -> None:
        try:
            with connect(d) as s:
                s.login(ALICE, password)
                for i in range(40):
                    subject = f"burst {n}-{i}"
                    if send(s, ALICE, ["bob@dest.test"], message(ALICE, subject=subject))[0] == 250:
                        with lock:
                            accepted.append(subject)
                            if len(accepted) >= 30:
                                enough.set()
        except Exception:  # the daemon was killed under this client
            return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    assert enough.wait(60), "the burst never got going"
    d.kill()
    for t in threads:
        t.join(30)
    with lock:
        got_250 = set(accepted)
    assert len(got_250) >= 30
    d.start()
    wait_until(lambda: got_250 <= subjects(sink), 60,
               f"all {len(got_250)} accepted messages to arrive after the restart")


def test_kill_9_during_delivery_is_retried_after_restart(make_daemon: Callable[..., Daemon],
                                                         sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, {"delivery": {"data_timeout": STALL}})
    sink.behaviour.stall_seconds_after_data = STALL  # the destination holds the DATA reply: mid-delivery
    qid = queue_id(submit(d, ALICE, password, message(ALICE, subject="in flight")))
    wait_until(lambda: show(d, qid)["claimed"] and sink.connections >= 1, 20, "the delivery to start")
    d.kill()
    sink.behaviour = Behaviour()
    d.start()
    rec = wait_status(d, qid, "delivered")
    assert rec["crash_count"] == 1 and rec["attempts"] == 1
    assert "in flight" in subjects(sink)


def test_a_message_that_keeps_crashing_the_worker_is_held_not_dropped(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, {"delivery": {"data_timeout": STALL}}, max_crashes=3)
    sink.behaviour.stall_seconds_after_data = STALL
    qid = queue_id(submit(d, ALICE, password, message(ALICE, subject="poison")))
    for crash in range(1, 4):
        wait_until(lambda: show(d, qid)["claimed"], 20, "the worker to take the message")
        d.kill()
        d.start()
        if crash < 3:
            assert show(d, qid)["crash_count"] == crash
    rec = show(d, qid)
    assert rec["status"] == "held" and rec["crash_count"] == 3 and not rec["claimed"]
    assert rec["text"] is not None, "a held message keeps its body"
    assert any(e["id"] == qid for e in _list(d, "--status", "held"))
    sink.behaviour = Behaviour()
    d.cli("emails", "retry", qid)
    assert wait_status(d, qid, "delivered")["crash_count"] == 0


def test_sigterm_gives_claims_back_without_counting_a_crash(make_daemon: Callable[..., Daemon],
                                                            sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, {"shutdown_timeout": 1, "delivery": {"data_timeout": STALL}})
    sink.behaviour.stall_seconds_after_data = STALL
    qid = queue_id(submit(d, ALICE, password, message(ALICE, subject="stopping")))
    wait_until(lambda: show(d, qid)["claimed"] and sink.connections >= 1, 20, "the delivery to start")
    assert d.stop() == 0, "shutdown_timeout over: the attempt in flight is stopped, the daemon exits"
    rec = show(d, qid)
    assert not rec["claimed"] and rec["status"] == "queued"
    assert rec["crash_count"] == 0 and rec["attempts"] == 0, "a clean stop is neither a crash nor an attempt"

    _reconfigure(d, {"shutdown_timeout": 3600})
    d.start()
    wait_until(lambda: show(d, qid)["claimed"] and sink.connections >= 2, 20, "the delivery to start again")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    # The first run logged this line too (the log file is appended): wait for this run's own line, or the
    # second SIGTERM can arrive while the first is still pending and the kernel merges the two.
    draining = "waiting for 1 delivery attempt(s) in flight"
    wait_until(lambda: d.logs().count(draining) == 2, 20, "the drain to begin")
    assert d.stop() == 0, "a second SIGTERM cuts the hour-long drain short"
    rec = show(d, qid)
    assert not rec["claimed"] and rec["crash_count"] == 0

    sink.behaviour = Behaviour()
    d.start()
    assert wait_status(d, qid, "delivered")["crash_count"] == 0
    assert "took back" not in d.logs(), "no claim was left behind for the next start to take back"


def _reconfigure(d: Daemon, overrides: dict[str, Any]) -> None:
    d.settings = merge(d.settings, overrides)
    d.config_path.write_text(to_toml(d.settings))


def _list(d: Daemon, *args: str) -> list[dict[str, Any]]:
    import json

    return json.loads(d.cli("emails", "list", "--json", *args).output)


def test_deferral_sends_one_delay_notice_then_bounces_at_max_lifetime(make_daemon: Callable[..., Daemon],
                                                                      sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, delay_notice_after=1.5, max_lifetime=5)
    sink.behaviour.rcpt = {"busy@dest.test": "450 4.2.1 Mailbox busy, try later"}
    qid = queue_id(submit(d, ALICE, password, message(ALICE, "busy@dest.test", "slow one"),
                          rcpts=["busy@dest.test"]))
    rec = wait_status(d, qid, "bounced", timeout=30)
    assert rec["attempts"] >= 3 and rec["delay_notified"] and rec["dsn_sent"]
    assert rec["recipients"][0]["code"] == 450
    reports = wait_until(lambda: len(sink.messages) >= 2 and sink.messages, 30, "both reports")
    assert all(m.rcpt_tos == [ALICE] for m in reports) and len(reports) == 2, "to the envelope sender"
    delayed, failed = (email.message_from_bytes(m.data, policy=email.policy.default) for m in reports)
    assert delayed["Subject"] == "Delayed Mail (still being retried)"
    assert failed["Subject"] == "Undelivered Mail Returned to Sender"
    d_status = delayed.get_payload()[1].get_payload()[1]
    f_status = failed.get_payload()[1].get_payload()[1]
    assert (d_status["Action"], d_status["Status"]) == ("delayed", "4.2.1")
    assert d_status["Will-Retry-Until"]
    assert (f_status["Action"], f_status["Status"]) == ("failed", "4.2.1")
    assert f_status["Diagnostic-Code"] == "smtp; 450 4.2.1 Mailbox busy, try later"
