"""The directory bench (bench/directory.py) at a tiny size, so its code keeps working as fwdmail changes.

Only that every row is measured and the daemon answered right is asserted, never a time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import directory


@pytest.mark.slow
def test_directory_bench_measures_every_row_at_a_tiny_size(tmp_path: Path) -> None:
    sizes = directory.Sizes(aliases=500, domains=5, cold=50, adds=2, bulk=50)
    said: list[str] = []

    result = directory.run(sizes, tmp_path, said.append)

    rows = directory.target_rows(result)
    assert [r["status"] for r in rows if r["status"] == "not measured"] == []
    assert all(math.isfinite(v) for v in result.figures.values())
    assert result.notes["kinds_answered_right"] is True
    assert result.notes["bulk_visible"] is True
    assert result.notes["rcpts"] == 50
    # the 500 imported, the catch-all, the regex, the added one, the 2 added under watch, the 50 imported
    assert result.notes["list_items"] == 500 + 2 + 1 + 2 + 50
    assert "| alias import |" in "\n".join(directory.render(rows))
    json.dumps(result.figures)


def test_virtual_file_has_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "virtual"
    directory.write_virtual(path, aliases=4, domains=3)
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert lines[0].startswith(f"@{directory.CATCH_ALL_DOMAIN} ")
    assert lines[1].startswith(f"/^re-[0-9]+$/@{directory.REGEX_DOMAIN} ")
    assert [line.split()[0] for line in lines[2:]] == [
        directory.alias_address(i, 3) for i in range(4)]
    assert directory.alias_address(3, 3).endswith("@" + directory.domain_name(0))
