"""`python -m fwdmail` and the `fwdmail` console script.

Kept apart from the CLI so that a Ctrl-C while the CLI is still being imported ends as quietly as one
during a command: exit code 130, no traceback.
"""

from __future__ import annotations

import sys


def _quiet_interrupts(unraisable: sys.UnraisableHookArgs) -> None:
    """Python reports an exception it cannot raise (one in a callback while modules are imported) as
    "Exception ignored" with a traceback; a Ctrl-C landing there is the user's, not a fault."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def main() -> None:
    sys.unraisablehook = _quiet_interrupts
    try:
        from fwdmail.cli import main as run_cli

        run_cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
