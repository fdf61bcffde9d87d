"""My Account > Domains: the account's domains, adding one, its DNS records (with copy buttons), its
verification, and its Advanced Settings (body retention days).

Untrusted input: domain names in the URL and the forms, the retention days typed; all checked in `app`
(another account's domain is a 404, as one that does not exist)."""

from __future__ import annotations

from aiohttp import web

from fwdmail.app import domains, now, owned, tenancy
from fwdmail.web.pagebase import FormError, call, field_text, page, redirect, state
from fwdmail.web.sessions import logged_in


async def domain_list(request: web.Request, error: str = "", status: int = 200) -> web.StreamResponse:
    session = logged_in(request)
    rows = await call(request, tenancy.list_own_domains, session.account.email)
    return page(request, "domains.html", status=status, title="Domains", active="/domains", domains=rows,
                error=error)


async def add_domain(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    ctx = state(request).ctx
    try:
        prepared = await ctx.blocking.cpu(tenancy.prepare_domain, session.account.email,
                                          field_text(request, "name"), now())
        record = await call(request, tenancy.add_prepared_domain, prepared)
    except (tenancy.AddressError, ValueError, FormError) as exc:
        return await domain_list(request, f"Domain not added: {exc}", 400)
    return redirect(f"/domains/{record.name}?added=1")


async def domain_page(request: web.Request, notice: str = "", error: str = "", checks: object = None,
                      status: int = 200) -> web.StreamResponse:
    session = logged_in(request)
    record = await call(request, tenancy.own_domain, session.account.email, request.match_info["domain"])
    records = domains.dns_records(state(request).ctx.config, record)
    if not notice and request.query.get("added") == "1":
        notice = f"{record.name} added: publish the DNS records below, then verify."
    if not notice and request.query.get("saved") == "1":
        notice = "Settings saved."
    return page(request, "domain.html", status=status, title=record.name, active="/domains", domain=record,
                records=records, checks=checks, notice=notice, error=error)


async def verify(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    ctx = state(request).ctx
    record = await call(request, tenancy.own_domain, session.account.email, request.match_info["domain"])
    try:
        checks = await domains.check_records_async(ctx.config, record)
    except ValueError as exc:
        return await domain_page(request, error=f"Not verified: {exc}", status=502)
    if domains.verifies(checks):
        await call(request, owned.mark_own_verified, session.account.email, record.name, now())
        return await domain_page(request, notice="Verified: the MX record and the verification token are "
                                 "published.", checks=checks)
    missing = ", ".join(c.record.purpose for c in checks if not c.ok)
    return await domain_page(request, error=f"Not verified yet; not found: {missing}.", checks=checks)


async def settings(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    text = field_text(request, "retention_days")
    if not (text.isascii() and text.isdigit() and len(text) <= 2):
        return await domain_page(request, error="Retention must be a whole number of days, 0 to 30.",
                                 status=400)
    try:
        record = await call(request, owned.set_own_retention, session.account.email,
                            request.match_info["domain"], int(text))
    except FormError as exc:
        return await domain_page(request, error=str(exc), status=400)
    return redirect(f"/domains/{record.name}?saved=1")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/domains", domain_list),
        web.post("/domains", add_domain),
        web.get("/domains/{domain}", domain_page),
        web.post("/domains/{domain}/verify", verify),
        web.post("/domains/{domain}/settings", settings),
    ]
