"""Keyset pages of an account's domains and aliases (`app.keyset`, the API's `?after=`), on SQLite and on
PostgreSQL: pages in listing order, stable while aliases are added, another account's domain not found,
and the limit bounded."""

from __future__ import annotations

import pytest

from fwdmail import store
from fwdmail.app import keyset
from tests.support.engines import Opened

OWNER, OTHER = "owner@owner.test", "other@owner.test"


@pytest.fixture
def db(opened: Opened) -> Opened:
    store.add_account(OWNER)
    store.add_account(OTHER)
    for name in ("c.test", "a.test", "b.test"):
        store.add_domain(name, OWNER, "sel", "not a key", "token")
    store.add_domain("theirs.test", OTHER, "sel", "not a key", "token")
    return opened


def add(domain: str, kind: str, local: str) -> None:
    store.add_alias(domain, kind, local, [f"{local.strip('^$*')}x@dest.test"])


def every_page(domain: str, limit: int, between: list[tuple[str, str]] | None = None) -> list[list[str]]:
    """The addresses of each page, reading `limit` at a time; after the first page the aliases in
    `between` (kind, local) are added."""
    out: list[list[str]] = []
    after = ("", "")
    for _ in range(50):
        page = keyset.aliases_after(OWNER, domain, after, limit)
        out.append([a.address for a in page.aliases])
        if between:
            for kind, local in between:
                add(domain, kind, local)
            between = None
        if page.next is None:
            return out
        after = page.next
    raise AssertionError("the pages never ended")


def test_alias_pages_follow_the_listing_order_and_hold_under_inserts(db: Opened) -> None:
    for local in ("m", "d", "x", "q"):
        add("a.test", "exact", local)
    add("a.test", "catch-all", "*")
    add("a.test", "regex", "^r.*$")
    listed = [a.address for a in store.iter_aliases("a.test")]
    assert [a for page in every_page("a.test", 2) for a in page] == listed
    assert every_page("a.test", 100) == [listed]

    # after the first page ("*@a.test", "d@a.test"): one alias sorts before where the reading stands
    # (an offset would now repeat "d@a.test"), one after it (read in its place, once)
    read = [a for page in every_page("a.test", 2, between=[("exact", "b"), ("exact", "n")]) for a in page]
    assert read == [a for a in [a.address for a in store.iter_aliases("a.test")] if a != "b@a.test"]
    assert len(read) == len(set(read))


def test_domain_pages_are_the_accounts_own_by_name(db: Opened) -> None:
    first = keyset.domains_after(OWNER, "", 2)
    assert [d.name for d in first.domains] == ["a.test", "b.test"] and first.next == "b.test"
    last = keyset.domains_after(OWNER, first.next, 2)
    assert [d.name for d in last.domains] == ["c.test"] and last.next is None
    assert [d.name for d in keyset.domains_after(OTHER, "", 10).domains] == ["theirs.test"]


def test_another_accounts_domain_is_not_found_and_the_limit_is_bounded(db: Opened) -> None:
    with pytest.raises(store.NotFound, match=r"no domain theirs\.test"):
        keyset.aliases_after(OWNER, "theirs.test", ("", ""), 10)
    with pytest.raises(store.NotFound):
        keyset.aliases_after(OWNER, "nowhere.test", ("", ""), 10)
    for limit in (0, 101):
        with pytest.raises(ValueError, match="limit must be between 1 and 100"):
            keyset.domains_after(OWNER, "", limit)
    with pytest.raises(ValueError, match="too long"):
        keyset.aliases_after(OWNER, "a.test", ("exact", "x" * 5000), 10)
