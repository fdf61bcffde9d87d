"""Privacy contract of the MX: a forwarded message leaves no row, no file and no log line naming an
address or the client's IP, even with debug logging on."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import db_rows, message, send, start_daemon
from tests.support.smtp_sink import SmtpSink

SENDER = "private.sender@sender-domain.test"
ALIAS = "secret-alias@ours.test"
DEST = "hidden.dest@dest.test"
CLIENT_IP = "127.0.0.2"


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS, sink: SmtpSink) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("mx-privacy"), {
        "log_level": "debug",
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"dest.test": sink.address}},
    }, [
        ["account", "add", "owner@owner.test"],
        ["domain", "add", "ours.test", "--account", "owner@owner.test"],
        ["alias", "add", ALIAS, DEST],
    ])
    # The retention jobs run once at the first start; restart so none runs during the test.
    deadline = time.monotonic() + 20
    while not db_rows(d, "SELECT 1 FROM meta WHERE key = 'retention_last_run'"):
        assert time.monotonic() < deadline, "retention never ran at start"
        time.sleep(0.05)
    d.stop()
    d.start(wait_ports=[d.mx_port])
    yield d
    d.stop()


def _snapshot(data_dir: Path, con: sqlite3.Connection) -> tuple[dict[str, int], dict[str, bytes]]:
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    files = {str(p.relative_to(data_dir)): b"" if p.name.endswith("-shm") else p.read_bytes()
             for p in sorted(data_dir.rglob("*")) if p.is_file()}
    return counts, files


def test_forwarding_writes_nothing_and_logs_no_address_or_ip(mx: Daemon, sink: SmtpSink) -> None:
    con = sqlite3.connect(f"file:{mx.data_dir / 'fwdmail.db'}?mode=ro", uri=True)
    try:
        version = con.execute("PRAGMA data_version").fetchone()[0]
        counts, files = _snapshot(mx.data_dir, con)
        assert counts["alias"] == 1 and "fwdmail.db" in files
        log_start = len(mx.logs())

        msg = message("a private subject", body=b"A private body.\r\n",
                      headers=f"Reply-To: {SENDER}\r\n".encode())
        out = send(mx, SENDER, [ALIAS], msg, source=CLIENT_IP)
        assert out.code == 250, out.text
        [got] = sink.messages
        assert got.rcpt_tos == [DEST] and got.data.endswith(msg)
        assert CLIENT_IP.encode() not in got.data[: -len(msg)]

        assert con.execute("PRAGMA data_version").fetchone()[0] == version, "something committed"
        assert _snapshot(mx.data_dir, con) == (counts, files)
    finally:
        con.close()

    # Nothing was left to be written later either: stop the daemon (it finishes all pending work) and look
    # again. Closing may checkpoint the WAL, so compare rows and file names, not bytes.
    assert mx.stop() == 0
    con = sqlite3.connect(f"file:{mx.data_dir / 'fwdmail.db'}?mode=ro", uri=True)
    try:
        after, after_files = _snapshot(mx.data_dir, con)
    finally:
        con.close()
    assert after == counts
    assert {f for f in after_files if not f.endswith(("-wal", "-shm"))} <= set(files)

    logs = mx.logs()
    assert "DEBUG" in logs[log_start:] and "message forwarded to 1 destination" in logs[log_start:]
    for needle in (CLIENT_IP, SENDER, ALIAS, DEST, "private.sender", "hidden.dest", "secret-alias",
                   "sender-domain.test", "a private subject", "A private body",
                   "[address]", "[ip]"):  # scrubbed means written by code and only hidden by the scrubber
        assert needle not in logs, needle
