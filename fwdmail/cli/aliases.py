"""`fwdmail alias ...`: add, list, import, export, remove, disable, enable, password.

Handles what the admin typed (alias specs, destinations, regexes) and files to import: checked in app;
their text is shown escaped (`render.visible`).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import click

from fwdmail.app import aliases, now, virtual
from fwdmail.app.shapes import alias_json
from fwdmail.cli.common import State, json_option, pass_state
from fwdmail.cli.render import (
    STREAM_CHUNK,
    emit_json,
    line,
    stream_json,
    stream_table,
    terminal_progress,
    visible,
)


@click.group()
def alias() -> None:
    """Aliases: addresses that forward to destinations."""


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
        emit_json(alias_json(rec))
    else:
        line(f"alias {rec.address} -> {', '.join(rec.destinations)}")


@alias.command("list")
@click.option("--domain", "domain_name", help="Only this domain.")
@click.option("--search", help="Only aliases whose address or a destination contains TEXT (any case).",
              metavar="TEXT")
@json_option
@pass_state
def alias_list(state: State, domain_name: str | None, search: str | None, as_json: bool) -> None:
    """List aliases (streamed: any number of them, in flat memory)."""
    state.open()
    rows = aliases.iter_aliases(domain_name, search)
    if as_json:
        stream_json(alias_json(a) for a in rows)
    else:
        columns = [("alias", None), ("kind", 9), ("destinations", None), ("state", 8), ("password", 8)]
        stream_table("aliases", columns, ((a.address, a.kind, ", ".join(a.destinations), a.state,
                                           "yes" if a.has_password else "no") for a in rows))


@alias.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--account", help="Create missing domains for this account (without it they are an error).",
              metavar="EMAIL")
@click.option("--dry-run", is_flag=True, help="Check the file and count what would change; write nothing.")
@pass_state
def alias_import(state: State, file: str, account: str | None, dry_run: bool) -> None:
    """Import aliases from FILE (- for stdin) in Postfix's virtual(5) format:
    `address destination[, destination...]`, with user@dom, @dom or *@dom (catch-all) and /regex/@dom.

    Every line is checked before anything is written; any problem is listed as FILE:LINE and nothing is
    imported. An alias that exists gets the file's destinations."""
    state.open()
    try:
        with _text_lines(file) as lines:
            plan = virtual.plan_import(lines, account, count=dry_run)
    except virtual.ImportRefused as refused:
        for p in refused.problems:
            line(f"{file}:{p.line}: {p.reason}", err=True)
        if refused.total > len(refused.problems):
            line(f"... and {refused.total - len(refused.problems)} more", err=True)
        raise click.ClickException(str(refused)) from None
    with plan:
        if dry_run:
            line(virtual.dry_run_summary(plan).line)
            return
        try:
            with terminal_progress("importing aliases", plan.entries) as advance:
                summary = virtual.apply_import(plan, now(), advance)
        except BaseException as exc:
            for note in getattr(exc, "__notes__", ()):
                line(note, err=True)
            raise
    line(summary.line)


@contextmanager
def _text_lines(path: str) -> Iterator[TextIO]:
    """FILE (or stdin for -) as UTF-8 text; undecodable bytes reach the checks as lone surrogates, so they
    are a line's problem, not a traceback."""
    if path == "-":
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
        try:
            yield stream
        finally:
            stream.detach()
        return
    try:
        handle = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        yield handle


@alias.command("export")
@click.option("--domain", "domain_name", help="Only this domain.")
@click.option("--output", type=click.File("w", encoding="utf-8", atomic=True), default="-",
              help="Write to FILE (default: stdout).", metavar="FILE")
@pass_state
def alias_export(state: State, domain_name: str | None, output: TextIO) -> None:
    """Write the aliases in Postfix's virtual(5) format, as `alias import` reads them."""
    state.open()
    lines = virtual.export_lines(domain_name)
    chunk: list[str] = []
    for text_line in lines:
        chunk.append(visible(text_line) + "\n")
        if len(chunk) >= STREAM_CHUNK:
            output.write("".join(chunk))
            chunk.clear()
    output.write("".join(chunk))


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
