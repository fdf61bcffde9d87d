"""The slowest end-to-end modules (by `--durations`: each has tests of 8-16 s) get the `slow` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SLOW_MODULES = frozenset({"test_store_lock.py", "test_queue_crash.py", "test_mx_workers.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == HERE and item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
