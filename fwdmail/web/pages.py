"""The "My Account" pages: registered on the API's app, with the middleware that reads the session,
checks every POST's CSRF token and turns a page's HTTP errors and redirects into HTML (the API keeps its
JSON errors), and the static files (served locally, nothing remote).

Untrusted input: the session cookie (see `web.sessions`), POSTed forms (bounded here), the paths asked."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from fwdmail.app import now, sessions, tenancy
from fwdmail.app.weblogin import LoginLimits
from fwdmail.runtime.context import Context
from fwdmail.web import (
    csrf,
    pages_aliases,
    pages_domains,
    pages_emails,
    pages_login,
    pages_logs,
    pages_security,
)
from fwdmail.web.auth import ACCOUNT_KEY
from fwdmail.web.pagebase import (
    FORM_KEY,
    MAX_FIELD,
    MAX_FIELDS,
    STATE_KEY,
    FormError,
    PagesState,
    page,
    state,
)
from fwdmail.web.sessions import SESSION_KEY, Session, cookie_id
from fwdmail.web.templating import STATIC, add_security_headers

log = logging.getLogger("fwdmail.http")

NOT_PAGES = ("/v1/", "/healthz", "/static/")
ERROR_TEXT = {400: "That request was not understood.", 403: "This form has expired: go back, reload the "
              "page and try again.", 404: "There is nothing here.", 405: "Not allowed here.",
              413: "That was too large.", 429: "Too many attempts: wait a while and try again.",
              503: "The service is busy or unavailable: try again in a moment."}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_page(request: web.Request) -> bool:
    return not any(request.path.startswith(p) for p in NOT_PAGES)


async def _load_session(request: web.Request) -> None:
    session_id = cookie_id(request)
    if session_id is None:
        return
    record = await state(request).ctx.blocking.db(sessions.session_for, session_id, now())
    if record is None:
        return
    request[SESSION_KEY] = Session(session_id, record.account, record.stage)
    if record.stage == "full":
        request[ACCOUNT_KEY] = record.account


async def _read_form(request: web.Request) -> bool:
    """Read the POSTed form into the request; whether its CSRF token is right."""
    try:
        data = await request.post()
    except ValueError:
        return False
    if len(data) > MAX_FIELDS:
        return False
    fields = {k: v for k, v in data.items() if isinstance(v, str) and len(v) <= MAX_FIELD}
    request[FORM_KEY] = fields
    session = request.get(SESSION_KEY)
    return csrf.valid(fields.get(csrf.FIELD, ""), state(request).csrf_key,
                      session.id if session is not None else None)


def _error_page(request: web.Request, status: int) -> web.Response:
    return page(request, "error.html", status=status, title=f"Error {status}",
                message=ERROR_TEXT.get(status, "Something went wrong."))


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not is_page(request):
        return await handler(request)
    try:
        await _load_session(request)
        if request.method == "POST" and not await _read_form(request):
            return _error_page(request, 403)
        return await handler(request)
    except web.HTTPException as exc:
        if 300 <= exc.status < 400:
            return web.Response(status=exc.status, headers={"Location": exc.headers.get("Location", "/")})
        return _error_page(request, exc.status)
    except FormError as exc:
        return page(request, "error.html", status=400, title="Not done", message=str(exc))
    except tenancy.UNAVAILABLE:
        return _error_page(request, 503)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("error answering page %s %s", request.method, request.match_info.route.resource
                      and request.match_info.route.resource.canonical)
        return _error_page(request, 500)


def setup(application: web.Application, ctx: Context) -> None:
    """Add the pages to the app (its middleware list must include `middleware`)."""
    proxies = tuple(ipaddress.ip_network(p, strict=False) for p in ctx.config.http.trusted_proxies)
    cfg = ctx.config.http
    limits = LoginLimits(cfg.login_failures_per_client_per_hour, cfg.login_failures_per_account_per_hour,
                         cfg.login_failures_total_per_minute)
    application[STATE_KEY] = PagesState(ctx, proxies, limits)
    application.on_response_prepare.append(add_security_headers)
    application.add_routes(pages_login.routes())
    application.add_routes(pages_domains.routes())
    application.add_routes(pages_aliases.routes())
    application.add_routes(pages_security.routes())
    application.add_routes(pages_emails.routes() + pages_logs.routes())
    application.router.add_static("/static", STATIC, name="static", append_version=False)
