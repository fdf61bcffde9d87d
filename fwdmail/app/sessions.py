"""Web logins ("My Account"): sessions, one-time password links (invite and reset), the password and the
optional TOTP second factor of an account.

Untrusted input: session ids, link tokens, TOTP codes and login names from web clients. Ids and tokens
are only hashed (SHA-256 of 32 random bytes: as strong as the secret) and compared; a code is checked
within a bounded length. Password hashing itself is the caller's (on the bounded hashing pool)."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import urllib.parse
from dataclasses import dataclass

import pyotp

from fwdmail import store
from fwdmail.mail.addresses import AddressError, normalize_address
from fwdmail.store import AccountRecord, LoginState, NotFound, SessionRecord

__all__ = [
    "LINK_TTL", "MAX_PASSWORD", "MIN_PASSWORD", "SESSION_TTL", "LoginState", "NewLink", "SessionRecord",
    "accept_totp", "begin_totp", "check_new_password", "confirm_totp", "disable_totp", "end_session",
    "link_account", "login_state", "new_login_link", "promote_session", "reset_password", "session_for",
    "set_password", "start_session", "totp_uri", "use_login_link",
]

SESSION_TTL = dt.timedelta(hours=12)
# Between a right password and the TOTP code.
SECOND_FACTOR_TTL = dt.timedelta(minutes=5)
LINK_TTL = dt.timedelta(hours=24)
SECRET_BYTES = 32
MAX_SECRET = 100
MIN_PASSWORD = 10
MAX_PASSWORD = 256
TOTP_ISSUER = "fwdmail"
TOTP_STEP = 30


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _shaped(secret: str) -> bool:
    return 0 < len(secret) <= MAX_SECRET


@store.reads
def login_state(email: str) -> LoginState | None:
    """The account's web login, or None for a name that is no account (or no address)."""
    try:
        return store.get_login_state(normalize_address(email).lower())
    except (AddressError, NotFound):
        return None


def start_session(account_email: str, stage: str, now: dt.datetime) -> str:
    """A new session ("full", or "totp" waiting for the second factor); returns its id, in clear only here."""
    session_id = secrets.token_urlsafe(SECRET_BYTES)
    ttl = SESSION_TTL if stage == "full" else SECOND_FACTOR_TTL
    store.add_session(account_email, _hash(session_id), stage, now, now + ttl)
    return session_id


@store.reads
def session_for(session_id: str, now: dt.datetime) -> SessionRecord | None:
    """The unexpired session with this id, or None."""
    return store.web_session(_hash(session_id), now) if _shaped(session_id) else None


def promote_session(session_id: str, now: dt.datetime) -> None:
    """The second factor passed: the session becomes a full one."""
    store.set_session_stage(_hash(session_id), "full", now + SESSION_TTL)


def end_session(session_id: str) -> None:
    if _shaped(session_id):
        store.delete_session(_hash(session_id))


@dataclass(frozen=True)
class NewLink:
    """A fresh one-time link token, in clear only here."""

    account: AccountRecord
    token: str
    expires_at: dt.datetime


def new_login_link(email: str, now: dt.datetime) -> NewLink:
    """A one-time token (24 h) to set the account's password; earlier links of the account stop working."""
    token = secrets.token_urlsafe(SECRET_BYTES)
    account = store.add_login_link(normalize_address(email).lower(), _hash(token), now, now + LINK_TTL)
    return NewLink(account, token, now + LINK_TTL)


def reset_password(email: str, now: dt.datetime) -> NewLink:
    """Forget the account's password, log it out everywhere, and make a new one-time link."""
    address = normalize_address(email).lower()
    store.set_login(address, now, password_hash=None, end_sessions=True)
    return new_login_link(address, now)


@store.reads
def link_account(token: str, now: dt.datetime) -> AccountRecord | None:
    """The account of an unused, unexpired link, or None."""
    return store.login_link_account(_hash(token), now) if _shaped(token) else None


def use_login_link(token: str, password_hash: str, now: dt.datetime) -> AccountRecord | None:
    """Set the password through the link (once); None for a link unknown, used or expired."""
    return store.take_login_link(_hash(token), password_hash, now) if _shaped(token) else None


def check_new_password(password: str, repeated: str) -> str | None:
    """Why a new password is refused, or None."""
    if password != repeated:
        return "the two passwords differ"
    if len(password) < MIN_PASSWORD:
        return f"use at least {MIN_PASSWORD} characters"
    if len(password) > MAX_PASSWORD:
        return f"use at most {MAX_PASSWORD} characters"
    return None


def set_password(account_email: str, password_hash: str, now: dt.datetime, keep_session: str = "") -> None:
    """A new password; every other session of the account ends."""
    store.set_login(account_email, now, password_hash=password_hash)
    store.delete_sessions(account_email, _hash(keep_session) if keep_session else "")


def _step(now: dt.datetime) -> int:
    return int(now.replace(tzinfo=dt.UTC).timestamp()) // TOTP_STEP


def _matching_step(secret: str, code: str, now: dt.datetime, after: int) -> int | None:
    """The time step (now, or one either side) whose code is `code` and is later than `after`."""
    code = code.strip().replace(" ", "")
    if not (len(code) == 6 and code.isascii() and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret, interval=TOTP_STEP)
    current = _step(now)
    for step in (current - 1, current, current + 1):
        if step > after and secrets.compare_digest(totp.at(step * TOTP_STEP), code):
            return step
    return None


def begin_totp(account_email: str, now: dt.datetime) -> str:
    """A new secret shown to the account, required only once confirmed with a code."""
    secret = pyotp.random_base32()
    store.set_login(account_email, now, totp_pending=secret)
    return secret


def totp_uri(account_email: str, secret: str) -> str:
    label = urllib.parse.quote(f"{TOTP_ISSUER}:{account_email}")
    return f"otpauth://totp/{label}?secret={secret}&issuer={TOTP_ISSUER}"


def confirm_totp(account_email: str, code: str, now: dt.datetime) -> bool:
    """Turn on the pending secret if `code` is its current code."""
    state = store.get_login_state(account_email)
    if state.totp_pending is None:
        return False
    step = _matching_step(state.totp_pending, code, now, 0)
    if step is None:
        return False
    store.set_login(account_email, now, totp_secret=state.totp_pending, totp_pending=None, totp_step=step)
    return True


def accept_totp(account_email: str, code: str, now: dt.datetime) -> bool:
    """Whether `code` is a current code of the account's secret never accepted before (then remembered)."""
    state = store.get_login_state(account_email)
    if state.totp_secret is None:
        return True
    step = _matching_step(state.totp_secret, code, now, state.totp_step)
    if step is None:
        return False
    store.set_login(account_email, now, totp_step=step)
    return True


def disable_totp(account_email: str, now: dt.datetime) -> None:
    store.set_login(account_email, now, totp_secret=None, totp_pending=None, totp_step=0)
