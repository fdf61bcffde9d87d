"""Domain and alias settings under `/v1/domains/{domain}`: the DNS records to publish, their check
(through the daemon's `[dns]` resolver), settings such as `retention_days` or `aliases_from`, alias
updates (destinations, enabled or a disable mode) and new SMTP passwords, shown once.

Untrusted input: path parameters and JSON bodies, checked in `apicore` (shape, types, unknown fields)
and `app.tenancy` (values, ownership: another account's domain or alias is a 404)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from fwdmail.app import domains, now, tenancy
from fwdmail.app.shapes import alias_json, domain_json
from fwdmail.runtime import keys
from fwdmail.runtime.context import Context
from fwdmail.runtime.executor import Busy
from fwdmail.web.apicore import ApiError, call, context, fields, read_body, reply
from fwdmail.web.auth import authenticate

# DNS checks wait on remote answers (on the loop, no thread held): a few at once in all, one per account.
MAX_VERIFICATIONS = 8
DOMAIN_SETTINGS = {"retention_days": "integer", "auth_policy": "string", "friendly_from": "boolean",
                   "require_tls_inbound": "boolean", "aliases_from": "string"}
ALIAS_CHANGES = {"destinations": "strings", "enabled": "boolean", "mode": "string"}
DISABLE_MODES = ("quiet", "tempfail", "reject")

_verifying: set[str] = set()  # accounts with a DNS check running (on this loop)


def dns_json(records: list[domains.DnsRecord]) -> list[dict[str, str]]:
    return [r.as_json() for r in records]


async def get_dns(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    record = await call(ctx, tenancy.own_domain, account.email, request.match_info["domain"])
    return reply(dns_json(domains.dns_records(ctx.config, record)))


async def _checks(ctx: Context, record: tenancy.DomainRecord) -> list[domains.RecordCheck]:
    try:
        return await domains.check_records_async(ctx.config, record)
    except ValueError as exc:
        raise ApiError(503, "dns_unavailable", str(exc)) from None


async def verify(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    record = await call(ctx, tenancy.own_domain, account.email, request.match_info["domain"])
    if account.email in _verifying or len(_verifying) >= MAX_VERIFICATIONS:
        raise ApiError(429, "busy", "a DNS check is already running; try again in a few seconds",
                       headers={"Retry-After": "5"})
    _verifying.add(account.email)
    try:
        checks = await _checks(ctx, record)
    finally:
        _verifying.discard(account.email)
    result = await call(ctx, tenancy.record_own_verification, account.email, record.name, checks, now())
    return reply({"domain": result.domain.name, "verified_at": result.domain.verified_at,
                  "records": [{**c.record.as_json(), "ok": c.ok, "found": c.found} for c in result.checks]})


async def set_domain(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    settings = fields(await read_body(request), DOMAIN_SETTINGS, at_least_one=True)
    if "aliases_from" in settings and settings["aliases_from"] not in domains.ALIASES_FROM:
        raise ApiError(400, "invalid", f"'aliases_from' must be one of {', '.join(domains.ALIASES_FROM)}")
    record = await call(ctx, tenancy.set_own_domain, account.email, request.match_info["domain"], settings)
    return reply(domain_json(record))


def _alias_changes(data: dict[str, Any]) -> tuple[list[str] | None, str | None]:
    fields(data, ALIAS_CHANGES, at_least_one=True)
    enabled, mode = data.get("enabled"), data.get("mode")
    if mode is not None and mode not in DISABLE_MODES:
        raise ApiError(400, "invalid", f"'mode' must be one of {', '.join(DISABLE_MODES)}")
    if mode is not None and enabled is not False:
        raise ApiError(400, "invalid", "'mode' goes with \"enabled\": false")
    state = None if enabled is None else ("enabled" if enabled else mode or "reject")
    return data.get("destinations"), state


async def update_alias(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    destinations, state = _alias_changes(await read_body(request))
    record = await call(ctx, tenancy.update_own_alias, account.email, request.match_info["domain"],
                        request.match_info["alias"], destinations, state)
    return reply(alias_json(record))


async def new_password(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    domain, alias = request.match_info["domain"], request.match_info["alias"]
    record = await call(ctx, tenancy.own_alias, account.email, domain, alias)
    if record.kind == "regex":
        raise ApiError(400, "invalid", "regex aliases cannot log in: give an exact or catch-all alias")
    password = keys.generate_password()
    try:
        hashed = await ctx.blocking.hash(keys.hash_password, password)
    except Busy:
        raise ApiError(503, "busy", "password hashing is busy; try again in a few seconds",
                       headers={"Retry-After": "2"}) from None
    record = await call(ctx, tenancy.set_own_alias_password, account.email, domain, alias, hashed)
    return reply({"address": record.address, "password": password})


def routes() -> list[web.RouteDef]:
    return [
        web.patch("/v1/domains/{domain}", set_domain),
        web.get("/v1/domains/{domain}/dns", get_dns, allow_head=False),
        web.post("/v1/domains/{domain}/verify", verify),
        web.patch("/v1/domains/{domain}/aliases/{alias}", update_alias),
        web.post("/v1/domains/{domain}/aliases/{alias}/password", new_password),
    ]
