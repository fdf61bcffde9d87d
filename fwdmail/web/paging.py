"""Keyset paging for the API's list endpoints: `?after=CURSOR&limit=N` answers
`{"<items>": [...], "next": CURSOR | null}` and a `Link: <...>; rel="next"` header while more follow.
`after=` (empty) asks for the first page. The cursor is opaque to clients: the page's last key, as
base64url JSON. Without `after` the endpoints answer as before (a JSON array).

Untrusted input: the `after` query parameter (length-bounded, decoded to a fixed number of strings or
refused with `ValueError`)."""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from typing import Any

from aiohttp import web

__all__ = ["AFTER", "MAX_CURSOR", "cursor", "keyset", "page_reply", "position"]

AFTER = "after"
MAX_CURSOR = 8192
"""Characters of a cursor, at most (the keys it holds are bounded well below: `app.keyset.MAX_KEY`)."""


def keyset(request: web.Request) -> bool:
    """Whether the client asks for keyset paging (`after` given, even empty)."""
    return AFTER in request.query


def cursor(*key: str) -> str:
    """The opaque cursor for a page's last `key`."""
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def position(request: web.Request, parts: int) -> tuple[str, ...]:
    """The key the client's `after` names, `parts` strings; ("",) * parts for the first page. Raises
    `ValueError` for anything that is not a cursor of that shape."""
    text = request.query.get(AFTER, "")
    if not text:
        return ("",) * parts
    if len(text) > MAX_CURSOR:
        raise ValueError(f"{AFTER!r} is too long to be a cursor")
    try:
        key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"{AFTER!r} is not a cursor this API gave") from None
    if not (isinstance(key, list) and len(key) == parts and all(isinstance(k, str) for k in key)):
        raise ValueError(f"{AFTER!r} is not a cursor this API gave")
    return tuple(key)


def page_reply(request: web.Request, name: str, items: list[Any], last: tuple[str, ...] | None,
               limit: int) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body (`name`: the page's items, `next`: the cursor or null) and the headers (`Link`
    to the next page while more follow) of one keyset page; `last` is the page's last key if more follow."""
    following = cursor(*last) if last is not None else None
    headers = {"X-Limit": str(limit)}
    if following is not None:
        query = urllib.parse.urlencode({AFTER: following, "limit": limit})
        headers["Link"] = f'<{request.rel_url.path}?{query}>; rel="next"'
    return {name: items, "next": following}, headers
