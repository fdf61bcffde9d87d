"""The account's own pages of mail and error logs on both engines: newest first, by key (rows sharing a
timestamp neither repeated nor skipped across pages), filtered, and never another account's rows; and an
alias's destinations set in place."""

from __future__ import annotations

import datetime as dt

import pytest

from fwdmail import store
from fwdmail.store.accountviews import (
    account_email_record,
    page_emails,
    page_smtp_errors,
    set_alias_destinations,
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
    assert [r.queue_id for r in page_emails("b@owner.test", limit=10)] == ["B2", "B1", "B0"]


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
    seen, after = [], None
    for _ in range(10):
        page = page_smtp_errors("a@owner.test", limit=2, after=after)
        seen += [r.text for r in page]
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


def test_an_alias_gets_new_destinations_in_place(two_accounts: Opened) -> None:
    store.add_alias("a.test", "exact", "me", ["one@else.test"])
    before = store.directory_version()
    rec = set_alias_destinations("a.test", "exact", "me", ["two@else.test", "three@else.test"])
    assert rec.destinations == ("two@else.test", "three@else.test")
    assert store.get_alias("a.test", "exact", "me").destinations == rec.destinations
    assert store.directory_version() > before  # the MX's cache hears of it
    with pytest.raises(ValueError):
        set_alias_destinations("a.test", "exact", "me", [])
    with pytest.raises(store.NotFound):
        set_alias_destinations("a.test", "exact", "nobody", ["x@else.test"])
