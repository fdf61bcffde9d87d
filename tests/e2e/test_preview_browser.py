"""The email preview in a real headless Chromium against a real `fwdmail serve`: a message with hostile
HTML (every URL in it pointing at a loopback server that records each request) goes in through the real
submission port and is delivered; the account logs in and opens its preview. No request may reach the
recorder and no script may run; "Load remote images" then fetches the plain images and nothing else.
A redacted message's page says so. Screenshots go to tests/artifacts/screenshots/."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import SMTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fwdmail.web.pages_emails import FRAME_SANDBOX, frame_csp
from tests.support.browser import PHONE, browser, login, page, shot  # noqa: F401  (fixtures)
from tests.support.daemon import Daemon
from tests.support.hostile_html import PWNED, document
from tests.support.outbound import OWNER, add_domain, queue_id, submit, wait_status
from tests.support.smtp_sink import SmtpSink

pytestmark = pytest.mark.slow  # a browser and a daemon: ~15-25 s

PASSWORD = "a long enough password"
HOSTILE_FROM, PLAIN_FROM = "news@keep.test", "note@gone.test"
IMAGES = {"/img/remote.png", "/img/srcset-src.png", "/img/dyn.png", "/img/noscript.png"}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
                    "0000000d4944415478da63f8cfc0f01f0005000201a5f64e3f0000000049454e44ae426082")


class Recorder:
    """A loopback HTTP server recording the path of every request (answering images with a PNG), or
    serving `pages` (path -> body, headers)."""

    def __init__(self, pages: dict[str, tuple[bytes, dict[str, str]]] | None = None) -> None:
        self.paths: list[str] = []
        recorder = self
        served = pages or {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.paths.append(self.path)
                body, kind = (PNG, "image/png") if self.path.startswith("/img/") else (b"x", "text/plain")
                headers = {"Content-Type": kind}
                if self.path in served:
                    body, headers = served[self.path]
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    with Recorder() as r:
        yield r


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder,
      ) -> Iterator[tuple[Daemon, dict[str, str]]]:
    with SmtpSink() as sink:
        daemon = Daemon(tmp_path_factory.mktemp("preview"), {"delivery": {"routes": {"*": sink.address}}})
        daemon.start(wait_ports=[daemon.http_port, daemon.submission_port])
        passwords = {**add_domain(daemon, "keep.test", HOSTILE_FROM, retention_days=30),
                     **add_domain(daemon, "gone.test", PLAIN_FROM)}
        ids = {"hostile": send_hostile(daemon, passwords[HOSTILE_FROM], recorder.base),
               "plain": queue_id(submit(daemon, PLAIN_FROM, passwords[PLAIN_FROM], plain_message()))}
        wait_status(daemon, ids["hostile"], "delivered")
        assert wait_status(daemon, ids["plain"], "delivered")["redacted_at"] is not None
        yield daemon, ids
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.logs()


def send_hostile(daemon: Daemon, password: str, base: str) -> str:
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"], msg["Subject"] = HOSTILE_FROM, "bob@dest.test", "Hostile preview"
    msg.set_content("the text part\n")
    msg.add_alternative(document(base), subtype="html")
    return queue_id(submit(daemon, HOSTILE_FROM, password, msg.as_bytes()))


def plain_message() -> bytes:
    return f"From: {PLAIN_FROM}\r\nTo: bob@dest.test\r\nSubject: Redacted one\r\n\r\nGone soon.\r\n".encode()


def log_in(daemon: Daemon, tab: Any) -> str:
    base = f"http://127.0.0.1:{daemon.http_port}"
    tab.goto(json.loads(daemon.cli("account", "invite", OWNER, "--json").output)["url"])
    tab.fill("input[name=password]", PASSWORD)
    tab.fill("input[name=repeat]", PASSWORD)
    tab.click("form.card button[type=submit]")
    tab.wait_for_url(re.compile(r".*/login\?set=1$"))
    login(tab, base, OWNER, PASSWORD)
    return base


def preview_frame(tab: Any) -> Any:
    (frame,) = [f for f in tab.frames if "/preview" in f.url]
    return frame


def test_hostile_preview_neither_runs_nor_fetches_until_images_are_asked_for(
        d: tuple[Daemon, dict[str, str]], recorder: Recorder, page: Any) -> None:  # noqa: F811
    daemon, ids = d
    base = log_in(daemon, page)
    page.goto(f"{base}/emails")
    shot(page, "preview-01-emails")
    page.click(f"a[href='/emails/{ids['hostile']}']")
    page.wait_for_url(re.compile(rf".*/emails/{ids['hostile']}$"))
    page.wait_for_load_state("load")  # the frame's document and every image it asks for
    frame = preview_frame(page)
    assert "fwdmail hostile preview" in frame.evaluate("document.body.innerText")
    assert frame.evaluate("document.title") == ""
    assert page.title().startswith("Hostile preview")
    assert not [c for c in page.context.cookies() if PWNED in c["name"] + c["value"]]
    assert recorder.paths == []
    assert page.locator(".remote-note").inner_text().startswith(f"{len(IMAGES)} remote images hidden")
    shot(page, "preview-02-hostile-blocked")

    page.click("a.load-remote")
    page.wait_for_url(re.compile(r".*\?images=remote$"))
    page.wait_for_load_state("load")
    assert preview_frame(page).evaluate("document.title") == ""
    assert set(recorder.paths) == IMAGES, recorder.paths
    assert not [c for c in page.context.cookies() if PWNED in c["name"] + c["value"]]
    shot(page, "preview-03-remote-images")

    recorder.paths.clear()
    page.goto(f"{base}/emails/{ids['hostile']}")  # not remembered beyond the view that asked
    page.wait_for_load_state("load")
    assert recorder.paths == []
    page.set_viewport_size(PHONE)
    page.reload()
    page.wait_for_load_state("load")
    preview_frame(page).wait_for_selector("text=fwdmail hostile preview")
    page.locator("p.remote-note").scroll_into_view_if_needed()  # an off-screen frame is not painted
    shot(page, "preview-05-phone", full_page=False)


def test_the_frame_alone_holds_when_the_html_is_not_sanitized(recorder: Recorder,
                                                               page: Any) -> None:  # noqa: F811
    """Second layer, apart from the sanitizer: the raw hostile HTML served with the preview's own CSP in
    an iframe with the preview's sandbox (both taken from the pages' module) fetches and runs nothing."""
    parent = (f'<!doctype html><title>parent</title><iframe src="/frame" sandbox="{FRAME_SANDBOX}">'
              "</iframe>").encode()
    pages = {"/": (parent, {"Content-Type": "text/html; charset=utf-8"}),
             "/frame": (document(recorder.base).encode(), {"Content-Type": "text/html; charset=utf-8",
                                                           "Content-Security-Policy": frame_csp(())})}
    recorder.paths.clear()
    with Recorder(pages) as host:
        page.goto(host.base + "/")
        page.wait_for_load_state("load")
        (frame,) = [f for f in page.frames if f.url.endswith("/frame")]
        assert "svg_onload" in frame.evaluate("document.body.innerText")
        assert frame.evaluate("document.title") == "hostile"  # the raw document's own <title>, no script's
        assert [p for p in host.paths if p != "/favicon.ico"] == ["/", "/frame"]  # the tab's icon
    assert recorder.paths == []
    assert page.title() == "parent"
    shot(page, "preview-06-unsanitized-in-frame")


def test_a_redacted_message_says_so(d: tuple[Daemon, dict[str, str]], page: Any) -> None:  # noqa: F811
    daemon, ids = d
    base = log_in(daemon, page)
    page.goto(f"{base}/emails/{ids['plain']}")
    assert "was redacted" in page.locator("p.redacted").inner_text()
    assert page.locator("iframe").count() == 0
    assert "Gone soon" not in page.content()
    shot(page, "preview-04-redacted")
