"""A newcomer's first minutes: the README's set-up commands, a command run from the wrong directory,
a host name that cannot work in DNS, Ctrl-C at any moment, and the small faults met on the way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fwdmail.cli import cli

ELSEWHERE_COMMANDS = [
    ("account", "list"), ("account", "add", "you@example.org"),
    ("domain", "add", "example.com", "--account", "you@example.org"), ("domain", "list"),
    ("alias", "list"), ("alias", "add", "a@example.com", "you@example.org"), ("logs",), ("abuse",),
    ("emails", "list"), ("purge", "--dry-run"),
]


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


def test_a_config_pointing_at_a_missing_data_dir_is_refused_too(elsewhere: Path) -> None:
    config = elsewhere / "fwdmail.toml"
    config.write_text('data_dir = "/nonexistent/fwdmail-data"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "alias", "list"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: data_dir: no data dir at /nonexistent/fwdmail-data; give the config with --config PATH "
        "(or FWDMAIL_CONFIG), or run `fwdmail init` to make one here")


def test_check_config_creates_nothing_and_init_then_lets_the_others_work(elsewhere: Path) -> None:
    assert CliRunner().invoke(cli, ["check-config"]).exit_code == 0
    assert list(elsewhere.iterdir()) == []
    assert CliRunner().invoke(cli, ["init"]).exit_code == 0
    assert (elsewhere / "fwdmail-data" / "fwdmail.db").is_file()
    result = CliRunner().invoke(cli, ["account", "list", "--json"])
    assert result.exit_code == 0 and result.output.strip() == "[]", result.output
