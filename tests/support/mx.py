"""Helpers for the MX tests: the real CLI in a subprocess, an SMTP client session, the error log rows.

The CLI runs in its own process, as an admin runs it beside the daemon (and so no test process ever
holds a connection to the daemon's database).
"""

from __future__ import annotations

import json
import os
import smtplib
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon

CLIENT = "client.test"

_BATCH = """
import json, sys
from click.testing import CliRunner
from fwdmail.cli import cli
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(cli, args)
    if r.exit_code:
        sys.exit(f"fwdmail {' '.join(args)} exited {r.exit_code}: {r.output}")
"""


def cli(d: Daemon, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
    """`fwdmail --config <d's> ARGS` in a subprocess (after `init` while there is no data dir)."""
    if d.needs_init(*args):
        cli_batch(d, [])
    proc = subprocess.run([sys.executable, "-m", "fwdmail", "--config", str(d.config_path), *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    if expect is not None:
        shown = f"fwdmail {' '.join(args)}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
        assert proc.returncode == expect, shown
    return proc


def cli_batch(d: Daemon, commands: Sequence[Sequence[str]]) -> None:
    """Several CLI commands in one subprocess (fast setup, `init` first if need be); fails on the first
    non-zero exit."""
    args = d.init_args() + [["--config", str(d.config_path), *c] for c in commands]
    proc = subprocess.run([sys.executable, "-c", _BATCH, json.dumps(args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout


_STORE_REGEX = """
import sys
from fwdmail import store
from fwdmail.runtime import datadir
from fwdmail.config import load
datadir.prepare(load(sys.argv[1]))
store.add_alias(sys.argv[2], "regex", sys.argv[3], [sys.argv[4]])
"""


def store_regex_alias(d: Daemon, domain: str, pattern: str, destination: str) -> None:
    """Write a regex alias to the store directly, as one written before `alias add` refused patterns
    that backtrack (the daemon must still cope with it)."""
    proc = subprocess.run([sys.executable, "-c", _STORE_REGEX, str(d.config_path), domain, pattern,
                           destination], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def start_daemon(tmp: Path, overrides: dict[str, Any], setup: Sequence[Sequence[str]]) -> Daemon:
    d = Daemon(tmp, overrides)
    cli_batch(d, setup)
    return d.start(wait_ports=[d.mx_port])


def message(subject: str | None = None, body: bytes = b"hello\r\n", headers: bytes = b"") -> bytes:
    """A small CRLF message with a unique Message-ID (so the dedup memory never links two tests)."""
    subject = subject or uuid.uuid4().hex
    return (b"From: Sender <sender@src.test>\r\nTo: someone@ours.test\r\n" + headers +
            f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@src.test>\r\n\r\n".encode() + body)


@dataclass
class Outcome:
    mail: tuple[int, bytes]
    rcpts: list[tuple[int, bytes]]
    data: tuple[int, bytes] | None

    @property
    def code(self) -> int | None:
        return self.data[0] if self.data else None

    @property
    def text(self) -> str:
        return self.data[1].decode("utf-8", "replace") if self.data else ""


def send(d: Daemon, sender: str, rcpts: Sequence[str], data: bytes, *, source: str | None = None,
         mail_options: Sequence[str] = ()) -> Outcome:
    """One transaction against the MX; DATA is sent only if a recipient was accepted."""
    kwargs: dict[str, Any] = {"source_address": (source, 0)} if source else {}
    with smtplib.SMTP("127.0.0.1", d.mx_port, local_hostname=CLIENT, timeout=30, **kwargs) as s:
        s.ehlo()
        mail = s.mail(sender, list(mail_options))
        if mail[0] != 250:
            return Outcome(mail, [], None)
        replies = [s.rcpt(r) for r in rcpts]
        result = s.data(data) if any(code == 250 for code, _ in replies) else None
        return Outcome(mail, replies, result)


def db_rows(d: Daemon, sql: str, *params: object) -> list[sqlite3.Row]:
    """Read the daemon's database from a fresh read-only connection."""
    con = sqlite3.connect(f"file:{d.data_dir / 'fwdmail.db'}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def error_rows(d: Daemon) -> list[dict[str, Any]]:
    return [dict(r) for r in db_rows(d, "SELECT * FROM smtp_error_log ORDER BY id")]
