"""What every page handler shares: the pages' state on the app, rendering with the session's account and
CSRF token, the POSTed form, redirects and running `app` functions with their expected failures turned
into a message for the form, and reading a page of rows by the query's cursors.

Untrusted input: form fields (bounded in count and length here; values are checked in `app`) and the
`older`/`newer` page cursors (decoded in `app`; a bad one is a 400)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiohttp import web

from fwdmail.app import tenancy
from fwdmail.app.weblogin import LoginLimits
from fwdmail.runtime.context import Context
from fwdmail.web import csrf
from fwdmail.web.sessions import current
from fwdmail.web.templating import render

MAX_FIELDS = 50
MAX_FIELD = 8192
FORM_KEY = web.RequestKey("form", dict)


@dataclass
class PagesState:
    """The pages' state for one app: the store seam, trusted proxies, login limits, the key of anonymous
    CSRF tokens, and a dummy password hash (so an unknown name costs the same scrypt as a known one)."""

    ctx: Context
    proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    limits: LoginLimits = field(default_factory=LoginLimits)
    csrf_key: bytes = field(default_factory=csrf.new_key)
    dummy_hash: str | None = None


STATE_KEY = web.AppKey("pages", PagesState)


def state(request: web.Request) -> PagesState:
    return request.app[STATE_KEY]


def csrf_token(request: web.Request) -> str:
    session = current(request)
    return csrf.for_session(session.id) if session is not None else csrf.anonymous(state(request).csrf_key)


def page(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    session = current(request)
    values.setdefault("account", session.account if session is not None and session.full else None)
    return render(template, status=status, csrf_token=csrf_token(request), **values)


def form(request: web.Request) -> dict[str, str]:
    """The POSTed form, read (and its CSRF token checked) by the pages' middleware."""
    return request.get(FORM_KEY) or {}


def field_text(request: web.Request, name: str) -> str:
    return form(request).get(name, "").strip()


class FormError(Exception):
    """An expected refusal, shown on the form it came from."""


async def call(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    """Run an `app` function on the store's thread; a missing or foreign resource is a 404, an invalid
    value a `FormError`, the store unavailable a 503."""
    try:
        return await state(request).ctx.blocking.db(fn, *args)
    except tenancy.NotFound:
        raise web.HTTPNotFound() from None
    except tenancy.AlreadyExists as exc:
        raise FormError(str(exc)) from None
    except (tenancy.AddressError, ValueError) as exc:
        raise FormError(str(exc) or "invalid value") from None
    except tenancy.UNAVAILABLE:
        raise web.HTTPServiceUnavailable() from None


def redirect(location: str) -> web.Response:
    """A 303 to `location` (a path of ours), as a response the caller may add a cookie to."""
    return web.Response(status=303, headers={"Location": location})


async def paged(request: web.Request, fn: Callable[..., Any], *args: Any, **filters: Any) -> Any:
    """The page `fn` (an `app.ownmail` reader) gives for the query's `older` or `newer` cursor, or the
    newest page without either; a bad cursor is a 400."""
    try:
        return await call(request, partial(fn, *args, cursor=request.query.get("older"),
                                           newer=request.query.get("newer"), **filters))
    except FormError:
        raise web.HTTPBadRequest() from None
