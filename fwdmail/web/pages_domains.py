"""My Account > Domains: the account's domains, adding one, its DNS records, verification, and its
Advanced Settings (body retention days).

Untrusted input: domain names in the URL and the forms, the retention days typed; all checked in `app`
(another account's domain is a 404, as one that does not exist)."""

from __future__ import annotations

from aiohttp import web

from fwdmail.app import tenancy
from fwdmail.web.pagebase import call, page
from fwdmail.web.sessions import logged_in


async def domain_list(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    rows = await call(request, tenancy.list_own_domains, session.account.email)
    return page(request, "domains.html", title="Domains", active="/domains", domains=rows)


def routes() -> list[web.RouteDef]:
    return [web.get("/domains", domain_list)]
