"""Bounded in-memory maps (runtime/expiring.py): bounded in count and, where they expire, in time."""

from __future__ import annotations

from fwdmail.runtime.expiring import BoundedMap, ExpiringSet, OncePerWindow


def test_bounded_map_forgets_the_oldest_set() -> None:
    m: BoundedMap[str, int] = BoundedMap(2)
    m.set("a", 1)
    m.set("b", 2)
    m.set("a", 3)
    m.set("c", 4)
    assert len(m) == 2 and "b" not in m and m.get("a") == 3 and m.get("c") == 4
    assert m.pop("a") == 3 and m.pop("a") is None


def test_expiring_set_forgets_after_ttl_and_past_the_bound() -> None:
    s = ExpiringSet(ttl=10, max_entries=2)
    s.put(b"x", 0)
    assert s.get(b"x", 9.9) and not s.get(b"x", 10)
    assert len(s) == 0
    for i, key in enumerate((b"a", b"b", b"c")):
        s.put(key, i)
    assert len(s) == 2 and not s.get(b"a", 2)


def test_once_per_window() -> None:
    gate = OncePerWindow(interval=60, max_keys=10)
    assert gate.allow("k", 0) and not gate.allow("k", 59) and gate.allow("k", 60)
