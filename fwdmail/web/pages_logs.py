"""My Account > Logs: the SMTP errors logged for the account's domains (what the MX refused or a
destination answered) and the account's own web/API requests of the last 30 days.

Untrusted input: the page cursors in the query string. The rows hold text from outside (remote replies);
the template shows them escaped."""

from __future__ import annotations

from aiohttp import web

from fwdmail.app import now, ownmail
from fwdmail.web.pagebase import page, paged
from fwdmail.web.sessions import logged_in


async def smtp_errors(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    found = await paged(request, ownmail.own_smtp_errors, session.account.email, limit=ownmail.PAGE_SIZE)
    return page(request, "logs.html", title="Logs", active="/logs", tab="smtp", found=found,
                days=ownmail.API_LOG_DAYS)


async def api_log(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    found = await paged(request, ownmail.own_api_log, session.account.email, now(), limit=ownmail.PAGE_SIZE)
    return page(request, "logs.html", title="Logs", active="/logs", tab="api", found=found,
                days=ownmail.API_LOG_DAYS)


def routes() -> list[web.RouteDef]:
    return [web.get("/logs", smtp_errors, allow_head=False), web.get("/logs/api", api_log, allow_head=False)]
