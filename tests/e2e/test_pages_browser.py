"""The "My Account" pages in a real headless Chromium against a real `fwdmail serve`: an invite link, a
password set through it, logging in (with TOTP), adding a domain and an alias, deleting the account.
Every request stays on the daemon's origin and no console error (a CSP violation among them) appears.
Screenshots of each step go to tests/artifacts/screenshots/."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest

from tests.support.browser import (  # noqa: F401  (fixtures)
    DESKTOP,
    PHONE,
    browser,
    login,
    page,
    shot,
    watch,
)
from tests.support.daemon import Daemon
from tests.support.mx import db_rows

pytestmark = pytest.mark.slow  # a browser and a daemon: ~15-25 s

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


def test_invite_password_totp_domain_alias_then_delete_the_account(d: Daemon, page: Any) -> None:  # noqa: F811
    seen = watch(page)
    link = invite(d)
    page.goto(link)
    shot(page, "01-set-password")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=repeat]", PASSWORD)
    page.click("form.card button[type=submit]")
    page.wait_for_url(re.compile(r".*/login\?set=1$"))
    login(page, base(d), EMAIL, PASSWORD)
    assert page.locator(".who").inner_text() == EMAIL

    page.goto(f"{base(d)}/security")
    page.click("#totp button[type=submit]")
    secret = page.locator("#totp-secret").inner_text().strip()
    assert page.locator("#totp-uri").inner_text().startswith("otpauth://totp/")
    page.fill("#totp input[name=code]", pyotp.TOTP(secret).now())
    page.click("#totp button[type=submit]")
    assert "Two-factor login is on" in page.locator(".notice").inner_text()
    page.click("form.logout button")
    page.wait_for_url(re.compile(r".*/login$"))
    login(page, base(d), EMAIL, PASSWORD, totp_secret=secret, later=True)

    page.fill("input[name=name]", "carol.test")
    page.click("form.inline button[type=submit]")
    page.wait_for_url(re.compile(r".*/domains/carol\.test\?added=1$"))
    assert "_domainkey.carol.test" in page.content()
    page.fill("input[name=retention_days]", "14")
    page.click("details form button[type=submit]")
    assert page.locator(".notice").inner_text() == "Settings saved."
    shot(page, "03-domain-dns-records")
    page.set_viewport_size(PHONE)
    shot(page, "04-domain-phone")
    page.set_viewport_size(DESKTOP)

    page.goto(f"{base(d)}/aliases?domain=carol.test")
    page.fill("form.card input[name=name]", "hello")
    page.fill("form.card textarea[name=destinations]", "carol@dest.test")
    page.click("form.card button[type=submit]")
    assert "hello@carol.test added." in page.locator(".notice").inner_text()
    page.click("td[data-label=Alias] a")
    page.click("form[action='/alias/password'] button")
    assert len(page.locator("#new-password").inner_text().strip()) >= 16
    shot(page, "05-alias")
    page.goto(f"{base(d)}/aliases?domain=carol.test")
    shot(page, "06-aliases")

    page.goto(f"{base(d)}/security")
    shot(page, "07-security")
    page.click("#tokens form[action='/security/tokens'] button")
    assert page.locator("#new-token").inner_text().startswith("fwd_")
    page.click("#tokens button.copy")
    page.wait_for_selector("#tokens button.copy:text('Copied')")
    page.fill("#delete input[name=confirm]", EMAIL)
    page.click("#delete button[type=submit]")
    assert "are deleted" in page.content()
    assert EMAIL not in d.cli("account", "list").output
    assert page.context.cookies() == []
    assert seen.outside(base(d)) == [] and len(seen.requests) > 20
    assert seen.errors == []
    # the request log: route patterns only (no token, no query string, no address), no full client IP;
    # the account's own rows went with it
    logged = db_rows(d, "SELECT route, client_net, account_id FROM http_log")
    routes = {r["route"] for r in logged}
    assert {"/set-password/{token}", "/login"} <= routes and {r["account_id"] for r in logged} == {None}
    assert not any("?" in r or "@" in r or link.rsplit("/", 1)[1] in r for r in routes)
    assert {r["client_net"] for r in logged} == {"127.0.0.0/24"}
    assert link.rsplit("/", 1)[1] not in d.logs() and secret not in d.logs()
    assert "not written" not in d.logs()  # the deleting request's row does not name the deleted account
