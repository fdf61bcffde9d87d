"""What the admin commands do: the only layer the CLI calls (accounts, domains, aliases, emails, logs,
maintenance), one module per noun. Functions take what the admin typed, validate it, and return records or
small dataclasses; nothing here prints.

Shared here: the errors a command may raise with a message fit to print, the characters the CLI must show
as escapes, and the clock every command reads.
"""

from __future__ import annotations

import datetime as dt

from fwdmail import store
from fwdmail.mail.addresses import HIDDEN_CHARS, AddressError

__all__ = ["HIDDEN_CHARS", "USER_ERRORS", "now"]

# Expected failures of a command: shown as one line, never as a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    AddressError, ValueError, LookupError, store.StoreError, store.DatabaseFailure,
)


def now() -> dt.datetime:
    """The current time as the store keeps it (naive UTC)."""
    return store.utcnow()
