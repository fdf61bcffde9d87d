"""The abuse-event store verbs: the only rows that may hold a client IP."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fwdmail import store
from tests.support.daemon import Daemon
from tests.unit.store.conftest import Opened


@pytest.fixture
def db(opened: Opened) -> Opened:
    return opened


def test_record_and_list_abuse_events(db: Opened) -> None:
    store.add_account("owner@hosted.test")
    store.add_domain("hosted.test", "owner@hosted.test", "sel", "not a real key", "token")
    t0 = dt.datetime(2024, 1, 1, 12, 0)
    store.record_abuse(t0, "dmarc-reject", "192.0.2.1", "Hosted.Test", "dmarc=fail header.from=bank.test")
    store.record_abuse(t0 + dt.timedelta(minutes=1), "dnsbl", "2001:db8::1", None, "listed in bl.test")
    store.record_abuse(t0 + dt.timedelta(minutes=2), "rate-limit", "192.0.2.1", "elsewhere.test", "x" * 5000)
    events = store.list_abuse_events()
    assert [(e.kind, e.client_ip, e.domain) for e in events] == [
        ("rate-limit", "192.0.2.1", ""), ("dnsbl", "2001:db8::1", ""),
        ("dmarc-reject", "192.0.2.1", "hosted.test")]
    assert len(events[0].detail) == 1000 and events[2].created_at == t0
    assert [e.kind for e in store.list_abuse_events("dnsbl")] == ["dnsbl"]


def test_abuse_events_go_with_their_domain(db: Opened) -> None:
    store.add_account("owner@hosted.test")
    store.add_domain("hosted.test", "owner@hosted.test", "sel", "not a real key", "token")
    store.record_abuse(dt.datetime(2024, 1, 1), "spf-reject", "192.0.2.1", "hosted.test", "spf=fail")
    store.record_abuse(dt.datetime(2024, 1, 1), "dnsbl", "192.0.2.1", None, "listed in bl.test")
    store.remove_domain("hosted.test")
    assert [e.kind for e in store.list_abuse_events()] == ["dnsbl"]


def test_abuse_command_table_json_and_kind_filter(tmp_path: Path) -> None:
    d = Daemon(tmp_path, {})
    d.cli("init")
    store.close_store()
    store.open_store(d.data_dir / "fwdmail.db")
    store.add_account("owner@hosted.test")
    store.add_domain("hosted.test", "owner@hosted.test", "sel", "not a real key", "token")
    t0 = dt.datetime(2024, 1, 1, 12, 0)
    store.record_abuse(t0, "dmarc-reject", "192.0.2.1", "hosted.test", "dmarc=fail")
    store.record_abuse(t0 + dt.timedelta(minutes=5), "dnsbl", "2001:db8::1", None, "listed in bl.test")
    store.close_store()
    table = d.cli("abuse").output
    assert "2024-01-01 12:05:00" in table and "2001:db8::1" in table and "listed in bl.test" in table
    assert table.index("dnsbl") < table.index("dmarc-reject") and "hosted.test" in table
    listed = json.loads(d.cli("abuse", "--kind", "dmarc-reject", "--json").output)
    assert listed == [{"time": "2024-01-01T12:00:00Z", "kind": "dmarc-reject", "client_ip": "192.0.2.1",
                       "domain": "hosted.test", "detail": "dmarc=fail"}]
    assert json.loads(d.cli("abuse", "--kind", "spf-reject", "--json").output) == []
