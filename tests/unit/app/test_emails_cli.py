"""`fwdmail emails list|show|retry|delete` on a store filled through the queue's own verbs (no daemon)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fwdmail import store
from fwdmail.smtp.replies import SmtpError
from tests.support.daemon import Daemon
from tests.support.outbound import db_bytes

T0 = dt.datetime(2030, 1, 1, 12, 0)


@pytest.fixture
def d(tmp_path: Path) -> Daemon:
    daemon = Daemon(tmp_path)
    daemon.cli("account", "add", "owner@owner.test")
    daemon.cli("domain", "add", "example.test", "--account", "owner@owner.test")
    daemon.cli("domain", "add", "other.test", "--account", "owner@owner.test")
    return daemon


def put(d: Daemon, domain: str, subject: str, body: bytes = b"the body\r\n", headers: bytes = b"",
        outcome: str | None = None) -> str:
    """Queue a message with the store verbs, and optionally play one delivery attempt."""
    store.open_store(d.data_dir / "fwdmail.db")
    email = store.NewEmail(
        store.new_queue_id(), domain, f"alice@{domain}", ("bob@dest.test",),
        f"From: alice@{domain}\r\nTo: bob@dest.test\r\nSubject: {subject}\r\n".encode() + headers, body,
        subject, T0, T0,
    )
    store.enqueue([email], T0)
    if outcome is not None:
        (claimed,) = [c for c in store.claim_due(T0, "t", 100) if c.queue_id == email.queue_id]
        replies = {"delivered": {"delivered": ["bob@dest.test"]},
                   "bounced": {"bounced": {"bob@dest.test": SmtpError(550, "5.1.1", "No such user")}},
                   "deferred": {"deferred": {"bob@dest.test": SmtpError(451, "4.3.0", "Later")},
                                "retry_at": T0 + dt.timedelta(hours=1)}}[outcome]
        store.record_attempt(claimed.id, "t", T0, **replies)  # type: ignore[arg-type]
    store.close_store()
    return email.queue_id


def listed(d: Daemon, *args: str) -> list[dict[str, object]]:
    return json.loads(d.cli("emails", "list", "--json", *args).output)


def test_list_filters_by_status_and_domain(d: Daemon) -> None:
    assert listed(d) == []
    queued = put(d, "example.test", "one")
    delivered = put(d, "example.test", "two", outcome="delivered")
    bounced = put(d, "other.test", "three", outcome="bounced")
    deferred = put(d, "other.test", "four", outcome="deferred")
    assert {e["id"] for e in listed(d)} == {queued, delivered, bounced, deferred}
    assert [e["id"] for e in listed(d, "--status", "delivered")] == [delivered]
    assert [e["id"] for e in listed(d, "--status", "deferred")] == [deferred]
    assert {e["id"] for e in listed(d, "--domain", "OTHER.test")} == {bounced, deferred}
    assert [e["id"] for e in listed(d, "--status", "queued", "--domain", "example.test")] == [queued]
    (rec,) = listed(d, "--status", "bounced")
    assert rec["recipients"] == [{"address": "bob@dest.test", "status": "bounced", "attempts": 1, "code": 550,
                                  "enhanced_code": "5.1.1", "text": "No such user",
                                  "updated_at": T0.isoformat() + "Z"}]
    table = d.cli("emails", "list").output
    assert all(x in table for x in (queued, delivered, "bounced", "other.test", "four"))


def test_bad_arguments_are_one_line_errors(d: Daemon) -> None:
    r = d.cli("emails", "list", "--status", "lost", expect=2)
    assert "Invalid value for '--status'" in r.output
    r = d.cli("emails", "list", "--domain", "unknown.test", expect=1)
    assert r.output.strip() == "Error: no domain unknown.test"
    r = d.cli("emails", "show", "0000000000000000", expect=1)
    assert r.output.strip() == "Error: no email 0000000000000000"
    r = d.cli("emails", "show", "../etc", expect=1)
    assert r.output.strip() == "Error: invalid email id '../etc'"
    assert "Traceback" not in r.output


def test_show_says_when_the_body_is_redacted(d: Daemon) -> None:
    kept = put(d, "example.test", "kept", body=b"still here\r\n")
    gone = put(d, "example.test", "gone", body=b"redacted text\r\n", outcome="delivered")
    assert "still here" in d.cli("emails", "show", kept).output
    out = d.cli("emails", "show", gone).output
    assert "redacted" in out and "redacted text" not in out and "gone" in out
    rec = json.loads(d.cli("emails", "show", gone, "--json").output)
    assert rec["redacted"] and rec["text"] is None and ["Subject", "gone"] in rec["headers"]
    raw = d.cli("emails", "show", kept, "--raw").stdout_bytes
    assert raw == b"From: alice@example.test\r\nTo: bob@dest.test\r\nSubject: kept\r\n\r\nstill here\r\n"
    raw = d.cli("emails", "show", gone, "--raw").output
    assert "Subject: gone" in raw and "redacted text" not in raw


def test_preview_cannot_drive_the_terminal(d: Daemon) -> None:
    qid = put(d, "example.test", "evil\x1b[2J\x1b]0;title\x07", body=b"text \x1b[31mred\x1b[0m\r\n",
              headers=b"X-Note: \xe2\x80\xae reversed\r\n")
    out = d.cli("emails", "show", qid).output
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "red" in out and "reversed" in out


def test_retry_and_delete(d: Daemon) -> None:
    deferred = put(d, "example.test", "later", outcome="deferred")
    delivered = put(d, "example.test", "done", outcome="delivered")
    r = d.cli("emails", "retry", deferred)
    assert r.output.strip() == f"email {deferred} (deferred) will be tried again now"
    shown = json.loads(d.cli("emails", "show", deferred, "--json").output)
    next_at = dt.datetime.fromisoformat(shown["next_attempt_at"]).replace(tzinfo=None)
    assert next_at < T0 + dt.timedelta(hours=1)
    r = d.cli("emails", "retry", delivered, expect=1)
    assert r.output.strip() == f"Error: email {delivered} is delivered: there is nothing left to retry"
    r = d.cli("emails", "delete", delivered, input="n\n", expect=1)
    assert "aborted" in r.output
    assert [e["id"] for e in listed(d, "--status", "delivered")] == [delivered]
    d.cli("emails", "delete", delivered, "--yes")
    assert listed(d, "--status", "delivered") == []
    d.cli("emails", "show", delivered, expect=1)
    pending = put(d, "example.test", "SUBJECT-GONE-4e1f", body=b"BODY-GONE-4e1f\r\n")
    assert b"BODY-GONE-4e1f" in db_bytes(d)
    assert d.cli("emails", "delete", pending, "--yes").output.strip() == f"email {pending} deleted"
    raw = db_bytes(d)
    assert b"BODY-GONE-4e1f" not in raw and b"SUBJECT-GONE-4e1f" not in raw, "not in the db, wal or shm"
