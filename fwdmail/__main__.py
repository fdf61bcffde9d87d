"""`python -m fwdmail` and the `fwdmail` console script.

Kept apart from the CLI so that a Ctrl-C while the CLI is still being imported ends as quietly as one
during a command: exit code 130, no traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from fwdmail.cli import main as run_cli

        run_cli()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
