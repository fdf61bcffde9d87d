"""`fwdmail account ...`: add, list, delete, token. Handles the addresses the admin typed (checked in app)."""

from __future__ import annotations

import click

from fwdmail.app import accounts, tokens
from fwdmail.cli.common import State, confirm_or_abort, json_option, pass_state
from fwdmail.cli.render import emit_json, line, table


@click.group()
def account() -> None:
    """Accounts: the people who own domains."""


@account.command("add")
@click.argument("email")
@json_option
@pass_state
def account_add(state: State, email: str, as_json: bool) -> None:
    """Add an account identified by EMAIL."""
    state.open()
    rec = accounts.add_account(email)
    if as_json:
        emit_json({"email": rec.email, "created_at": rec.created_at})
    else:
        line(f"account {rec.email} added")


@account.command("list")
@json_option
@pass_state
def account_list(state: State, as_json: bool) -> None:
    """List accounts and their domains."""
    state.open()
    rows = accounts.list_accounts()
    if as_json:
        emit_json([{"email": a.email, "domains": list(a.domains), "created_at": a.created_at} for a in rows])
    else:
        table("accounts", ["email", "domains", "created"],
              [(a.email, ", ".join(a.domains), f"{a.created_at:%Y-%m-%d %H:%M}") for a in rows])


@account.command("delete")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_state
def account_delete(state: State, email: str, yes: bool, as_json: bool) -> None:
    """Delete an account with all its domains, aliases, keys, passwords, mail and logs."""
    state.open()
    rec = accounts.get_account(email)
    confirm_or_abort(yes, f"Delete account {rec.email} and everything it owns?")
    counts = accounts.delete_account(rec.email)
    if as_json:
        emit_json({"deleted": rec.email, **counts})
    else:
        line(f"account {rec.email} deleted: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@account.command("token")
@click.argument("email")
@json_option
@pass_state
def account_token(state: State, email: str, as_json: bool) -> None:
    """Make an API token for EMAIL's account and print it once (only its hash is kept)."""
    state.open()
    new = tokens.new_api_token(email)
    if as_json:
        emit_json({"email": new.account.email, "token": new.token})
    else:
        line(f"API token for {new.account.email} (shown once, store it now):")
        line(f"  {new.token}")
