"""My Account > Logs: the SMTP errors logged for the account's domains (what the MX refused or a
destination answered) and the account's own web/API requests of the last 30 days.

Untrusted input: the page number in the query string. The rows hold text from outside (remote replies);
the template shows them escaped."""

from __future__ import annotations

from aiohttp import web

from fwdmail.app import mailbox, now
from fwdmail.web.pagebase import call, page
from fwdmail.web.sessions import logged_in


def _page_number(request: web.Request) -> int:
    try:
        return mailbox.page_number(request.query.get("page"))
    except ValueError:
        raise web.HTTPBadRequest() from None


async def smtp_errors(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    number = _page_number(request)
    found = await call(request, mailbox.own_smtp_errors, session.account.email, number)
    return page(request, "logs.html", title="Logs", active="/logs", tab="smtp", rows=found.rows,
                number=number, more=found.more, days=mailbox.API_LOG_DAYS)


async def api_log(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    number = _page_number(request)
    found = await call(request, mailbox.own_api_log, session.account.email, now(), number)
    return page(request, "logs.html", title="Logs", active="/logs", tab="api", rows=found.rows,
                number=number, more=found.more, days=mailbox.API_LOG_DAYS)


def routes() -> list[web.RouteDef]:
    return [web.get("/logs", smtp_errors, allow_head=False), web.get("/logs/api", api_log, allow_head=False)]
