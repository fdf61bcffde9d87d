"""The store side of per-recipient lookups: indexed lookup keys, the per-domain change log, and the
migration that brings an existing (schema 1) data dir to them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fwdmail import store
from fwdmail.store.models import Alias, DirectoryChange, Domain, OutboundEmail, database
from tests.unit.store.conftest import Opened

OWNER = "owner@owner.test"


@pytest.fixture
def db(opened: Opened) -> Opened:
    store.add_account(OWNER)
    for name in ("a.test", "b.test"):
        store.add_domain(name, OWNER, "sel", "key", "tok")
    return opened


def changed_since(version: int) -> list[str] | None:
    found = store.directory_changes(version)[1]
    return None if found is None else sorted(found)


def test_each_change_names_the_domains_it_touched(db: Opened) -> None:
    steps: list[tuple[Callable[[], object], list[str] | None]] = [
        (lambda: store.add_alias("a.test", "exact", "x", ["d@dest.test"]), ["a.test"]),
        (lambda: store.set_alias_state("a.test", "exact", "x", "quiet"), ["a.test"]),
        (lambda: store.set_alias_password("a.test", "exact", "x", "scrypt$h"), ["a.test"]),
        (lambda: store.remove_alias("a.test", "exact", "x"), ["a.test"]),
        (lambda: store.update_domain("b.test", retention_days=3), ["b.test"]),
        (lambda: store.add_domain("c.test", OWNER, "sel", "key", "tok"), ["c.test"]),
        (lambda: store.remove_domain("c.test"), None),  # every domain: the log keeps no removed name
        (lambda: store.add_account("other@owner.test"), []),
        (lambda: store.delete_account(OWNER), None),
    ]
    for step, domains in steps:
        before = store.directory_version()
        step()
        assert store.directory_version() == before + 1
        assert changed_since(before) == domains
    assert store.directory_changes(store.directory_version()) == (store.directory_version(), [])
    assert store.directory_changes(None) == (store.directory_version(), [])
    assert [r.domain for r in DirectoryChange.select()] == ["*"]


def test_a_change_without_domains_named_drops_everything(db: Opened) -> None:
    before = store.directory_version()
    with database.atomic():
        store.directory._bump_directory()  # what a bulk writer that names no domain says
    assert store.directory_changes(before) == (before + 1, None)
    assert store.directory_changes(before + 5) == (before + 1, None), "a version gone back: drop all"


def test_many_domains_changed_drops_everything(db: Opened) -> None:
    before = store.directory_version()
    with database.atomic():
        store.directory._bump_directory(f"d{i}.test" for i in range(store.directory.MAX_CHANGES + 1))
    assert store.directory_changes(before)[1] is None


def test_an_import_batch_names_the_domains_it_wrote(db: Opened) -> None:
    """Each batch of `alias import` drops from the daemons' caches the domains it changed, not all."""
    ids = store.domain_ids(["a.test", "b.test"])
    store.add_alias("b.test", "exact", "same", ["same@dest.test"])
    rows = [store.ImportRow(ids["a.test"], "exact", "new", ("new@dest.test",)),
            store.ImportRow(ids["b.test"], "exact", "same", ("same@dest.test",))]  # unchanged
    before = store.directory_version()
    store.import_batch(rows, store.ImportWrites())
    assert changed_since(before) == ["a.test"]
    before = store.directory_version()
    again = [rows[0], store.ImportRow(ids["b.test"], "exact", "same", ("other@dest.test",))]
    store.import_batch(again, store.ImportWrites())
    assert changed_since(before) == ["b.test"]
    before = store.directory_version()
    store.import_batch(again, store.ImportWrites())
    assert store.directory_version() == before, "nothing written, nothing to drop"


def test_lookup_reads_one_recipient(db: Opened) -> None:
    store.add_alias("a.test", "exact", "Bob", ["bob@dest.test"])
    store.add_alias("a.test", "exact", "BOB", ["later@dest.test"])
    store.add_alias("a.test", "regex", "^x.*$", ["x@dest.test"])
    store.add_alias("a.test", "catch-all", "*", ["all@dest.test"])
    store.add_alias("b.test", "exact", "bob", ["other@dest.test"])
    found = store.lookup_aliases("a.test", ["bob", "nobody"])
    assert found is not None and found.domain.name == "a.test"
    assert found.exact["bob"] is not None and found.exact["bob"].destinations == ("later@dest.test",)
    assert found.exact["nobody"] is None
    assert found.rules is not None and [a.kind for a in found.rules] == ["regex", "catch-all"]
    assert store.lookup_aliases("a.test", [], with_rules=False).rules is None  # type: ignore[union-attr]
    assert store.lookup_aliases("stranger.test", ["bob"]) is None


def test_every_insert_fills_the_lookup_key(db: Opened) -> None:
    a = Domain.get(Domain.name == "a.test")
    Alias.insert(domain=a, kind="exact", local="Dict", destinations="[]").execute()
    Alias.insert_many([{"domain": a, "kind": "exact", "local": "MANY", "destinations": "[]"}]).execute()
    Alias.insert_many([(a.id, "exact", "Tuple", "[]")],
                      fields=[Alias.domain, Alias.kind, Alias.local, Alias.destinations]).execute()
    Alias.create(domain=a, kind="exact", local="Created", destinations="[]")
    assert sorted(r.lookup for r in Alias.select()) == ["created", "dict", "many", "tuple"]


def test_an_older_data_dir_is_migrated(opened: Opened) -> None:
    store.add_account(OWNER)
    store.add_domain("a.test", OWNER, "sel", "key", "tok")
    store.add_alias("a.test", "exact", "Mixed", ["m@dest.test"])
    alias_id = Alias.get(Alias.local == "Mixed").id
    sent = store.NewEmail(store.new_queue_id(), "a.test", "mixed@a.test", ("r@dest.test",),
                          b"Subject: s\r\n", b"body\r\n", alias_id=alias_id)
    store.enqueue([sent], store.utcnow())
    store.close_store()
    for statement in (  # as schema 1 was: no lookup key, no change log, no claim node, leases, tokens, log
        "ALTER TABLE outbound_email DROP COLUMN claim_node", "DROP TABLE lease",
        "DROP INDEX alias_domain_id_kind_lookup", "ALTER TABLE alias DROP COLUMN lookup",
        "DROP TABLE directory_change", "DROP TABLE api_token", "DROP TABLE http_log",
        "DROP TABLE account_login", "DROP TABLE web_session", "DROP TABLE login_link",
        "DROP TABLE sender_rule", "DROP TABLE webhook_key",
        "ALTER TABLE domain DROP COLUMN aliases_from",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    ):
        opened.outside(statement)
    opened.reopen()
    try:
        assert store.db.schema_version(database.obj) == store.SCHEMA_VERSION == 7
        assert {"sender_rule", "webhook_key"} <= set(database.get_tables())
        assert store.get_domain("a.test").aliases_from == "store"
        found = store.lookup_aliases("a.test", ["mixed"])
        assert found is not None and found.exact["mixed"] is not None
        # no table was rebuilt under its references (SQLite drops a rebuilt table's rows first, which
        # runs the foreign keys' ON DELETE actions): the queued message still belongs to its alias
        assert [r.alias_id for r in OutboundEmail.select()] == [alias_id]
        before = store.directory_version()
        store.add_alias("a.test", "exact", "new", ["n@dest.test"])
        assert store.directory_changes(before) == (before + 1, ["a.test"])
        indexes = [i.name for i in database.get_indexes("alias")]
        assert "alias_domain_id_kind_lookup" in indexes
        assert "claim_node" in [c.name for c in database.get_columns("outbound_email")]
    finally:
        store.close_store()
