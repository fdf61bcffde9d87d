"""The outbound queue end to end: retries, bounces with RFC 3464 DSNs, scheduled send, redaction, preview.

One daemon (and one downstream sink) serves the module; each test waits for its own messages to reach a
final state, so no test leaves mail in flight for the next. Time-dependent retention is driven through
`fwdmail purge --now`, never by sleeping.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import time
from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.outbound import (
    add_domain,
    db_bytes,
    listing,
    message,
    queue_id,
    rfc5322_date,
    show,
    submit,
    wait_status,
    wait_until,
)
from tests.support.smtp_sink import Received, SmtpSink

ALICE = "alice@example.test"
KEEPER = "kim@keep.test"


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink,
           dns_server: LoopbackDNS) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("queue"), {
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"*": sink.address}},
        "queue": {"min_backoff": 0.5, "max_backoff": 1},
    })
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def pw(daemon: Daemon) -> dict[str, str]:
    return {**add_domain(daemon, "example.test", ALICE),
            **add_domain(daemon, "keep.test", KEEPER, retention_days=2)}


@pytest.fixture(autouse=True)
def _clean_sink(sink: SmtpSink) -> None:
    sink.reset()


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def to(messages: list[Received], rcpt: str) -> list[Received]:
    return [m for m in messages if rcpt in m.rcpt_tos]


def test_temporary_failures_are_retried_until_delivered(daemon: Daemon, pw: dict[str, str],
                                                        sink: SmtpSink) -> None:
    sink.behaviour.data_replies = ["451 4.3.0 Try again later", "452 4.2.2 Mailbox full"]
    qid = queue_id(submit(daemon, ALICE, pw[ALICE], message(ALICE, subject="retry me")))
    rec = wait_status(daemon, qid, "delivered")
    assert rec["attempts"] == 3
    assert [(r["status"], r["attempts"]) for r in rec["recipients"]] == [("delivered", 3)]
    (got,) = sink.wait_for(1)
    assert parse(got.data)["Subject"] == "retry me"
    errors = [e for e in _logs(daemon) if e["direction"] == "outbound" and e["domain"] == "example.test"]
    assert {(e["code"], e["enhanced_code"]) for e in errors} >= {(451, "4.3.0"), (452, "4.2.2")}
    assert all(e["alias"] == ALICE for e in errors)


def test_retry_schedule_doubles_from_min_backoff_and_is_clamped_at_max_backoff(
        daemon: Daemon, pw: dict[str, str], sink: SmtpSink) -> None:
    """Each deferral's next attempt is `backoff` after that attempt (0.5 s doubling, clamped at 1 s here)."""
    sink.behaviour.rcpt = {"later@dest.test": "450 4.2.1 Try later"}
    qid = queue_id(submit(daemon, ALICE, pw[ALICE], message(ALICE, "later@dest.test"),
                          rcpts=["later@dest.test"]))
    seen: dict[int, float] = {}

    def snapshot() -> bool:
        rec = show(daemon, qid)
        if rec["status"] == "deferred" and not rec["claimed"]:
            (r,) = rec["recipients"]
            gap = _time(rec["next_attempt_at"]) - _time(r["updated_at"])
            seen[rec["attempts"]] = gap.total_seconds()
        return any(n < 3 for n in seen) and any(n >= 3 for n in seen)

    wait_until(snapshot, 30, "deferrals before and after the clamp", interval=0.05)
    assert seen == {n: min(1.0, 0.5 * 2 ** (n - 1)) for n in seen}
    assert all(gap == 1.0 for n, gap in seen.items() if n >= 3), "unclamped, attempt 3 would wait 2 s"
    daemon.cli("emails", "delete", qid, "--yes")


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).replace(tzinfo=None)


def _logs(d: Daemon) -> list[dict[str, object]]:
    return json.loads(d.cli("logs", "--json").output)


def test_a_permanent_failure_bounces_at_once_with_a_valid_dsn(daemon: Daemon, pw: dict[str, str],
                                                              sink: SmtpSink) -> None:
    sink.behaviour.rcpt = {"nobody@dest.test": "550 5.1.1 No such user here"}
    body_marker = "BODY-NOT-IN-DSN-7f3a"
    qid = queue_id(submit(daemon, ALICE, pw[ALICE],
                          message(ALICE, "nobody@dest.test, bob@dest.test", "doomed", body_marker + "\r\n"),
                          rcpts=["nobody@dest.test", "bob@dest.test"]))
    rec = wait_status(daemon, qid, "partial")
    assert rec["attempts"] == 1 and rec["dsn_sent"]
    statuses = {r["address"]: (r["status"], r["code"]) for r in rec["recipients"]}
    assert statuses == {"nobody@dest.test": ("bounced", 550), "bob@dest.test": ("delivered", None)}
    got = sink.wait_for(2)
    (dsn_msg,) = to(got, ALICE)  # the envelope sender, never the domain's account
    assert dsn_msg.mail_from in ("", "<>"), "a DSN has the null sender"
    dsn = parse(dsn_msg.data)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["From"].addresses[0].addr_spec == "MAILER-DAEMON@example.test"
    assert dsn["Auto-Submitted"] == "auto-replied"
    human, status, headers = dsn.get_payload()
    assert human.get_content_type() == "text/plain" and "nobody@dest.test" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.fwdmail.test"
    assert len(per_recipient) == 1, "only the recipient that failed is reported"
    (r,) = per_recipient
    assert r["Final-Recipient"] == "rfc822; nobody@dest.test"
    assert r["Action"] == "failed" and r["Status"] == "5.1.1"
    assert r["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: doomed" in dsn_msg.data and f"id {qid};".encode() in dsn_msg.data
    assert body_marker.encode() not in dsn_msg.data, "headers of the original only"
    dsn_rec = next(e for e in listing(daemon)
                   if e["mail_from"] == "" and e["subject"].startswith("Undelivered"))
    assert dsn_rec["recipients"][0]["address"] == ALICE
    wait_status(daemon, dsn_rec["id"], "delivered")


def test_never_a_dsn_about_a_null_sender_message(daemon: Daemon, pw: dict[str, str], sink: SmtpSink) -> None:
    sink.behaviour.rcpt = {"gone@dest.test": "550 5.1.1 No such user", ALICE: "550 5.1.1 Sender mailbox gone"}
    before = {e["id"] for e in listing(daemon, "--domain", "example.test")}
    qid = queue_id(submit(daemon, ALICE, pw[ALICE], message(ALICE, "gone@dest.test"),
                          rcpts=["gone@dest.test"]))
    assert wait_status(daemon, qid, "bounced")["dsn_sent"]

    def dsn_id() -> str | None:
        new = [e for e in listing(daemon, "--domain", "example.test") if e["id"] not in before | {qid}]
        return new[0]["id"] if new else None

    dsn = wait_status(daemon, wait_until(dsn_id, what="the DSN to be queued"), "bounced")
    assert dsn["mail_from"] == "" and not dsn["dsn_sent"]
    after = {e["id"] for e in listing(daemon, "--domain", "example.test")}
    assert after == before | {qid, dsn["id"]}, "the bounced DSN made no DSN of its own"
    assert sink.messages == []


def test_scheduled_send_waits_for_its_date(daemon: Daemon, pw: dict[str, str], sink: SmtpSink) -> None:
    tomorrow = time.time() + 86400
    later = queue_id(submit(daemon, ALICE, pw[ALICE],
                            message(ALICE, subject="tomorrow", extra=[f"Date: {rfc5322_date(tomorrow)}"])))
    rec = show(daemon, later)
    expected = dt.datetime.fromtimestamp(int(tomorrow), dt.UTC).replace(tzinfo=None)
    assert rec["status"] == "queued"
    assert dt.datetime.fromisoformat(rec["next_attempt_at"]).replace(tzinfo=None) == expected
    now_id = queue_id(submit(daemon, ALICE, pw[ALICE], message(ALICE, subject="now")))
    wait_status(daemon, now_id, "delivered")
    assert show(daemon, later)["status"] == "queued", "sent after a later submission, but not before its Date"
    assert [parse(m.data)["Subject"] for m in sink.messages] == ["now"]
    soon = time.time() + 2
    soon_id = queue_id(submit(daemon, ALICE, pw[ALICE],
                              message(ALICE, subject="soon", extra=[f"Date: {rfc5322_date(soon)}"])))
    wait_status(daemon, soon_id, "delivered")
    assert time.time() >= int(soon), "never delivered before its Date"
    daemon.cli("emails", "retry", later)
    wait_status(daemon, later, "delivered")
    assert sorted(parse(m.data)["Subject"] for m in sink.wait_for(3)) == ["now", "soon", "tomorrow"]


def test_body_is_redacted_at_once_on_final_state(daemon: Daemon, pw: dict[str, str]) -> None:
    marker = "REDACT-ME-9c1e4b"
    qid = queue_id(submit(daemon, ALICE, pw[ALICE], message(ALICE, subject="SUBJECT-KEPT-9c1e4b",
                                                            body=f"{marker}\r\n")))
    rec = wait_status(daemon, qid, "delivered")
    assert rec["redacted"] and rec["text"] is None
    wait_until(lambda: marker.encode() not in db_bytes(daemon), 10, "the body to leave the database files")
    assert b"SUBJECT-KEPT-9c1e4b" in db_bytes(daemon), "headers are kept"
    out = daemon.cli("emails", "show", qid).output
    assert "redacted" in out and "SUBJECT-KEPT-9c1e4b" in out
    raw = daemon.cli("emails", "show", qid, "--raw").output
    assert "Subject: SUBJECT-KEPT-9c1e4b" in raw and marker not in raw


def test_retention_days_keep_the_body_then_redact_it(daemon: Daemon, pw: dict[str, str]) -> None:
    marker = "KEEP-FOR-A-WHILE-51d0"
    qid = queue_id(submit(daemon, KEEPER, pw[KEEPER], message(KEEPER, body=f"{marker}\r\n")))
    rec = wait_status(daemon, qid, "delivered")
    assert not rec["redacted"] and marker in rec["text"]
    final = dt.datetime.fromisoformat(rec["final_at"]).replace(tzinfo=None)
    daemon.cli("purge", "--now", (final + dt.timedelta(days=2, seconds=-1)).isoformat())
    assert not show(daemon, qid)["redacted"]
    assert marker.encode() in db_bytes(daemon)
    daemon.cli("purge", "--now", (final + dt.timedelta(days=2)).isoformat())
    rec = show(daemon, qid)
    assert rec["redacted"] and rec["recipients"][0]["status"] == "delivered"
    wait_until(lambda: marker.encode() not in db_bytes(daemon), 10, "the body to leave the database files")


MULTIPART = (
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="outer"\r\n'
    "\r\n"
    "--outer\r\n"
    'Content-Type: multipart/alternative; boundary="inner"\r\n'
    "\r\n"
    "--inner\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Plain caf=C3=A9 text.\r\n"
    "--inner\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "\r\n"
    "<p>HTML version</p>\r\n"
    "--inner--\r\n"
    "--outer\r\n"
    'Content-Type: application/pdf; name="report.pdf"\r\n'
    'Content-Disposition: attachment; filename="report.pdf"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "JVBERi0xLjQK\r\n"
    "--outer--\r\n"
)


def test_preview_of_a_multipart_message(daemon: Daemon, pw: dict[str, str]) -> None:
    raw = (f"From: Kim <{KEEPER}>\r\nTo: bob@dest.test\r\nSubject: =?utf-8?q?r=C3=A9sum=C3=A9?=\r\n"
           + MULTIPART).encode()
    qid = queue_id(submit(daemon, KEEPER, pw[KEEPER], raw))
    rec = wait_status(daemon, qid, "delivered")
    assert rec["text_type"] == "text/plain" and rec["text"] == "Plain café text."
    assert rec["attachments"] == [{"filename": "report.pdf", "content_type": "application/pdf"}]
    assert ["Subject", "résumé"] in rec["headers"]
    out = daemon.cli("emails", "show", qid).output
    assert "Plain café text." in out and "résumé" in out and "report.pdf" in out
    html_only = (f"From: {KEEPER}\r\nTo: bob@dest.test\r\nSubject: html\r\nMIME-Version: 1.0\r\n"
                 "Content-Type: text/html; charset=utf-8\r\n\r\n"
                 "<html><head><style>p {color: red}</style></head><body><h1>Title</h1>"
                 "<p>Hello &amp; <b>welcome</b></p><ul><li>one</li><li>two</li></ul>"
                 "<script>alert(1)</script></body></html>\r\n").encode()
    hid = queue_id(submit(daemon, KEEPER, pw[KEEPER], html_only))
    rec = wait_status(daemon, hid, "delivered")
    assert rec["text_type"] == "text/html"
    assert rec["text"] == "Title\n\nHello & welcome\n\n- one\n- two"
    assert "<" not in rec["text"] and "alert" not in rec["text"] and "color" not in rec["text"]
