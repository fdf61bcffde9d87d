"""The account's outbound mail and SMTP error log: `/v1/emails` (list with filters, a page at a time),
`/v1/emails/{id}` (show with statuses per recipient and headers; retry; delete) and `/v1/logs`.

Untrusted input: query strings (filters, dates, page size, cursor) and the email id in the path, checked
in `apicore` and `app.ownmail`; the stored messages are parsed on a worker thread for their headers and
text. Another account's message is a 404, worded as for one that does not exist."""

from __future__ import annotations

from aiohttp import web

from fwdmail.app import now, ownmail
from fwdmail.app.preview import preview
from fwdmail.app.shapes import email_json, smtp_error_json
from fwdmail.web.apicore import (
    call,
    check_query,
    context,
    int_query,
    reply,
    text_query,
    time_query,
)
from fwdmail.web.auth import authenticate

DEFAULT_LIMIT = 50
EMAIL_FILTERS = ("status", "domain", "alias", "since", "until", "limit", "cursor")
LOG_FILTERS = ("domain", "alias", "direction", "since", "until", "limit", "cursor")


def _page_headers(request: web.Request, cursor: str | None, limit: int) -> dict[str, str]:
    headers = {"X-Limit": str(limit)}
    if cursor is not None:
        query = {k: v for k, v in request.query.items() if k != "cursor"}
        url = request.rel_url.with_query({**query, "cursor": cursor, "limit": str(limit)})
        headers["Link"] = f'<{url}>; rel="next"'
    return headers


async def list_emails(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    check_query(request, EMAIL_FILTERS)
    limit = int_query(request, "limit", DEFAULT_LIMIT)
    page = await call(ctx, ownmail.own_emails, account.email, limit=limit,
                      status=text_query(request, "status"), domain=text_query(request, "domain"),
                      alias=text_query(request, "alias"), since=time_query(request, "since"),
                      until=time_query(request, "until"),
                      cursor=request.query.get("cursor"))
    return reply([email_json(e) for e in page.items], headers=_page_headers(request, page.cursor, limit))


async def get_email(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    record = await call(ctx, ownmail.own_email, account.email, request.match_info["id"])
    shown = await ctx.blocking.cpu(preview, record)
    return reply({**email_json(record), **shown.as_json()})


async def retry_email(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    record = await call(ctx, ownmail.retry_own_email, account.email, request.match_info["id"], now())
    return reply(email_json(record))


async def delete_email(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    deleted = await call(ctx, ownmail.delete_own_email, account.email, request.match_info["id"])
    return reply({"deleted": deleted})


async def list_logs(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    check_query(request, LOG_FILTERS)
    limit = int_query(request, "limit", DEFAULT_LIMIT)
    page = await call(ctx, ownmail.own_smtp_errors, account.email, limit=limit,
                      domain=text_query(request, "domain"), alias=text_query(request, "alias"),
                      direction=text_query(request, "direction"),
                      since=time_query(request, "since"), until=time_query(request, "until"),
                      cursor=request.query.get("cursor"))
    return reply([smtp_error_json(r) for r in page.items], headers=_page_headers(request, page.cursor, limit))


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/emails", list_emails, allow_head=False),
        web.get("/v1/emails/{id}", get_email, allow_head=False),
        web.post("/v1/emails/{id}/retry", retry_email),
        web.delete("/v1/emails/{id}", delete_email),
        web.get("/v1/logs", list_logs, allow_head=False),
    ]
