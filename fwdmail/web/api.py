"""The JSON API under `/v1` and `GET /healthz`: handlers that authenticate, call `app.tenancy` through
the executor, and render what it returns with the field names of the CLI's `--json`.

Untrusted input: URL path parameters, query parameters (paging) and JSON request bodies; shapes and
types are checked here, values in `app`. Nothing a client sent is logged."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from aiohttp import web

from fwdmail.app import domains, now, pages, tenancy
from fwdmail.app.accounts import AccountRecord
from fwdmail.runtime.context import Context
from fwdmail.web import paging
from fwdmail.web.auth import authenticate
from fwdmail.web.openapi import document

HEALTH_TIMEOUT = 2.0
DEFAULT_PAGE_SIZE = 50
CONTEXT_KEY = web.AppKey("context", Context)


class ApiError(web.HTTPException):
    """A JSON error reply: `{"error": code, "message": text}` with `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(headers=headers, text=json.dumps({"error": code, "message": message}),
                         content_type="application/json")


def _iso(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat() + ("Z" if value.tzinfo is None else "")
    raise TypeError(f"{type(value).__name__} is not JSON")


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data, default=_iso), status=status, headers=headers,
                        content_type="application/json")


def account_json(a: AccountRecord) -> dict[str, Any]:
    return {"email": a.email, "domains": list(a.domains), "created_at": a.created_at}


def domain_json(d: tenancy.DomainRecord) -> dict[str, Any]:
    return {
        "name": d.name, "account": d.account_email, "dkim_selector": d.dkim_selector,
        "retention_days": d.retention_days, "verified_at": d.verified_at, "auth_policy": d.auth_policy,
        "friendly_from": d.friendly_from, "require_tls_inbound": d.require_tls_inbound,
        "created_at": d.created_at,
    }


def alias_json(a: tenancy.AliasRecord) -> dict[str, Any]:
    return {"address": a.address, "kind": a.kind, "destinations": list(a.destinations), "state": a.state,
            "has_password": a.has_password, "account": a.account_email, "created_at": a.created_at}


async def _call(ctx: Context, fn: Any, *args: Any) -> Any:
    """Run an `app` function on the store's thread, turning its expected failures into JSON errors."""
    try:
        return await ctx.blocking.db(fn, *args)
    except tenancy.AlreadyExists as exc:
        raise ApiError(409, "already_exists", str(exc)) from None
    except tenancy.NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except (tenancy.AddressError, ValueError) as exc:
        raise ApiError(400, "invalid", str(exc) or "invalid value") from None
    except tenancy.UNAVAILABLE:
        raise ApiError(503, "unavailable", "the store is unavailable; try again later") from None


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", "the request body is too large") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return data


def _text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "invalid", f"{name!r} must be a non-empty string")
    return value


def _int_query(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise ApiError(400, "invalid", f"{name!r} must be a positive whole number")
    return int(text)


def _ctx(request: web.Request) -> Context:
    return request.app[CONTEXT_KEY]


async def healthz(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    try:
        await asyncio.wait_for(ctx.blocking.db(tenancy.store_reachable), HEALTH_TIMEOUT)
    except Exception:
        return reply({"status": "unavailable", "reason": "store unreachable"}, status=503)
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
        page = await _call(ctx, pages.domains_after, account.email, after, limit)
        body, headers = paging.page_reply(request, "domains", [domain_json(d) for d in page.domains],
                                          (page.next,) if page.next is not None else None, limit)
        return reply(body, headers=headers)
    rows = await _call(ctx, tenancy.list_own_domains, account.email)
    return reply([domain_json(d) for d in rows])


async def add_domain(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    account = await authenticate(ctx, request)
    name = _text_field(await _body(request), "name")
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
        keyed = await _call(ctx, pages.aliases_after, account.email, request.match_info["domain"],
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
    data = await _body(request)
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
    ]
