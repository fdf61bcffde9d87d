"""Sender allow/deny lists and webhook keys in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from fwdmail import store

OWNER = "owner@owner.test"


@pytest.fixture
def domain(opened: object) -> str:
    store.add_account(OWNER)
    store.add_domain("a.test", OWNER, "sel", "key", "tok")
    return "a.test"


def test_rules_are_added_once_removed_and_read_per_domain(domain: str) -> None:
    now = store.utcnow()
    assert store.add_sender_rules(domain, "deny", ["@spam.test", "192.0.2.0/24"], now) == [
        "@spam.test", "192.0.2.0/24"]
    assert store.add_sender_rules(domain, "deny", ["@spam.test", "x@y.test"], now) == ["x@y.test"]
    assert store.add_sender_rules(domain, "allow", ["@spam.test"], now) == ["@spam.test"]
    assert store.domain_sender_rules(domain) == (("@spam.test",), ("@spam.test", "192.0.2.0/24", "x@y.test"))
    assert store.remove_sender_rules(domain, "deny", ["x@y.test", "nope@y.test"]) == ["x@y.test"]
    assert [(r.kind, r.pattern) for r in store.list_sender_rules(domain)] == [
        ("allow", "@spam.test"), ("deny", "@spam.test"), ("deny", "192.0.2.0/24")]
    assert store.any_allow_rules()
    assert store.domain_sender_rules("other.test") is None
    with pytest.raises(ValueError, match="allow or deny"):
        store.add_sender_rules(domain, "maybe", ["x@y.test"], now)


def test_a_change_names_its_domain_in_the_change_log(domain: str) -> None:
    before = store.directory_version()
    store.add_sender_rules(domain, "allow", ["@ok.test"], store.utcnow())
    assert store.directory_changes(before) == (before + 1, [domain])
    store.remove_sender_rules(domain, "allow", ["@ok.test"])
    assert store.directory_changes(before + 1) == (before + 2, [domain])
    store.remove_sender_rules(domain, "allow", ["@ok.test"])  # nothing removed: no new version
    assert store.directory_version() == before + 2


def test_webhook_key_is_made_once_and_replaced_on_rotate(domain: str) -> None:
    now = store.utcnow()
    assert store.webhook_key(domain) is None
    assert store.set_webhook_key(domain, "k1", now, False) == "k1"
    assert store.set_webhook_key(domain, "k2", now, False) == "k1"
    assert store.set_webhook_key(domain, "k3", now, True) == "k3"
    assert store.webhook_key(domain) == "k3"


def test_removing_the_domain_removes_its_lists_and_key(domain: str) -> None:
    store.add_sender_rules(domain, "allow", ["@ok.test"], store.utcnow())
    store.set_webhook_key(domain, "k", store.utcnow(), False)
    store.remove_domain(domain)
    store.add_domain(domain, OWNER, "sel", "key", "tok")
    assert store.domain_sender_rules(domain) == ((), ())
    assert store.webhook_key(domain) is None
    assert not store.any_allow_rules()
