"""`[queue] workers`: validated with one clear line; each worker's claim tag and share of concurrency."""

from __future__ import annotations

import pytest

from fwdmail.config import ConfigError, from_dict
from fwdmail.queue.workers import worker_share, worker_tag


@pytest.mark.parametrize(("queue", "error"), [
    ({"workers": -1}, "queue.workers: must be from 0 to 64, got -1"),
    ({"workers": 65}, "queue.workers: must be from 0 to 64, got 65"),
    ({"workers": 4, "concurrency": 3}, "queue.workers: must not be more than queue.concurrency (3)"),
])
def test_a_bad_worker_count_is_one_line(queue: dict[str, int], error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"queue": queue})
    assert str(exc.value).startswith(error) and "\n" not in str(exc.value)


def test_workers_default_to_none_and_share_the_concurrency() -> None:
    assert from_dict({}).queue.workers == 0
    assert from_dict({"queue": {"workers": 64, "concurrency": 64}}).queue.workers == 64
    assert [worker_share(20, n) for n in (1, 2, 3, 20)] == [20, 10, 7, 1]
    assert worker_tag("mx-1", 2) == "mx-1/2"
