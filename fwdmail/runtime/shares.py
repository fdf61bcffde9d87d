"""Per-process shares of configured limits when the MX runs in several processes (`[mx] workers`).

Untrusted input: none; pure arithmetic on configured numbers.
"""

from __future__ import annotations

__all__ = ["share"]


def share(limit: int, processes: int) -> int:
    """Each process's part of a per-client limit, rounded up (0, no limit, stays 0)."""
    return -(-limit // processes) if limit > 0 else 0
