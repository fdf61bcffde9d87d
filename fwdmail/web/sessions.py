"""Who is logged in to the pages: the one session cookie, read into a `Session` for the request, set on
login and cleared on logout.

Untrusted input: the Cookie header (only the session cookie is read, within a bounded length; its id is
hashed in `app.sessions`) and, from `[http] trusted_proxies` only, X-Forwarded-Proto."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web

from fwdmail.app import sessions
from fwdmail.app.accounts import AccountRecord

COOKIE = "fwdmail_session"
MAX_COOKIE = 100


@dataclass(frozen=True)
class Session:
    """The request's session: its id (in clear, from the cookie), account and stage ("full" or "totp")."""

    id: str
    account: AccountRecord
    stage: str

    @property
    def full(self) -> bool:
        return self.stage == "full"


SESSION_KEY = web.RequestKey("web_session", Session)


def cookie_id(request: web.Request) -> str | None:
    value = request.cookies.get(COOKIE, "")
    return value if 0 < len(value) <= MAX_COOKIE else None


def current(request: web.Request) -> Session | None:
    return request.get(SESSION_KEY)


def logged_in(request: web.Request) -> Session:
    """The request's full session; otherwise the browser goes to the login page."""
    session = request.get(SESSION_KEY)
    if session is None or not session.full:
        raise web.HTTPSeeOther("/login")
    return session


def secure(request: web.Request, proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether the browser reached us over TLS: our own, or a trusted proxy's saying so."""
    if request.secure:
        return True
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    return (any(peer in net for net in proxies)
            and request.headers.get("X-Forwarded-Proto", "").strip().lower() == "https")


def set_cookie(response: web.StreamResponse, session_id: str, is_secure: bool) -> None:
    response.set_cookie(COOKIE, session_id, max_age=int(sessions.SESSION_TTL.total_seconds()), path="/",
                        httponly=True, samesite="Lax", secure=is_secure)


def clear_cookie(response: web.StreamResponse, is_secure: bool) -> None:
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Lax", secure=is_secure)
