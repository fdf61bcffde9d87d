"""Queue worker claims (`<node>/<n>`): a node's start takes back its workers' claims too, a worker's
start only its own, on both engines (a tag is matched by prefix equality, never a collation's order)."""

from __future__ import annotations

from fwdmail import store
from tests.support import rows
from tests.support.rows import T0
from tests.unit.store.conftest import Opened
from tests.unit.store.test_cluster import new_email

TAGS = ["n", "n/1", "n/10", "n.1", "n1", "m", "m/1"]


def _claim_one_each() -> None:
    rows.make_domain("q.test")
    store.enqueue([new_email("q.test", i) for i in range(len(TAGS))], T0)
    for tag in TAGS:
        assert len(store.claim_due(T0, f"token-{tag}", 1, tag)) == 1


def _still_claimed(opened: Opened) -> set[str]:
    rows_now = opened.query("SELECT claim_node FROM outbound_email WHERE claimed_at IS NOT NULL")
    return {row[0] for row in rows_now}


def test_a_worker_takes_back_only_its_own_claims(opened: Opened) -> None:
    _claim_one_each()
    assert store.release_stale_claims(T0, 3, node="n/1") == (1, 0)
    assert _still_claimed(opened) == set(TAGS) - {"n/1"}


def test_a_node_takes_back_its_workers_claims_and_no_other_nodes(opened: Opened) -> None:
    _claim_one_each()
    assert store.release_stale_claims(T0, 3, node="n") == (3, 0)
    assert _still_claimed(opened) == {"n.1", "n1", "m", "m/1"}
