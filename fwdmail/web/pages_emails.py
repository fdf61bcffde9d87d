"""My Account > Emails: the account's outbound mail by status a page at a time, one message's detail
(statuses per recipient, headers, attachments) and its preview frame.

The preview frame is its own document, served with its own CSP (nothing may load but our inline data
images, and remote images only for the view that asked), `sandbox` without scripts, forms or same-origin,
and framable only by our own pages. "Load remote images" is a query parameter of one view, never stored.

Untrusted input: the email id in the URL (another account's is a 404, as one that does not exist), the
status, page cursor and images query parameters, and the stored message itself (sanitized in
`app.htmlsafe`)."""

from __future__ import annotations

from aiohttp import web

from fwdmail.app import emails, mailframe, ownmail
from fwdmail.web.pagebase import call, page, paged, state
from fwdmail.web.sessions import logged_in

STATUS_TABS = ("all", *emails.STATUSES)
# The frame sandbox: no allow-scripts, allow-forms, allow-same-origin or allow-top-navigation; links open
# a new top-level tab outside the sandbox only when the reader clicks one.
FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"


def frame_csp(remote_origins: tuple[str, ...]) -> str:
    images = " ".join(("data:", *remote_origins))
    return (f"default-src 'none'; img-src {images}; style-src 'unsafe-inline'; base-uri 'none'; "
            f"form-action 'none'; frame-ancestors 'self'; sandbox {FRAME_SANDBOX}")


def _wants_remote(request: web.Request) -> bool:
    return request.query.get("images") == "remote"


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / (1024 * 1024):.1f} MiB"


async def email_list(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    status = request.query.get("status", "all")
    if status not in STATUS_TABS:
        raise web.HTTPBadRequest()
    found = await paged(request, ownmail.own_emails, session.account.email, limit=ownmail.PAGE_SIZE,
                        status=None if status == "all" else status)
    return page(request, "emails.html", title="Emails", active="/emails", found=found, selected=status,
                tabs=STATUS_TABS)


async def email_detail(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    record = await call(request, ownmail.own_email, session.account.email, request.match_info["id"])
    shown = await state(request).ctx.blocking.cpu(mailframe.view, record)
    remote = _wants_remote(request)
    attachments = [(a.filename, a.content_type, human_size(a.size)) for a in shown.attachments]
    return page(request, "email_detail.html", title=record.subject or "(no subject)", active="/emails",
                email=record, headers=shown.headers, attachments=attachments, redacted=shown.redacted,
                remote=remote, remote_images=shown.remote_images, sandbox=FRAME_SANDBOX,
                frame_url=f"/emails/{record.queue_id}/preview" + ("?images=remote" if remote else ""))


async def email_preview(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    record = await call(request, ownmail.own_email, session.account.email, request.match_info["id"])
    shown = await state(request).ctx.blocking.cpu(mailframe.frame, record, _wants_remote(request))
    return web.Response(text=shown.document, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": frame_csp(shown.remote_origins),
        "X-Frame-Options": "SAMEORIGIN",
        "Cache-Control": "no-store",
    })


def routes() -> list[web.RouteDef]:
    return [
        web.get("/emails", email_list, allow_head=False),
        web.get("/emails/{id}", email_detail, allow_head=False),
        web.get("/emails/{id}/preview", email_preview, allow_head=False),
    ]
