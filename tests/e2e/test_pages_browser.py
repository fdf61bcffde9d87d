"""The "My Account" pages in a real headless Chromium against a real `fwdmail serve`: an invite link, a
password set through it, logging in (with TOTP), adding a domain and an alias, deleting the account.
Screenshots of each step go to tests/artifacts/screenshots/."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import browser, login, page, shot  # noqa: F401  (fixtures)
from tests.support.daemon import Daemon

EMAIL = "carol@owner.test"
PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("pages"))
    daemon.cli("account", "add", EMAIL)
    daemon.start(wait_ports=[daemon.http_port])
    yield daemon
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.logs()


def base(d: Daemon) -> str:
    return f"http://127.0.0.1:{d.http_port}"


def invite(d: Daemon, email: str = EMAIL) -> str:
    url = json.loads(d.cli("account", "invite", email, "--json").output)["url"]
    assert url.startswith(base(d) + "/set-password/")
    return url


def test_an_invite_link_sets_the_password_and_the_account_logs_in(d: Daemon, page: Any) -> None:  # noqa: F811
    page.goto(invite(d))
    shot(page, "01-set-password")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=repeat]", PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url(re.compile(r".*/login\?set=1$"))
    login(page, base(d), EMAIL, PASSWORD)
    assert page.locator(".who").inner_text() == EMAIL
    assert Path(shot(page, "02-domains-empty")).exists()
