"""Text from outside never drives the admin's terminal: every listing and `show` command, in table and
JSON form, prints hostile stored values with rich markup literal and control/bidi characters visible.

The hostile values go into the store through its own verbs (as the daemon would write a destination's
reply, an SMTP client's input or an older release's unchecked alias); the CLI runs on a console that
believes it is a terminal (TTY_COMPATIBLE, as a real terminal would make rich do) and, once, on a pty.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fwdmail import store
from fwdmail.cli import cli
from fwdmail.smtp.replies import SmtpError
from tests.support.daemon import REPO, Daemon
from tests.support.hostile import TALLY, register_summary

HOSTILE = ("[link=http://x]click[/link]\x1b]8;;http://e\x1b\\\x1b[2J\u202e[bold red]loud[/]:smile:"
           "\x9b31m\x9d0;t\x07\r\x00\x1b[38;5;199m\u2066\u200f\x7f")
# What must never reach the output raw: ESC sequences other than rich's own styling, C1 controls,
# BEL, CR, NUL, DEL and bidi controls.
RAW = ["\x1b]", "\x1b\\", "\x1b[2J", "\x1b[38;5;199m", "\x9b", "\x9d", "\x07", "\r", "\x00", "\x7f",
       "\u202e", "\u2066", "\u200f"]
RICH_STYLE = re.compile(r"\x1b\[[0-9;]*m")  # rich's own SGR styling on a terminal
T0 = dt.datetime(2030, 1, 1, 12, 0)
OUTCOME = "inert: markup literal, controls/bidi as escapes, JSON valid"
TERMINAL = {"TTY_COMPATIBLE": "1", "COLUMNS": "400", "NO_COLOR": None, "TERM": "xterm-256color"}


@pytest.fixture(autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


def _queue(domain: str) -> str:
    email = store.NewEmail(
        store.new_queue_id(), domain, f"alice{HOSTILE}@{domain}", (f"bob{HOSTILE}@dest.test",),
        f"From: alice@{domain}\r\nSubject: {HOSTILE}\r\n".encode(), f"body {HOSTILE}\r\n".encode(),
        HOSTILE, T0, T0,
    )
    store.enqueue([email], T0)
    (claimed,) = [c for c in store.claim_due(T0, "t", 100) if c.queue_id == email.queue_id]
    store.record_attempt(claimed.id, "t", T0, retry_at=T0 + dt.timedelta(hours=1),
                         deferred={email.recipients[0]: SmtpError(451, "4.3.0", HOSTILE)})
    return email.queue_id


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    """A data dir whose every displayed field holds the hostile text."""
    daemon = Daemon(tmp_path_factory.mktemp("escaping"))
    daemon.cli("init")
    daemon.cli("account", "add", "owner@owner.test")
    daemon.cli("domain", "add", "example.test", "--account", "owner@owner.test")
    store.open_store(daemon.data_dir / "fwdmail.db")
    try:
        store.add_account(f"evil{HOSTILE}@owner.test")
        store.add_domain(f"evil{HOSTILE}.test", "owner@owner.test", HOSTILE, "not a key", HOSTILE)
        store.add_alias("example.test", "exact", f"x{HOSTILE}", [f"dest{HOSTILE}@dest.test"])
        store.log_smtp_errors([(T0, "inbound", "example.test", f"a{HOSTILE}@example.test", 550, "5.7.1",
                                HOSTILE)])
        store.record_abuse(T0, "dnsbl", f"192.0.2.1{HOSTILE}", "example.test", HOSTILE)
        daemon.qid = _queue("example.test")  # type: ignore[attr-defined]
    finally:
        store.close_store()
    return daemon


COMMANDS = [
    ("account", "list"), ("domain", "list"), ("alias", "list"), ("logs",), ("abuse",), ("emails", "list"),
    ("emails", "show", "QID"), ("check-config",),
]


def run(d: Daemon, args: tuple[str, ...]) -> str:
    args = tuple(getattr(d, "qid") if a == "QID" else a for a in args)  # noqa: B009
    result = CliRunner().invoke(cli, ["--config", str(d.config_path), *args], env=TERMINAL,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def strings(data: object) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        data = list(data.values())
    return [s for item in data for s in strings(item)] if isinstance(data, list) else []


def assert_inert(out: str) -> None:
    """No raw hostile byte, no live markup: the markup is printed as written."""
    styled = RICH_STYLE.sub("", out)
    for raw in RAW:
        assert raw not in styled, (raw, out[:3000])
    assert "\x1b" not in styled, out[:3000]
    assert "\x1b]8;" not in out  # no hyperlink


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_tables_show_hostile_text_inert_and_visible(d: Daemon, args: tuple[str, ...]) -> None:
    out = run(d, args)
    if args[0] == "check-config":
        return  # its values come from the config file; covered below
    assert_inert(out)
    assert "[link=http://x]click[/link]" in RICH_STYLE.sub("", out).replace("\n", "")
    assert r"\x1b]8;;http://e" in RICH_STYLE.sub("", out).replace("\n", "")
    TALLY.item("13.3 terminal injection", 1, OUTCOME)


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] != "check-config"], ids=" ".join)
def test_json_is_valid_and_escapes_hostile_text(d: Daemon, args: tuple[str, ...]) -> None:
    out = run(d, (*args, "--json"))
    for raw in RAW:
        assert raw not in out, raw
    assert "\x1b" not in out
    assert any(HOSTILE in value for value in strings(json.loads(out)))  # the values themselves, unchanged
    TALLY.item("13.3 terminal injection", 1, OUTCOME)


def test_check_config_shows_hostile_paths_inert(tmp_path: Path) -> None:
    config = tmp_path / "fwdmail.toml"
    config.write_text(json.dumps({"data_dir": f"data{HOSTILE}"}).replace('{"data_dir": ', "data_dir = ")
                      .rstrip("}") + "\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(config), "check-config"], env=TERMINAL)
    assert result.exit_code == 0, result.output
    assert_inert(result.output)
    result = CliRunner().invoke(cli, ["--config", str(config), "check-config", "--json"], env=TERMINAL)
    assert "\x1b" not in result.output and "\u202e" not in result.output
    assert json.loads(result.stdout)["data_dir"].endswith("[38;5;199m\u2066\u200f\x7f")
    TALLY.item("13.3 terminal injection", 2, OUTCOME)


def test_errors_naming_hostile_input_are_inert(d: Daemon) -> None:
    for args in (("alias", "remove", f"x{HOSTILE}@example.test"), ("domain", "dns", f"evil{HOSTILE}.test"),
                 ("emails", "show", f"Q{HOSTILE}")):
        result = CliRunner().invoke(cli, ["--config", str(d.config_path), *args], env=TERMINAL)
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert_inert(result.output)
    TALLY.item("13.3 terminal injection", 3, OUTCOME)


def on_pty(d: Daemon, *args: str) -> str:
    """What `fwdmail ARGS` writes to a pseudo-terminal, as when an admin runs it; it must exit 0."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "NO_COLOR", "FORCE_COLOR")}
    proc = subprocess.Popen([sys.executable, "-m", "fwdmail", "--config", str(d.config_path), *args],
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True,
                            env={**env, "PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLUMNS": "400"})
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the pty closes when the process ends
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        proc.wait(30)
    assert proc.returncode == 0, out
    return out.decode("utf-8", "replace").replace("\r\n", "\n")  # the pty turns \n into \r\n


def test_on_a_real_pty_the_log_table_cannot_drive_the_terminal(d: Daemon) -> None:
    """`fwdmail logs` on a pseudo-terminal: no escape sequence but rich's own styling."""
    text = on_pty(d, "logs")
    assert_inert(text)
    assert "[link=http://x]click[/link]" in RICH_STYLE.sub("", text).replace("\n", "")
    TALLY.item("13.3 terminal injection", 1, OUTCOME)


def test_raw_message_on_a_terminal_shows_its_control_bytes(d: Daemon) -> None:
    """`emails show --raw` writes the stored bytes to a pipe or file, but not raw to a terminal."""
    qid = getattr(d, "qid")  # noqa: B009
    assert "\x1b" in run(d, ("emails", "show", qid, "--raw"))  # for a pipe: the message as stored
    text = on_pty(d, "emails", "show", qid, "--raw")
    assert_inert(text)
    assert "Subject: [link=http://x]click[/link]\\x1b]8;;http://e" in text
    TALLY.item("13.3 terminal injection", 1, OUTCOME)


def test_usage_errors_quoting_hostile_arguments_are_inert(d: Daemon) -> None:
    """click's own usage errors repeat what was typed (or pasted): shown visibly too."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    typed = HOSTILE.replace("\x00", "")  # an argument cannot hold NUL
    for args in ([f"no{typed}such"], ["abuse", "--kind", typed]):
        done = subprocess.run([sys.executable, "-m", "fwdmail", "--config", str(d.config_path), *args],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 2, done.stderr
        assert_inert(done.stderr)
        assert r"\x1b]8;;http://e" in done.stderr
    TALLY.item("13.3 terminal injection", 2, OUTCOME)
