"""The `fwdmail` command: thin click commands, each one library call; rich tables, or --json."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from fwdmail import __version__, store
from fwdmail.app import admin
from fwdmail.cli.render import console, emit_json, line, table, visible
from fwdmail.config import Config, ConfigError, as_dict, hostname_problem, load
from fwdmail.mail.addresses import AddressError
from fwdmail.runtime import datadir


class ConfigProblem(click.ClickException):
    exit_code = 2


_USER_ERRORS = (AddressError, ValueError, LookupError, store.StoreError, store.DatabaseFailure)


class FwdmailGroup(click.Group):
    """Turns expected failures into one-line errors instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigProblem(visible(exc)) from None
        except _USER_ERRORS as exc:
            raise click.ClickException(visible(exc) or exc.__class__.__name__) from None


@dataclass
class State:
    config_path: str | None
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load(self.config_path)
        return self._config

    def open(self, *, create: bool = False) -> datadir.Runtime:
        """Load the config and open the store; only `create` (init, serve) makes a missing data dir."""
        return datadir.prepare(self.config, create=create)


pass_state = click.make_pass_decorator(State)


def now() -> dt.datetime:
    return store.utcnow()


def warn_hostname(cfg: Config) -> None:
    """On stderr (stdout stays clean for --json): the records printed for this host name cannot work."""
    problem = hostname_problem(cfg)
    if problem is not None:
        line(f"warning: {problem}", err=True)


def confirm_or_abort(yes: bool, question: str) -> None:
    # on stderr, so stdout stays clean for --json
    if not yes and not click.confirm(visible(question), default=False, err=True):
        raise click.ClickException("aborted, nothing was changed")


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


@click.group(cls=FwdmailGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="FWDMAIL_CONFIG",
              help="TOML config file (env FWDMAIL_CONFIG). Without it, embedded defaults are used.")
@click.version_option(__version__, prog_name="fwdmail")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """fwdmail: self-hosted, privacy-first email forwarding."""
    ctx.obj = State(config_path)


@cli.command()
@pass_state
def init(state: State) -> None:
    """Create the data dir, secrets, TLS certificate and database (serve does it too)."""
    rt = state.open(create=True)
    line(f"data dir ready: {rt.config.data_path.resolve()}")


@cli.command("check-config")
@json_option
@pass_state
def check_config(state: State, as_json: bool) -> None:
    """Validate the configuration (and a configured TLS pair) and print the effective values."""
    if state.config.tls.cert:  # the generated pair is made by init/serve; nothing is created here
        datadir.check_tls(state.config)
    warn_hostname(state.config)
    data = as_dict(state.config)
    if as_json:
        emit_json(data)
        return
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows.extend((f"{key}.{k}", json.dumps(v)) for k, v in value.items())
        else:
            rows.append((key, json.dumps(value)))
    table("effective configuration (valid)", ["key", "value"], rows)


def _event_loop(choice: str) -> tuple[str, Callable[..., int]]:
    """The event loop `event_loop` asks for: uvloop (if installed, for "auto") or asyncio's own."""
    if choice == "asyncio":
        return "asyncio", asyncio.run
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        if choice == "uvloop":
            raise click.ClickException(
                "event_loop = \"uvloop\" but uvloop is not installed: pip install 'fwdmail[fast]'") from None
        return "asyncio", asyncio.run
    return "uvloop", uvloop.run


@cli.command()
@click.option("--mx-worker-fd", type=int, default=None, hidden=True)
@pass_state
def serve(state: State, mx_worker_fd: int | None) -> None:
    """Run the MX, submission, outbound queue and retention jobs in one process."""
    from fwdmail.runtime import logsetup
    from fwdmail.runtime import serve as daemon
    from fwdmail.runtime.context import StartupError

    rt = state.open(create=True)
    store.close_store()
    loop_name, runner = _event_loop(rt.config.event_loop)
    # An MX worker runs under the serving process, which holds the lock.
    lock = datadir.lock_for_serve(rt.config) if mx_worker_fd is None else None
    logsetup.setup(rt.config.log_level)
    log = logging.getLogger("fwdmail.serve")
    log.info("event loop: %s", loop_name)
    problem = hostname_problem(rt.config) if mx_worker_fd is None else None  # the server says it once
    if problem is not None:
        log.warning("%s", problem)
    try:
        code = runner(daemon.run(rt, state.config_path, mx_worker_fd))
    except StartupError as exc:
        raise click.ClickException(visible(exc)) from None
    finally:
        if lock is not None:
            os.close(lock)
    sys.exit(code)


# accounts

@cli.group()
def account() -> None:
    """Accounts: the people who own domains."""


@account.command("add")
@click.argument("email")
@json_option
@pass_state
def account_add(state: State, email: str, as_json: bool) -> None:
    """Add an account identified by EMAIL."""
    state.open()
    rec = admin.add_account(email)
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
    rows = store.list_accounts()
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
    rec = admin.get_account(email)
    confirm_or_abort(yes, f"Delete account {rec.email} and everything it owns?")
    counts = admin.delete_account(rec.email)
    if as_json:
        emit_json({"deleted": rec.email, **counts})
    else:
        line(f"account {rec.email} deleted: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


# domains

@cli.group()
def domain() -> None:
    """Hosted domains."""


def _domain_json(d: store.DomainRecord) -> dict[str, Any]:
    return {
        "name": d.name, "account": d.account_email, "dkim_selector": d.dkim_selector,
        "retention_days": d.retention_days, "verified_at": d.verified_at, "auth_policy": d.auth_policy,
        "friendly_from": d.friendly_from, "require_tls_inbound": d.require_tls_inbound,
        "created_at": d.created_at,
    }


@domain.command("add")
@click.argument("name")
@click.option("--account", "account_email", required=True, help="Owner's account email.")
@json_option
@pass_state
def domain_add(state: State, name: str, account_email: str, as_json: bool) -> None:
    """Add domain NAME with a new DKIM key; prints the DNS records to publish."""
    rt = state.open()
    rec = admin.add_domain(name, account_email, now())
    records = admin.dns_records(rt.config, rec)
    warn_hostname(rt.config)
    if as_json:
        emit_json({**_domain_json(rec), "dns": [r.as_json() for r in records]})
        return
    line(f"domain {rec.name} added for {rec.account_email}; publish these records:")
    _print_records(records)


def _print_records(records: list[admin.DnsRecord]) -> None:
    table("DNS records", ["type", "name", "value", "for"],
          [(r.type, r.name, r.value, r.purpose) for r in records])


@domain.command("list")
@json_option
@pass_state
def domain_list(state: State, as_json: bool) -> None:
    """List domains."""
    state.open()
    rows = store.list_domains()
    if as_json:
        emit_json([_domain_json(d) for d in rows])
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
    rec = admin.get_domain(name)
    confirm_or_abort(yes, f"Remove domain {rec.name} with all its aliases and mail?")
    counts = admin.remove_domain(rec.name)
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
    records = admin.dns_records(rt.config, admin.get_domain(name))
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
    rec, checks = admin.verify_domain(rt.config, name, now())
    if as_json:
        emit_json({"domain": rec.name, "verified_at": rec.verified_at,
                   "records": [{**c.record.as_json(), "ok": c.ok, "found": c.found} for c in checks]})
    else:
        table(f"DNS check for {rec.name}", ["for", "name", "status", "expected", "found"],
              [(c.record.purpose, c.record.name, "ok" if c.ok else "MISSING", c.record.value, c.found)
               for c in checks])
    missing = [c.record.purpose for c in checks if not c.ok]
    if missing:
        if not as_json:
            line(f"missing or wrong: {', '.join(missing)}", err=True)
        sys.exit(1)


@domain.command("set")
@click.argument("name")
@click.option("--retention-days", type=int, help="Keep delivered outbound bodies this many days (0-30).")
@click.option("--auth-policy", type=click.Choice(admin.AUTH_POLICIES),
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
    rec = admin.set_domain(name, retention_days, auth_policy, friendly_from, require_tls_inbound)
    if as_json:
        emit_json(_domain_json(rec))
    else:
        line(f"domain {rec.name}: retention_days={rec.retention_days} auth_policy={rec.auth_policy} "
                   f"friendly_from={rec.friendly_from} require_tls_inbound={rec.require_tls_inbound}")


# aliases

@cli.group()
def alias() -> None:
    """Aliases: addresses that forward to destinations."""


def _alias_json(a: store.AliasRecord) -> dict[str, Any]:
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
    rec = admin.add_alias(address, list(destinations))
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
    rows = store.list_aliases(admin.get_domain(domain_name).name if domain_name is not None else None)
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
    line(f"alias {admin.remove_alias(address)} removed")


@alias.command("disable")
@click.argument("address")
@click.option("--mode", type=click.Choice(["quiet", "tempfail", "reject"]), default="reject",
              show_default=True, help="quiet: accept and discard; tempfail: 4xx; reject: 5xx.")
@pass_state
def alias_disable(state: State, address: str, mode: str) -> None:
    """Disable an alias."""
    state.open()
    rec = admin.set_alias_state(address, mode)
    line(f"alias {rec.address} disabled ({mode})")


@alias.command("enable")
@click.argument("address")
@pass_state
def alias_enable(state: State, address: str) -> None:
    """Enable an alias again."""
    state.open()
    rec = admin.set_alias_state(address, "enabled")
    line(f"alias {rec.address} enabled")


@alias.command("password")
@click.argument("address")
@json_option
@pass_state
def alias_password(state: State, address: str, as_json: bool) -> None:
    """Generate a new SMTP password for ADDRESS and print it once."""
    state.open()
    rec, password = admin.new_alias_password(address)
    if as_json:
        emit_json({"address": rec.address, "password": password})
    else:
        line(f"SMTP login for {rec.address} (shown once, store it now):")
        line(f"  username: {rec.address}")
        line(f"  password: {password}")


# SMTP error log

@cli.command()
@click.option("--domain", "domain_name", help="Only errors of this domain.")
@json_option
@pass_state
def logs(state: State, domain_name: str | None, as_json: bool) -> None:
    """List the SMTP errors (4xx/5xx) the MX returned or got from destinations, newest first."""
    from fwdmail.mail.addresses import normalize_domain

    state.open()
    rows = store.list_smtp_errors(normalize_domain(domain_name) if domain_name is not None else None)
    if as_json:
        emit_json([{"time": r.created_at, "direction": r.direction, "domain": r.domain, "alias": r.alias,
                    "code": r.code, "enhanced_code": r.enhanced_code, "text": r.text} for r in rows])
    else:
        table("SMTP errors", ["time (UTC)", "direction", "domain", "alias", "code", "text"],
              [(f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.direction, r.domain, r.alias,
                f"{r.code} {r.enhanced_code}".strip(), r.text) for r in rows])


# What the MX records (fwdmail.policy.sender_auth and limits).
ABUSE_KINDS = ("dmarc-reject", "spf-reject", "dnsbl", "rate-limit", "too-many-connections")


@cli.command()
@click.option("--kind", type=click.Choice(ABUSE_KINDS), help="Only events of this kind.")
@json_option
@pass_state
def abuse(state: State, kind: str | None, as_json: bool) -> None:
    """List detected spam/abuse events of the MX (with the client IP), newest first; kept 7 days."""
    state.open()
    rows = store.list_abuse_events(kind)
    if as_json:
        emit_json([{"time": r.created_at, "kind": r.kind, "client_ip": r.client_ip, "domain": r.domain,
                    "detail": r.detail} for r in rows])
    else:
        table("abuse events", ["time (UTC)", "kind", "client IP", "domain", "detail"],
              [(f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.kind, r.client_ip or "", r.domain, r.detail)
               for r in rows])


# retention

@cli.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be removed; change nothing.")
@click.option("--now", "at", metavar="ISO-8601", help="Evaluate as of this time (no offset = UTC).")
@json_option
@pass_state
def purge(state: State, dry_run: bool, at: str | None, as_json: bool) -> None:
    """Run the retention jobs once: old logs, outbound bodies past retention, old outbound records."""
    from fwdmail.retention import jobs

    try:
        when = jobs.parse_instant(at) if at is not None else now()
    except ValueError as exc:
        raise ConfigProblem(f"--now: {exc}") from None
    cfg = state.open().config.retention
    if dry_run or as_json:
        report = jobs.purge_now(when, cfg, dry_run=dry_run)
    else:
        report = _purge_with_progress(when, cfg)
    if as_json:
        emit_json(report.counts)
    else:
        table(f"retention as of {when:%Y-%m-%d %H:%M:%S} UTC" + (" (dry run)" if dry_run else ""),
              ["category", "rule", "would remove" if dry_run else "removed"],
              [(j.title, j.rule(cfg), report.counts.get(j.key, "FAILED")) for j in jobs.JOBS])
    for key, err in report.failed.items():
        line(f"error: {key}: {err}", err=True)
    if report.checkpointed is False:
        click.echo("warning: a reader kept the WAL from being truncated; run purge again", err=True)
    if report.failed:
        sys.exit(1)


def _purge_with_progress(when: dt.datetime, cfg: Any) -> Any:
    """Purge with a progress bar on stderr when there is more than one batch to do."""
    from rich.progress import Progress

    from fwdmail.retention import jobs

    totals = jobs.purge_now(when, cfg, dry_run=True).counts
    if sum(totals.values()) <= cfg.batch_size:
        return jobs.purge_now(when, cfg)
    with Progress(console=console(stderr=True), transient=True) as bar:
        tasks = {j.key: bar.add_task(j.title, total=totals.get(j.key) or None) for j in jobs.JOBS}
        return jobs.purge_now(when, cfg, progress=lambda key, n: bar.advance(tasks[key], n))


# outbound mail

@cli.group()
def emails() -> None:
    """Outbound (submitted) mail: the queue and what became of each message."""


@emails.command("list")
@click.option("--status", help="Only messages in this state.",
              type=click.Choice(store.EMAIL_STATUSES))
@click.option("--domain", "domain_name", help="Only this domain.")
@json_option
@pass_state
def emails_list(state: State, status: str | None, domain_name: str | None, as_json: bool) -> None:
    """List outbound mail, newest first."""
    from fwdmail.app import emails as outbound

    state.open()
    rows = outbound.list_emails(status, domain_name)
    if as_json:
        emit_json([outbound.as_json(e) for e in rows])
    else:
        outbound.print_list(console(), rows)


@emails.command("show")
@click.argument("email_id")
@click.option("--raw", is_flag=True, help="Print the stored message itself (headers only once redacted).")
@json_option
@pass_state
def emails_show(state: State, email_id: str, raw: bool, as_json: bool) -> None:
    """Show message EMAIL_ID: status per recipient, headers, and its text (HTML rendered as text)."""
    from fwdmail.app import emails as outbound

    state.open()
    rec = outbound.get_email(email_id)
    if raw:
        message = outbound.raw_message(rec)
        if sys.stdout.isatty():  # bytes for a pipe or a file; for a terminal, its control bytes shown
            line(message.decode("utf-8", "replace").replace("\r\n", "\n"), multiline=True)
        else:
            click.get_binary_stream("stdout").write(message)
        if rec.redacted:
            line(f"(the body of {rec.queue_id} was redacted; headers only)", err=True)
        return
    pv = outbound.preview(rec)
    if as_json:
        emit_json({**outbound.as_json(rec), **pv.as_json()})
    else:
        outbound.print_email(console(), rec, pv)


@emails.command("retry")
@click.argument("email_id")
@pass_state
def emails_retry(state: State, email_id: str) -> None:
    """Try a queued, deferred or held message again now."""
    from fwdmail.app import emails as outbound

    state.open()
    rec = outbound.retry_email(email_id, now())
    line(f"email {rec.queue_id} ({rec.status}) will be tried again now")


@emails.command("delete")
@click.argument("email_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def emails_delete(state: State, email_id: str, yes: bool) -> None:
    """Delete a message and its record (it is not sent if it has not been yet)."""
    from fwdmail.app import emails as outbound

    state.open()
    rec = outbound.get_email(email_id)
    confirm_or_abort(yes, f"Delete email {rec.queue_id} ({rec.status})?")
    outbound.delete_email(rec.queue_id)
    line(f"email {rec.queue_id} deleted")


def main() -> None:
    """Run the CLI as click would, except that Ctrl-C exits quietly with 130 (click says "Aborted!", 1)."""
    try:
        code = cli.main(prog_name="fwdmail", standalone_mode=False)
    except click.ClickException as exc:  # click's usage errors quote the arguments as typed
        exc.message = visible(exc.message)
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort as exc:  # click's wrapper of Ctrl-C, and of end of input at a prompt
        if isinstance(exc.__cause__, KeyboardInterrupt):
            sys.exit(130)
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `fwdmail ... | head`: the reader left; the exit flush must not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
