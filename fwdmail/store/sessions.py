"""Web logins: an account's password hash and TOTP secret, its sessions and its one-time password links.
Session ids and link tokens arrive already hashed (the caller hashes; the clear values never reach the
store).

Untrusted input: hashes of what a web client sent, compared for equality only."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from fwdmail.store.db import reads, writing
from fwdmail.store.directory import AccountRecord, _account, _account_record
from fwdmail.store.models import Account, AccountLogin, LoginLink, WebSession

__all__ = [
    "LoginState", "SessionRecord", "add_login_link", "add_session", "count_expired_web_sessions",
    "count_sessions", "delete_session",
    "delete_sessions", "get_login_state", "login_link_account", "purge_login_links_before",
    "purge_sessions_before", "set_login", "set_session_stage", "take_login_link", "web_session",
]


@dataclass(frozen=True)
class LoginState:
    """What a web login checks: the account, its password hash and TOTP secret (None when not set)."""

    account: AccountRecord
    password_hash: str | None
    totp_secret: str | None
    totp_pending: str | None
    totp_step: int


@dataclass(frozen=True)
class SessionRecord:
    account: AccountRecord
    stage: str
    expires_at: dt.datetime


def _login_row(acct: Account) -> AccountLogin:
    row = AccountLogin.get_or_none(AccountLogin.account == acct)
    return row if row is not None else AccountLogin(account=acct)


@reads
def get_login_state(account_email: str) -> LoginState:
    acct = _account(account_email)
    row = _login_row(acct)
    return LoginState(_account_record(acct), row.password_hash, row.totp_secret, row.totp_pending,
                      row.totp_step or 0)


_UNSET = object()


def set_login(account_email: str, now: dt.datetime, *, password_hash: object = _UNSET,
              totp_secret: object = _UNSET, totp_pending: object = _UNSET, totp_step: object = _UNSET,
              end_sessions: bool = False) -> None:
    """Change the given fields of the account's web login (`end_sessions`: and log every session out)."""
    with writing():
        acct = _account(account_email)
        row = _login_row(acct)
        for name, value in (("password_hash", password_hash), ("totp_secret", totp_secret),
                            ("totp_pending", totp_pending), ("totp_step", totp_step)):
            if value is not _UNSET:
                setattr(row, name, value)
        row.updated_at = now
        row.save()
        if end_sessions:
            WebSession.delete().where(WebSession.account == acct).execute()


def add_session(account_email: str, id_hash: str, stage: str, now: dt.datetime, expires_at: dt.datetime,
                ) -> None:
    with writing():
        WebSession.create(account=_account(account_email), id_hash=id_hash, stage=stage, created_at=now,
                          expires_at=expires_at)


@reads
def web_session(id_hash: str, now: dt.datetime) -> SessionRecord | None:
    """The unexpired session whose id hashes to `id_hash`, or None."""
    row = (WebSession.select(WebSession, Account).join(Account)
           .where(WebSession.id_hash == id_hash, WebSession.expires_at > now).first())
    return None if row is None else SessionRecord(_account_record(row.account), row.stage, row.expires_at)


def set_session_stage(id_hash: str, stage: str, expires_at: dt.datetime) -> None:
    with writing():
        WebSession.update(stage=stage, expires_at=expires_at).where(WebSession.id_hash == id_hash).execute()


def delete_session(id_hash: str) -> int:
    with writing():
        return WebSession.delete().where(WebSession.id_hash == id_hash).execute()


def delete_sessions(account_email: str, keep_hash: str = "") -> int:
    """Log the account out everywhere (but the session `keep_hash`)."""
    with writing():
        acct = _account(account_email)
        return WebSession.delete().where(WebSession.account == acct, WebSession.id_hash != keep_hash
                                         ).execute()


@reads
def count_sessions(now: dt.datetime) -> int:
    return WebSession.select().where(WebSession.expires_at > now).count()


def add_login_link(account_email: str, token_hash: str, now: dt.datetime, expires_at: dt.datetime,
                   ) -> AccountRecord:
    """A new one-time link for the account; earlier links of the account stop working."""
    with writing():
        acct = _account(account_email)
        LoginLink.delete().where(LoginLink.account == acct).execute()
        LoginLink.create(account=acct, token_hash=token_hash, created_at=now, expires_at=expires_at)
    return _account_record(acct)


@reads
def login_link_account(token_hash: str, now: dt.datetime) -> AccountRecord | None:
    row = (LoginLink.select(LoginLink, Account).join(Account)
           .where(LoginLink.token_hash == token_hash, LoginLink.expires_at > now).first())
    return None if row is None else _account_record(row.account)


def take_login_link(token_hash: str, password_hash: str, now: dt.datetime) -> AccountRecord | None:
    """Use the link once: set the account's password, end its sessions, delete the link. None (and no
    change) for a link that is unknown, used or expired."""
    with writing():
        row = (LoginLink.select(LoginLink, Account).join(Account)
               .where(LoginLink.token_hash == token_hash, LoginLink.expires_at > now).first())
        if row is None:
            return None
        acct = row.account
        row.delete_instance()
        login = _login_row(acct)
        login.password_hash = password_hash
        login.updated_at = now
        login.save()
        WebSession.delete().where(WebSession.account == acct).execute()
    return _account_record(acct)


def _purge(model: type[WebSession] | type[LoginLink], cutoff: dt.datetime, batch: int) -> int:
    with writing():
        ids = [r.id for r in model.select(model.id).where(model.expires_at <= cutoff).limit(batch)]
        return model.delete().where(model.id.in_(ids)).execute() if ids else 0


def purge_sessions_before(cutoff: dt.datetime, batch: int) -> int:
    """Delete up to `batch` sessions expired at `cutoff`."""
    return _purge(WebSession, cutoff, batch)


@reads
def count_expired_web_sessions(now: dt.datetime) -> int:
    """Expired sessions and password links (what `purge_*_before(now)` would delete)."""
    return (WebSession.select().where(WebSession.expires_at <= now).count()
            + LoginLink.select().where(LoginLink.expires_at <= now).count())


def purge_login_links_before(cutoff: dt.datetime, batch: int) -> int:
    return _purge(LoginLink, cutoff, batch)
