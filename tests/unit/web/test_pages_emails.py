"""My Account > Emails and Logs in-process on a real store: the list by status, page by page older and
back newer, the detail
(recipients, headers, attachments), the preview frame's own CSP and sandbox, remote images only when
asked, a redacted message, tenancy (another account's email is a 404), and the logs of one's own domains
and requests."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import re
from collections.abc import Awaitable, Callable, Iterator
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fwdmail import store
from fwdmail.app import now, ownmail, sessions
from fwdmail.app.htmlsafe import PLACEHOLDER
from fwdmail.config import Config
from fwdmail.runtime import datadir
from fwdmail.runtime.context import Context
from fwdmail.smtp.replies import SmtpError
from fwdmail.web.pages_emails import FRAME_SANDBOX
from fwdmail.web.server import RequestLog, make_app
from tests.support.hostile_html import PWNED, document

T0 = dt.datetime(2030, 1, 1, 12, 0)
OWNER, OTHER = "owner@owner.test", "other@other.test"
REMOTE = "http://img.remote.test:8080"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24


def message(subject: str, html: str | None = None, text: str = "plain text\n", attach: bool = False) -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "alice@example.test"
    msg["To"] = "bob@dest.test"
    msg["Subject"] = subject
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
        msg.get_payload()[1].add_related(PNG, "image", "png", cid="<logo@example.test>")
    if attach:
        msg.add_attachment(b"x" * 3000, maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes()


def put(domain: str, raw: bytes, subject: str, outcome: str | None = None) -> str:
    headers, _, body = raw.partition(b"\r\n\r\n")
    email = store.NewEmail(store.new_queue_id(), domain, f"alice@{domain}",
                           ("bob@dest.test", "carol@dest.test"), headers + b"\r\n", body, subject, T0, T0)
    store.enqueue([email], T0)
    if outcome is not None:
        (claimed,) = [c for c in store.claim_due(T0, "t", 100) if c.queue_id == email.queue_id]
        store.record_attempt(claimed.id, "t", T0, delivered=["bob@dest.test"],  # type: ignore[arg-type]
                             bounced={"carol@dest.test": SmtpError(550, "5.1.1", "No such <user>")})
    return email.queue_id


class Site:
    def __init__(self, client: TestClient, ids: dict[str, str]) -> None:
        self.client = client
        self.ids = ids

    async def get(self, path: str, who: str | None = OWNER) -> tuple[int, str, Any]:
        cookies = {"fwdmail_session": self.ids[who]} if who else {}
        resp = await self.client.get(path, cookies=cookies, allow_redirects=False)
        return resp.status, await resp.text(), resp.headers


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Callable[[Callable[[Site], Awaitable[None]]], None]]:
    cfg = Config(data_dir=str(tmp_path / "data"), hostname="mx.fwdmail.test")
    runtime = datadir.prepare(cfg, create=True)
    for account, domain in ((OWNER, "example.test"), (OTHER, "other.test")):
        store.add_account(account)
        store.add_domain(domain, account, "s1", "unused-key", "token")
    ids = {who: sessions.start_session(who, "full", now()) for who in (OWNER, OTHER)}
    store.close_store()

    def run(body: Callable[[Site], Awaitable[None]]) -> None:
        async def go() -> None:
            ctx = Context(runtime)
            try:
                async with TestClient(TestServer(make_app(ctx, RequestLog(ctx)))) as client:
                    await body(Site(client, ids))
            finally:
                ctx.blocking.shutdown()
                await ctx.delivery.close()

        asyncio.run(go())

    yield run
    store.close_store()


def fill(data_dir: Path) -> dict[str, str]:
    store.open_store(data_dir / "fwdmail.db")
    ids = {"redacted": put("example.test", message("gone", "<p>secret body</p>"), "gone", outcome="final")}
    store.redact_bodies_due(T0 + dt.timedelta(days=1), 100)
    assert store.get_email(ids["redacted"]).redacted
    ids["hostile"] = put("example.test", message("hostile", document(REMOTE), attach=True), "hostile <b>")
    ids["text"] = put("example.test", message("text only", text="<script>x</script> & more\n"), "text only")
    ids["foreign"] = put("other.test", message("theirs", "<p>their private body</p>"), "theirs")
    store.close_store()
    return ids


def test_the_list_shows_only_the_accounts_mail_by_status(site: Any, tmp_path: Path) -> None:
    ids = fill(tmp_path / "data")

    async def body(s: Site) -> None:
        status, text, _ = await s.get("/emails")
        assert status == 200
        assert all(ids[k] in text for k in ("redacted", "hostile", "text"))
        assert ids["foreign"] not in text and "theirs" not in text
        assert "hostile &lt;b&gt;" in text
        status, text, _ = await s.get("/emails?status=partial")
        assert ids["redacted"] in text and ids["hostile"] not in text
        assert (await s.get("/emails?status=lost"))[0] == 400
        for bad in ("older=x", "newer=", "older=" + "A" * 65, "older=MjAzMC0wMS0wMVQxMjowMHww"):
            assert (await s.get(f"/emails?{bad}"))[0] == 400, bad
        assert 'rel="next"' not in text and 'rel="prev"' not in text
        status, text, _ = await s.get("/emails", who=OTHER)
        assert ids["foreign"] in text and ids["hostile"] not in text
        status, _, headers = await s.get("/emails", who=None)
        assert status == 303 and headers["Location"] == "/login"

    site(body)


def link(text: str, rel: str) -> str | None:
    found = re.search(rf'<a rel="{rel}" href="([^"]+)"', text)
    return html.unescape(found[1]) if found else None


def test_the_list_pages_by_fifty_older_and_back_newer(site: Any, tmp_path: Path) -> None:
    store.open_store(tmp_path / "data" / "fwdmail.db")
    made = [put("example.test", message(f"n{i}"), f"n{i}") for i in range(ownmail.PAGE_SIZE + 2)]
    store.close_store()

    async def body(s: Site) -> None:
        _, first, _ = await s.get("/emails?status=queued")
        assert sum(q in first for q in made) == ownmail.PAGE_SIZE and link(first, "prev") is None
        older = link(first, "next")
        assert older is not None and older.startswith("/emails?status=queued&older=")
        _, second, _ = await s.get(older)
        assert [q for q in made if q in second] == [q for q in made if q not in first]
        assert link(second, "next") is None
        newer = link(second, "prev")
        assert newer is not None and newer.startswith("/emails?status=queued&newer=")
        _, back, _ = await s.get(newer)
        assert [q for q in made if q in back] == [q for q in made if q in first]
        assert link(back, "prev") is None and link(back, "next") == older
        assert (await s.get(f"{older}&{newer.partition('&')[2]}"))[0] == 400

    site(body)


def test_the_detail_lists_recipients_headers_and_attachments(site: Any, tmp_path: Path) -> None:
    ids = fill(tmp_path / "data")

    async def body(s: Site) -> None:
        status, text, _ = await s.get(f"/emails/{ids['hostile']}")
        assert status == 200
        assert "bob@dest.test" in text and "carol@dest.test" in text
        assert "report.pdf" in text and "2.9 KiB" in text and "application/pdf" in text
        assert "<th scope=\"row\">Subject</th><td>hostile</td>" in text
        (frame,) = re.findall(r"<iframe[^>]*>", text)
        assert f'src="/emails/{ids["hostile"]}/preview"' in frame
        assert f'sandbox="{FRAME_SANDBOX}"' in frame
        assert not re.search(r"allow-(scripts|same-origin|forms|top-navigation)", frame)
        assert "4 remote images hidden" in text
        assert f'href="/emails/{ids["hostile"]}?images=remote"' in text
        status, text, _ = await s.get(f"/emails/{ids['hostile']}?images=remote")
        assert f'src="/emails/{ids["hostile"]}/preview?images=remote"' in text
        assert "shown for this view only" in text
        status, text, _ = await s.get(f"/emails/{ids['redacted']}")
        assert "550 5.1.1</code> No such &lt;user&gt;" in text
        assert "was redacted" in text and "<iframe" not in text

    site(body)


def test_the_preview_frame_has_its_own_csp_and_no_remote_content(site: Any, tmp_path: Path) -> None:
    ids = fill(tmp_path / "data")

    async def body(s: Site) -> None:
        status, text, headers = await s.get(f"/emails/{ids['hostile']}/preview")
        assert status == 200
        assert headers["Content-Security-Policy"] == (
            "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
            f"form-action 'none'; frame-ancestors 'self'; sandbox {FRAME_SANDBOX}")
        assert headers["X-Frame-Options"] == "SAMEORIGIN"
        assert headers["Cache-Control"] == "no-store"
        assert "img.remote.test" not in text and PWNED not in text and "<script" not in text
        assert text.count(PLACEHOLDER) == 4
        status, text, headers = await s.get(f"/emails/{ids['hostile']}/preview?images=remote")
        assert "img-src data: http://img.remote.test:8080;" in headers["Content-Security-Policy"]
        assert f'src="{REMOTE}/img/remote.png"' in text
        fetched = re.findall(r"img\.remote\.test:8080(/[^\"' >]*)", text)
        assert len(fetched) == 4 and all(p.startswith("/img/") for p in fetched)

    site(body)


def test_inline_images_text_parts_and_redacted_bodies_in_the_frame(site: Any, tmp_path: Path) -> None:
    store.open_store(tmp_path / "data" / "fwdmail.db")
    html = '<p>hi</p><img src="cid:logo@example.test" alt="logo">'
    cid = put("example.test", message("logo", html), "logo")
    store.close_store()
    ids = fill(tmp_path / "data")

    async def body(s: Site) -> None:
        _, text, _ = await s.get(f"/emails/{cid}/preview")
        assert '<img src="data:image/png;base64,iVBORw0KGgo' in text
        _, text, _ = await s.get(f"/emails/{ids['text']}/preview")
        assert "<pre>&lt;script&gt;x&lt;/script&gt; &amp; more" in text
        _, text, _ = await s.get(f"/emails/{ids['redacted']}/preview")
        assert "was redacted" in text and "secret body" not in text

    site(body)


def test_another_accounts_email_is_not_found(site: Any, tmp_path: Path) -> None:
    ids = fill(tmp_path / "data")

    async def body(s: Site) -> None:
        for path in (f"/emails/{ids['foreign']}", f"/emails/{ids['foreign']}/preview",
                     f"/emails/{ids['foreign']}?images=remote", "/emails/0000000000000000",
                     "/emails/0000000000000000/preview", "/emails/..%2F..%2Fetc/preview"):
            status, text, _ = await s.get(path)
            assert status == 404, path
            assert "their private body" not in text
        status, text, _ = await s.get(f"/emails/{ids['foreign']}/preview", who=OTHER)
        assert status == 200 and "their private body" in text
        assert (await s.get(f"/emails/{ids['hostile']}/preview", who=None))[0] == 303

    site(body)


def test_logs_show_the_accounts_own_smtp_errors_and_requests(site: Any, tmp_path: Path) -> None:
    store.open_store(tmp_path / "data" / "fwdmail.db")
    when = now()
    store.log_smtp_errors([(when, "inbound", "example.test", "info", 550, "5.1.1", "mine <b>"),
                           (when, "inbound", "other.test", "x", 451, "4.3.0", "not mine")])
    owner = store.get_account(OWNER)
    store.log_http_requests([
        store.HttpLogRecord(when, owner.id, "GET", "/v1/domains", 200, 3, "192.0.2.0/24"),
        store.HttpLogRecord(when - dt.timedelta(days=31), owner.id, "GET", "/v1/old", 200, 3, ""),
        store.HttpLogRecord(when, None, "GET", "/v1/anonymous", 401, 1, ""),
    ])
    store.close_store()

    async def body(s: Site) -> None:
        status, text, _ = await s.get("/logs")
        assert status == 200
        assert "mine &lt;b&gt;" in text and "not mine" not in text
        status, text, _ = await s.get("/logs/api")
        assert "/v1/domains" in text and "192.0.2.0/24" in text
        assert "/v1/old" not in text and "/v1/anonymous" not in text
        _, text, _ = await s.get("/logs/api", who=OTHER)
        assert "/v1/domains" not in text
        _, text, _ = await s.get("/logs", who=OTHER)
        assert "not mine" in text and "mine &lt;b&gt;" not in text
        assert (await s.get("/logs?older=-1"))[0] == 400
        assert (await s.get("/logs/api?newer=-1"))[0] == 400

    site(body)
