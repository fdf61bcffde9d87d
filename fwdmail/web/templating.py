"""Rendering the pages: one Jinja2 environment (autoescaping on, templates from web/templates), the
navigation, and the security headers every response carries.

Untrusted input: whatever a template shows (addresses, names, texts from the store or a form) is escaped
by Jinja2's autoescaping; nothing is marked safe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# Every response: only our own origin, never framed, no referrer sent anywhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

# (path, label): the "My Account" menu.
NAV: list[tuple[str, str]] = [("/domains", "Domains"), ("/aliases", "Aliases"), ("/emails", "Emails"),
                              ("/logs", "Logs"), ("/security", "Security")]

environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, status: int = 200, **values: Any) -> web.Response:
    """The template `template` as an HTML response (never cached: pages show an account's data)."""
    values.setdefault("nav", NAV)
    values.setdefault("account", None)
    values.setdefault("csrf_token", "")
    values.setdefault("active", "")
    values.setdefault("notice", "")
    values.setdefault("error", "")
    text = environment.get_template(template).render(**values)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the security headers on every response, pages, API and errors alike."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
