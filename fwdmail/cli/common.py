"""What every command shares: the config/store state, --json, confirmation, one-line errors.

Handles what the admin typed (the config path, answers at a prompt); a failure the commands expect is
turned into a one-line error, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from fwdmail.app import USER_ERRORS
from fwdmail.cli.render import line, visible
from fwdmail.config import Config, ConfigError, hostname_problem, load
from fwdmail.runtime import datadir


class ConfigProblem(click.ClickException):
    exit_code = 2


class FwdmailGroup(click.Group):
    """Turns expected failures into one-line errors instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigProblem(visible(exc)) from None
        except USER_ERRORS as exc:
            raise click.ClickException(visible(exc) or exc.__class__.__name__) from None


@dataclass
class State:
    config_path: str | None
    _config: Config | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load(self.config_path)
        return self._config

    def open(self, *, create: bool = False) -> datadir.Runtime:
        """Load the config and open the store; only `create` (init, serve) makes a missing data dir."""
        return datadir.prepare(self.config, create=create)


pass_state = click.make_pass_decorator(State)


def warn_hostname(cfg: Config) -> None:
    """On stderr (stdout stays clean for --json): the records printed for this host name cannot work."""
    problem = hostname_problem(cfg)
    if problem is not None:
        line(f"warning: {problem}", err=True)


def confirm_or_abort(yes: bool, question: str) -> None:
    # on stderr, so stdout stays clean for --json
    if not yes and not click.confirm(visible(question), default=False, err=True):
        raise click.ClickException("aborted, nothing was changed")


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)
