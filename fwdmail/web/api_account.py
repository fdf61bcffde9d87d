"""`DELETE /v1/account`: the account removes itself with everything it owns, as `fwdmail account delete`
does, once the request confirms it by naming the account's address.

Untrusted input: the JSON body (`{"confirm": "<account email>"}`), checked in `apicore` and `app`."""

from __future__ import annotations

from aiohttp import web

from fwdmail.app import tenancy
from fwdmail.web.apicore import ApiError, call, context, fields, read_body, reply
from fwdmail.web.auth import authenticate


async def delete_account(request: web.Request) -> web.Response:
    ctx = context(request)
    account = await authenticate(ctx, request)
    data = fields(await read_body(request), {"confirm": "string"})
    confirm = data.get("confirm")
    if confirm is None or confirm.strip().lower() != account.email.lower():
        raise ApiError(400, "confirmation_required",
                       "to delete the account and everything it owns, send {\"confirm\": \"<its email>\"}")
    counts = await call(ctx, tenancy.delete_own_account, account.email, confirm)
    return reply({"deleted": account.email, **counts})


def routes() -> list[web.RouteDef]:
    return [web.delete("/v1/account", delete_account)]
