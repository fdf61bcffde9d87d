"""The account's own pages of mail, error logs and request rows on both engines: newest first, by key in
either direction (rows sharing a timestamp neither repeated nor skipped across pages), filtered, and never
another account's rows; and an alias's destinations set in place."""

from __future__ import annotations

import datetime as dt

import pytest

from fwdmail import store
from fwdmail.store.accountviews import (
    account_email_record,
    page_emails,
    page_http_logs,
    page_smtp_errors,
)
from fwdmail.store.outbound import NewEmail
from tests.unit.store.conftest import Opened

T0 = dt.datetime(2026, 3, 1, 12, 0, 0)


def _email(qid: str, domain: str) -> NewEmail:
    return NewEmail(qid, domain, f"me@{domain}", ("to@else.test",), b"Subject: s\r\n", b"body\r\n")


@pytest.fixture
def two_accounts(opened: Opened) -> Opened:
    for who, domain in (("a@owner.test", "a.test"), ("b@owner.test", "b.test")):
        store.add_account(who)
        store.add_domain(domain, who, "sel", "key", "tok")
    store.add_account("c@owner.test")
    store.add_domain("a2.test", "a@owner.test", "sel", "key", "tok2")
    # five of a.test at one instant (ties broken by id), two later in a2.test, three of b.test
    store.enqueue([_email(f"A{i}", "a.test") for i in range(5)], T0)
    store.enqueue([_email(f"C{i}", "a2.test") for i in range(2)], T0 + dt.timedelta(hours=1))
    store.enqueue([_email(f"B{i}", "b.test") for i in range(3)], T0 + dt.timedelta(hours=2))
    return opened


def _walk(limit: int, **kw: object) -> list[str]:
    seen: list[str] = []
    after = None
    for _ in range(20):
        rows = page_emails("a@owner.test", limit=limit, after=after, **kw)  # type: ignore[arg-type]
        seen += [r.queue_id for r in rows]
        if len(rows) < limit:
            return seen
        after = (rows[-1].created_at, rows[-1].id)
    raise AssertionError("more pages than rows")


def _walk_back(limit: int) -> list[str]:
    """From the oldest row up, a page of newer rows at a time; each page still newest first."""
    (oldest,) = page_emails("a@owner.test", limit=1, before=(T0 - dt.timedelta(days=1), 0))
    seen = [oldest.queue_id]
    before = (oldest.created_at, oldest.id)
    for _ in range(20):
        rows = page_emails("a@owner.test", limit=limit, before=before)
        assert [r.created_at for r in rows] == sorted((r.created_at for r in rows), reverse=True)
        seen = [r.queue_id for r in rows] + seen
        if len(rows) < limit:
            return seen
        before = (rows[0].created_at, rows[0].id)
    raise AssertionError("more pages than rows")


def test_emails_page_by_key_newest_first_without_repeats_or_gaps(two_accounts: Opened) -> None:
    everything = _walk(100)
    assert everything == ["C1", "C0", "A4", "A3", "A2", "A1", "A0"]
    for limit in (1, 2, 3):
        assert _walk(limit) == everything
    assert _walk(2, domain="a.test") == ["A4", "A3", "A2", "A1", "A0"]
    assert _walk(2, since=T0 + dt.timedelta(minutes=30)) == ["C1", "C0"]
    assert _walk(2, until=T0 + dt.timedelta(minutes=30)) == ["A4", "A3", "A2", "A1", "A0"]
    assert _walk(2, status="delivered") == []
    assert _walk(2, alias_id=10**6) == []
    assert page_emails("c@owner.test", limit=10) == []
    assert page_emails("nobody@owner.test", limit=10) == []
    assert [r.queue_id for r in page_emails("b@owner.test", limit=10)] == ["B2", "B1", "B0"]
    (listed,) = page_emails("b@owner.test", limit=1, status="queued")
    assert listed.recipients[0].address == "to@else.test" and listed.body is None and listed.headers is None


def test_emails_page_back_to_newer_rows_by_key(two_accounts: Opened) -> None:
    everything = _walk(100)
    for limit in (1, 2, 3):
        assert _walk_back(limit) == everything
    newest = page_emails("a@owner.test", limit=2)
    assert page_emails("a@owner.test", limit=2, before=(newest[0].created_at, newest[0].id)) == []
    middle = page_emails("a@owner.test", limit=2, after=(newest[-1].created_at, newest[-1].id))
    back = page_emails("a@owner.test", limit=2, before=(middle[0].created_at, middle[0].id))
    assert [r.queue_id for r in back] == [r.queue_id for r in newest]


def test_one_email_is_read_only_through_its_own_account(two_accounts: Opened) -> None:
    mine = account_email_record("a@owner.test", "A1")
    assert mine is not None and mine.headers == b"Subject: s\r\n" and mine.domain == "a.test"
    assert account_email_record("b@owner.test", "A1") is None
    assert account_email_record("a@owner.test", "NOPE") is None


def test_error_logs_page_by_key_and_stay_in_the_account(two_accounts: Opened) -> None:
    rows = [(T0, "inbound", "a.test", "x@a.test", 550, "5.1.1", f"t{i}") for i in range(4)]
    rows += [(T0, "outbound", "b.test", "y@b.test", 451, "4.3.0", "theirs"),
             (T0, "outbound", "a2.test", "z@a2.test", 452, "4.2.2", "later")]
    store.log_smtp_errors(rows)
    seen, seen_rows, after = [], [], None
    for _ in range(10):
        page = page_smtp_errors("a@owner.test", limit=2, after=after)
        seen += [r.text for r in page]
        seen_rows += page
        if len(page) < 2:
            break
        after = (page[-1].created_at, page[-1].id)
    assert seen == ["later", "t3", "t2", "t1", "t0"]
    assert [r.text for r in page_smtp_errors("a@owner.test", limit=10, direction="outbound")] == ["later"]
    assert [r.text for r in page_smtp_errors("a@owner.test", limit=10, domain="a2.test")] == ["later"]
    assert [r.text for r in page_smtp_errors("b@owner.test", limit=10)] == ["theirs"]
    assert [r.text for r in page_smtp_errors("a@owner.test", limit=10, alias="Z@A2.test")] == ["later"]
    assert page_smtp_errors("a@owner.test", limit=10, alias="y@b.test") == []
    assert page_smtp_errors("a@owner.test", limit=10, since=T0 + dt.timedelta(seconds=1)) == []
    newest = page_smtp_errors("a@owner.test", limit=2)
    back = page_smtp_errors("a@owner.test", limit=2, before=(seen_rows[2].created_at, seen_rows[2].id))
    assert [r.text for r in back] == [r.text for r in newest] == ["later", "t3"]


def test_request_rows_are_the_accounts_own_by_key_after_a_time(two_accounts: Opened) -> None:
    a, b = store.get_account("a@owner.test").id, store.get_account("b@owner.test").id
    store.log_http_requests([store.HttpLogRecord(T0 - dt.timedelta(days=40), a, "GET", "/old", 200, 1, ""),
                             *(store.HttpLogRecord(T0, a, "GET", f"/v1/a{i}", 200, 1, "") for i in range(3)),
                             store.HttpLogRecord(T0, b, "GET", "/v1/b", 200, 1, ""),
                             store.HttpLogRecord(T0, None, "GET", "/v1/none", 401, 1, "")])
    since = T0 - dt.timedelta(days=30)
    mine = page_http_logs("a@owner.test", limit=10, since=since)
    assert [r.route for r in mine] == ["/v1/a2", "/v1/a1", "/v1/a0"]
    assert [r.route for r in page_http_logs("a@owner.test", limit=10)][-1] == "/old"
    assert [r.route for r in page_http_logs("b@owner.test", limit=10, since=since)] == ["/v1/b"]
    assert [r.route for r in page_http_logs("a@owner.test", limit=1, since=since,
                                             after=(mine[0].created_at, mine[0].id))] == ["/v1/a1"]
    assert [r.route for r in page_http_logs("a@owner.test", limit=1, since=since,
                                             before=(mine[2].created_at, mine[2].id))] == ["/v1/a1"]


def test_an_alias_gets_new_destinations_in_place(two_accounts: Opened) -> None:
    store.add_alias("a.test", "exact", "me", ["one@else.test"])
    before = store.directory_version()
    rec = store.set_alias_destinations("a.test", "exact", "me", ["two@else.test", "three@else.test"])
    assert rec.destinations == ("two@else.test", "three@else.test")
    assert store.get_alias("a.test", "exact", "me").destinations == rec.destinations
    assert store.directory_version() > before  # the MX's cache hears of it
    with pytest.raises(store.NotFound):
        store.set_alias_destinations("a.test", "exact", "nobody", ["x@else.test"])
