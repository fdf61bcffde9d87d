"""A real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the "My Account" pages.

`browser` (module scope) launches it once; `page` gives each test a fresh context (no cookies) and saves
a screenshot of where the test ended under tests/artifacts/screenshots/ (ignored by git). `login` logs in
through the real form, answering the TOTP step when a secret is given. `shot` saves a named screenshot;
`watch` records every request and console error of a page.
Only loopback addresses are ever opened."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1200, "height": 800}
TIMEOUT_MS = 15_000


def _playwright() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no {CHROMIUM}")
    return sync_api


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = _playwright()
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context and page; its last screen is saved as <test name>-end.png."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    try:
        yield tab
    finally:
        try:
            shot(tab, f"{request.node.name}-end")
        finally:
            context.close()


@dataclass
class Watch:
    """What a page asked for and complained about: every request URL, console errors (CSP violations
    among them) and uncaught script errors."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def outside(self, base_url: str) -> list[str]:
        return [u for u in self.requests if not (u == base_url or u.startswith(base_url + "/"))]


def watch(tab: Any) -> Watch:
    seen = Watch()
    tab.on("request", lambda r: seen.requests.append(r.url))
    tab.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: seen.errors.append(str(e)))
    return seen


def shot(tab: Any, name: str, full_page: bool = True) -> Path:
    """Save a screenshot of `tab` as ARTIFACTS/<name>.png; return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.wait_for_load_state("load")
    path = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png")
    tab.screenshot(path=str(path), full_page=full_page)
    return path


def login(tab: Any, base_url: str, email: str, password: str, totp_secret: str | None = None,
          later: bool = False) -> None:
    """Log in through the login form (and the second-factor form when `totp_secret` is given; `later`:
    with the next time step's code, for an account whose current code was just used)."""
    tab.goto(f"{base_url}/login")
    tab.fill("input[name=email]", email)
    tab.fill("input[name=password]", password)
    tab.click("form.card button[type=submit]")
    if totp_secret is not None:
        import pyotp

        tab.wait_for_url(re.compile(r".*/login/totp$"))
        totp = pyotp.TOTP(totp_secret)
        tab.fill("input[name=code]", totp.at(time.time() + 30) if later else totp.now())
        tab.click("form.card button[type=submit]")
    tab.wait_for_url(re.compile(r".*/domains$"))
