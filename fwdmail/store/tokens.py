"""API tokens: an account's tokens, stored only as hashes (the caller hashes; the clear token never
reaches the store).

Untrusted input: the hash of whatever a client sent as a token, compared for equality only."""

from __future__ import annotations

import datetime as dt

from fwdmail.store.db import reads, writing
from fwdmail.store.directory import AccountRecord, _account, _account_record
from fwdmail.store.models import Account, ApiToken

__all__ = ["account_for_token", "add_api_token", "count_api_tokens", "list_api_tokens", "revoke_api_token"]


def add_api_token(account_email: str, token_hash: str, now: dt.datetime) -> AccountRecord:
    """Store a new token's hash for the account; return the account."""
    with writing():
        acct = _account(account_email)
        ApiToken.create(account=acct, token_hash=token_hash, created_at=now)
    return _account_record(acct)


@reads
def account_for_token(token_hash: str) -> AccountRecord | None:
    """The account whose token hashes to `token_hash`, or None."""
    row = (Account.select().join(ApiToken).where(ApiToken.token_hash == token_hash).first())
    return None if row is None else _account_record(row)


@reads
def count_api_tokens(account_email: str) -> int:
    return ApiToken.select().join(Account).where(Account.email == account_email).count()


@reads
def list_api_tokens(account_email: str) -> list[tuple[int, dt.datetime]]:
    """The account's tokens as (id, created_at), oldest first (their hashes stay here)."""
    rows = (ApiToken.select(ApiToken.id, ApiToken.created_at).join(Account)
            .where(Account.email == account_email).order_by(ApiToken.id))
    return [(r.id, r.created_at) for r in rows]


def revoke_api_token(account_email: str, token_id: int) -> bool:
    """Delete the account's token `token_id`; False when the account has no such token."""
    with writing():
        acct = _account(account_email)
        return ApiToken.delete().where(ApiToken.id == token_id, ApiToken.account == acct).execute() > 0
