"""Two `fwdmail serve` nodes sharing one PostgreSQL database and one Redis (`[cluster] redis_url`).

Per-client limits and the invalid-SRS budget hold for both nodes together; a sender's retry that lands
on the other node is not delivered again to the destinations that accepted (the sink counts copies);
Redis holds only keyed hashes, each with a TTL; Redis stopped gives clients 4xx, and both nodes recover
by themselves when it is back. Every client here has its own loopback source address, so the limits of
one test never touch another's.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.daemon import REPO, Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import CLIENT, cli, cli_batch, message, send
from tests.support.outbound import connect
from tests.support.postgres import PostgresServer, postgres_bin, running_postgres
from tests.support.redis import RedisServer, redis_bin, running_redis
from tests.support.smtp_sink import SmtpSink

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(redis_bin() is None or postgres_bin() is None,
                       reason="needs redis-server and PostgreSQL (apt-get install redis-server postgresql)"),
]

MAX_CONNECTIONS = 3
PER_MINUTE = 4
SRS_PER_CLIENT = 3
BODY_MARK = b"cluster-body-marker-7f3a"

SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["domain", "set", "ours.test", "--auth-policy", "off"],
    ["alias", "add", "ok@ours.test", "ok@dest.test"],
    ["alias", "add", "pair@ours.test", "first@dest.test", "second@dest.test"],
    ["alias", "add", "partial@ours.test", "good@dest.test", "gone@dest.test"],
    ["alias", "add", "login@ours.test", "someone@dest.test"],
]
MAX_LOGIN_FAILURES = 3


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    bindir = postgres_bin()
    assert bindir is not None
    with running_postgres(bindir) as server:
        yield server


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def _settings(db_url: str, redis_url: str, node: str, dns: LoopbackDNS, sink: SmtpSink) -> dict[str, object]:
    return {
        "database": {"url": db_url},
        "cluster": {"node_id": node, "redis_url": redis_url, "redis_timeout": 1.0},
        "dns": {"nameservers": [dns.address]},
        "delivery": {"routes": {"dest.test": sink.address, "owner.test": sink.address}},
        "submission": {"auth_failures_per_hour": MAX_LOGIN_FAILURES},
        "abuse": {"max_connections_per_ip": MAX_CONNECTIONS, "max_messages_per_ip_per_minute": PER_MINUTE},
        "srs": {"max_invalid_per_client": SRS_PER_CLIENT},
    }


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, shared_redis: RedisServer,
          dns_server: LoopbackDNS, downstream: SmtpSink) -> Iterator[tuple[Daemon, Daemon]]:
    db_url = postgres.new_database()
    a = Daemon(tmp_path_factory.mktemp("node-a"), _settings(db_url, shared_redis.url, "node-a", dns_server,
                                                              downstream))
    b = Daemon(tmp_path_factory.mktemp("node-b"), _settings(db_url, shared_redis.url, "node-b", dns_server,
                                                              downstream))
    cli_batch(a, SETUP)
    try:
        a.start(wait_ports=[a.mx_port])
        b.start(wait_ports=[b.mx_port])
        yield a, b
    finally:
        a.stop()
        b.stop()


def _greeting(d: Daemon, source: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", d.mx_port), timeout=10, source_address=(source, 0))
    data = b""
    deadline = time.monotonic() + 10
    while b"\r\n" not in data and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return sock, data


def _abuse_rows(d: Daemon, kind: str) -> int:
    import psycopg

    with psycopg.connect(d.settings["database"]["url"], autocommit=True) as con:
        row = con.execute("SELECT count(*) FROM abuse_event WHERE kind = %s", (kind,)).fetchone()
    return int(row[0]) if row else 0


def test_connections_per_client_are_limited_across_nodes(nodes: tuple[Daemon, Daemon]) -> None:
    a, b = nodes
    source = "127.0.0.11"
    held = []
    try:
        for d in (a, a, b):
            sock, greeting = _greeting(d, source)
            held.append(sock)
            assert greeting.startswith(b"220 "), greeting
        for d in (b, a):  # the 4th, though node B holds only one; and on node A
            sock, greeting = _greeting(d, source)
            sock.close()
            assert greeting.startswith(b"421 4.7.0"), greeting
        # recorded once for the cluster, not once per node (both refusals are inside one window)
        assert _abuse_rows(a, "too-many-connections") == 1
        held.pop(0).close()  # one of node A's sessions ends: its lease goes back
        deadline = time.monotonic() + 10
        while True:
            sock, greeting = _greeting(b, source)
            held.append(sock)
            if greeting.startswith(b"220 "):
                break
            held.pop().close()
            assert time.monotonic() < deadline, greeting
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()


def test_message_rate_per_client_is_shared_by_the_nodes(nodes: tuple[Daemon, Daemon],
                                                         clean_downstream: SmtpSink) -> None:
    a, b = nodes
    source = "127.0.0.12"
    codes = [send(d, "alice@src.test", ["ok@ours.test"], message(), source=source).mail[0]
             for d in (a, b, a, b)]
    assert codes == [250] * PER_MINUTE
    over = send(b, "alice@src.test", ["ok@ours.test"], message(), source=source)
    assert over.mail[0] == 451 and over.mail[1].startswith(b"4.7.1"), over


def _copies(sink: SmtpSink, rcpt: str) -> int:
    return sum(rcpt in m.rcpt_tos for m in sink.messages)


def test_a_retry_on_the_other_node_skips_destinations_that_accepted(nodes: tuple[Daemon, Daemon],
                                                                    clean_downstream: SmtpSink) -> None:
    a, b = nodes
    sink = clean_downstream
    sink.behaviour.rcpt = {"second@dest.test": "450 4.2.0 Mailbox busy"}
    msg = message(body=b"hello " + BODY_MARK + b"\r\n")
    first = send(a, "alice@src.test", ["pair@ours.test"], msg, source="127.0.0.13")
    assert first.code == 450, first
    assert _copies(sink, "first@dest.test") == 1 and _copies(sink, "second@dest.test") == 0
    sink.behaviour.rcpt = {}
    retry = send(b, "alice@src.test", ["pair@ours.test"], msg, source="127.0.0.13")
    assert retry.code == 250, retry
    assert _copies(sink, "second@dest.test") == 1
    assert _copies(sink, "first@dest.test") == 1  # not a second copy from node B


def _bogus_srs(n: int) -> str:
    return f"SRS0=zz{n:02d}=AB=src.test=bob{n}@srs.fwdmail.test"


def test_the_invalid_srs_budget_is_shared(nodes: tuple[Daemon, Daemon]) -> None:
    a, b = nodes
    source = "127.0.0.14"
    codes = []
    for n, d in enumerate((a, b, a)):  # one per session: no session reaches the budget alone
        outcome = send(d, "", [_bogus_srs(n)], b"", source=source)
        codes.append(outcome.rcpts[0][0])
    assert codes == [550, 550, 550]
    after = send(b, "", [_bogus_srs(9)], b"", source=source)
    code, text = after.rcpts[0]
    assert code == 451 and b"deferred" in text, after  # the budget node A and B spent together


def _login(d: Daemon, source: str, user: str, password: str) -> tuple[int, bytes]:
    with connect(d, source=source) as s:
        blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return s.docmd("AUTH", "PLAIN " + blob)


def test_failed_logins_lock_the_client_out_of_every_node(nodes: tuple[Daemon, Daemon]) -> None:
    a, b = nodes
    password = json.loads(cli(a, "alias", "password", "login@ours.test", "--json").stdout)["password"]
    source = "127.0.0.17"
    codes = [_login(d, source, "login@ours.test", "guess")[0] for d in (a, b, a)]
    assert codes == [535] * MAX_LOGIN_FAILURES
    for d in (a, b):  # the right password too: the client is locked out on both nodes
        assert _login(d, source, "login@ours.test", password)[0] == 421
    assert _login(b, "127.0.0.18", "login@ours.test", password)[0] == 235


def test_one_partial_failure_notice_per_interval_for_both_nodes(nodes: tuple[Daemon, Daemon],
                                                                clean_downstream: SmtpSink) -> None:
    a, b = nodes
    sink = clean_downstream
    sink.behaviour.rcpt = {"gone@dest.test": "550 5.1.1 No such user"}
    skipped = b.logs().count("partial-failure notice not sent: one was sent within the interval")
    assert send(a, "alice@src.test", ["partial@ours.test"], message(), source="127.0.0.19").code == 250
    deadline = time.monotonic() + 20
    while _copies(sink, "owner@owner.test") < 1:
        assert time.monotonic() < deadline, "node A sent no notice"
        time.sleep(0.05)
    assert send(b, "alice@src.test", ["partial@ours.test"], message(), source="127.0.0.19").code == 250
    deadline = time.monotonic() + 20
    while b.logs().count("partial-failure notice not sent: one was sent within the interval") == skipped:
        assert _copies(sink, "owner@owner.test") == 1, "node B sent a second notice"
        assert time.monotonic() < deadline, "node B neither sent a notice nor skipped it"
        time.sleep(0.05)
    assert _copies(sink, "owner@owner.test") == 1
    assert _copies(sink, "good@dest.test") == 2


def test_redis_holds_only_keyed_hashes_each_with_a_ttl(nodes: tuple[Daemon, Daemon],
                                                       shared_redis: RedisServer) -> None:
    client = redis.Redis.from_url(shared_redis.url, socket_timeout=5)
    found = 0
    # DUMP's serialisation holds a checksum, so only words too long to come up by chance are looked for
    # in it; keys (past the prefix and kind) and values must be hex digits or counts, nothing else.
    forbidden = [b"127.0.0", b"ours.test", b"dest.test", b"src.test", b"alice", b"pair@", BODY_MARK,
                 CLIENT.encode()]
    try:
        for key in client.scan_iter(count=100):
            found += 1
            ttl = client.pttl(key)
            assert ttl > 0, (key, ttl)  # -1 (no TTL) never
            assert key.startswith(b"fwdmail:"), key
            dumped = client.dump(key) or b""
            kind = client.type(key)
            value = client.get(key) if kind == b"string" else b"".join(client.zrange(key, 0, -1))
            for text in (key, dumped, value or b""):
                for word in forbidden:
                    assert word not in text.lower(), (key, word)
            assert all(c in b"0123456789abcdef" for c in key.split(b":", 2)[-1]), key
            assert (value or b"").isalnum() or not value, (key, value)
    finally:
        client.close()
    assert found >= 4  # connection leases, rates, retry memory, SRS counts


def test_redis_stopped_gives_4xx_then_both_nodes_recover(nodes: tuple[Daemon, Daemon],
                                                         shared_redis: RedisServer,
                                                         clean_downstream: SmtpSink) -> None:
    a, b = nodes
    shared_redis.stop()
    try:
        for d in (a, b):
            sock, greeting = _greeting(d, "127.0.0.15")
            sock.close()
            assert greeting[:1] == b"4" and b"Traceback" not in greeting, greeting
    finally:
        shared_redis.start()
    for d in (a, b):
        deadline = time.monotonic() + 20
        while True:
            try:
                outcome = send(d, "alice@src.test", ["ok@ours.test"], message(), source="127.0.0.16")
            except smtplib.SMTPConnectError as exc:
                assert 400 <= exc.smtp_code < 500, exc
                outcome = None
            if outcome is not None and outcome.code == 250:
                break
            assert time.monotonic() < deadline, outcome
            time.sleep(0.2)
    assert "Traceback" not in a.logs() + b.logs()


def test_serve_refuses_a_redis_that_persists(tmp_path: Path) -> None:
    with running_redis(persistent=True) as server:
        d = Daemon(tmp_path, {"cluster": {"redis_url": server.url}})
        proc = subprocess.run([sys.executable, "-m", "fwdmail", "--config", str(d.config_path), "serve"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "persists to disk" in line]
    assert len(lines) == 1 and "RDB and AOF on" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_shared_database_without_redis_warns_once(tmp_path: Path, postgres: PostgresServer) -> None:
    d = Daemon(tmp_path, {"database": {"url": postgres.new_database()}})
    d.start(wait_ports=[d.mx_port])
    try:
        d.wait_for_log("fwdmail ready")
    finally:
        with contextlib.suppress(AssertionError):
            d.stop()
    assert d.logs().count("cluster.redis_url is empty while the database is shared") == 1
