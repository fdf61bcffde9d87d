"""The store tests run on both engines through the `engine` and `opened` fixtures of tests/conftest.py;
`Opened` (tests/support/engines.py) stays importable from here for the modules that name it."""

from __future__ import annotations

from tests.support.engines import Opened

__all__ = ["Opened"]
