"""The JSON API under `/v1` and `GET /healthz`: handlers that authenticate, call `app.tenancy` through
the executor, and render what it returns with the field names of the CLI's `--json`.

Untrusted input: URL path parameters, query parameters (paging) and JSON request bodies; shapes and
types are checked by `apicore`, values in `app`. Nothing a client sent is logged. The handlers added
later live by noun in `api_account`, `api_domains` and `api_emails`, registered here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from fwdmail.app import domains, keyset, now, tenancy
from fwdmail.app.shapes import alias_json, domain_json
from fwdmail.web import api_account, api_domains, api_emails, paging
from fwdmail.web.apicore import (
    CONTEXT_KEY,
    ApiError,
    account_json,
    fields,
    reply,
)
from fwdmail.web.apicore import call as _call
from fwdmail.web.apicore import context as _ctx
from fwdmail.web.apicore import int_query as _int_query
from fwdmail.web.apicore import read_body as _body
from fwdmail.web.apicore import text_field as _text_field
from fwdmail.web.auth import authenticate
from fwdmail.web.openapi import document

__all__ = ["CONTEXT_KEY", "LISTENERS_KEY", "ApiError", "ListenerCheck", "reply", "routes"]

HEALTH_TIMEOUT = 2.0
DEFAULT_PAGE_SIZE = 50
ListenerCheck = Callable[[], list[str]]  # one line per service with listeners down
LISTENERS_KEY = web.AppKey("listeners", ListenerCheck)


async def healthz(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    try:
        await asyncio.wait_for(ctx.blocking.db(tenancy.store_reachable), HEALTH_TIMEOUT)
    except Exception:
        return reply({"status": "unavailable", "reason": "store unreachable"}, status=503)
    down = request.app[LISTENERS_KEY]()
    if down:
        return reply({"status": "unavailable", "reason": "listeners down: " + "; ".join(down)}, status=503)
    return reply({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    return reply(document())


async def get_account(request: web.Request) -> web.Response:
    account = await authenticate(_ctx(request), request)
    return reply(account_json(account))


async def list_domains(request: web.Request) -> web.Response:
    """All the account's domains (a JSON array), or with `?after=` one keyset page (`web.paging`)."""
    ctx = _ctx(request)
    account = await authenticate(ctx, request)
    if paging.keyset(request):
        limit = _int_query(request, "limit", DEFAULT_PAGE_SIZE)
        try:
            (after,) = paging.position(request, 1)
        except ValueError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        page = await _call(ctx, keyset.domains_after, account.email, after, limit)
        body, headers = paging.page_reply(request, "domains", [domain_json(d) for d in page.domains],
                                          (page.next,) if page.next is not None else None, limit)
        return reply(body, headers=headers)
    rows = await _call(ctx, tenancy.list_own_domains, account.email)
    return reply([domain_json(d) for d in rows])


async def add_domain(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    account = await authenticate(ctx, request)
    name = _text_field(fields(await _body(request), {"name": "string"}), "name")
    try:
        prepared = await ctx.blocking.cpu(tenancy.prepare_domain, account.email, name, now())
    except (tenancy.AddressError, ValueError) as exc:
        raise ApiError(400, "invalid", str(exc)) from None
    record = await _call(ctx, tenancy.add_prepared_domain, prepared)
    records = domains.dns_records(ctx.config, record)
    return reply({**domain_json(record), "dns": [r.as_json() for r in records]}, status=201)


async def get_domain(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    account = await authenticate(ctx, request)
    record = await _call(ctx, tenancy.own_domain, account.email, request.match_info["domain"])
    return reply(domain_json(record))


async def remove_domain(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    account = await authenticate(ctx, request)
    record = await _call(ctx, tenancy.own_domain, account.email, request.match_info["domain"])
    counts = await _call(ctx, tenancy.remove_own_domain, account.email, record.name)
    return reply({"removed": record.name, **counts})


async def list_aliases(request: web.Request) -> web.Response:
    """A page of the domain's aliases: by `?page=` (a JSON array, `Link` to the next page), or with
    `?after=` by key (`web.paging`: stable while aliases are added)."""
    ctx = _ctx(request)
    account = await authenticate(ctx, request)
    if paging.keyset(request):
        limit = _int_query(request, "limit", DEFAULT_PAGE_SIZE)
        try:
            kind, local = paging.position(request, 2)
        except ValueError as exc:
            raise ApiError(400, "invalid", str(exc)) from None
        keyed = await _call(ctx, keyset.aliases_after, account.email, request.match_info["domain"],
                            (kind, local), limit)
        body, headers = paging.page_reply(request, "aliases", [alias_json(a) for a in keyed.aliases],
                                          keyed.next, limit)
        return reply(body, headers=headers)
    page = _int_query(request, "page", 1)
    limit = _int_query(request, "limit", DEFAULT_PAGE_SIZE)
    found = await _call(ctx, tenancy.own_aliases, account.email, request.match_info["domain"], page, limit)
    headers = {"X-Page": str(page), "X-Limit": str(limit)}
    if found.more:
        headers["Link"] = f'<{request.rel_url.path}?page={page + 1}&limit={limit}>; rel="next"'
    return reply([alias_json(a) for a in found.aliases], headers=headers)


async def add_alias(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    account = await authenticate(ctx, request)
    data = fields(await _body(request), {"address": "string", "destinations": "strings"},
                  required=("address", "destinations"))
    address = _text_field(data, "address")
    destinations = data.get("destinations")
    if not isinstance(destinations, list) or not all(isinstance(d, str) for d in destinations):
        raise ApiError(400, "invalid", "'destinations' must be a list of addresses")
    record = await _call(ctx, tenancy.add_own_alias, account.email, request.match_info["domain"], address,
                         destinations)
    return reply(alias_json(record), status=201)


async def get_alias(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    account = await authenticate(ctx, request)
    record = await _call(ctx, tenancy.own_alias, account.email, request.match_info["domain"],
                         request.match_info["alias"])
    return reply(alias_json(record))


async def remove_alias(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    account = await authenticate(ctx, request)
    removed = await _call(ctx, tenancy.remove_own_alias, account.email, request.match_info["domain"],
                          request.match_info["alias"])
    return reply({"removed": removed})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz, allow_head=False),
        web.get("/v1/openapi.json", openapi, allow_head=False),
        web.get("/v1/account", get_account, allow_head=False),
        web.get("/v1/domains", list_domains, allow_head=False),
        web.post("/v1/domains", add_domain),
        web.get("/v1/domains/{domain}", get_domain, allow_head=False),
        web.delete("/v1/domains/{domain}", remove_domain),
        web.get("/v1/domains/{domain}/aliases", list_aliases, allow_head=False),
        web.post("/v1/domains/{domain}/aliases", add_alias),
        web.get("/v1/domains/{domain}/aliases/{alias}", get_alias, allow_head=False),
        web.delete("/v1/domains/{domain}/aliases/{alias}", remove_alias),
        *api_account.routes(),
        *api_domains.routes(),
        *api_emails.routes(),
    ]
