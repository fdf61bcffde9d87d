"""`aliases_from` per domain on both engines: set and validated, and added to a database made before it."""

from __future__ import annotations

import pytest

from fwdmail import store
from fwdmail.store import db as store_db
from tests.unit.store.conftest import Opened


def test_aliases_from_is_set_validated_and_bumps_the_directory(opened: Opened) -> None:
    store.add_account("o@owner.test")
    store.add_domain("a.test", "o@owner.test", "sel", "key", "token")
    assert store.get_domain("a.test").aliases_from == "store"
    version = store.directory_version()
    assert store.update_domain("a.test", aliases_from="both").aliases_from == "both"
    assert store.directory_changes(version)[1] == ["a.test"]
    with pytest.raises(ValueError, match="aliases_from must be one of store, dns, both"):
        store.update_domain("a.test", aliases_from="ldap")
    assert store.get_domain("a.test").aliases_from == "both"


def test_a_database_from_before_the_column_gets_it(opened: Opened) -> None:
    store.add_account("o@owner.test")
    store.add_domain("old.test", "o@owner.test", "sel", "key", "token")
    store.add_alias("old.test", "exact", "kept", ["k@dest.test"])
    at = store_db.MIGRATIONS.index(store_db._aliases_from) + 1  # the schema version before it
    opened.outside("ALTER TABLE domain DROP COLUMN aliases_from")
    opened.outside("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(at),))
    store.close_store()
    opened.reopen()
    assert store_db.schema_version(store_db.database.obj) == store.SCHEMA_VERSION
    assert store.get_domain("old.test").aliases_from == "store"
    assert [a.local for a in store.list_aliases("old.test")] == ["kept"]  # a table rebuild would cascade
    assert store.update_domain("old.test", aliases_from="dns").aliases_from == "dns"
