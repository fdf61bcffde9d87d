"""A newcomer's first minutes: the README's set-up commands, a command run from the wrong directory,
a host name that cannot work in DNS, Ctrl-C at any moment, and the small faults met on the way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fwdmail.cli import cli
from tests.support.daemon import REPO, Daemon
from tests.support.hostile import TALLY, register_summary

ELSEWHERE_COMMANDS = [
    ("account", "list"), ("account", "add", "you@example.org"),
    ("domain", "add", "example.com", "--account", "you@example.org"), ("domain", "list"),
    ("alias", "list"), ("alias", "add", "a@example.com", "you@example.org"), ("logs",), ("abuse",),
    ("emails", "list"), ("purge", "--dry-run"),
]


@pytest.fixture(autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no data dir, and no FWDMAIL_CONFIG."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FWDMAIL_CONFIG", raising=False)
    return tmp_path


@pytest.mark.parametrize("args", ELSEWHERE_COMMANDS, ids=" ".join)
def test_only_init_and_serve_create_a_data_dir(elsewhere: Path, args: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "no data dir at" in lines[0] and str(elsewhere / "fwdmail-data") in lines[0]
    assert "--config" in lines[0] and "FWDMAIL_CONFIG" in lines[0] and "fwdmail init" in lines[0]
    assert list(elsewhere.iterdir()) == []  # nothing created, not even an empty directory
    TALLY.item("13.8 data dir made from elsewhere", 1, "refused with a hint")


def test_a_config_pointing_at_a_missing_data_dir_is_refused_too(elsewhere: Path) -> None:
    config = elsewhere / "etc" / "fwdmail.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "../var/fwdmail-data"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "alias", "list"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: data_dir: no data dir at {elsewhere}/etc/../var/fwdmail-data; give the config with "
        "--config PATH (or FWDMAIL_CONFIG), or run `fwdmail init` to make one here")
    assert not (elsewhere / "var").exists()


def test_check_config_creates_nothing_and_init_then_lets_the_others_work(elsewhere: Path) -> None:
    assert CliRunner().invoke(cli, ["check-config"]).exit_code == 0
    assert list(elsewhere.iterdir()) == []
    assert CliRunner().invoke(cli, ["init"]).exit_code == 0
    assert (elsewhere / "fwdmail-data" / "fwdmail.db").is_file()
    result = CliRunner().invoke(cli, ["account", "list", "--json"])
    assert result.exit_code == 0 and result.output.strip() == "[]", result.output


# ------------------------------------------------------------------ a host name without a dot

WARNING = "set `hostname` in the config file"


@pytest.mark.parametrize("hostname,warned", [("myhost", True), ("mx.example.net", False)])
def test_a_dotless_hostname_is_warned_about_by_the_commands_that_print_records(
        tmp_path: Path, hostname: str, warned: bool) -> None:
    d = Daemon(tmp_path, {"hostname": hostname})
    d.cli("account", "add", "you@example.org")
    for args in (("check-config",), ("check-config", "--json"),
                 ("domain", "add", "example.com", "--account", "you@example.org"),
                 ("domain", "dns", "example.com"), ("domain", "dns", "example.com", "--json")):
        result = d.cli(*args)
        assert (WARNING in result.stderr) is warned, (args, result.stderr)
        if warned:
            assert result.stderr.startswith(f"warning: hostname: '{hostname}' (hostname) has no dot"), args
        if "--json" in args:
            json.loads(result.stdout)  # the warning stays off stdout
        TALLY.item("13.8 dotless hostname", 1, "warned when dotless, quiet otherwise")
    assert WARNING not in d.cli("alias", "list").stderr  # commands that print no records say nothing


def test_serve_warns_about_a_dotless_hostname_once(tmp_path: Path) -> None:
    d = Daemon(tmp_path, {"hostname": "myhost", "mx": {"workers": 2}}).start()
    try:
        d.wait_for_log(WARNING)
        deadline = time.monotonic() + 30
        while d.logs().count("event loop:") < 2:  # the MX worker has started too
            assert time.monotonic() < deadline, d.logs()
            time.sleep(0.1)
    finally:
        d.stop()
    assert d.logs().count(WARNING) == 1, d.logs()


# ------------------------------------------------------------------ Ctrl-C at any moment

DELAYS = [0.02, 0.05, 0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7]


def _before_fwdmail_runs(err: bytes) -> bool:
    """A KeyboardInterrupt raised while `python -m` itself still looks for the module (every frame is
    the interpreter's frozen runpy/importlib, none a file of ours): no fwdmail code has run yet."""
    frames = [line for line in err.splitlines() if line.lstrip().startswith(b"File ")]
    return (err.rstrip().endswith(b"KeyboardInterrupt") and bool(frames)
            and all(b'"<frozen ' in line for line in frames))


def test_ctrl_c_in_the_first_moments_exits_quietly_with_130(tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    """SIGINT while Python imports the CLI, or while a command runs: no traceback, no "Aborted!", exit 130
    (or, before Python has set up its own handler, the plain death by SIGINT a shell also shows as 130).

    A signal while the interpreter itself still starts (importing `site`, or runpy still finding the module,
    before any fwdmail code runs) ends in Python's own error; nothing in fwdmail can run then, so it is
    not counted."""
    d = Daemon(tmp_path)
    d.cli("init")
    register_summary(request.config)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    outcomes: list[int] = []
    for delay in DELAYS:
        proc = subprocess.Popen([sys.executable, "-m", "fwdmail", "--config", str(d.config_path), "account",
                                 "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        if err.startswith(b"Fatal Python error: init_import_site") or _before_fwdmail_runs(err):
            outcomes.append(-1)
            continue
        assert b"Traceback" not in err and b"Aborted" not in err, (delay, err.decode())
        if proc.returncode == 0:  # it had finished before the signal came
            assert b"accounts" in out
        else:
            assert proc.returncode in (130, -signal.SIGINT), (delay, proc.returncode, err.decode())
            assert err.strip() == b"", (delay, err.decode())
        outcomes.append(proc.returncode)
    assert 130 in outcomes, outcomes  # at least one signal came while fwdmail was running
    assert outcomes.count(-1) < len(DELAYS) // 2, outcomes
    TALLY.item("19 Ctrl-C early", len(DELAYS), f"quiet; exit codes {sorted(set(outcomes))} (-1: Python "
               "itself still starting, -2: killed before Python's handler, 0: done before the signal)")


# ------------------------------------------------------------------ small CLI faults


def test_abuse_kind_is_a_choice_of_the_known_kinds(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    result = d.cli("abuse", "--kind", "dmarc-rejct", expect=2)
    assert "Invalid value for '--kind'" in result.output
    for kind in ("dmarc-reject", "spf-reject", "dnsbl", "rate-limit", "too-many-connections"):
        assert kind in result.output
        assert d.cli("abuse", "--kind", kind, "--json").output.strip() == "[]"
    TALLY.item("19 abuse --kind typo", 1, "refused, kinds offered")


def test_the_example_config_says_what_connect_timeout_covers() -> None:
    text = (REPO / "fwdmail.example.toml").read_text()
    doc = text[:text.index("\nconnect_timeout =")].rsplit("\n\n", 1)[-1]
    assert "TCP connect timeout (seconds)." not in doc
    assert all(word in doc for word in ("greeting", "EHLO", "STARTTLS")), doc


# ------------------------------------------------------------------ the README's two set-up commands

README = REPO / "README.md"


def test_readme_starts_with_the_two_setup_commands_and_ci_runs_the_test_one_verbatim() -> None:
    head = README.read_text().splitlines()[:4]
    assert head == ["```sh", "./dev serve", "./dev test", "```"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert head[2] in ci  # the very line, alone
    assert not any("pip install" in line for line in ci if not line.lstrip().startswith("#"))


FAKE_PYTHON = """#!/bin/sh
echo "python3 $*" >> "$FAKE/log"
if [ "$1 $2" = "-m venv" ]; then  # as Debian's python3 without python3-venv: the venv, then no pip
    mkdir -p "$3/bin"
    printf '#!/bin/sh\\necho "venv-python $*" >> "$FAKE/log"\\n' > "$3/bin/python"
    printf '[ "$1 $2" != "-m pip" ] || [ -f "%s/pip" ]\\n' "$3" >> "$3/bin/python"
    printf '#!/bin/sh\\necho "venv-fwdmail $*" >> "$FAKE/log"\\n' > "$3/bin/fwdmail"
    chmod +x "$3/bin/python" "$3/bin/fwdmail"
    [ -f "$FAKE/python3-venv" ] || { echo "ensurepip is not available" >&2; exit 1; }
    touch "$3/pip"
    exit 0
fi
if [ "$1 $2" = "-m pip" ]; then
    echo "error: externally-managed-environment" >&2
    exit 1
fi
"""
FAKE_APT = """#!/bin/sh
echo "apt-get $*" >> "$FAKE/log"
case "$*" in *"install"*python3-venv*) touch "$FAKE/python3-venv" ;; esac
"""
FAKE_SUDO = '#!/bin/sh\necho "sudo $*" >> "$FAKE/log"\nexec "$@"\n'
FAKE_ID = '#!/bin/sh\n[ "$1" = "-u" ] && echo "$FAKE_UID"\n'


def stock_debian(tmp_path: Path, uid: str, sudo: bool) -> tuple[Path, dict[str, str]]:
    """A checkout holding `dev`, and a PATH where python3, apt-get, id (and sudo) are stand-ins."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "dev").write_bytes((REPO / "dev").read_bytes())
    (checkout / "dev").chmod(0o755)
    (checkout / "pyproject.toml").write_text("")
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    tools = {"python3": FAKE_PYTHON, "apt-get": FAKE_APT, "id": FAKE_ID, "sudo": FAKE_SUDO if sudo else None}
    for name, script in tools.items():
        if script is not None:
            (fake / "bin" / name).write_text(script)
            (fake / "bin" / name).chmod(0o755)
    system = [d for d in ("/usr/bin", "/bin") if sudo or not (Path(d) / "sudo").exists()]
    return checkout, {"PATH": ":".join([str(fake / "bin"), *system]), "FAKE": str(fake), "FAKE_UID": uid}


def dev(checkout: Path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                                  list[str]]:
    """Run `./dev ARGS`; return it and the stand-ins' log of what was called (then start a new log)."""
    done = subprocess.run(["./dev", *args], cwd=checkout, env=env, capture_output=True, text=True, timeout=60)
    log = Path(env["FAKE"]) / "log"
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return done, lines


@pytest.mark.parametrize("uid,sudo", [("1000", True), ("0", False)], ids=["user-with-sudo", "root"])
def test_dev_makes_a_venv_on_a_stock_debian_and_never_installs_into_the_system_python(
        tmp_path: Path, uid: str, sudo: bool) -> None:
    """Debian 12 / Ubuntu 24.04 as shipped: python3 is externally managed (PEP 668), has no pip, and
    `python3 -m venv` fails until python3-venv is installed. Simulated by stand-ins on the PATH (the real
    path, with the real interpreter and pip, is run by hand: see the report of this change)."""
    checkout, env = stock_debian(tmp_path, uid, sudo)
    done, log = dev(checkout, env, "test", "-x")
    assert done.returncode == 0, done.stderr
    assert "apt-get install -y -qq --no-install-recommends python3-venv" in log
    if sudo:
        assert "sudo apt-get update -qq" in log
        assert any(line.startswith("sudo env DEBIAN_FRONTEND=noninteractive apt-get install") for line in log)
    else:
        assert "apt-get update -qq" in log and not any(line.startswith("sudo") for line in log)
    assert not any(line.startswith("python3 -m pip") for line in log), log  # never the system's pip
    assert f"venv-python -m pip install -q -e {checkout}[test]" in log
    assert log[-1] == "venv-python -m pytest -q -x"
    # Once made, the venv is reused, and each extra installed once.
    done, log = dev(checkout, env, "serve")
    assert done.returncode == 0, done.stderr
    assert log == ["venv-python -m pip --version", f"venv-python -m pip install -q -e {checkout}[fast]",
                   "venv-fwdmail serve"]
    done, log = dev(checkout, env, "test")
    assert done.returncode == 0 and log == ["venv-python -m pip --version", "venv-python -m pytest -q"]
    TALLY.item("13.8 README set-up on stock Debian (simulated)", 3, "venv made, system pip never used")


def test_dev_as_a_user_without_sudo_says_what_to_install(tmp_path: Path) -> None:
    checkout, env = stock_debian(tmp_path, "1000", sudo=False)
    done, log = dev(checkout, env, "test")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "dev: python3-venv is missing; install it as root (apt-get install python3-venv)")
    assert not (checkout / ".venv").exists() and not any(line.startswith("apt-get") for line in log)
