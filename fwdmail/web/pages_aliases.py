"""My Account > Aliases: the aliases of one of the account's domains (searchable), adding one, editing its
destinations, enabling or disabling it (quiet, tempfail, reject) and generating its SMTP password (shown
once, hashed on the bounded hashing pool).

Untrusted input: domain, alias, destinations, state and search text from the query string and forms; all
checked in `app` (another account's domain or alias is a 404)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fwdmail.app import aliases, owned, tenancy
from fwdmail.runtime import keys
from fwdmail.runtime.executor import Busy
from fwdmail.web.pagebase import FormError, call, field_text, page, redirect, state
from fwdmail.web.sessions import logged_in

STATES = tuple(aliases.ALIAS_STATES)
STATE_TEXT = {"enabled": "enabled", "quiet": "disabled: accept and drop",
              "tempfail": "disabled: ask to retry later (4xx)", "reject": "disabled: refuse (5xx)"}
MAX_DESTINATIONS = 50


def _destinations(text: str) -> list[str]:
    found = [d.strip() for d in text.replace(",", "\n").splitlines() if d.strip()]
    if len(found) > MAX_DESTINATIONS:
        raise FormError(f"at most {MAX_DESTINATIONS} destinations")
    return found


async def alias_list(request: web.Request, error: str = "", notice: str = "", status: int = 200,
                     domain: str | None = None) -> web.StreamResponse:
    session = logged_in(request)
    own = await call(request, tenancy.list_own_domains, session.account.email)
    chosen = domain or request.query.get("domain", "") or (own[0].name if own else "")
    search = request.query.get("q", "")[:owned.MAX_SEARCH]
    found: Any = None
    if chosen:
        try:
            found = await call(request, owned.search_own_aliases, session.account.email, chosen, search)
        except FormError as exc:
            error = error or str(exc)
    return page(request, "aliases.html", status=status, title="Aliases", active="/aliases", domains=own,
                chosen=chosen, search=search, found=found, states=STATE_TEXT, error=error, notice=notice)


async def add_alias(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    domain = field_text(request, "domain")
    try:
        record = await call(request, tenancy.add_own_alias, session.account.email, domain,
                            field_text(request, "name"), _destinations(field_text(request, "destinations")))
    except FormError as exc:
        return await alias_list(request, error=f"Alias not added: {exc}", status=400, domain=domain)
    return await alias_list(request, notice=f"{record.address} added.", domain=domain)


async def alias_page(request: web.Request, error: str = "", notice: str = "", password: str = "",
                     status: int = 200) -> web.StreamResponse:
    session = logged_in(request)
    domain = request.query.get("domain", "") or field_text(request, "domain")
    name = request.query.get("alias", "") or field_text(request, "alias")
    try:
        record = await call(request, tenancy.own_alias, session.account.email, domain, name)
    except FormError:
        raise web.HTTPNotFound() from None
    return page(request, "alias.html", status=status, title=record.address, active="/aliases", alias=record,
                name=name, states=STATE_TEXT, error=error, notice=notice, password=password)


async def _change(request: web.Request, fn: Any, *args: Any, done: str) -> web.StreamResponse:
    session = logged_in(request)
    domain, name = field_text(request, "domain"), field_text(request, "alias")
    try:
        await call(request, fn, session.account.email, domain, name, *args)
    except FormError as exc:
        return await alias_page(request, error=f"Not changed: {exc}", status=400)
    return await alias_page(request, notice=done)


async def set_destinations(request: web.Request) -> web.StreamResponse:
    try:
        dests = _destinations(field_text(request, "destinations"))
    except FormError as exc:
        return await alias_page(request, error=f"Not changed: {exc}", status=400)
    return await _change(request, owned.set_own_alias_destinations, dests, done="Destinations saved.")


async def set_state(request: web.Request) -> web.StreamResponse:
    chosen = field_text(request, "state")
    if chosen not in STATES:
        return await alias_page(request, error="Choose one of the listed states.", status=400)
    return await _change(request, owned.set_own_alias_state, chosen, done=f"Now {STATE_TEXT[chosen]}.")


async def new_password(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    domain, name = field_text(request, "domain"), field_text(request, "alias")
    try:
        await call(request, owned.own_login_alias, session.account.email, domain, name)
    except FormError as exc:
        return await alias_page(request, error=str(exc), status=400)
    password = keys.generate_password()
    try:
        encoded = await state(request).ctx.blocking.hash(keys.hash_password, password)
    except Busy:
        return await alias_page(request, error="The server is busy: try again in a moment.", status=503)
    await call(request, owned.set_own_alias_password, session.account.email, domain, name, encoded)
    return await alias_page(request, notice="New SMTP password made: copy it now, it is not shown again.",
                            password=password)


async def remove_alias(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    domain = field_text(request, "domain")
    await call(request, tenancy.remove_own_alias, session.account.email, domain, field_text(request, "alias"))
    return redirect(f"/aliases?domain={domain}")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/aliases", alias_list),
        web.post("/aliases", add_alias),
        web.get("/alias", alias_page),
        web.post("/alias/destinations", set_destinations),
        web.post("/alias/state", set_state),
        web.post("/alias/password", new_password),
        web.post("/alias/remove", remove_alias),
    ]
