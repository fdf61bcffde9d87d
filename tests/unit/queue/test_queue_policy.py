"""Queue policy and store verbs without a daemon: backoff, attempt planning, claims, crashes, redaction.

Time is a parameter everywhere: the tests move `now`, they never sleep.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwdmail import store
from fwdmail.config import QueueConfig
from fwdmail.queue.service import backoff, plan_attempt
from fwdmail.smtp.replies import SmtpError
from fwdmail.store.models import database

T0 = dt.datetime(2030, 1, 1, 0, 0, 0)
CFG = QueueConfig()
TEMP = SmtpError(451, "4.2.0", "Mailbox busy")
PERM = SmtpError(550, "5.1.1", "No such user")


def claimed(**over: object) -> store.ClaimedEmail:
    base: dict[str, object] = dict(
        id=1, queue_id="Q", token="t", domain="example.test", dkim_selector="s", dkim_private_key="k",
        account_email="owner@owner.test", mail_from="alice@example.test", headers=b"From: a@b\r\n",
        body=b"x\r\n", recipients=("a@dest.test", "b@dest.test"), created_at=T0, send_at=T0, attempts=0,
        delay_notified=False,
    )
    base.update(over)
    return store.ClaimedEmail(**base)  # type: ignore[arg-type]


def secs(n: float) -> dt.timedelta:
    return dt.timedelta(seconds=n)


def test_backoff_doubles_and_is_clamped() -> None:
    assert [backoff(n, CFG) for n in (1, 2, 3, 4, 5, 6, 500)] == [300, 600, 1200, 2400, 4000, 4000, 4000]
    tight = QueueConfig(min_backoff=10, max_backoff=15)
    assert [backoff(n, tight) for n in (0, 1, 2, 3)] == [10, 10, 15, 15]


def test_plan_sorts_recipients_and_schedules_the_retry() -> None:
    now = T0 + secs(60)
    plan = plan_attempt(claimed(attempts=2), {"a@dest.test": None, "b@dest.test": TEMP}, now, CFG)
    assert plan.delivered == ["a@dest.test"]
    assert plan.deferred == {"b@dest.test": TEMP} and not plan.bounced
    assert plan.retry_at == now + secs(1200), "third attempt failed: 300 * 2**2"
    assert not plan.bounce_report and not plan.delay_notice


def test_permanent_failures_bounce_at_once_with_a_report() -> None:
    plan = plan_attempt(claimed(), {"a@dest.test": PERM, "b@dest.test": None}, T0, CFG)
    assert plan.bounced == {"a@dest.test": PERM} and plan.bounce_report


def test_a_recipient_without_a_result_is_retried() -> None:
    plan = plan_attempt(claimed(), {"a@dest.test": None}, T0, CFG)
    assert list(plan.deferred) == ["b@dest.test"] and plan.deferred["b@dest.test"].temporary


def test_temporary_failures_bounce_once_the_lifetime_is_over() -> None:
    start = T0 + dt.timedelta(days=3)  # a scheduled message: lifetime counts from send_at
    email = claimed(send_at=start)
    both = {"a@dest.test": TEMP, "b@dest.test": TEMP}
    before = plan_attempt(email, both, start + secs(CFG.max_lifetime - 1), CFG)
    assert set(before.deferred) == {"a@dest.test", "b@dest.test"}
    assert before.retry_at == start + secs(CFG.max_lifetime), "the last retry happens at expiry, not after"
    after = plan_attempt(email, both, start + secs(CFG.max_lifetime), CFG)
    assert set(after.bounced) == {"a@dest.test", "b@dest.test"} and after.bounce_report


def test_delay_notice_once_after_delay_notice_after() -> None:
    results = {"a@dest.test": TEMP, "b@dest.test": None}
    early = plan_attempt(claimed(), results, T0 + secs(CFG.delay_notice_after - 1), CFG)
    assert not early.delay_notice
    due = plan_attempt(claimed(), results, T0 + secs(CFG.delay_notice_after), CFG)
    assert due.delay_notice
    again = plan_attempt(claimed(delay_notified=True), results, T0 + secs(CFG.delay_notice_after * 2), CFG)
    assert not again.delay_notice


def test_never_a_report_for_a_null_sender() -> None:
    email = claimed(mail_from="")
    plan = plan_attempt(email, {"a@dest.test": PERM, "b@dest.test": TEMP}, T0 + dt.timedelta(days=1), CFG)
    assert plan.bounced and plan.deferred
    assert not plan.bounce_report and not plan.delay_notice


# store verbs on a real SQLite file

@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fwdmail.db"
    store.open_store(path)
    store.add_account("owner@owner.test")
    store.add_domain("example.test", "owner@owner.test", "sel", "not-a-key", "token")
    store.add_domain("keep.test", "owner@owner.test", "sel", "not-a-key", "token")
    store.update_domain("keep.test", retention_days=3)
    yield path
    store.close_store()


def new(domain: str = "example.test", send_at: dt.datetime | None = None,
        rcpts: tuple[str, ...] = ("a@dest.test",), body: bytes = b"secret body\r\n") -> store.NewEmail:
    return store.NewEmail(store.new_queue_id(), domain, "alice@" + domain, rcpts, b"From: alice@x\r\n", body,
                          "subj", send_at, send_at)


def test_enqueue_claim_attempt_and_redact_at_once(db: Path) -> None:
    (qid,) = store.enqueue([new(rcpts=("a@dest.test", "b@dest.test"))], T0)
    (email,) = store.claim_due(T0, "w1", 10)
    assert email.queue_id == qid and email.recipients == ("a@dest.test", "b@dest.test")
    assert store.claim_due(T0, "w2", 10) == [], "a claimed message is not handed out twice"
    out = store.record_attempt(email.id, "w1", T0, delivered=["a@dest.test"], deferred={"b@dest.test": TEMP},
                               retry_at=T0 + secs(300))
    assert out == store.AttemptOutcome("deferred", False, False)
    assert store.claim_due(T0 + secs(299), "w1", 10) == []
    (again,) = store.claim_due(T0 + secs(300), "w1", 10)
    assert again.recipients == ("b@dest.test",), "only recipients still pending are tried again"
    out = store.record_attempt(again.id, "w1", T0 + secs(300), bounced={"b@dest.test": PERM})
    assert out == store.AttemptOutcome("partial", True, True)
    rec = store.get_email(qid)
    assert rec.body is None and rec.redacted_at == T0 + secs(300) and rec.headers == b"From: alice@x\r\n"
    assert [(r.status, r.attempts, r.code) for r in rec.recipients] == [
        ("delivered", 1, None), ("bounced", 2, 550)]
    assert [(e.direction, e.code) for e in store.list_smtp_errors("example.test")] == [
        ("outbound", 550), ("outbound", 451)]


def test_retention_days_keep_the_body_until_retention_redacts_it(db: Path) -> None:
    (qid,) = store.enqueue([new("keep.test")], T0)
    (email,) = store.claim_due(T0, "w", 1)
    assert store.record_attempt(email.id, "w", T0, delivered=["a@dest.test"]).redacted is False
    assert store.get_email(qid).body == b"secret body\r\n"
    assert store.redact_bodies_due(T0 + dt.timedelta(days=3) - secs(1), 100) == 0
    assert store.redact_bodies_due(T0 + dt.timedelta(days=3), 100) == 1
    assert store.get_email(qid).body is None


def test_future_send_at_is_not_due_before_it(db: Path) -> None:
    later = T0 + dt.timedelta(days=2)
    (qid,) = store.enqueue([new(send_at=later)], T0)
    assert store.claim_due(later - secs(1), "w", 10) == []
    (email,) = store.claim_due(later, "w", 10)
    assert email.queue_id == qid and email.send_at == later


def test_stale_claims_are_taken_back_and_repeated_crashes_hold(db: Path) -> None:
    (qid,) = store.enqueue([new()], T0)
    for n in range(1, 3):
        store.claim_due(T0, f"dead{n}", 10)
        assert store.release_stale_claims(T0, max_crashes=3) == (1, 0)
        assert store.get_email(qid).crash_count == n
    (email,) = store.claim_due(T0, "w", 10)
    assert store.record_crash(email.id, "w", T0, T0, max_crashes=3) == "held"
    assert store.claim_due(T0 + dt.timedelta(days=1), "w", 10) == [], "held mail waits for the admin"
    rec = store.retry_email(qid, T0)
    assert rec.status == "queued" and rec.crash_count == 0 and rec.body == b"secret body\r\n"
    assert store.claim_due(T0, "w", 10)[0].queue_id == qid


def test_a_lost_claim_is_not_recorded(db: Path) -> None:
    (qid,) = store.enqueue([new()], T0)
    (email,) = store.claim_due(T0, "w", 10)
    store.release_stale_claims(T0, max_crashes=3)
    assert store.record_attempt(email.id, "w", T0, delivered=["a@dest.test"]) is None
    store.delete_email(qid)
    assert store.record_attempt(email.id, "w", T0, delivered=["a@dest.test"]) is None
    with pytest.raises(store.NotFound):
        store.get_email(qid)


def test_notices_are_queued_in_the_same_transaction(db: Path) -> None:
    (qid,) = store.enqueue([new()], T0)
    (email,) = store.claim_due(T0, "w", 10)
    dsn = store.NewEmail(store.new_queue_id(), "example.test", "", ("owner@owner.test",), b"From: md\r\n",
                         b"report\r\n", "Undelivered", T0, T0)
    store.record_attempt(email.id, "w", T0, bounced={"a@dest.test": PERM}, notices=[dsn])
    assert store.get_email(qid).dsn_sent
    assert store.get_email(dsn.queue_id).mail_from == ""
    assert [e.queue_id for e in store.list_emails(status="queued")] == [dsn.queue_id]


def test_retry_refuses_final_mail(db: Path) -> None:
    (qid,) = store.enqueue([new()], T0)
    (email,) = store.claim_due(T0, "w", 10)
    store.record_attempt(email.id, "w", T0, delivered=["a@dest.test"])
    with pytest.raises(ValueError, match="delivered"):
        store.retry_email(qid, T0)


def test_attempts_of_several_messages_are_recorded_in_one_transaction(db: Path) -> None:
    kept, redacted, lost = new("keep.test"), new(), new()
    deferred = new(rcpts=("a@dest.test", "b@dest.test"))
    store.enqueue([kept, redacted, deferred, lost], T0)
    claims = {c.queue_id: c for c in store.claim_due(T0, "w", 10)}
    assert [claims[m.queue_id].send_at for m in (kept, redacted)] == [T0, T0]
    store.release_stale_claims(T0, max_crashes=3, exclude=[claims[m.queue_id].id
                                                            for m in (kept, redacted, deferred)])
    later = T0 + secs(5)
    attempts = [
        store.Attempt(claims[kept.queue_id].id, "w", later, delivered=["a@dest.test"]),
        store.Attempt(claims[lost.queue_id].id, "w", later, delivered=["a@dest.test"]),
        store.Attempt(claims[redacted.queue_id].id, "w", later, delivered=["a@dest.test"]),
        store.Attempt(claims[deferred.queue_id].id, "w", later, delivered=["a@dest.test"],
                      deferred={"b@dest.test": TEMP}, retry_at=later + secs(300)),
    ]
    assert store.record_attempts(attempts) == [
        store.AttemptOutcome("delivered", True, False), None, store.AttemptOutcome("delivered", True, True),
        store.AttemptOutcome("deferred", False, False)]
    assert store.get_email(kept.queue_id).body == b"secret body\r\n"
    assert store.get_email(redacted.queue_id).body is None
    again = store.get_email(deferred.queue_id)
    assert again.next_attempt_at == later + secs(300) and again.claimed_at is None
    assert [(r.address, r.status, r.code) for r in again.recipients] == [
        ("a@dest.test", "delivered", None), ("b@dest.test", "deferred", 451)]
    assert store.get_email(lost.queue_id).status == "queued", "a lost claim leaves its message alone"
    assert [e.code for e in store.list_smtp_errors("example.test")] == [451]


def test_a_claim_leaves_commits_synchronous_again(db: Path) -> None:
    store.enqueue([new()], T0)
    synchronous = "PRAGMA synchronous"
    assert store.claim_due(T0, "w", 10) and database.execute_sql(synchronous).fetchone() == (2,)
    store.enqueue([store.NewEmail(store.new_queue_id(), "example.test", "a@example.test", ("b@dest.test",),
                                  b"Subject: x\r\n", b"", send_at=T0)], T0)
    database.execute_sql("DROP TABLE outbound_recipient")  # the claim's transaction fails half-way
    with pytest.raises(store.DatabaseFailure):
        store.claim_due(T0, "w", 10)
    assert database.execute_sql(synchronous).fetchone() == (2,)
