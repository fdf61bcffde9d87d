"""What every `/v1` handler shares: JSON replies and errors, the store call that maps `app`'s failures to
statuses, and strict readers of request bodies and query strings.

Untrusted input: request bodies (JSON, at most `[http] max_body_size`) and query strings. Shapes and
types are checked here (unknown fields, wrong types, booleans posing as numbers, out-of-range sizes all
give a 400 with a stable `error` code); values are checked in `app`. Nothing a client sent is logged.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from fwdmail.app import tenancy
from fwdmail.app.accounts import AccountRecord
from fwdmail.runtime.context import Context

CONTEXT_KEY = web.AppKey("context", Context)
MAX_QUERY_VALUE = 200


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


def context(request: web.Request) -> Context:
    return request.app[CONTEXT_KEY]


async def call(ctx: Context, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an `app` function on the store's thread, turning its expected failures into JSON errors."""
    try:
        return await ctx.blocking.db(fn, *args, **kwargs)
    except tenancy.AlreadyExists as exc:
        raise ApiError(409, "already_exists", str(exc)) from None
    except tenancy.NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except (tenancy.AddressError, ValueError) as exc:
        raise ApiError(400, "invalid", str(exc) or "invalid value") from None
    except tenancy.UNAVAILABLE:
        raise ApiError(503, "unavailable", "the store is unavailable; try again later") from None


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (413 past the size limit, 400 for anything but an object)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", "the request body is too large") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return data


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {str: "string", list: "array", dict: "object", float: "number"}.get(type(value), "null")


def fields(data: dict[str, Any], allowed: Mapping[str, str], *, required: tuple[str, ...] = (),
           at_least_one: bool = False) -> dict[str, Any]:
    """`data` checked against `allowed` (field -> JSON type: string, integer, boolean, array of strings
    as "strings"): 400 `unknown_field` for any other field, `invalid` for a wrong type or a missing
    required one."""
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field {unknown[0][:64]!r}; allowed: "
                       f"{', '.join(sorted(allowed))}")
    for name in required:
        if name not in data:
            raise ApiError(400, "invalid", f"{name!r} is required")
    if at_least_one and not data:
        raise ApiError(400, "invalid", f"give at least one of {', '.join(sorted(allowed))}")
    for name, value in data.items():
        want = allowed[name]
        if want == "strings":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = _kind(value) == want
        if not ok:
            shown = "a list of strings" if want == "strings" else f"a JSON {want}"
            raise ApiError(400, "invalid", f"{name!r} must be {shown}")
    return data


def text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "invalid", f"{name!r} must be a non-empty string")
    return value


def check_query(request: web.Request, allowed: tuple[str, ...]) -> None:
    """400 for a query parameter not in `allowed`, given twice, or longer than `MAX_QUERY_VALUE`."""
    for name in request.query:
        if name not in allowed:
            raise ApiError(400, "unknown_field", f"unknown query parameter {name[:64]!r}; allowed: "
                           f"{', '.join(allowed)}")
        if len(request.query.getall(name)) > 1:
            raise ApiError(400, "invalid", f"{name!r} given more than once")
        if len(request.query[name]) > MAX_QUERY_VALUE:
            raise ApiError(400, "invalid", f"{name!r} is too long")


def int_query(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise ApiError(400, "invalid", f"{name!r} must be a positive whole number")
    return int(text)


def text_query(request: web.Request, name: str) -> str | None:
    text = request.query.get(name)
    if text is not None and not text.strip():
        raise ApiError(400, "invalid", f"{name!r} must not be empty")
    return text


def time_query(request: web.Request, name: str) -> dt.datetime | None:
    """An ISO 8601 date or date-time (UTC unless it says otherwise), as the store keeps times (naive UTC)."""
    text = request.query.get(name)
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid", f"{name!r} must be an ISO 8601 date-time, e.g. "
                       "2026-01-31T12:00:00Z") from None
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when
