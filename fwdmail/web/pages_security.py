"""My Account > Security: changing the password, turning the TOTP second factor on (secret and otpauth URI
shown, confirmed by a code) or off, API tokens (made and shown once, revoked), and Delete Account (typed
confirmation; removes everything, as `fwdmail account delete` does).

Untrusted input: passwords (bounded, hashed on the bounded hashing pool), TOTP codes, token ids and the
typed confirmation from the forms."""

from __future__ import annotations

import time

from aiohttp import web

from fwdmail.app import accounts, now, owned, sessions, tokens
from fwdmail.runtime import keys
from fwdmail.runtime.executor import Busy
from fwdmail.web.clients import client_address
from fwdmail.web.pagebase import call, field_text, form, page, state
from fwdmail.web.sessions import Session, clear_cookie, logged_in, secure
from fwdmail.web.templating import render


async def security_page(request: web.Request, error: str = "", notice: str = "", status: int = 200,
                        show_pending: bool = False, **shown: str) -> web.StreamResponse:
    session = logged_in(request)
    email = session.account.email
    login = await call(request, sessions.login_state, email)
    api_tokens = await call(request, owned.own_api_tokens, email)
    pending = shown.pop("pending", "") or (login.totp_pending or "" if show_pending and login else "")
    return page(request, "security.html", status=status, title="Security", active="/security",
                totp_on=bool(login and login.totp_secret), pending=pending,
                pending_uri=sessions.totp_uri(email, pending) if pending else "", api_tokens=api_tokens,
                new_token=shown.get("new_token", ""), error=error, notice=notice)


async def _password_right(request: web.Request, session: Session, password: str) -> bool | None:
    """Whether `password` is the account's (counted by the login limits); None when hashing is busy or
    the limits are spent."""
    st = state(request)
    client = client_address(request, st.proxies)
    email = session.account.email
    if len(password) > sessions.MAX_PASSWORD or not st.limits.allows(client, email, time.monotonic()):
        return None
    login = await call(request, sessions.login_state, email)
    try:
        ok = await st.ctx.blocking.hash(keys.verify_password, password,
                                        login.password_hash if login is not None else None)
    except Busy:
        return None
    if not ok:
        st.limits.failed(client, email, time.monotonic())
    return ok


async def change_password(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    right = await _password_right(request, session, form(request).get("current", ""))
    if not right:
        return await security_page(request, error="Password not changed: the current password is wrong"
                                   if right is False else "Too many attempts or busy: try again later.",
                                   status=400 if right is False else 429)
    new = form(request).get("password", "")
    problem = sessions.check_new_password(new, form(request).get("repeat", ""))
    if problem is not None:
        return await security_page(request, error=f"Password not changed: {problem}.", status=400)
    try:
        encoded = await state(request).ctx.blocking.hash(keys.hash_password, new)
    except Busy:
        return await security_page(request, error="The server is busy: try again in a moment.", status=503)
    await call(request, sessions.set_password, session.account.email, encoded, now(), session.id)
    return await security_page(request, notice="Password changed; your other sessions are logged out.")


async def totp_begin(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    secret = await call(request, sessions.begin_totp, session.account.email, now())
    return await security_page(request, notice="Add this secret to your authenticator app, then confirm "
                               "with a code.", pending=secret)


async def totp_confirm(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    code = field_text(request, "code")
    if not await call(request, sessions.confirm_totp, session.account.email, code, now()):
        return await security_page(request, error="That code is not right: two-factor login stays off.",
                                   status=400, show_pending=True)
    return await security_page(request, notice="Two-factor login is on: logging in now asks for a code.")


async def totp_disable(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    right = await _password_right(request, session, form(request).get("current", ""))
    if not right:
        return await security_page(request, error="Two-factor login stays on: the password is wrong or "
                                   "there were too many attempts.", status=400)
    await call(request, sessions.disable_totp, session.account.email, now())
    return await security_page(request, notice="Two-factor login is off.")


async def token_new(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    made = await call(request, tokens.new_api_token, session.account.email)
    return await security_page(request, notice="API token made: copy it now, it is not shown again.",
                               new_token=made.token)


async def token_revoke(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    text = field_text(request, "token_id")
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise web.HTTPNotFound()
    await call(request, owned.revoke_own_api_token, session.account.email, int(text))
    return await security_page(request, notice="API token revoked.")


async def delete_account(request: web.Request) -> web.StreamResponse:
    session = logged_in(request)
    email = session.account.email
    if field_text(request, "confirm").lower() != email:
        return await security_page(request, error="Account not deleted: type your email address exactly to "
                                   "confirm.", status=400)
    await call(request, accounts.delete_account, email)
    response = render("deleted.html", title="Account deleted", email=email)
    clear_cookie(response, secure(request, state(request).proxies))
    return response


def routes() -> list[web.RouteDef]:
    return [
        web.get("/security", security_page),
        web.post("/security/password", change_password),
        web.post("/security/totp/begin", totp_begin),
        web.post("/security/totp/confirm", totp_confirm),
        web.post("/security/totp/disable", totp_disable),
        web.post("/security/tokens", token_new),
        web.post("/security/tokens/revoke", token_revoke),
        web.post("/security/delete", delete_account),
    ]
