"""The `fwdmail` command: the click group, one module per noun, and the entry point.

Thin commands, each one call into `fwdmail.app`; output goes through `fwdmail.cli.render` (rich tables
with every outside value escaped, or --json). Handles the command line as typed: click's usage errors
quote it, so their message is escaped too; Ctrl-C exits quietly with 130. A command's module is imported
only when that command runs (or help lists it): `fwdmail serve`, and each worker process it starts, never
load what the admin commands alone need.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from fwdmail import __version__
from fwdmail.cli.common import FwdmailGroup, State
from fwdmail.cli.render import visible

__all__ = ["cli", "main"]

_COMMANDS = {  # command name -> (module under fwdmail.cli, attribute)
    "init": ("maintenance", "init"), "check-config": ("maintenance", "check_config"),
    "serve": ("maintenance", "serve"), "account": ("accounts", "account"), "domain": ("domains", "domain"),
    "alias": ("aliases", "alias"), "logs": ("logs", "logs"), "abuse": ("logs", "abuse"),
    "purge": ("maintenance", "purge"), "emails": ("emails", "emails"), "db": ("db", "db"),
}


class _LazyGroup(FwdmailGroup):
    """Imports a command's module when click first asks for that command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*_COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _COMMANDS:
            module, attr = _COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"fwdmail.cli.{module}"), attr)
            self.add_command(command, cmd_name)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="FWDMAIL_CONFIG",
              help="TOML config file (env FWDMAIL_CONFIG). Without it, embedded defaults are used.")
@click.version_option(__version__, prog_name="fwdmail")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """fwdmail: self-hosted, privacy-first email forwarding."""
    ctx.obj = State(config_path)



def main() -> None:
    """Run the CLI as click would, except that Ctrl-C exits quietly with 130 (click says "Aborted!", 1)."""
    try:
        code = cli.main(prog_name="fwdmail", standalone_mode=False)
    except click.ClickException as exc:  # click's usage errors quote the arguments as typed
        exc.message = visible(exc.message)
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort as exc:  # click's wrapper of Ctrl-C, and of end of input at a prompt
        if isinstance(exc.__cause__, KeyboardInterrupt):
            sys.exit(130)
        click.echo("Aborted!", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `fwdmail ... | head`: the reader left; the exit flush must not fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
