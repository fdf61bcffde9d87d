"""Logging in and out, and setting a password through a one-time link (invite or reset).

Untrusted input: the login name, password and TOTP code typed into the forms, the link token in the URL,
the client's address (for the login limits). A password is bounded in length before it is hashed, on the
bounded hashing pool; a failed login is counted per client network, per account name and in total, and
while a count is full the login is refused before any hash."""

from __future__ import annotations

import secrets
import time

from aiohttp import web

from fwdmail.app import now, sessions
from fwdmail.runtime import keys
from fwdmail.runtime.executor import Busy
from fwdmail.web.clients import client_address
from fwdmail.web.pagebase import field_text, form, page, redirect, state
from fwdmail.web.sessions import clear_cookie, current, secure, set_cookie

HOME = "/domains"


async def home(request: web.Request) -> web.StreamResponse:
    session = current(request)
    return redirect(HOME if session is not None and session.full else "/login")


async def login_form(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is not None and session.full:
        return redirect(HOME)
    notice = "Your password is set: log in." if request.query.get("set") == "1" else ""
    return page(request, "login.html", title="Log in", notice=notice, email="")


def _refused(request: web.Request, status: int, error: str, email: str = "") -> web.Response:
    return page(request, "login.html", status=status, title="Log in", error=error, email=email)


async def _password_ok(request: web.Request, email: str, password: str) -> sessions.LoginState | None:
    """The account if `password` is its password (one scrypt on the hashing pool, also for an unknown
    name), else None; `Busy` when the hashing pool is full."""
    st = state(request)
    login = await st.ctx.blocking.db(sessions.login_state, email)
    encoded = login.password_hash if login is not None else None
    if encoded is None:
        if st.dummy_hash is None:
            st.dummy_hash = await st.ctx.blocking.hash(keys.hash_password, secrets.token_hex(16))
        encoded = st.dummy_hash
    ok = await st.ctx.blocking.hash(keys.verify_password, password, encoded)
    return login if ok and login is not None and login.password_hash is not None else None


async def login(request: web.Request) -> web.StreamResponse:
    st = state(request)
    email, password = field_text(request, "email")[:320], form(request).get("password", "")
    client = client_address(request, st.proxies)
    if not email or not password:
        return _refused(request, 400, "Give your email address and password.", email)
    if len(password) > sessions.MAX_PASSWORD:
        st.limits.failed(client, email, time.monotonic())
        return _refused(request, 401, "Wrong email address or password.", email)
    if not st.limits.allows(client, email, time.monotonic()):
        return _refused(request, 429, "Too many failed logins: wait a while and try again.", email)
    try:
        login = await _password_ok(request, email, password)
    except Busy:
        return _refused(request, 503, "The server is busy: try again in a moment.", email)
    if login is None:
        st.limits.failed(client, email, time.monotonic())
        return _refused(request, 401, "Wrong email address or password.", email)
    stage = "totp" if login.totp_secret else "full"
    old = current(request)
    if old is not None:
        await st.ctx.blocking.db(sessions.end_session, old.id)
    session_id = await st.ctx.blocking.db(sessions.start_session, login.account.email, stage, now())
    response = redirect("/login/totp" if stage == "totp" else HOME)
    set_cookie(response, session_id, secure(request, st.proxies))
    return response


async def totp_form(request: web.Request) -> web.StreamResponse:
    session = current(request)
    if session is None or session.full:
        return redirect(HOME if session is not None else "/login")
    return page(request, "totp.html", title="Second factor")


async def totp(request: web.Request) -> web.StreamResponse:
    st = state(request)
    session = current(request)
    if session is None or session.full:
        return redirect(HOME if session is not None else "/login")
    client = client_address(request, st.proxies)
    email = session.account.email
    if not st.limits.allows(client, email, time.monotonic()):
        return page(request, "totp.html", status=429, title="Second factor",
                    error="Too many failed codes: wait a while and try again.")
    if not await st.ctx.blocking.db(sessions.accept_totp, email, field_text(request, "code"), now()):
        st.limits.failed(client, email, time.monotonic())
        return page(request, "totp.html", status=401, title="Second factor", error="That code is not right.")
    await st.ctx.blocking.db(sessions.promote_session, session.id, now())
    return redirect(HOME)


async def logout(request: web.Request) -> web.StreamResponse:
    st = state(request)
    session = current(request)
    if session is not None:
        await st.ctx.blocking.db(sessions.end_session, session.id)
    response = redirect("/login")
    clear_cookie(response, secure(request, st.proxies))
    return response


async def set_password_form(request: web.Request) -> web.StreamResponse:
    account = await state(request).ctx.blocking.db(sessions.link_account, request.match_info["token"], now())
    if account is None:
        return page(request, "error.html", status=404, title="Link not valid",
                    message="This link is unknown, used or expired: ask your administrator for a new one.")
    return page(request, "set_password.html", title="Set your password", email=account.email)


async def set_password(request: web.Request) -> web.StreamResponse:
    st = state(request)
    token = request.match_info["token"]
    account = await st.ctx.blocking.db(sessions.link_account, token, now())
    if account is None:
        return page(request, "error.html", status=404, title="Link not valid",
                    message="This link is unknown, used or expired: ask your administrator for a new one.")
    password = form(request).get("password", "")
    problem = sessions.check_new_password(password, form(request).get("repeat", ""))
    if problem is not None:
        return page(request, "set_password.html", status=400, title="Set your password", email=account.email,
                    error=f"Password not set: {problem}.")
    try:
        encoded = await st.ctx.blocking.hash(keys.hash_password, password)
    except Busy:
        return page(request, "set_password.html", status=503, title="Set your password",
                    email=account.email, error="The server is busy: try again in a moment.")
    if await st.ctx.blocking.db(sessions.use_login_link, token, encoded, now()) is None:
        return page(request, "error.html", status=404, title="Link not valid",
                    message="This link is unknown, used or expired: ask your administrator for a new one.")
    return redirect("/login?set=1")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", home),
        web.get("/login", login_form),
        web.post("/login", login),
        web.get("/login/totp", totp_form),
        web.post("/login/totp", totp),
        web.post("/logout", logout),
        web.get("/set-password/{token}", set_password_form),
        web.post("/set-password/{token}", set_password),
    ]
