"""`[database] url`: empty is SQLite in data_dir; a postgresql:// URL is checked with a one-line error that
never shows its password."""

from __future__ import annotations

import pytest

from fwdmail import config


@pytest.mark.parametrize("url", ["", "postgresql://fwdmail@db.internal:5432/fwdmail",
                                 "postgres://fwdmail:pw@127.0.0.1/mail", "postgresql:///mail?host=/run/postgresql"])
def test_good_urls(url: str) -> None:
    assert config.from_dict({"database": {"url": url}}).database.url == url


@pytest.mark.parametrize("url", ["mysql://u:hunter2@h/db", "postgresql://u:hunter2@h:99999/db",
                                 "postgresql://u:hunter2@h", "postgresql://u:hunter2@/db", "fwdmail.db",
                                 "postgresql://u:hunter2@h/db name", "postgresql://u:hun@ter2@h:0/db"])
def test_bad_urls_are_one_line_without_the_password(url: str) -> None:
    with pytest.raises(config.ConfigError) as exc:
        config.from_dict({"database": {"url": url}})
    message = str(exc.value)
    assert message.startswith("database.url: must be empty (SQLite in data_dir) or postgresql://")
    assert "hunter2" not in message and "ter2" not in message and "\n" not in message


def test_sqlite_is_the_default() -> None:
    assert config.from_dict({}).database.url == ""
