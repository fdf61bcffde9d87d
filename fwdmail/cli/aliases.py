"""`fwdmail alias ...`: add, list, remove, disable, enable, password.

Handles what the admin typed (alias specs, destinations, regexes: checked in app).
"""

from __future__ import annotations

from typing import Any

import click

from fwdmail.app import aliases
from fwdmail.cli.common import State, json_option, pass_state
from fwdmail.cli.render import emit_json, line, table


@click.group()
def alias() -> None:
    """Aliases: addresses that forward to destinations."""


def _alias_json(a: aliases.AliasRecord) -> dict[str, Any]:
    return {"address": a.address, "kind": a.kind, "destinations": list(a.destinations), "state": a.state,
            "has_password": a.has_password, "account": a.account_email, "created_at": a.created_at}


@alias.command("add")
@click.argument("address")
@click.argument("destinations", nargs=-1, required=True)
@json_option
@pass_state
def alias_add(state: State, address: str, destinations: tuple[str, ...], as_json: bool) -> None:
    """Add ADDRESS (user@dom, *@dom, /regex/@dom) forwarding to 1-10 DESTINATIONS."""
    state.open()
    rec = aliases.add_alias(address, list(destinations))
    if as_json:
        emit_json(_alias_json(rec))
    else:
        line(f"alias {rec.address} -> {', '.join(rec.destinations)}")


@alias.command("list")
@click.option("--domain", "domain_name", help="Only this domain.")
@json_option
@pass_state
def alias_list(state: State, domain_name: str | None, as_json: bool) -> None:
    """List aliases."""
    state.open()
    rows = aliases.list_aliases(domain_name)
    if as_json:
        emit_json([_alias_json(a) for a in rows])
    else:
        table("aliases", ["alias", "kind", "destinations", "state", "password"],
              [(a.address, a.kind, ", ".join(a.destinations), a.state, "yes" if a.has_password else "no")
               for a in rows])


@alias.command("remove")
@click.argument("address")
@pass_state
def alias_remove(state: State, address: str) -> None:
    """Remove an alias."""
    state.open()
    line(f"alias {aliases.remove_alias(address)} removed")


@alias.command("disable")
@click.argument("address")
@click.option("--mode", type=click.Choice(["quiet", "tempfail", "reject"]), default="reject",
              show_default=True, help="quiet: accept and discard; tempfail: 4xx; reject: 5xx.")
@pass_state
def alias_disable(state: State, address: str, mode: str) -> None:
    """Disable an alias."""
    state.open()
    rec = aliases.set_alias_state(address, mode)
    line(f"alias {rec.address} disabled ({mode})")


@alias.command("enable")
@click.argument("address")
@pass_state
def alias_enable(state: State, address: str) -> None:
    """Enable an alias again."""
    state.open()
    rec = aliases.set_alias_state(address, "enabled")
    line(f"alias {rec.address} enabled")


@alias.command("password")
@click.argument("address")
@json_option
@pass_state
def alias_password(state: State, address: str, as_json: bool) -> None:
    """Generate a new SMTP password for ADDRESS and print it once."""
    state.open()
    new = aliases.new_alias_password(address)
    if as_json:
        emit_json({"address": new.alias.address, "password": new.password})
    else:
        line(f"SMTP login for {new.alias.address} (shown once, store it now):")
        line(f"  username: {new.alias.address}")
        line(f"  password: {new.password}")
