"""One account's own records a page at a time (store/accountpages), on SQLite and PostgreSQL: only its
domains' mail and SMTP errors, only its own request rows after a time, newest first, offset and limit."""

from __future__ import annotations

import datetime as dt

from fwdmail import store
from tests.unit.store.conftest import Opened

T0 = dt.datetime(2030, 1, 1, 12, 0)
A, B = "a@owner.test", "b@owner.test"


def put(domain: str, n: int) -> str:
    qid = store.new_queue_id()
    store.enqueue([store.NewEmail(qid, domain, f"x@{domain}", ("r@dest.test",), b"Subject: s\r\n", b"body",
                                  f"s{n}", T0, T0)], T0 + dt.timedelta(minutes=n))
    return qid


def setup_accounts() -> dict[str, list[str]]:
    for account, domain in ((A, "a.test"), (B, "b.test")):
        store.add_account(account)
        store.add_domain(domain, account, "s", "k", "t")
    store.add_account("empty@owner.test")
    return {"a": [put("a.test", n) for n in range(5)], "b": [put("b.test", 10)]}


def test_account_emails_are_its_own_newest_first_by_page(opened: Opened) -> None:
    made = setup_accounts()
    assert [e.queue_id for e in store.list_account_emails(A, None, 0, 100)] == made["a"][::-1]
    assert [e.queue_id for e in store.list_account_emails(A, None, 1, 2)] == made["a"][::-1][1:3]
    assert [e.queue_id for e in store.list_account_emails(B, None, 0, 100)] == made["b"]
    assert store.list_account_emails(A, "delivered", 0, 100) == []
    assert store.list_account_emails("empty@owner.test", None, 0, 100) == []
    assert store.list_account_emails("nobody@owner.test", None, 0, 100) == []
    (first,) = store.list_account_emails(B, "queued", 0, 1)
    assert first.recipients[0].address == "r@dest.test" and first.body is None
    assert store.account_email_owner(made["b"][0]) == B
    assert store.account_email_owner("NOSUCHID") is None


def test_smtp_errors_and_request_rows_of_the_account_only(opened: Opened) -> None:
    setup_accounts()
    store.log_smtp_errors([(T0, "inbound", "a.test", "x", 550, "5.1.1", "a1"),
                           (T0 + dt.timedelta(seconds=1), "inbound", "a.test", "x", 450, "4.2.0", "a2"),
                           (T0, "inbound", "b.test", "x", 550, "5.1.1", "b1"),
                           (T0, "inbound", "unhosted.test", "x", 550, "5.1.1", "none")])
    assert [r.text for r in store.list_account_smtp_errors(A, 0, 10)] == ["a2", "a1"]
    assert [r.text for r in store.list_account_smtp_errors(A, 1, 10)] == ["a1"]
    assert [r.text for r in store.list_account_smtp_errors(B, 0, 10)] == ["b1"]
    a, b = store.get_account(A).id, store.get_account(B).id
    store.log_http_requests([store.HttpLogRecord(T0 - dt.timedelta(days=40), a, "GET", "/old", 200, 1, ""),
                             store.HttpLogRecord(T0, a, "GET", "/v1/a", 200, 1, ""),
                             store.HttpLogRecord(T0, b, "GET", "/v1/b", 200, 1, ""),
                             store.HttpLogRecord(T0, None, "GET", "/v1/none", 401, 1, "")])
    since = T0 - dt.timedelta(days=30)
    assert [r.route for r in store.list_account_http_logs(A, since, 0, 10)] == ["/v1/a"]
    assert [r.route for r in store.list_account_http_logs(A, T0 - dt.timedelta(days=50), 0, 10)] == [
        "/v1/a", "/old"]
    assert [r.route for r in store.list_account_http_logs(B, since, 0, 10)] == ["/v1/b"]
