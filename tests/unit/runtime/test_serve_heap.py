"""`serve` hides its startup objects from the cyclic collector, and garbage made later is still collected."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc, weakref
from fwdmail.runtime.serve import freeze_startup_objects

class Node:
    pass

kept = [Node() for _ in range(1000)]
freeze_startup_objects()
frozen = gc.get_freeze_count()
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made while serving
gone = weakref.ref(a)
del a, b
gc.collect()
print(frozen >= 1000, gone() is None, gc.get_count()[2] == 0)
"""


def test_startup_objects_are_frozen_and_later_cycles_still_collected() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                         check=True)
    assert out.stdout.split() == ["True", "True", "True"]
