"""`fwdmail logs` and `fwdmail abuse`: what the MX recorded.

Handles stored text from outside (remote replies, client input, IPs): shown escaped by render.
"""

from __future__ import annotations

import click

from fwdmail.app import logs as records
from fwdmail.app.shapes import smtp_error_json
from fwdmail.cli.common import State, json_option, pass_state
from fwdmail.cli.render import emit_json, table


@click.command()
@click.option("--domain", "domain_name", help="Only errors of this domain.")
@json_option
@pass_state
def logs(state: State, domain_name: str | None, as_json: bool) -> None:
    """List the SMTP errors (4xx/5xx) the MX returned or got from destinations, newest first."""
    state.open()
    rows = records.list_smtp_errors(domain_name)
    if as_json:
        emit_json([smtp_error_json(r) for r in rows])
    else:
        table("SMTP errors", ["time (UTC)", "direction", "domain", "alias", "code", "text"],
              [(f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.direction, r.domain, r.alias,
                f"{r.code} {r.enhanced_code}".strip(), r.text) for r in rows])


@click.command()
@click.option("--kind", type=click.Choice(records.ABUSE_KINDS), help="Only events of this kind.")
@json_option
@pass_state
def abuse(state: State, kind: str | None, as_json: bool) -> None:
    """List detected spam/abuse events of the MX (with the client IP), newest first; kept 7 days."""
    state.open()
    rows = records.list_abuse_events(kind)
    if as_json:
        emit_json([{"time": r.created_at, "kind": r.kind, "client_ip": r.client_ip, "domain": r.domain,
                    "detail": r.detail} for r in rows])
    else:
        table("abuse events", ["time (UTC)", "kind", "client IP", "domain", "detail"],
              [(f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.kind, r.client_ip or "", r.domain, r.detail)
               for r in rows])
