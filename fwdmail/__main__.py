from __future__ import annotations

from fwdmail.cli import main

main()
