"""API tokens for accounts: make one (shown once, stored as its SHA-256), and find the account a
presented token belongs to.

Untrusted input: the token a web client presents; it is only hashed and compared, never logged."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from fwdmail import store
from fwdmail.app import now
from fwdmail.mail.addresses import normalize_address
from fwdmail.store import AccountRecord

__all__ = ["TOKEN_PREFIX", "NewToken", "account_for_token", "new_api_token"]

TOKEN_PREFIX = "fwd_"
# 32 random bytes: a hash without salt or stretching is then as strong as the token itself.
TOKEN_BYTES = 32
MAX_TOKEN_LENGTH = 200


@dataclass(frozen=True)
class NewToken:
    """A freshly made token, in clear only here."""

    account: AccountRecord
    token: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_api_token(email: str) -> NewToken:
    """Make a token for the account `email`; return it once (only its hash is stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    account = store.add_api_token(normalize_address(email).lower(), token_hash(token), now())
    return NewToken(account, token)


@store.reads
def account_for_token(token: str) -> AccountRecord | None:
    """The account `token` belongs to, or None (also for anything not shaped like a token)."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        return None
    return store.account_for_token(token_hash(token))
