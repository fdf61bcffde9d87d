"""`fwdmail domain ...`: add, list, remove, dns, verify, set.

Handles what the admin typed (checked in app) and DNS answers found by `verify`, shown escaped.
"""

from __future__ import annotations

import sys

import click

from fwdmail import app
from fwdmail.app import domains
from fwdmail.app.shapes import domain_json
from fwdmail.cli.common import State, confirm_or_abort, json_option, pass_state, warn_hostname
from fwdmail.cli.render import emit_json, line, table


@click.group()
def domain() -> None:
    """Hosted domains."""


def _print_records(records: list[domains.DnsRecord]) -> None:
    table("DNS records", ["type", "name", "value", "for"],
          [(r.type, r.name, r.value, r.purpose) for r in records])


@domain.command("add")
@click.argument("name")
@click.option("--account", "account_email", required=True, help="Owner's account email.")
@json_option
@pass_state
def domain_add(state: State, name: str, account_email: str, as_json: bool) -> None:
    """Add domain NAME with a new DKIM key; prints the DNS records to publish."""
    rt = state.open()
    rec = domains.add_domain(name, account_email, app.now())
    records = domains.dns_records(rt.config, rec)
    warn_hostname(rt.config)
    if as_json:
        emit_json({**domain_json(rec), "dns": [r.as_json() for r in records]})
        return
    line(f"domain {rec.name} added for {rec.account_email}; publish these records:")
    _print_records(records)


@domain.command("list")
@json_option
@pass_state
def domain_list(state: State, as_json: bool) -> None:
    """List domains."""
    state.open()
    rows = domains.list_domains()
    if as_json:
        emit_json([domain_json(d) for d in rows])
    else:
        table("domains", ["domain", "account", "verified", "retention days", "auth policy"],
              [(d.name, d.account_email, f"{d.verified_at:%Y-%m-%d}" if d.verified_at else "no",
                d.retention_days, d.auth_policy) for d in rows])


@domain.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_state
def domain_remove(state: State, name: str, yes: bool, as_json: bool) -> None:
    """Remove a domain with its aliases, DKIM key, outbound mail and logs."""
    state.open()
    rec = domains.get_domain(name)
    confirm_or_abort(yes, f"Remove domain {rec.name} with all its aliases and mail?")
    counts = domains.remove_domain(rec.name)
    if as_json:
        emit_json({"removed": rec.name, **counts})
    else:
        line(f"domain {rec.name} removed: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


@domain.command("dns")
@click.argument("name")
@json_option
@pass_state
def domain_dns(state: State, name: str, as_json: bool) -> None:
    """Print the DNS records to publish for NAME."""
    rt = state.open()
    records = domains.dns_records(rt.config, domains.get_domain(name))
    warn_hostname(rt.config)
    if as_json:
        emit_json([r.as_json() for r in records])
    else:
        _print_records(records)


@domain.command("verify")
@click.argument("name")
@json_option
@pass_state
def domain_verify(state: State, name: str, as_json: bool) -> None:
    """Check the published DNS records of NAME; exit 1 if any is missing or wrong."""
    rt = state.open()
    result = domains.verify_domain(rt.config, name, app.now())
    rec, checks = result.domain, result.checks
    if as_json:
        emit_json({"domain": rec.name, "verified_at": rec.verified_at,
                   "records": [{**c.record.as_json(), "ok": c.ok, "found": c.found} for c in checks]})
    else:
        table(f"DNS check for {rec.name}", ["for", "name", "status", "expected", "found"],
              [(c.record.purpose, c.record.name, "ok" if c.ok else "MISSING", c.record.value, c.found)
               for c in checks])
    if result.missing:
        if not as_json:
            line(f"missing or wrong: {', '.join(result.missing)}", err=True)
        sys.exit(1)


@domain.command("set")
@click.argument("name")
@click.option("--retention-days", type=int, help="Keep delivered outbound bodies this many days (0-30).")
@click.option("--auth-policy", type=click.Choice(domains.AUTH_POLICIES),
              help="Inbound SPF/DKIM/DMARC policy.")
@click.option("--friendly-from/--no-friendly-from", default=None,
              help="Rewrite From for senders whose DMARC would fail after forwarding.")
@click.option("--require-tls-inbound/--no-require-tls-inbound", default=None,
              help="Refuse inbound mail sent without TLS.")
@json_option
@pass_state
def domain_set(state: State, name: str, retention_days: int | None, auth_policy: str | None,
               friendly_from: bool | None, require_tls_inbound: bool | None, as_json: bool) -> None:
    """Change a domain's settings."""
    state.open()
    rec = domains.set_domain(name, retention_days, auth_policy, friendly_from, require_tls_inbound)
    if as_json:
        emit_json(domain_json(rec))
    else:
        line(f"domain {rec.name}: retention_days={rec.retention_days} auth_policy={rec.auth_policy} "
             f"friendly_from={rec.friendly_from} require_tls_inbound={rec.require_tls_inbound}")
