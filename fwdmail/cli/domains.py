"""`fwdmail domain ...`: add, list, show, remove, dns, verify, set, allow, deny, webhook-key.

Handles what the admin typed (checked in app) and DNS answers found by `verify`, shown escaped.
"""

from __future__ import annotations

import sys

import click

from fwdmail import app
from fwdmail.app import domains, senderlists
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
        table("domains", ["domain", "account", "verified", "retention days", "auth policy", "aliases from"],
              [(d.name, d.account_email, f"{d.verified_at:%Y-%m-%d}" if d.verified_at else "no",
                d.retention_days, d.auth_policy, d.aliases_from) for d in rows])


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
@click.option("--aliases-from", type=click.Choice(domains.ALIASES_FROM),
              help="Where its aliases come from: the store, its forward-email= TXT records (verified "
                   "domains only), or both (the store wins).")
@json_option
@pass_state
def domain_set(state: State, name: str, retention_days: int | None, auth_policy: str | None,
               friendly_from: bool | None, require_tls_inbound: bool | None, aliases_from: str | None,
               as_json: bool) -> None:
    """Change a domain's settings."""
    state.open()
    rec = domains.set_domain(name, retention_days, auth_policy, friendly_from, require_tls_inbound,
                             aliases_from)
    if as_json:
        emit_json(domain_json(rec))
    else:
        line(f"domain {rec.name}: retention_days={rec.retention_days} auth_policy={rec.auth_policy} "
             f"friendly_from={rec.friendly_from} require_tls_inbound={rec.require_tls_inbound} "
             f"aliases_from={rec.aliases_from}")


def _rules_json(rules: list[senderlists.SenderRuleRecord]) -> dict[str, list[str]]:
    return {kind: [r.pattern for r in rules if r.kind == kind] for kind in ("allow", "deny")}


@domain.command("show")
@click.argument("name")
@json_option
@pass_state
def domain_show(state: State, name: str, as_json: bool) -> None:
    """Show a domain's settings and its sender allow and deny lists."""
    state.open()
    rec = domains.get_domain(name)
    rules = senderlists.sender_rules(rec.name)
    if as_json:
        emit_json({**domain_json(rec), "senders": _rules_json(rules)})
        return
    table(f"domain {rec.name}", ["setting", "value"], [
        ("account", rec.account_email),
        ("verified", f"{rec.verified_at:%Y-%m-%d}" if rec.verified_at else "no"),
        ("retention days", rec.retention_days), ("auth policy", rec.auth_policy),
        ("friendly from", rec.friendly_from), ("require TLS inbound", rec.require_tls_inbound),
        ("aliases from", rec.aliases_from), ("DKIM selector", rec.dkim_selector)])
    table(f"sender lists of {rec.name}", ["list", "pattern"], [(r.kind, r.pattern) for r in rules])


def _list_command(kind: str) -> click.Command:
    @click.argument("name")
    @click.argument("patterns", nargs=-1, required=True)
    @click.option("--remove", is_flag=True, help=f"Take the patterns off the {kind} list.")
    @json_option
    @pass_state
    def command(state: State, name: str, patterns: tuple[str, ...], remove: bool, as_json: bool) -> None:
        state.open()
        change = senderlists.change_list(name, kind, patterns, remove)
        if as_json:
            emit_json({"domain": change.domain, "list": kind,
                       "removed" if remove else "added": change.changed,
                       "not_listed" if remove else "already_listed": change.unchanged})
            return
        verb = "removed from" if remove else "added to"
        line(f"{len(change.changed)} pattern(s) {verb} the {kind} list of {change.domain}"
             + (f"; {len(change.unchanged)} " + ("were not listed" if remove else "were listed already")
                if change.unchanged else ""))

    skips = ", skipping DNSBL and the sender-auth refusal" if kind == "allow" else ""
    command.__doc__ = (f"{'Accept' if kind == 'allow' else 'Refuse'} mail to NAME from PATTERNS (address, "
                       f"@domain, IP or CIDR){skips}.")
    return domain.command(kind)(command)


domain_allow = _list_command("allow")
domain_deny = _list_command("deny")


@domain.command("webhook-key")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Make a new key; the old one stops working at once.")
@json_option
@pass_state
def domain_webhook_key(state: State, name: str, rotate: bool, as_json: bool) -> None:
    """Print the key NAME's webhook POSTs are signed with (X-Webhook-Signature)."""
    state.open()
    rec = domains.get_domain(name)
    key = senderlists.webhook_key(rec.name, rotate)
    if as_json:
        emit_json({"domain": rec.name, "webhook_key": key})
    else:
        line(key)
