"""Shared fixtures: a loopback DNS server, a real downstream SMTP sink, `fwdmail serve` itself, and a store on
either engine (`engine`: "sqlite" or "postgresql"; `opened`: a fresh store on it, the PostgreSQL one a
database on the session's private server)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fwdmail import store
from tests.support.daemon import Daemon, end_leftovers, merge
from tests.support.dns_server import LoopbackDNS
from tests.support.engines import Opened
from tests.support.postgres import PostgresServer, postgres_bin, running_postgres
from tests.support.smtp_sink import SmtpSink


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_daemons() -> Iterator[None]:
    yield
    end_leftovers()


@pytest.fixture(scope="session")
def dns_server() -> Iterator[LoopbackDNS]:
    """One authoritative DNS server on loopback for the session; tests use their own names."""
    with LoopbackDNS() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the whole session (skipped where none is installed)."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine: apt-get install postgresql")
    with running_postgres(bindir) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresServer) -> str:
    """The one database the session's PostgreSQL tests share, emptied before each."""
    return postgres.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def opened(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Opened]:
    path = tmp_path / "data" / "fwdmail.db"
    if engine == "sqlite":
        at = Opened(engine, path)
        at.reopen()
        yield at
        store.close_store()
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url: str = request.getfixturevalue("postgres_url")
    server.empty_database(url)
    at = Opened(engine, path, url)
    at.reopen()
    yield at
    store.close_store()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """A real SMTP server on loopback standing in for the destinations' mail servers."""
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def downstream() -> Iterator[SmtpSink]:
    """One sink for a module whose daemons (module-scoped) route to it; tests take `clean_downstream`."""
    with SmtpSink() as s:
        yield s


@pytest.fixture
def clean_downstream(downstream: SmtpSink) -> SmtpSink:
    """The module's sink, emptied and with its scripted behaviour reset."""
    downstream.reset()
    return downstream


@pytest.fixture
def make_daemon(tmp_path: Path, dns_server: LoopbackDNS) -> Iterator[Callable[..., Daemon]]:
    """Factory: `make_daemon(overrides, start=True)` -> a running `fwdmail serve`; stopped at teardown.

    The daemon resolves through `dns_server` unless overrides say otherwise.
    """
    daemons: list[Daemon] = []

    def factory(overrides: dict[str, Any] | None = None, start: bool = True) -> Daemon:
        base = {"dns": {"nameservers": [dns_server.address]}}
        sub = tmp_path / f"d{len(daemons)}"
        sub.mkdir()
        d = Daemon(sub, merge(base, overrides or {}))
        daemons.append(d)
        if start:
            d.start()
        return d

    yield factory
    for d in daemons:
        try:
            d.stop()
        except AssertionError:
            d.kill()


def require_tool(name: str) -> str:
    """Path of a Debian tool the test drives; skip with a reason when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it with apt-get)")
    return path
