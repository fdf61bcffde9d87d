"""`fwdmail account invite` and `fwdmail account password`: a one-time link printed once (only its hash
stored), starting with `[http] public_url`; a reset forgets the old password and ends every session."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fwdmail import store
from fwdmail.store.models import LoginLink
from tests.support.daemon import Daemon

A = "alice@owner.test"


def _token(url: str) -> str:
    return url.rsplit("/set-password/", 1)[1]


def test_invite_prints_a_link_and_stores_only_its_hash(tmp_path: Path) -> None:
    d = Daemon(tmp_path, {"http": {"public_url": "https://mail.example.org/"}})
    d.cli("account", "add", A)
    out = d.cli("account", "invite", A).output
    assert "one use, until" in out
    url = next(w for w in out.split() if w.startswith("https://"))
    assert url.startswith("https://mail.example.org/set-password/")
    data = json.loads(d.cli("account", "invite", A, "--json").output)
    assert data["email"] == A and data["url"].startswith("https://mail.example.org/set-password/")
    d.cli("account", "list")  # the store is open in this process
    hashes = [r.token_hash for r in LoginLink.select()]
    assert hashes == [hashlib.sha256(_token(data["url"]).encode()).hexdigest()]  # the first is replaced
    assert "no account" in d.cli("account", "invite", "nobody@owner.test", expect=1).output


def test_password_reset_forgets_the_password_and_links_to_the_listen_address(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.cli("account", "add", A)
    store.set_login(A, store.utcnow(), password_hash="scrypt$old")
    data = json.loads(d.cli("account", "password", A, "--json").output)
    assert data["url"].startswith(f"http://127.0.0.1:{d.http_port}/set-password/")
    assert store.get_login_state(A).password_hash is None
