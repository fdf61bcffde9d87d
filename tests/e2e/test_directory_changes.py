"""A running daemon with `[mx] workers = 2` sees alias and domain changes made by the CLI on every MX
process within a second, and a directory of 20,000 aliases neither delays the first RCPT nor grows the
daemon's memory (lookups are per recipient; nothing loads the whole directory)."""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.mx import cli, start_daemon

SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["domain", "add", "gone.test", "--account", "owner@owner.test"],
    ["alias", "add", "old@ours.test", "old@dest.test"],
    ["alias", "add", "stays@gone.test", "stays@dest.test"],
]
SESSIONS = 4  # handed out in turn: two on each worker
SEEN_WITHIN = 1.0  # seconds a change may take to reach every process (the target)


def session(d: Daemon) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", d.mx_port, timeout=10)
    s.ehlo("client.test")
    return s


def rcpt(s: smtplib.SMTP, address: str) -> str:
    """The reply code and enhanced code to RCPT TO `address`, e.g. "550 5.1.1"."""
    s.docmd("RSET")
    mail = s.docmd("MAIL FROM:<someone@sender.test>")
    assert mail[0] == 250, mail
    code, text = s.docmd(f"RCPT TO:<{address}>")
    return f"{code} {text.decode().split()[0]}"


def all_answer(sessions: list[smtplib.SMTP], address: str, code: str) -> bool:
    return all(rcpt(s, address) == code for s in sessions)


def settles(sessions: list[smtplib.SMTP], address: str, code: str) -> bool:
    """Whether every session answers `code` for `address` within SEEN_WITHIN (polled, then once more
    after the deadline so a slow machine is told apart from a change never seen)."""
    deadline = time.monotonic() + SEEN_WITHIN
    while time.monotonic() < deadline:
        if all_answer(sessions, address, code):
            return True
        time.sleep(0.05)
    return all_answer(sessions, address, code)


@pytest.fixture
def mx(tmp_path: Path) -> Iterator[tuple[Daemon, list[smtplib.SMTP]]]:
    abuse = {"max_junk_commands": 10_000, "max_errors_per_session": 10_000,
             "max_messages_per_ip_per_minute": 10_000}
    d = start_daemon(tmp_path, {"mx": {"workers": 2}, "abuse": abuse}, SETUP)
    sessions = [session(d) for _ in range(SESSIONS)]
    try:
        yield d, sessions
    finally:
        for s in sessions:
            s.close()
        d.stop()


def test_changes_reach_every_mx_worker_within_a_second(mx: tuple[Daemon, list[smtplib.SMTP]]) -> None:
    d, sessions = mx
    ok, no_such_user, not_hosted = "250 2.1.5", "550 5.1.1", "550 5.7.1"
    assert all_answer(sessions, "old@ours.test", ok)
    assert all_answer(sessions, "stays@gone.test", ok)
    assert all_answer(sessions, "new@ours.test", no_such_user)  # cached as such in every worker
    assert all_answer(sessions, "x@new.test", not_hosted)

    steps: list[tuple[Callable[[], object], str, str]] = [
        (lambda: cli(d, "alias", "add", "new@ours.test", "new@dest.test"), "new@ours.test", ok),
        (lambda: cli(d, "alias", "disable", "old@ours.test", "--mode", "tempfail"), "old@ours.test",
         "450 4.2.1"),
        (lambda: cli(d, "alias", "enable", "old@ours.test"), "old@ours.test", ok),
        (lambda: cli(d, "alias", "remove", "old@ours.test"), "old@ours.test", no_such_user),
        (lambda: cli(d, "domain", "add", "new.test", "--account", "owner@owner.test"), "x@new.test",
         no_such_user),
        (lambda: cli(d, "domain", "remove", "gone.test", "--yes"), "stays@gone.test", not_hosted),
    ]
    for change, address, code in steps:
        change()
        assert settles(sessions, address, code), (address, code)
    assert all_answer(sessions, "new@ours.test", ok)


_POPULATE = """
import sys
from fwdmail import store
from fwdmail.config import load
from fwdmail.runtime import datadir
from fwdmail.store.models import database
datadir.prepare(load(sys.argv[1]))
aliases, domains = int(sys.argv[2]), int(sys.argv[3])
with database.atomic():
    for n in range(domains):
        store.add_domain(f"d{n}.test", "owner@owner.test", "sel", "not a key", "token")
    for i in range(aliases):
        store.add_alias(f"d{i % domains}.test", "exact", f"u{i}", [f"u{i}@dest.test"])
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def serve_and_probe(tmp: Path, aliases: int, domains: int) -> int:
    """Start a daemon on a directory of `aliases` over `domains`, check its first RCPTs, and return its
    resident memory (KiB) after a few hundred lookups."""
    tmp.mkdir()
    d = Daemon(tmp, {"abuse": {"max_junk_commands": 10_000, "max_messages_per_ip_per_minute": 10_000}})
    cli(d, "account", "add", "owner@owner.test")
    proc = subprocess.run([sys.executable, "-c", _POPULATE, str(d.config_path), str(aliases), str(domains)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    d.start(wait_ports=[d.mx_port])
    try:
        s = session(d)
        last = aliases - 1
        assert rcpt(s, f"u{last}@d{last % domains}.test") == "250 2.1.5", "the first RCPT, after start"
        assert rcpt(s, f"nobody@d{last % domains}.test") == "550 5.1.1"
        for i in range(0, aliases, max(1, aliases // 300)):
            assert rcpt(s, f"u{i}@d{i % domains}.test") == "250 2.1.5"
        s.close()
        assert d.proc is not None
        return rss_kib(d.proc.pid)
    finally:
        d.stop()


@pytest.mark.slow
def test_a_large_directory_is_answered_at_once_without_loading_it(tmp_path: Path) -> None:
    tiny = serve_and_probe(tmp_path / "tiny", 20, 2)
    large = serve_and_probe(tmp_path / "large", 20_000, 200)
    assert large - tiny < 16 * 1024, f"serve grew by {(large - tiny) // 1024} MiB with the directory"
