"""Accounts, the people who own domains: add, look up, list, delete.

Arguments arrive as the admin typed them; an address is validated here and raises `AddressError`,
`NotFound` or `AlreadyExists` with a message fit to print.
"""

from __future__ import annotations

from fwdmail import store
from fwdmail.mail.addresses import normalize_address
from fwdmail.store import AccountRecord

__all__ = ["AccountRecord", "add_account", "delete_account", "get_account", "list_accounts"]


def add_account(email: str) -> AccountRecord:
    return store.add_account(normalize_address(email).lower())


def get_account(email: str) -> AccountRecord:
    return store.get_account(normalize_address(email).lower())


def list_accounts() -> list[AccountRecord]:
    return store.list_accounts()


def delete_account(email: str) -> dict[str, int]:
    """Delete an account with everything it owns; return how many rows of each kind went."""
    email = normalize_address(email).lower()
    counts = store.delete_account(email)
    store.settle_deleted(f"account {email}")
    return counts
