"""The `fwdmail` command: the click group, one module per noun, and the entry point.

Thin commands, each one call into `fwdmail.app`; output goes through `fwdmail.cli.render` (rich tables
with every outside value escaped, or --json). Handles the command line as typed: click's usage errors
quote it, so their message is escaped too; Ctrl-C exits quietly with 130.
"""

from __future__ import annotations

import os
import sys

import click

from fwdmail import __version__
from fwdmail.cli.accounts import account
from fwdmail.cli.aliases import alias
from fwdmail.cli.common import FwdmailGroup, State
from fwdmail.cli.db import db
from fwdmail.cli.domains import domain
from fwdmail.cli.emails import emails
from fwdmail.cli.logs import abuse, logs
from fwdmail.cli.maintenance import check_config, init, purge, serve
from fwdmail.cli.render import visible

__all__ = ["cli", "main"]


@click.group(cls=FwdmailGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="FWDMAIL_CONFIG",
              help="TOML config file (env FWDMAIL_CONFIG). Without it, embedded defaults are used.")
@click.version_option(__version__, prog_name="fwdmail")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """fwdmail: self-hosted, privacy-first email forwarding."""
    ctx.obj = State(config_path)


for _command in (init, check_config, serve, account, domain, alias, logs, abuse, purge, emails, db):
    cli.add_command(_command)


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
