"""Who a request is: the API token sent as HTTP Basic user name or `Authorization: Bearer`.

Untrusted input: the Authorization header. It is parsed here within fixed bounds and the token is only
handed to `app.tokens` (hashed there); it never reaches a log line."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from fwdmail.app import tokens
from fwdmail.app.accounts import AccountRecord
from fwdmail.runtime.context import Context

MAX_HEADER = 1024
ACCOUNT_KEY = web.RequestKey("account", AccountRecord)


def presented_token(header: str) -> str | None:
    """The token in an Authorization header value (Bearer TOKEN, or Basic with TOKEN as user name)."""
    if not header or len(header) > MAX_HEADER:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        return user or password or None
    return None


class Unauthorized(web.HTTPUnauthorized):
    """401 without a valid token."""


async def authenticate(ctx: Context, request: web.Request) -> AccountRecord:
    """The account of the request's token; raises `Unauthorized` when it has none that is valid."""
    token = presented_token(request.headers.get("Authorization", ""))
    account = None if token is None else await ctx.blocking.db(tokens.account_for_token, token)
    if account is None:
        raise Unauthorized(headers={"WWW-Authenticate": 'Basic realm="fwdmail", charset="UTF-8"'})
    request[ACCOUNT_KEY] = account
    return account
