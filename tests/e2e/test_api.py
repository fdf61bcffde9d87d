"""The HTTP API (first slice) against a real `fwdmail serve`: tokens, every endpoint's success and
failure, tenant isolation, conformance of every reply to `/v1/openapi.json`, limits, and the request
log's privacy."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon
from tests.support.openapi import response_problems

A, B = "alice@owner.test", "bob@owner.test"
PER_CLIENT = 6


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("api"), {"http": {"max_connections_per_ip": PER_CLIENT,
                                                               "max_body_size": 4096}})
    daemon.cli("account", "add", A)
    daemon.cli("account", "add", B)
    daemon.start(wait_ports=[daemon.http_port])
    yield daemon
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.logs()


@pytest.fixture(scope="module")
def doc(d: Daemon) -> dict[str, Any]:
    status, _, body = call(d, "GET", "/v1/openapi.json")
    assert status == 200 and body["openapi"] == "3.1.0"
    return body


def token_for(d: Daemon, email: str) -> str:
    return json.loads(d.cli("account", "token", email, "--json").output)["token"]


@pytest.fixture(scope="module")
def tokens(d: Daemon) -> dict[str, str]:
    return {A: token_for(d, A), B: token_for(d, B)}


def call(d: Daemon, method: str, path: str, token: str | None = None, body: Any = None,
         raw: bytes | None = None, basic: bool = False) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = ("Basic " + base64.b64encode(f"{token}:".encode()).decode() if basic
                                    else f"Bearer {token}")
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        assert "Traceback" not in text
        assert resp.headers.get("Content-Type", "").startswith("application/json"), text
        return resp.status, dict(resp.headers), json.loads(text)
    finally:
        conn.close()


def checked(d: Daemon, doc: dict[str, Any], method: str, path: str,
            **kw: Any) -> tuple[int, dict[str, str], Any]:
    status, headers, body = call(d, method, path, **kw)
    assert response_problems(doc, method, path, status, body) == [], (method, path, status, body)
    return status, headers, body


def test_healthz_says_the_store_is_reachable(d: Daemon, doc: dict[str, Any]) -> None:
    assert checked(d, doc, "GET", "/healthz")[::2] == (200, {"status": "ok"})


def test_a_token_is_shown_once_and_stored_only_as_its_hash(d: Daemon, tokens: dict[str, str]) -> None:
    with sqlite3.connect(f"file:{d.data_dir / 'fwdmail.db'}?mode=ro", uri=True) as db:
        stored = [r[0] for r in db.execute("SELECT token_hash FROM api_token")]
    assert hashlib.sha256(tokens[A].encode()).hexdigest() in stored
    assert not any(t in s for t in tokens.values() for s in stored)
    assert len(tokens[A]) > 40 and tokens[A] != tokens[B]
    shown = d.cli("account", "token", A).output
    assert "shown once" in shown and shown.split()[-1].startswith("fwd_")
    refused = d.cli("account", "token", "nobody@owner.test", expect=1).output
    assert refused.strip() == "Error: no account nobody@owner.test"


V1 = [("GET", "/v1/account"), ("GET", "/v1/domains"), ("POST", "/v1/domains"),
      ("GET", "/v1/domains/a.test"), ("DELETE", "/v1/domains/a.test"),
      ("GET", "/v1/domains/a.test/aliases"), ("POST", "/v1/domains/a.test/aliases"),
      ("GET", "/v1/domains/a.test/aliases/x"), ("DELETE", "/v1/domains/a.test/aliases/x")]


@pytest.mark.parametrize("method,path", V1)
def test_without_a_valid_token_every_endpoint_is_401(d: Daemon, doc: dict[str, Any], method: str,
                                                     path: str) -> None:
    for token, basic in ((None, False), ("fwd_not-a-token", False), ("fwd_not-a-token", True),
                         ("garbage", True)):
        status, headers, body = checked(d, doc, method, path, token=token, basic=basic, body={})
        assert status == 401 and body["error"] == "unauthorized", body
        assert "WWW-Authenticate" in headers


def test_every_endpoint_works_for_its_own_account(d: Daemon, doc: dict[str, Any],
                                                  tokens: dict[str, str]) -> None:
    t = tokens[A]
    status, _, acct = checked(d, doc, "GET", "/v1/account", token=t)
    assert status == 200 and acct["email"] == A
    status, _, added = checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "Own.Test"})
    assert status == 201 and added["name"] == "own.test" and added["account"] == A
    assert {r["type"] for r in added["dns"]} == {"MX", "TXT"}
    assert [x["name"] for x in checked(d, doc, "GET", "/v1/domains", token=t)[2]] == ["own.test"]
    assert checked(d, doc, "GET", "/v1/domains/own.test", token=t, basic=True)[2]["name"] == "own.test"
    for i in range(5):
        status, _, alias = checked(d, doc, "POST", "/v1/domains/own.test/aliases", token=t,
                                   body={"address": f"u{i}", "destinations": [f"dest{i}@else.test"]})
        assert status == 201 and alias["address"] == f"u{i}@own.test"
    status, _, alias = checked(d, doc, "POST", "/v1/domains/own.test/aliases", token=t,
                               body={"address": "*@own.test", "destinations": ["all@else.test"]})
    assert status == 201 and alias["kind"] == "catch-all"
    seen: list[str] = []
    path = "/v1/domains/own.test/aliases?limit=4"
    for _ in range(5):
        status, headers, page = checked(d, doc, "GET", path, token=t)
        assert status == 200 and len(page) <= 4
        seen += [a["address"] for a in page]
        if "Link" not in headers:
            break
        path = headers["Link"].split(">", 1)[0].lstrip("<")
    assert sorted(seen) == sorted([*(f"u{i}@own.test" for i in range(5)), "*@own.test"])
    assert len(set(seen)) == 6
    status, _, alias = checked(d, doc, "GET", "/v1/domains/own.test/aliases/u1", token=t)
    assert status == 200 and alias["destinations"] == ["dest1@else.test"]
    removed_alias = checked(d, doc, "DELETE", "/v1/domains/own.test/aliases/u1", token=t)[2]
    assert removed_alias == {"removed": "u1@own.test"}
    assert checked(d, doc, "GET", "/v1/domains/own.test/aliases/u1", token=t)[0] == 404
    status, _, removed = checked(d, doc, "DELETE", "/v1/domains/own.test", token=t)
    assert status == 200 and removed["removed"] == "own.test" and removed["aliases"] == 5
    assert checked(d, doc, "GET", "/v1/domains/own.test", token=t)[0] == 404


def test_another_accounts_domains_and_aliases_are_404_on_every_endpoint(
        d: Daemon, doc: dict[str, Any], tokens: dict[str, str]) -> None:
    assert checked(d, doc, "POST", "/v1/domains", token=tokens[A], body={"name": "alices.test"})[0] == 201
    assert checked(d, doc, "POST", "/v1/domains/alices.test/aliases", token=tokens[A],
                   body={"address": "secret", "destinations": ["a@else.test"]})[0] == 201
    intruder = tokens[B]
    for method, path, body in [
        ("GET", "/v1/domains/alices.test", None), ("DELETE", "/v1/domains/alices.test", None),
        ("GET", "/v1/domains/alices.test/aliases", None),
        ("POST", "/v1/domains/alices.test/aliases", {"address": "new", "destinations": ["b@else.test"]}),
        ("POST", "/v1/domains/alices.test/aliases",
         {"address": "new@alices.test", "destinations": ["b@else.test"]}),
        ("GET", "/v1/domains/alices.test/aliases/secret", None),
        ("DELETE", "/v1/domains/alices.test/aliases/secret", None),
        ("GET", "/v1/domains/nowhere.test", None),
    ]:
        status, _, reply = checked(d, doc, method, path, token=intruder, body=body)
        assert status == 404 and reply["error"] == "not_found", (method, path, reply)
    # what the intruder cannot reach is not hinted at either: the same reply as for a missing domain
    assert (checked(d, doc, "GET", "/v1/domains/alices.test", token=intruder)[2]["message"]
            == "no domain alices.test")
    assert checked(d, doc, "GET", "/v1/domains", token=intruder)[2] == []
    assert checked(d, doc, "GET", "/v1/account", token=intruder)[2]["domains"] == []
    assert checked(d, doc, "GET", "/v1/domains/alices.test/aliases/secret", token=tokens[A])[0] == 200


def test_the_list_endpoints_page_by_key_with_a_next_cursor(d: Daemon, doc: dict[str, Any]) -> None:
    """`?after=` pages by key (a `next` cursor and a Link while more follow): an alias added before the
    page being read is not read twice and one added after it is read; without `after`, as before."""
    d.cli("account", "add", "carol@owner.test")
    t = token_for(d, "carol@owner.test")
    for name in ("k2.test", "k1.test", "k3.test"):
        assert checked(d, doc, "POST", "/v1/domains", token=t, body={"name": name})[0] == 201
    names, path = [], "/v1/domains?after=&limit=2"
    for _ in range(5):
        status, headers, page = checked(d, doc, "GET", path, token=t)
        assert status == 200 and len(page["domains"]) <= 2
        names += [x["name"] for x in page["domains"]]
        if page["next"] is None:
            assert "Link" not in headers
            break
        path = headers["Link"].split(">", 1)[0].lstrip("<")
        assert path == f"/v1/domains?after={page['next']}&limit=2"
    assert names == ["k1.test", "k2.test", "k3.test"]
    assert [x["name"] for x in checked(d, doc, "GET", "/v1/domains", token=t)[2]] == names

    def add(local: str) -> None:
        assert checked(d, doc, "POST", "/v1/domains/k1.test/aliases", token=t,
                       body={"address": local, "destinations": [f"{local}@else.test"]})[0] == 201

    for local in ("a1", "a2", "a3", "a4", "a5"):
        add(local)
    read, path = [], "/v1/domains/k1.test/aliases?after=&limit=2"
    for turn in range(6):
        status, headers, page = checked(d, doc, "GET", path, token=t)
        read += [a["address"].split("@")[0] for a in page["aliases"]]
        if turn == 0:
            add("a0")  # sorts before the page read: an offset would now read a2 again
            add("a9")
        if page["next"] is None:
            break
        path = headers["Link"].split(">", 1)[0].lstrip("<")
    assert read == ["a1", "a2", "a3", "a4", "a5", "a9"]
    old_style = checked(d, doc, "GET", "/v1/domains/k1.test/aliases?page=2&limit=2", token=t)[2]
    assert [a["address"] for a in old_style] == ["a2@k1.test", "a3@k1.test"]


def test_bad_input_is_a_4xx_json_error(d: Daemon, doc: dict[str, Any], tokens: dict[str, str]) -> None:
    t = tokens[A]
    checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "bad-input.test"})
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/v1/domains", {"raw": b"{not json"}, 400),
        ("POST", "/v1/domains", {"body": ["a list"]}, 400),
        ("POST", "/v1/domains", {"body": {"name": 7}}, 400),
        ("POST", "/v1/domains", {"body": {"name": "no_such..name"}}, 400),
        ("POST", "/v1/domains", {"body": {"name": "bad-input.test"}}, 409),
        ("POST", "/v1/domains", {"raw": b'{"name": "' + b"x" * 5000 + b'"}'}, 413),
        ("POST", "/v1/domains/bad-input.test/aliases", {"body": {"address": "a", "destinations": "x"}}, 400),
        ("POST", "/v1/domains/bad-input.test/aliases", {"body": {"address": "a", "destinations": []}}, 400),
        ("POST", "/v1/domains/bad-input.test/aliases",
         {"body": {"address": "a@other.test", "destinations": ["x@else.test"]}}, 400),
        ("POST", "/v1/domains/bad-input.test/aliases",
         {"body": {"address": "a", "destinations": ["not an address"]}}, 400),
        ("GET", "/v1/domains/bad-input.test/aliases?limit=0", {}, 400),
        ("GET", "/v1/domains/bad-input.test/aliases?limit=abc", {}, 400),
        ("GET", "/v1/domains/bad-input.test/aliases?page=-1", {}, 400),
        ("GET", "/v1/domains/bad-input.test/aliases?limit=101", {}, 400),
        ("GET", "/v1/domains/bad-input.test/aliases?after=not-a-cursor!", {}, 400),
        ("GET", "/v1/domains/bad-input.test/aliases?after=&limit=101", {}, 400),
        ("GET", "/v1/domains?after=WyJhIiwiYiJd", {}, 400),
        ("GET", "/v1/domains?after=&limit=0", {}, 400),
    ]
    for method, path, kw, expected in cases:
        status, _, reply = checked(d, doc, method, path, token=t, **kw)
        assert status == expected, (path, kw, reply)
        assert set(reply) == {"error", "message"}
    for method, path, expected in [("GET", "/v1/nothing", 404), ("PUT", "/v1/domains", 405)]:
        status, _, reply = call(d, method, path, token=t)
        assert status == expected and set(reply) == {"error", "message"}


def test_connections_past_the_per_client_limit_are_closed(d: Daemon) -> None:
    held = [socket.create_connection(("127.0.0.1", d.http_port), timeout=5) for _ in range(PER_CLIENT)]
    try:
        extra = socket.create_connection(("127.0.0.1", d.http_port), timeout=5)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            assert extra.recv(100) == b""
        except ConnectionResetError:
            pass
        extra.close()
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the held connections' slots come back once the server sees them closed
        try:
            assert call(d, "GET", "/healthz")[0] == 200
            break
        except (ConnectionError, http.client.RemoteDisconnected):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _rows(db_path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return db.execute("SELECT * FROM http_log").fetchall()


def test_the_request_log_keeps_no_query_body_or_address(d: Daemon, doc: dict[str, Any],
                                                         tokens: dict[str, str]) -> None:
    marker_q, marker_b = "QMARK7c1f", "BMARK93ae"
    log_before = len(d.logs())
    # rows are written after the reply, in order: once this request's row is in, every earlier one is
    call(d, "GET", "/v1/openapi.json")
    deadline = time.monotonic() + 10
    while not (rows := _rows(d.data_dir / "fwdmail.db")) or rows[-1][4] != "/v1/openapi.json":
        assert time.monotonic() < deadline, rows[-3:]
        time.sleep(0.05)
    before = len(rows)
    call(d, "GET", f"/v1/domains?secret={marker_q}", token=tokens[A])
    call(d, "POST", f"/v1/domains?{marker_q}", token=tokens[A], body={"name": f"{marker_b}.test"})
    call(d, "POST", "/v1/domains", token=tokens[B], raw=f'{{"name": "{marker_b}"'.encode())
    call(d, "GET", f"/v1/{marker_q}", token=tokens[A])
    call(d, "GET", "/healthz")
    deadline = time.monotonic() + 10
    while len(rows := _rows(d.data_dir / "fwdmail.db")) < before + 5:
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)
    text = repr(rows)
    for secret in (marker_q.lower(), marker_b.lower(), "127.0.0.1"):
        assert secret not in text.lower()
    new = rows[before:]
    assert {r[4] for r in new} >= {"/v1/domains", "(no route)", "/healthz"}
    assert {r[7] for r in new} == {"127.0.0.0/24"}
    assert {r[3] for r in new} == {"GET", "POST"}
    logged = d.logs()[log_before:]
    for secret in (marker_q, marker_b, "127.0.0.1"):
        assert secret not in logged
