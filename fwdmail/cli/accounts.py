"""`fwdmail account ...`: add, list, delete, token, invite, password. Handles the addresses the admin typed
(checked in app); a one-time link is printed once, only its hash is stored."""

from __future__ import annotations

import click

from fwdmail.app import accounts, now, sessions, tokens
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


def _link_base(state: State) -> str:
    """Where the pages are reached: `[http] public_url`, else http:// and the first listen address."""
    cfg = state.config.http
    if cfg.public_url:
        return cfg.public_url.rstrip("/")
    first = cfg.listen[0] if cfg.listen else "127.0.0.1:8080"
    return f"http://{first}"


def _print_link(state: State, new: sessions.NewLink, what: str, as_json: bool) -> None:
    url = f"{_link_base(state)}/set-password/{new.token}"
    if as_json:
        emit_json({"email": new.account.email, "url": url, "expires_at": new.expires_at})
    else:
        line(f"{what} for {new.account.email} (one use, until {new.expires_at:%Y-%m-%d %H:%M} UTC):")
        line(f"  {url}")


@account.command("invite")
@click.argument("email")
@json_option
@pass_state
def account_invite(state: State, email: str, as_json: bool) -> None:
    """Print a one-time link (24 h) for EMAIL's account to set its web password (only its hash is kept)."""
    state.open()
    _print_link(state, sessions.new_login_link(email, now()), "Password link", as_json)


@account.command("password")
@click.argument("email")
@json_option
@pass_state
def account_password(state: State, email: str, as_json: bool) -> None:
    """Reset EMAIL's web password: the old one stops working, every session ends, and a new one-time link
    (24 h) is printed for the account to choose a new password."""
    state.open()
    _print_link(state, sessions.reset_password(email, now()), "Password reset link", as_json)
