"""The "My Account" pages in-process (aiohttp's test client against the real app and a real store): every
form refused without its CSRF token, login limits per client network and per account, session expiry,
logout, TOTP, one-time links, tenancy (another account's domain or alias is a 404), the security headers
and the one session cookie."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pyotp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from fwdmail import store
from fwdmail.app import accounts, now, sessions, tenancy
from fwdmail.app.weblogin import LoginLimits
from fwdmail.config import Config, HttpConfig
from fwdmail.runtime import datadir, keys
from fwdmail.runtime.context import Context
from fwdmail.store.models import WebSession
from fwdmail.web import pages
from fwdmail.web.pagebase import STATE_KEY
from fwdmail.web.server import RequestLog, make_app

A, B = "alice@owner.test", "bob@owner.test"
PASSWORD = "a long enough password"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Browser:
    """A test client that keeps the last page's CSRF token and sends it with each form."""

    def __init__(self, client: TestClient, forwarded: str | None = None) -> None:
        self.client = client
        self.csrf = ""
        self.headers = {"X-Forwarded-For": forwarded} if forwarded else {}

    async def get(self, path: str, status: int = 200) -> str:
        resp = await self.client.get(path, allow_redirects=False, headers=self.headers)
        text = await resp.text()
        assert resp.status == status, (path, resp.status, text[-500:])
        if m := CSRF.search(text):
            self.csrf = m.group(1)
        return text

    async def post(self, path: str, data: dict[str, str], status: int = 200, csrf: str | None = None,
                   headers: dict[str, str] | None = None) -> Any:
        body = dict(data, csrf=self.csrf if csrf is None else csrf)
        resp = await self.client.post(path, data=body, allow_redirects=False,
                                      headers={**self.headers, **(headers or {})})
        text = await resp.text()
        assert resp.status == status, (path, resp.status, text[-800:])
        if m := CSRF.search(text):
            self.csrf = m.group(1)
        resp.body_text = text  # type: ignore[attr-defined]
        return resp

    async def login(self, email: str = A, password: str = PASSWORD, status: int = 303) -> Any:
        await self.get("/login")
        return await self.post("/login", {"email": email, "password": password}, status=status)


Scenario = Callable[[Browser, Context], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, http: HttpConfig | None = None,
        limits: LoginLimits | None = None, forwarded: str | None = None) -> None:
    cfg = Config(data_dir=str(tmp_path / "data"), hostname="mx.fwdmail.test", http=http or HttpConfig())
    runtime = datadir.prepare(cfg, create=True)
    for email in (A, B):
        accounts.add_account(email)
        store.set_login(email, now(), password_hash=keys.hash_password(PASSWORD))

    async def main() -> None:
        ctx = Context(runtime)
        app = make_app(ctx, RequestLog(ctx))
        if limits is not None:
            app[STATE_KEY].limits = limits
        try:
            async with TestClient(TestServer(app)) as client:
                await scenario(Browser(client, forwarded), ctx)
        finally:
            ctx.blocking.shutdown()
            await ctx.delivery.close()

    asyncio.run(main())


def _own_domain(email: str, name: str) -> None:
    prepared = tenancy.prepare_domain(email, name, now())
    tenancy.add_prepared_domain(prepared)


POSTS = ["/logout", "/domains", "/domains/a.test/verify", "/domains/a.test/settings", "/aliases",
         "/alias/destinations", "/alias/state", "/alias/password", "/alias/remove", "/security/password",
         "/security/totp/begin", "/security/totp/confirm", "/security/totp/disable", "/security/tokens",
         "/security/tokens/revoke", "/security/delete"]


def test_every_page_post_route_is_in_the_csrf_list() -> None:
    served = {r.path for r in pages.pages_login.routes() + pages.pages_domains.routes()
              + pages.pages_aliases.routes() + pages.pages_security.routes() if r.method == "POST"}
    listed = {p.replace("a.test", "{domain}") for p in POSTS}
    assert served - {"/login", "/login/totp", "/set-password/{token}"} == listed


def test_every_form_is_refused_without_its_csrf_token(tmp_path: Path) -> None:
    async def scenario(b: Browser, ctx: Context) -> None:
        await b.post("/login", {"email": A, "password": PASSWORD}, status=403, csrf="")
        await b.post("/set-password/whatever", {"password": PASSWORD, "repeat": PASSWORD}, status=403,
                     csrf="1.forged")
        await b.login()
        good = b.csrf
        fields = {"name": "new.test", "domain": "a.test", "alias": "info", "destinations": "x@dest.test",
                  "state": "reject", "retention_days": "7", "confirm": A, "token_id": "1", "code": "000000",
                  "current": PASSWORD, "password": "another password", "repeat": "another password"}
        for path in POSTS:
            await b.post(path, fields, status=403, csrf="")
            await b.post(path, fields, status=403, csrf=good[:-1] + ("0" if good[-1] != "0" else "1"))
        await b.get("/domains")  # still logged in: nothing above was done
        assert accounts.get_account(A).domains == ("a.test",)
        assert tenancy.own_alias(A, "a.test", "info").state == "enabled"
        assert tenancy.own_domain(A, "a.test").retention_days == 0

    def seeded(b: Browser, ctx: Context) -> Awaitable[None]:
        _own_domain(A, "a.test")
        tenancy.add_own_alias(A, "a.test", "info", ["me@dest.test"])
        return scenario(b, ctx)

    run(tmp_path, seeded)


def test_login_limits_count_per_client_network_and_per_account(tmp_path: Path) -> None:
    async def scenario(b: Browser, ctx: Context) -> None:
        for _ in range(3):
            await b.login(A, "wrong password", status=401)
        # the account's budget is spent: even the right password is refused, before any hash
        assert (await b.login(A, PASSWORD, status=429)).status == 429
        # B from the same client network: 2 more failures spend the client's budget (5)
        for _ in range(2):
            await b.login(B, "wrong password", status=401)
        b.headers = {"X-Forwarded-For": "192.0.2.200"}  # same /24
        await b.login(B, PASSWORD, status=429)
        b.headers = {"X-Forwarded-For": "198.51.100.7"}  # another network: B's own budget is left
        await b.login(B, PASSWORD, status=303)

    run(tmp_path, scenario, http=HttpConfig(trusted_proxies=("127.0.0.1",),
                                            login_failures_per_client_per_hour=5,
                                            login_failures_per_account_per_hour=3,
                                            login_failures_total_per_minute=100), forwarded="192.0.2.1")


def test_a_session_expires_and_logout_deletes_it(tmp_path: Path) -> None:
    async def scenario(b: Browser, ctx: Context) -> None:
        await b.login()
        await b.get("/domains")
        WebSession.update(expires_at=now() - dt.timedelta(seconds=1)).execute()
        await b.get("/domains", status=303)
        await b.login()
        cookie = b.client.session.cookie_jar.filter_cookies(b.client.make_url("/"))["fwdmail_session"].value
        await b.get("/security")
        await b.post("/logout", {}, status=303)
        assert WebSession.select().count() == 1  # only the expired one, left to retention
        resp = await b.client.get("/domains", allow_redirects=False, cookies={"fwdmail_session": cookie})
        assert resp.status == 303 and resp.headers["Location"] == "/login"

    run(tmp_path, scenario)


def test_another_accounts_domain_and_alias_are_404(tmp_path: Path) -> None:
    async def scenario(b: Browser, ctx: Context) -> None:
        await b.login(A)
        await b.get("/domains/b.test", status=404)
        await b.get("/domains/nowhere.test", status=404)
        await b.get("/aliases?domain=b.test", status=404)
        await b.get("/alias?domain=b.test&alias=info", status=404)
        await b.get("/security")
        await b.post("/domains/b.test/settings", {"retention_days": "9"}, status=404)
        await b.post("/domains/b.test/verify", {}, status=404)
        for path in ("/alias/destinations", "/alias/state", "/alias/password", "/alias/remove"):
            await b.post(path, {"domain": "b.test", "alias": "info", "destinations": "x@evil.test",
                                "state": "reject"}, status=404)
        await b.post("/aliases", {"domain": "b.test", "name": "mine", "destinations": "x@evil.test"},
                     status=404)
        assert tenancy.own_domain(B, "b.test").retention_days == 0
        alias = tenancy.own_alias(B, "b.test", "info")
        assert alias.state == "enabled" and alias.destinations == ("me@dest.test",) and not alias.has_password
        assert [a.address for a in tenancy.own_aliases(B, "b.test", 1, 10).aliases] == ["info@b.test"]

    def seeded(b: Browser, ctx: Context) -> Awaitable[None]:
        _own_domain(B, "b.test")
        tenancy.add_own_alias(B, "b.test", "info", ["me@dest.test"])
        return scenario(b, ctx)

    run(tmp_path, seeded)


def test_every_response_has_the_security_headers_and_one_cookie(tmp_path: Path) -> None:
    async def scenario(b: Browser, ctx: Context) -> None:
        for path in ("/login", "/static/style.css", "/healthz", "/v1/account", "/nowhere"):
            resp = await b.client.get(path, allow_redirects=False)
            csp = resp.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert "Set-Cookie" not in resp.headers, path
        resp = await b.login()
        cookies = resp.headers.getall("Set-Cookie")
        assert len(cookies) == 1 and cookies[0].startswith("fwdmail_session=")
        flags = {f.strip().lower() for f in cookies[0].split(";")[1:]}
        assert {"httponly", "samesite=lax", "path=/"} <= flags and "secure" not in flags
        page = await b.get("/security")
        assert "<script>" not in page and 'src="/static/copy.js"' in page
        await b.post("/logout", {}, status=303)
        await b.get("/login")
        resp = await b.post("/login", {"email": A, "password": PASSWORD}, status=303,
                            headers={"X-Forwarded-Proto": "https"})
        assert "secure" in resp.headers["Set-Cookie"].lower()  # so plain http no longer sends it:
        await b.get("/security", status=303)

    run(tmp_path, scenario, http=HttpConfig(trusted_proxies=("127.0.0.1",)))


def test_x_forwarded_proto_from_an_untrusted_peer_does_not_make_the_cookie_secure(tmp_path: Path) -> None:
    async def scenario(b: Browser, ctx: Context) -> None:
        await b.get("/login")
        resp = await b.post("/login", {"email": A, "password": PASSWORD}, status=303,
                            headers={"X-Forwarded-Proto": "https"})
        assert "secure" not in resp.headers["Set-Cookie"].lower()

    run(tmp_path, scenario)


def test_totp_turned_on_is_asked_at_login_and_a_code_works_once(tmp_path: Path) -> None:
    async def scenario(b: Browser, ctx: Context) -> None:
        await b.login()
        await b.get("/security")
        resp = await b.post("/security/totp/begin", {})
        secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', resp.body_text).group(1)
        assert f"otpauth://totp/fwdmail%3A{A.replace('@', '%40')}?secret={secret}" in resp.body_text
        await b.post("/security/totp/confirm", {"code": "000000" if pyotp.TOTP(secret).now() != "000000"
                                                else "111111"}, status=400)
        await b.post("/security/totp/confirm", {"code": pyotp.TOTP(secret).now()})
        await b.post("/logout", {}, status=303)
        resp = await b.login()
        assert resp.headers["Location"] == "/login/totp"
        await b.get("/domains", status=303)  # half logged in: no pages
        await b.get("/login/totp")
        code = pyotp.TOTP(secret).at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
        await b.post("/login/totp", {"code": "12345x"}, status=401)
        resp = await b.post("/login/totp", {"code": code}, status=303)
        assert resp.headers["Location"] == "/domains"
        await b.get("/domains")
        await b.post("/logout", {}, status=303)
        await b.login()
        await b.get("/login/totp")
        await b.post("/login/totp", {"code": code}, status=401)  # the same code again: refused

    run(tmp_path, scenario)


def test_a_password_link_works_once_and_not_after_24_hours(tmp_path: Path) -> None:
    async def scenario(b: Browser, ctx: Context) -> None:
        link = sessions.reset_password(A, now())
        assert store.get_login_state(A).password_hash is None
        await b.login(A, PASSWORD, status=401)
        await b.get(f"/set-password/{link.token}")
        await b.post(f"/set-password/{link.token}", {"password": "short", "repeat": "short"}, status=400)
        resp = await b.post(f"/set-password/{link.token}", {"password": "new password here",
                                                            "repeat": "new password here"}, status=303)
        assert resp.headers["Location"] == "/login?set=1"
        await b.get(f"/set-password/{link.token}", status=404)
        await b.login(A, "new password here")
        old = sessions.new_login_link(B, now() - sessions.LINK_TTL - dt.timedelta(seconds=1))
        await b.get(f"/set-password/{old.token}", status=404)

    run(tmp_path, scenario)


def test_the_forms_do_their_work(tmp_path: Path) -> None:
    async def scenario(b: Browser, ctx: Context) -> None:
        await b.login()
        await b.get("/domains")
        resp = await b.post("/domains", {"name": "Mine.Test"}, status=303)
        assert resp.headers["Location"] == "/domains/mine.test?added=1"
        page = await b.get("/domains/mine.test?added=1")
        assert "fwdmail-verification=" in page and "_domainkey.mine.test" in page
        await b.post("/domains", {"name": "mine.test"}, status=400)
        await b.post("/domains/mine.test/settings", {"retention_days": "31"}, status=400)
        await b.post("/domains/mine.test/settings", {"retention_days": "7"}, status=303)
        assert tenancy.own_domain(A, "mine.test").retention_days == 7
        await b.get("/aliases?domain=mine.test")
        await b.post("/aliases", {"domain": "mine.test", "name": "info", "destinations": "me@dest.test"})
        await b.post("/aliases", {"domain": "mine.test", "name": "bad", "destinations": "not an address"},
                     status=400)
        found = await b.get("/aliases?domain=mine.test&q=dest")
        assert "info@mine.test" in found
        assert "info@mine.test" not in await b.get("/aliases?domain=mine.test&q=zzz")
        await b.get("/alias?domain=mine.test&alias=info")
        await b.post("/alias/destinations", {"domain": "mine.test", "alias": "info",
                                             "destinations": "one@dest.test\ntwo@dest.test"})
        await b.post("/alias/state", {"domain": "mine.test", "alias": "info", "state": "tempfail"})
        resp = await b.post("/alias/password", {"domain": "mine.test", "alias": "info"})
        password = re.search(r'id="new-password">([^<]+)<', resp.body_text).group(1)
        alias = tenancy.own_alias(A, "mine.test", "info")
        assert alias.destinations == ("one@dest.test", "two@dest.test") and alias.state == "tempfail"
        encoded = store.alias_password_hash("mine.test", "exact", "info")
        assert keys.verify_password(password, encoded)
        resp = await b.post("/security/tokens", {})
        token = re.search(r'id="new-token">([^<]+)<', resp.body_text).group(1)
        api = await b.client.get("/v1/account", headers={"Authorization": f"Bearer {token}"})
        assert api.status == 200
        token_id = re.search(r'name="token_id" value="(\d+)"', resp.body_text).group(1)
        await b.post("/security/tokens/revoke", {"token_id": token_id})
        assert (await b.client.get("/v1/account", headers={"Authorization": f"Bearer {token}"})).status == 401
        await b.post("/security/password", {"current": "wrong", "password": "x" * 12, "repeat": "x" * 12},
                     status=400)
        await b.post("/security/password", {"current": PASSWORD, "password": "x" * 12, "repeat": "x" * 12})
        await b.post("/security/delete", {"confirm": "someone@else.test"}, status=400)
        await b.post("/security/delete", {"confirm": A.upper()})
        with pytest.raises(store.NotFound):
            accounts.get_account(A)
        with pytest.raises(store.NotFound):
            store.get_domain("mine.test")
        await b.get("/domains", status=303)

    run(tmp_path, scenario)
