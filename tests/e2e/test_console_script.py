"""The installed `fwdmail` console script and `python -m fwdmail`, as real processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "fwdmail"


def fwdmail(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    script = str(SCRIPT) if SCRIPT.exists() else shutil.which("fwdmail")
    assert script, "the fwdmail console script is not installed (pip install -e .)"
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_console_script_end_to_end(tmp_path: Path) -> None:
    config = tmp_path / "fwdmail.toml"
    config.write_text('data_dir = "data"\nhostname = "mx.example.net"\n')
    steps = [
        ("init",),
        ("account", "add", "you@example.org"),
        ("domain", "add", "example.com", "--account", "you@example.org"),
        ("alias", "add", "hello@example.com", "you@example.org"),
        ("alias", "add", "*@example.com", "you@example.org", "other@example.net"),
    ]
    for step in steps:
        done = fwdmail("--config", str(config), *step, cwd=tmp_path)
        assert done.returncode == 0, (step, done.stdout, done.stderr)
    assert (tmp_path / "data" / "fwdmail.db").exists()

    # From another directory, through the environment: same data (paths are relative to the config file).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = fwdmail("alias", "list", "--json", env={"FWDMAIL_CONFIG": str(config)}, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    aliases = json.loads(done.stdout)
    assert [(a["address"], a["destinations"]) for a in aliases] == [
        ("*@example.com", ["you@example.org", "other@example.net"]),
        ("hello@example.com", ["you@example.org"]),
    ]
    assert not (elsewhere / "fwdmail-data").exists() and not (elsewhere / "data").exists()

    done = fwdmail("--config", str(config), "domain", "dns", "example.com", "--json")
    assert json.loads(done.stdout)[0] == {"type": "MX", "name": "example.com", "value": "10 mx.example.net."}


@pytest.mark.parametrize("args,code,needle", [
    (("alias", "add", "x@unknown.example", "you@example.org"), 1, "Error: no domain unknown.example"),
    (("account", "add", "nonsense"), 1, "Error: invalid address 'nonsense': no domain"),
    (("domain", "set", "x.example", "--retention-days", "many"), 2, "Invalid value"),
])
def test_console_script_errors_are_one_line_with_exit_codes(tmp_path: Path, args: tuple[str, ...], code: int,
                                                            needle: str) -> None:
    config = tmp_path / "fwdmail.toml"
    config.write_text('data_dir = "data"\n')
    assert fwdmail("--config", str(config), "init").returncode == 0  # only init and serve make a data dir
    done = fwdmail("--config", str(config), *args)
    assert done.returncode == code
    assert needle in done.stderr and "Traceback" not in done.stderr
    if code == 1:
        assert done.stderr.count("\n") == 1 and done.stdout == ""


def test_console_script_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "fwdmail.toml"
    config.write_text("[mx]\nmax_message_size = -1\n")
    done = fwdmail("--config", str(config), "check-config")
    assert done.returncode == 2
    assert done.stderr == "Error: mx.max_message_size: must be greater than 0, got -1\n"


def test_python_dash_m() -> None:
    done = subprocess.run([sys.executable, "-m", "fwdmail", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: ") and "fwdmail" in done.stdout
    for command in ("init", "serve", "check-config", "account", "domain", "alias"):
        assert command in done.stdout


def test_serve_with_a_port_taken_says_so_in_one_line(tmp_path: Path) -> None:
    """A listen address already in use is a one-line error and exit 1, not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "fwdmail.toml"
        config.write_text(f'data_dir = "data"\nhostname = "mx.fwdmail.test"\n'
                          f'[mx]\nlisten = ["127.0.0.1:{port}"]\n'
                          '[submission]\nlisten = []\nlisten_tls = []\n'
                          '[dns]\nnameservers = ["127.0.0.1:9"]\n')
        proc = subprocess.run([sys.executable, "-m", "fwdmail", "--config", str(config), "serve"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"Error: cannot listen on 127.0.0.1:{port}: address already in use"


def test_serve_with_a_broken_certificate_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    config = tmp_path / "fwdmail.toml"
    config.write_text('data_dir = "data"\nhostname = "mx.fwdmail.test"\n'
                      '[tls]\ncert = "cert.pem"\nkey = "key.pem"\n'
                      '[mx]\nlisten = ["127.0.0.1:0"]\n[submission]\nlisten = []\nlisten_tls = []\n'
                      '[dns]\nnameservers = ["127.0.0.1:9"]\n')
    proc = subprocess.run([sys.executable, "-m", "fwdmail", "--config", str(config), "serve"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "tls" in proc.stderr.strip().splitlines()[-1].lower(), proc.stderr


def test_a_second_serve_on_the_same_data_dir_is_refused_before_it_starts(tmp_path: Path) -> None:
    """Two daemons on one store would take back each other's queue claims at start (double delivery):
    the second one stops with one line naming the first, on other ports too; a killed first one does
    not block the next start."""
    from tests.support.daemon import Daemon

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Daemon(tmp_path / "a").start()
    second = Daemon(tmp_path / "b", {"data_dir": str(first.data_dir)})
    assert first.proc is not None and set(second.ports).isdisjoint(first.ports)
    try:
        proc = subprocess.run([sys.executable, "-m", "fwdmail", "--config", str(second.config_path), "serve"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr == (f"Error: another fwdmail serve (pid {first.proc.pid}) is running on data dir "
                               f"{first.data_dir.resolve()}\n")
        assert first.proc.poll() is None
        first.kill()
        second.start()
        assert second.cli("account", "list", "--json").output.strip() == "[]"
    finally:
        first.kill()
        second.stop()
