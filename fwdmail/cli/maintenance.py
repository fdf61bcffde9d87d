"""`fwdmail init`, `check-config`, `serve` and `purge`: the data dir, the config, the daemon, retention.

Handles what the admin typed: the config file (checked in config), `--now` for purge (checked in app).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from fwdmail import app
from fwdmail.cli.common import ConfigProblem, State, json_option, pass_state, warn_hostname
from fwdmail.cli.render import emit_json, line, progress, table, visible
from fwdmail.config import RetentionConfig, as_dict, hostname_problem
from fwdmail.runtime import datadir

if TYPE_CHECKING:
    from fwdmail.app.maintenance import Report


@click.command()
@pass_state
def init(state: State) -> None:
    """Create the data dir, secrets, TLS certificate and database (serve does it too)."""
    rt = state.open(create=True)
    line(f"data dir ready: {rt.config.data_path.resolve()}")


@click.command("check-config")
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


@click.command()
@click.option("--mx-worker-fd", type=int, default=None, hidden=True)
@click.option("--queue-worker", type=(int, int), default=None, hidden=True)
@pass_state
def serve(state: State, mx_worker_fd: int | None, queue_worker: tuple[int, int] | None) -> None:
    """Run the MX, submission, outbound queue, HTTP API and retention jobs in one process."""
    from fwdmail.app import maintenance
    from fwdmail.runtime import logsetup
    from fwdmail.runtime import serve as daemon
    from fwdmail.runtime.context import StartupError

    rt = state.open(create=True)
    maintenance.close_store()
    loop_name, runner = _event_loop(rt.config.event_loop)
    # A worker (MX or queue) runs under the serving process, which holds the lock.
    worker = mx_worker_fd is not None or queue_worker is not None
    web = None
    if not worker:  # workers never serve HTTP: their memory holds no web server, templates or pages
        from fwdmail.web.server import WebService as web
    lock = None if worker else datadir.lock_for_serve(rt.config)
    logsetup.setup(rt.config.log_level)
    log = logging.getLogger("fwdmail.serve")
    log.info("event loop: %s", loop_name)
    problem = None if worker else hostname_problem(rt.config)  # the server says it once
    if problem is not None:
        log.warning("%s", problem)
    try:
        code = runner(daemon.run(rt, state.config_path, mx_worker_fd, web=web,
                                 queue_worker=queue_worker))
    except StartupError as exc:
        raise click.ClickException(visible(exc)) from None
    finally:
        if lock is not None:
            os.close(lock)
    sys.exit(code)


@click.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be removed; change nothing.")
@click.option("--now", "at", metavar="ISO-8601", help="Evaluate as of this time (no offset = UTC).")
@json_option
@pass_state
def purge(state: State, dry_run: bool, at: str | None, as_json: bool) -> None:
    """Run the retention jobs once: old logs, outbound bodies past retention, old outbound records."""
    from fwdmail.app import maintenance  # the retention jobs, only for this command

    try:
        when = maintenance.parse_instant(at) if at is not None else app.now()
    except ValueError as exc:
        raise ConfigProblem(f"--now: {exc}") from None
    cfg = state.open().config.retention
    if dry_run or as_json:
        report = maintenance.purge(when, cfg, dry_run=dry_run)
    else:
        report = _purge_with_progress(when, cfg)
    if as_json:
        emit_json(report.counts)
    else:
        table(f"retention as of {when:%Y-%m-%d %H:%M:%S} UTC" + (" (dry run)" if dry_run else ""),
              ["category", "rule", "would remove" if dry_run else "removed"],
              [(j.title, j.rule, report.counts.get(j.key, "FAILED"))
               for j in maintenance.retention_rules(cfg)])
    for key, err in report.failed.items():
        line(f"error: {key}: {err}", err=True)
    if report.checkpointed is False:
        click.echo("warning: a reader kept the WAL from being truncated; run purge again", err=True)
    if report.unvacuumed:
        click.echo(f"warning: {', '.join(report.unvacuumed)} busy, not rewritten yet; run purge again",
                   err=True)
    if report.failed:
        sys.exit(1)


def _purge_with_progress(when: dt.datetime, cfg: RetentionConfig) -> Report:
    """Purge with a progress bar on stderr when there is more than one batch to do."""
    from fwdmail.app import maintenance

    totals = maintenance.purge(when, cfg, dry_run=True).counts
    if sum(totals.values()) <= cfg.batch_size:
        return maintenance.purge(when, cfg)
    steps = [(j.key, j.title, totals.get(j.key) or None) for j in maintenance.retention_rules(cfg)]
    with progress(steps) as advance:
        return maintenance.purge(when, cfg, progress=advance)
