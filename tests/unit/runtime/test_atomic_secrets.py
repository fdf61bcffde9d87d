"""Secrets and the generated TLS pair survive a crash while they are written, and a damaged one is refused.

A crash (or a full disk) while `srs.secret` or the TLS pair is written must never leave a file cut short
that a later start takes as valid; and a file found cut short is refused with one line, never replaced
by a new secret (that would refuse every SRS bounce of mail already forwarded).
"""

from __future__ import annotations

import base64
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from fwdmail.runtime import keys
from tests.support.daemon import REPO, Daemon

# Run in a subprocess: writes of the file named by argv[2] write a few bytes, then the process is killed,
# as a power cut or an OOM kill would end it mid-write.
_CRASH_WHILE_WRITING = """
import os, signal, sys
from click.testing import CliRunner
from fwdmail.cli import cli

real_fdopen = os.fdopen

class Crashing:
    def __init__(self, f):
        self.f = f
    def write(self, data):
        self.f.write(bytes(data)[:10])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()
    def __getattr__(self, name):
        return getattr(self.f, name)

def fdopen(fd, *args, **kwargs):
    f = real_fdopen(fd, *args, **kwargs)
    return Crashing(f) if sys.argv[2] in os.readlink(f"/proc/self/fd/{fd}") else f

os.fdopen = fdopen
CliRunner().invoke(cli, ["--config", sys.argv[1], "init"], catch_exceptions=False)
sys.exit("the write was not reached")
"""


def run_cli(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`fwdmail ARGS` in its own process; a `serve` that wrongly starts is ended by the timeout."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        return subprocess.run([sys.executable, "-m", "fwdmail", "--config", str(d.config_path), *args],
                              capture_output=True, text=True, timeout=30, env=env, cwd=d.dir)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"fwdmail {' '.join(args)} kept running: it did not refuse") from None


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode not in (0, None), out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


def leftovers(d: Daemon) -> list[Path]:
    return sorted(p for p in d.data_dir.rglob("*.tmp"))


def assert_whole(d: Daemon) -> None:
    """The data dir holds a full 32-byte SRS secret and a TLS pair that loads."""
    assert len(base64.b64decode((d.data_dir / "srs.secret").read_bytes().strip(), validate=True)) == 32
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(d.data_dir / "tls" / "cert.pem",
                                                            d.data_dir / "tls" / "key.pem")


@pytest.mark.parametrize("damage", ["empty", "cut short"])
def test_serve_refuses_a_damaged_srs_secret_and_leaves_it_alone(tmp_path: Path, damage: str) -> None:
    d = Daemon(tmp_path)
    d.cli("init")
    path = d.data_dir / "srs.secret"
    damaged = b"" if damage == "empty" else path.read_bytes()[:20]
    path.write_bytes(damaged)
    for command in ("serve", "init"):
        line = one_line(run_cli(d, command))
        assert str(path) in line and "cut short" in line and "restore it from a backup" in line, line
        assert path.read_bytes() == damaged, f"{command} replaced the damaged secret"
    assert not leftovers(d)


def test_serve_refuses_a_generated_tls_pair_cut_short(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    d.cli("init")
    key = d.data_dir / "tls" / "key.pem"
    damaged = key.read_bytes()[:300]
    key.write_bytes(damaged)
    line = one_line(run_cli(d, "serve"))
    assert "generated TLS pair" in line and "delete both" in line, line
    assert key.read_bytes() == damaged


@pytest.mark.parametrize("target", ["srs.secret", "key.pem", "cert.pem"])
def test_a_crash_while_writing_key_material_leaves_no_file_cut_short(tmp_path: Path, target: str) -> None:
    d = Daemon(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _CRASH_WHILE_WRITING, str(d.config_path), target],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    written = [p.name for p in d.data_dir.rglob("*") if p.is_file() and target in p.name]
    assert target not in written, f"{target} was written in place and is now cut short"

    d.cli("init")  # the next start makes the file whole, and clears the half-written temporary file
    assert_whole(d)
    assert not leftovers(d)
    secret = (d.data_dir / "srs.secret").read_bytes()
    d.cli("init")
    assert (d.data_dir / "srs.secret").read_bytes() == secret


def test_write_atomic_replaces_whole_files_only(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file"
    keys.write_atomic(path, b"first\n")
    keys.write_atomic(path, b"second\n")
    assert path.read_bytes() == b"second\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert [p.name for p in path.parent.iterdir()] == ["file"]
