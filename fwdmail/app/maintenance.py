"""Maintenance: the retention jobs run once from the command line (`purge`), and the store's release
before `serve` hands the data dir to the daemon.

Handles what the admin typed for `--now` (an ISO-8601 time): refused with a message fit to print.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from fwdmail import store
from fwdmail.config import RetentionConfig
from fwdmail.retention import jobs
from fwdmail.retention.jobs import Report

__all__ = ["Report", "RetentionRule", "close_store", "parse_instant", "purge", "retention_rules"]


@dataclass(frozen=True)
class RetentionRule:
    """One retention job as the admin sees it: its report key, title and rule under `cfg`."""

    key: str
    title: str
    rule: str


def retention_rules(cfg: RetentionConfig) -> list[RetentionRule]:
    """Every retention job, in the order `purge` runs them."""
    return [RetentionRule(j.key, j.title, j.rule(cfg)) for j in jobs.JOBS]


def parse_instant(text: str) -> dt.datetime:
    """`--now` as naive UTC; `ValueError` with a message fit to print when it is no usable time."""
    return jobs.parse_instant(text)


def purge(now: dt.datetime, cfg: RetentionConfig, *, dry_run: bool = False,
          progress: Callable[[str, int], None] | None = None) -> Report:
    """Every retention job once, in this process, as of `now`; only counts when `dry_run`."""
    return jobs.purge_now(now, cfg, dry_run=dry_run, progress=progress)


def close_store() -> None:
    """Close this process's store connection (serve opens its own on its database thread)."""
    store.close_store()
