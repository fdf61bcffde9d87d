"""The rest of the `/v1` API against a real `fwdmail serve` with a real submission client, a downstream
sink and a loopback DNS server: account delete, a domain's DNS records, verification and settings, alias
updates and passwords, emails (list, filters, pages, show, retry, delete) and SMTP error logs. Every
reply is checked against `/v1/openapi.json`; another account's ids and tokens get 404 on every one."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.test_api import call, checked, token_for
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.outbound import message, queue_id, submit, wait_until
from tests.support.smtp_sink import SmtpSink

A, B, C = "ann@owner.test", "ben@owner.test", "cat@owner.test"
BOUNCE = "nobody@dest.test"
SLOW = 1.0  # [http] header_timeout and body_timeout here


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        s.behaviour.rcpt = {BOUNCE: "550 5.1.1 No such user"}
        yield s


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink, dns_server: LoopbackDNS) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("api_more"), {
        "http": {"max_body_size": 4096, "header_timeout": SLOW, "body_timeout": SLOW},
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"*": sink.address}},
    })
    for who in (A, B, C):
        daemon.cli("account", "add", who)
    daemon.start(wait_ports=[daemon.http_port])
    yield daemon
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.logs()


@pytest.fixture(scope="module")
def doc(d: Daemon) -> dict[str, Any]:
    return call(d, "GET", "/v1/openapi.json")[2]


@pytest.fixture(scope="module")
def tok(d: Daemon) -> dict[str, str]:
    return {who: token_for(d, who) for who in (A, B, C)}


@pytest.fixture(scope="module")
def mail(d: Daemon, doc: dict[str, Any], tok: dict[str, str]) -> dict[str, str]:
    """Ann's domain with an alias whose SMTP password comes from the API, and three messages: one
    delivered, one bounced, one scheduled for tomorrow (so it waits, unclaimed)."""
    t = tok[A]
    assert checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "ann.test"})[0] == 201
    assert checked(d, doc, "POST", "/v1/domains/ann.test/aliases", token=t,
                   body={"address": "me", "destinations": ["ann@else.test"]})[0] == 201
    status, _, new = checked(d, doc, "POST", "/v1/domains/ann.test/aliases/me/password", token=t)
    assert status == 200 and new["address"] == "me@ann.test" and len(new["password"]) >= 16
    login = (new["address"], new["password"])
    tomorrow = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    ids = {
        "delivered": queue_id(submit(d, *login, message(login[0], subject="fine"))),
        "bounced": queue_id(submit(d, *login, message(login[0], BOUNCE, subject="no"), rcpts=[BOUNCE])),
        "later": queue_id(submit(d, *login, message(login[0], subject="later", extra=[f"Date: {tomorrow}"]))),
    }
    for qid, want in ((ids["delivered"], "delivered"), (ids["bounced"], "bounced")):
        wait_until(lambda q=qid, w=want: call(d, "GET", f"/v1/emails/{q}", token=t)[2]["status"] == w,
                   20, f"{qid} {want}")
    return ids


def test_a_domains_dns_records_verification_and_settings(
        d: Daemon, doc: dict[str, Any], tok: dict[str, str], dns_server: LoopbackDNS) -> None:
    t = tok[C]
    status, _, added = checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "cat.test"})
    assert status == 201
    status, _, records = checked(d, doc, "GET", "/v1/domains/cat.test/dns", token=t)
    assert status == 200 and records == added["dns"]
    assert records == json.loads(d.cli("domain", "dns", "cat.test", "--json").output)
    status, _, result = checked(d, doc, "POST", "/v1/domains/cat.test/verify", token=t)
    assert status == 200 and result["verified_at"] is None and not any(r["ok"] for r in result["records"])
    for r in records:
        if r["type"] == "MX":
            dns_server.add(r["name"], "MX", r["value"])
        elif r["value"].startswith("fwdmail-verification="):
            dns_server.add(r["name"], "TXT", r["value"])
    status, _, result = checked(d, doc, "POST", "/v1/domains/cat.test/verify", token=t)
    assert status == 200 and result["domain"] == "cat.test" and result["verified_at"] is not None
    assert [r["ok"] for r in result["records"]] == [True, False, False, False, True]
    assert checked(d, doc, "GET", "/v1/domains/cat.test", token=t)[2]["verified_at"] == result["verified_at"]
    checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "cat-broken.test"})
    dns_server.set_failure("cat-broken.test", "SERVFAIL")
    try:  # a resolver that fails is the DNS's trouble, not the client's: try later
        status, _, err = checked(d, doc, "POST", "/v1/domains/cat-broken.test/verify", token=t)
    finally:
        dns_server.clear_failure("cat-broken.test")
    assert (status, err["error"]) == (503, "dns_unavailable") and "cat-broken.test" in err["message"]

    status, _, dom = checked(d, doc, "PATCH", "/v1/domains/cat.test", token=t,
                             body={"retention_days": 0, "auth_policy": "enforce", "friendly_from": False})
    assert status == 200 and (dom["retention_days"], dom["auth_policy"], dom["friendly_from"]) == (
        0, "enforce", False)
    shown = json.loads(d.cli("domain", "list", "--json").output)
    assert [x["retention_days"] for x in shown if x["name"] == "cat.test"] == [0]
    for body in ({"retention_days": 31}, {"retention_days": -1}, {"retention_days": 10**30},
                 {"retention_days": 1e308}, {"retention_days": True}, {"retention_days": "7"},
                 {"auth_policy": "sometimes"}, {"friendly_from": 1}, {}, {"dkim_selector": "x"},
                 {"retention_days": 3, "colour": "red"}):
        status, _, err = checked(d, doc, "PATCH", "/v1/domains/cat.test", token=t, body=body)
        assert status == 400 and set(err) == {"error", "message"}, (body, err)
    assert checked(d, doc, "GET", "/v1/domains/cat.test", token=t)[2]["retention_days"] == 0


def test_aliases_from_is_set_over_the_api_as_domain_set_does(
        d: Daemon, doc: dict[str, Any], tok: dict[str, str]) -> None:
    t = tok[C]
    checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "cat-from.test"})
    for source in ("dns", "both", "store", "dns"):
        status, _, dom = checked(d, doc, "PATCH", "/v1/domains/cat-from.test", token=t,
                                 body={"aliases_from": source})
        assert (status, dom["aliases_from"]) == (200, source), dom
    shown = json.loads(d.cli("domain", "list", "--json").output)
    assert [x["aliases_from"] for x in shown if x["name"] == "cat-from.test"] == ["dns"]
    for body in ({"aliases_from": "txt"}, {"aliases_from": "DNS"}, {"aliases_from": ""},
                 {"aliases_from": 1}, {"aliases_from": None}, {"aliases_from": ["dns"]}):
        status, _, err = checked(d, doc, "PATCH", "/v1/domains/cat-from.test", token=t, body=body)
        assert status == 400 and set(err) == {"error", "message"}, (body, err)
    assert checked(d, doc, "GET", "/v1/domains/cat-from.test", token=t)[2]["aliases_from"] == "dns"
    status, _, _ = checked(d, doc, "PATCH", "/v1/domains/cat-from.test", token=tok[A],
                           body={"aliases_from": "store"})
    assert status == 404


def test_an_alias_is_updated_disabled_with_a_mode_enabled_and_given_a_password(
        d: Daemon, doc: dict[str, Any], tok: dict[str, str]) -> None:
    t = tok[C]
    checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "cat-alias.test"})
    base = "/v1/domains/cat-alias.test/aliases"
    checked(d, doc, "POST", base, token=t, body={"address": "x", "destinations": ["one@else.test"]})
    checked(d, doc, "POST", base, token=t, body={"address": "/(.+)-tag/", "destinations": ["$1@else.test"]})
    status, _, alias = checked(d, doc, "PATCH", f"{base}/x", token=t,
                               body={"destinations": ["two@else.test", "three@else.test"]})
    assert status == 200 and alias["destinations"] == ["two@else.test", "three@else.test"]
    for mode in ("quiet", "tempfail", "reject"):
        status, _, alias = checked(d, doc, "PATCH", f"{base}/x", token=t,
                                   body={"enabled": False, "mode": mode})
        assert status == 200 and alias["state"] == mode
    assert checked(d, doc, "PATCH", f"{base}/x", token=t, body={"enabled": True})[2]["state"] == "enabled"
    assert checked(d, doc, "PATCH", f"{base}/x", token=t, body={"enabled": False})[2]["state"] == "reject"
    listed = json.loads(d.cli("alias", "list", "--domain", "cat-alias.test", "--json").output)
    assert [(a["state"], a["destinations"]) for a in listed if a["address"] == "x@cat-alias.test"] == [
        ("reject", ["two@else.test", "three@else.test"])]
    for body in ({"destinations": []}, {"destinations": ["not an address"]}, {"destinations": "a@b.test"},
                 {"destinations": ["x@cat-alias.test"]},
                 {"destinations": [f"d{i}@else.test" for i in range(11)]},
                 {"destinations": ["$2@else.test"]}, {"mode": "quiet"}, {"enabled": True, "mode": "quiet"},
                 {"enabled": False, "mode": "loud"}, {"enabled": "no"}, {}, {"state": "enabled"}):
        status, _, err = checked(d, doc, "PATCH", f"{base}/x", token=t, body=body)
        assert status == 400, (body, err)
    kept = checked(d, doc, "GET", f"{base}/x", token=t)[2]["destinations"]
    assert kept == ["two@else.test", "three@else.test"]

    status, _, new = checked(d, doc, "POST", f"{base}/x/password", token=t)
    assert status == 200 and new["address"] == "x@cat-alias.test"
    again = checked(d, doc, "POST", f"{base}/x/password", token=t)[2]
    assert again["password"] != new["password"]
    assert checked(d, doc, "GET", f"{base}/x", token=t)[2]["has_password"] is True
    assert checked(d, doc, "POST", f"{base}/%2F(.%2B)-tag%2F/password", token=t)[0] == 400
    assert checked(d, doc, "PATCH", f"{base}/x", token=t, body={"enabled": True})[0] == 200
    with smtplib.SMTP("127.0.0.1", d.submission_port, timeout=15) as s:  # the shown password logs in
        s.starttls(context=_insecure_tls())
        assert s.login("x@cat-alias.test", again["password"])[0] == 235


def _insecure_tls() -> Any:
    from tests.support.outbound import client_tls

    return client_tls()


def test_emails_are_listed_filtered_paged_shown_retried_and_deleted(
        d: Daemon, doc: dict[str, Any], tok: dict[str, str], mail: dict[str, str]) -> None:
    t = tok[A]
    status, _, rows = checked(d, doc, "GET", "/v1/emails", token=t)
    assert status == 200 and {r["id"] for r in rows} >= set(mail.values())  # with the bounce's DSN
    cli_rows = {r["id"]: r for r in json.loads(d.cli("emails", "list", "--json").output)}
    for r in rows:
        assert set(r) == set(cli_rows[r["id"]]) and r["subject"] == cli_rows[r["id"]]["subject"]
    bounced = checked(d, doc, "GET", "/v1/emails?status=bounced", token=t)[2]
    assert [r["id"] for r in bounced] == [mail["bounced"]]
    queued = checked(d, doc, "GET", "/v1/emails?domain=ann.test&status=queued", token=t)[2]
    assert [r["id"] for r in queued] == [mail["later"]]
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert checked(d, doc, "GET", f"/v1/emails?since={future}", token=t)[2] == []
    assert checked(d, doc, "GET", f"/v1/emails?until={future}", token=t)[2] == rows
    by_alias = checked(d, doc, "GET", "/v1/emails?alias=ME@ann.test", token=t)[2]
    assert {r["id"] for r in by_alias} == set(mail.values())  # not the DSN, sent by no alias
    checked(d, doc, "POST", "/v1/domains/ann.test/aliases", token=t,
            body={"address": "quiet", "destinations": ["ann@else.test"]})
    assert checked(d, doc, "GET", "/v1/emails?alias=quiet@ann.test", token=t)[2] == []
    for missing in ("nobody@ann.test", "me@ben.test"):
        assert checked(d, doc, "GET", f"/v1/emails?alias={missing}", token=t)[0] == 404

    seen: list[str] = []
    path = "/v1/emails?limit=1"
    for _ in range(5):
        status, headers, page = checked(d, doc, "GET", path, token=t)
        assert status == 200 and len(page) <= 1
        seen += [r["id"] for r in page]
        if "Link" not in headers:
            break
        path = headers["Link"].split(">", 1)[0].lstrip("<")
    assert seen == [r["id"] for r in rows]

    status, _, shown = checked(d, doc, "GET", f"/v1/emails/{mail['bounced']}", token=t)
    assert status == 200 and shown["status"] == "bounced"
    assert [(r["address"], r["status"], r["code"]) for r in shown["recipients"]] == [(BOUNCE, "bounced", 550)]
    assert ["Subject", "no"] in shown["headers"] and shown["redacted"] is True and shown["text"] is None
    assert shown == json.loads(d.cli("emails", "show", mail["bounced"], "--json").output)
    waiting = checked(d, doc, "GET", f"/v1/emails/{mail['later']}", token=t)[2]
    assert waiting["status"] == "queued" and waiting["text"].startswith("Hello there.")

    assert checked(d, doc, "POST", f"/v1/emails/{mail['delivered']}/retry", token=t)[0] == 400
    status, _, retried = checked(d, doc, "POST", f"/v1/emails/{mail['later'].lower()}/retry", token=t)
    assert status == 200 and retried["id"] == mail["later"]
    wait_until(lambda: call(d, "GET", f"/v1/emails/{mail['later']}", token=t)[2]["status"] == "delivered",
               20, "the retried message delivered")
    assert checked(d, doc, "DELETE", f"/v1/emails/{mail['delivered']}", token=t)[2] == {
        "deleted": mail["delivered"]}
    assert checked(d, doc, "GET", f"/v1/emails/{mail['delivered']}", token=t)[0] == 404
    assert checked(d, doc, "DELETE", f"/v1/emails/{mail['delivered']}", token=t)[0] == 404


def test_logs_are_the_smtp_errors_of_the_accounts_domains(
        d: Daemon, doc: dict[str, Any], tok: dict[str, str], mail: dict[str, str]) -> None:
    with smtplib.SMTP("127.0.0.1", d.mx_port, timeout=15) as s:  # an inbound refusal, logged too
        s.ehlo("client.test")
        s.mail("someone@else.test")
        assert s.rcpt("missing@ann.test")[0] == 550
    t = tok[A]

    def rows() -> list[dict[str, Any]]:
        return checked(d, doc, "GET", "/v1/logs", token=t)[2]

    got = wait_until(lambda: (r := rows()) and {x["direction"] for x in r} == {"inbound", "outbound"} and r,
                     20, "an inbound and an outbound error")
    assert {x["domain"] for x in got} == {"ann.test"}
    outbound = [x for x in got if x["direction"] == "outbound"]
    assert any(x["code"] == 550 and x["enhanced_code"] == "5.1.1" for x in outbound)
    cli = [x for x in json.loads(d.cli("logs", "--json").output) if x["domain"] == "ann.test"]
    assert got == cli
    assert checked(d, doc, "GET", "/v1/logs?alias=me@ann.test", token=t)[2] == [
        x for x in got if x["alias"] == "me@ann.test"] != []
    inbound = checked(d, doc, "GET", "/v1/logs?direction=inbound&domain=ann.test", token=t)[2]
    assert inbound and {x["direction"] for x in inbound} == {"inbound"}
    status, headers, first = checked(d, doc, "GET", "/v1/logs?limit=1", token=t)
    assert status == 200 and len(first) == 1 and 'rel="next"' in headers["Link"]
    assert checked(d, doc, "GET", "/v1/logs", token=tok[B])[2] == []


@pytest.mark.parametrize("path", [
    "/v1/emails?limit=0", "/v1/emails?limit=101", "/v1/emails?limit=99999999999999999999",
    "/v1/emails?status=lost", "/v1/emails?since=yesterday", "/v1/emails?since=2026-02-01&until=2026-01-01",
    "/v1/emails?cursor=bm9wZQ", "/v1/emails?cursor=" + "A" * 300, "/v1/emails?colour=red",
    "/v1/emails?limit=1&limit=2", "/v1/emails?domain=", "/v1/logs?direction=sideways",
    "/v1/logs?until=31/12/2026", "/v1/logs?page=2", "/v1/emails?alias=not-an-address",
    "/v1/logs?alias=%2F(a%2B)%2B%2F@ann.test%00",
])
def test_bad_filters_are_a_400(d: Daemon, doc: dict[str, Any], tok: dict[str, str], path: str) -> None:
    status, _, err = checked(d, doc, "GET", path, token=tok[A])
    assert status == 400 and set(err) == {"error", "message"}, err


def test_another_accounts_ids_are_404_on_every_new_endpoint(
        d: Daemon, doc: dict[str, Any], tok: dict[str, str], mail: dict[str, str]) -> None:
    intruder = tok[B]
    qid = mail["bounced"]
    for method, path, body in [
        ("GET", "/v1/domains/ann.test/dns", None), ("POST", "/v1/domains/ann.test/verify", None),
        ("PATCH", "/v1/domains/ann.test", {"retention_days": 30}),
        ("PATCH", "/v1/domains/ann.test/aliases/me", {"destinations": ["ben@else.test"]}),
        ("PATCH", "/v1/domains/ann.test/aliases/me", {"enabled": False}),
        ("POST", "/v1/domains/ann.test/aliases/me/password", None),
        ("GET", f"/v1/emails/{qid}", None), ("POST", f"/v1/emails/{qid}/retry", None),
        ("DELETE", f"/v1/emails/{qid}", None), ("GET", "/v1/emails?domain=ann.test", None),
        ("GET", "/v1/logs?domain=ann.test", None), ("GET", "/v1/domains/nowhere.test/dns", None),
        ("GET", "/v1/emails?alias=me@ann.test", None), ("GET", "/v1/logs?alias=me@ann.test", None),
        ("GET", "/v1/emails/NOSUCHID", None),
    ]:
        status, _, reply = checked(d, doc, method, path, token=intruder, body=body)
        assert status == 404 and reply["error"] == "not_found", (method, path, reply)
    assert checked(d, doc, "GET", "/v1/emails", token=intruder)[2] == []
    t = tok[A]
    assert checked(d, doc, "GET", "/v1/domains/ann.test", token=t)[2]["retention_days"] != 30
    assert checked(d, doc, "GET", "/v1/domains/ann.test/aliases/me", token=t)[2]["state"] == "enabled"
    assert checked(d, doc, "GET", f"/v1/emails/{qid}", token=t)[0] == 200


NEW = [("DELETE", "/v1/account"), ("GET", "/v1/domains/a.test/dns"), ("POST", "/v1/domains/a.test/verify"),
       ("PATCH", "/v1/domains/a.test"), ("PATCH", "/v1/domains/a.test/aliases/x"),
       ("POST", "/v1/domains/a.test/aliases/x/password"), ("GET", "/v1/emails"), ("GET", "/v1/emails/X1"),
       ("POST", "/v1/emails/X1/retry"), ("DELETE", "/v1/emails/X1"), ("GET", "/v1/logs")]


@pytest.mark.parametrize("method,path", NEW)
def test_without_a_valid_token_every_new_endpoint_is_401(d: Daemon, doc: dict[str, Any], method: str,
                                                         path: str) -> None:
    for token in (None, "fwd_not-a-token"):
        status, headers, body = checked(d, doc, method, path, token=token, body={})
        assert status == 401 and body["error"] == "unauthorized" and "WWW-Authenticate" in headers


def test_bad_bodies_are_a_400_never_a_traceback(d: Daemon, doc: dict[str, Any], tok: dict[str, str]) -> None:
    t = tok[C]
    checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "cat-bodies.test"})
    for method, path in (("PATCH", "/v1/domains/cat-bodies.test"), ("DELETE", "/v1/account"),
                         ("POST", "/v1/domains"), ("POST", "/v1/domains/cat-bodies.test/aliases")):
        for kw in ({"raw": b"{not json"}, {"raw": b"\xff\xfe"}, {"raw": b"[" * 3000 + b"]" * 3000},
                   {"raw": b'{"retention_days": ' + b"9" * 3000 + b"}"}, {"body": ["a list"]},
                   {"body": {"name": "x", "confirm": C, "retention_days": 1, "address": "a",
                             "destinations": ["a@b.test"], "extra": 1}}):
            status, _, err = checked(d, doc, method, path, token=t, **kw)
            assert status in (400, 413) and set(err) == {"error", "message"}, (method, path, kw, err)
    status, _, err = checked(d, doc, "PATCH", "/v1/domains/cat-bodies.test", token=t,
                             raw=b'{"retention_days": 1, "unknown": 2}')
    assert (status, err["error"]) == (400, "unknown_field")


def test_an_account_deletes_itself_only_when_it_confirms(d: Daemon, doc: dict[str, Any]) -> None:
    who = "dan@owner.test"
    d.cli("account", "add", who)
    t = token_for(d, who)
    checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "dan.test"})
    checked(d, doc, "POST", "/v1/domains/dan.test/aliases", token=t,
            body={"address": "a", "destinations": ["dan@else.test"]})
    for body in ({}, {"confirm": "someone@owner.test"}, {"confirm": 1}, {"confirm": who, "really": True}):
        status, _, err = checked(d, doc, "DELETE", "/v1/account", token=t, body=body)
        assert status == 400, (body, err)
    assert checked(d, doc, "GET", "/v1/account", token=t)[2]["domains"] == ["dan.test"]
    status, _, gone = checked(d, doc, "DELETE", "/v1/account", token=t, body={"confirm": who.upper()})
    assert status == 200 and gone["deleted"] == who and gone["domains"] == 1 and gone["aliases"] == 1
    assert checked(d, doc, "GET", "/v1/account", token=t)[0] == 401
    assert d.cli("account", "delete", who, "--yes", expect=1).output.strip() == f"Error: no account {who}"
    assert who not in d.cli("account", "list").output


def _closed(s: socket.socket) -> bool:
    """Whether the server closed `s` (nothing else may arrive on it)."""
    try:
        data = s.recv(4096)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    assert data == b"", data
    return True


def test_clients_trickling_headers_or_a_body_are_closed_while_others_are_served(
        d: Daemon, tok: dict[str, str]) -> None:
    def connect(first: bytes) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", d.http_port), timeout=5)
        s.sendall(first)
        s.settimeout(0.1)
        return s

    def after_one_request() -> socket.socket:
        s = connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got, deadline = b"", time.monotonic() + 10
        while b'"ok"' not in got:
            assert time.monotonic() < deadline, got
            try:
                got += s.recv(4096)
            except TimeoutError:
                continue
        s.sendall(b"GET /healthz HTTP/1.1\r\n")  # the next request, kept alive, then trickled
        return s

    clients = {
        "keep-alive": (after_one_request(), b"X-Slow: 1\r\n"),
        "idle": (connect(b""), b""),
        "headers": (connect(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"), b"X-Slow: 1\r\n"),
        "body": (connect(b"PATCH /v1/domains/ann.test HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + tok[A].encode() + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{"), b" "),
    }
    closed: set[str] = set()
    served = 0
    deadline = time.monotonic() + 5 * SLOW + 5  # aiohttp alone closes an idle connection after 15 s
    try:
        while len(closed) < len(clients):
            assert time.monotonic() < deadline, f"still open: {set(clients) - closed}"
            for name, (s, trickle) in clients.items():
                if name in closed:
                    continue
                try:
                    if trickle:
                        s.sendall(trickle)
                except ConnectionError:
                    closed.add(name)
                    continue
                if _closed(s):
                    closed.add(name)
            assert call(d, "GET", "/healthz")[0] == 200  # everyone else is served meanwhile
            served += 1
    finally:
        for s, _ in clients.values():
            s.close()
    assert served >= 2


def test_healthz_counts_the_listeners_of_mx_worker_processes(tmp_path_factory: pytest.TempPathFactory,
                                                             doc: dict[str, Any]) -> None:
    """With `[mx] workers = 2` the serving process accepts MX connections on its dispatcher's sockets;
    they count as the MX's listeners (all up: 200)."""
    daemon = Daemon(tmp_path_factory.mktemp("api_workers"), {"mx": {"workers": 2}})
    daemon.start()
    try:
        wait_until(lambda: _answers(daemon), 20, "the HTTP listener")
        assert checked(daemon, doc, "GET", "/healthz")[::2] == (200, {"status": "ok"})
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.logs()


def _answers(d: Daemon) -> bool:
    try:
        return call(d, "GET", "/healthz")[0] in (200, 503)
    except OSError:
        return False


def test_one_dns_check_at_a_time_per_account(d: Daemon, doc: dict[str, Any], tok: dict[str, str],
                                            dns_server: LoopbackDNS) -> None:
    """While an account's check waits on a resolver that does not answer, its next one is a 429 with
    Retry-After; another account's check still runs."""
    t = tok[C]
    checked(d, doc, "POST", "/v1/domains", token=t, body={"name": "cat-slow.test"})
    checked(d, doc, "POST", "/v1/domains", token=tok[B], body={"name": "ben-check.test"})
    dns_server.set_failure("cat-slow.test", "timeout")
    first: list[int] = []
    waiting = threading.Thread(
        target=lambda: first.append(call(d, "POST", "/v1/domains/cat-slow.test/verify", token=t)[0]))
    try:
        waiting.start()
        deadline = time.monotonic() + 10
        while ("cat-slow.test", "MX") not in dns_server.queries:  # the first check is waiting on DNS
            assert time.monotonic() < deadline and waiting.is_alive()
            time.sleep(0.02)
        status, headers, err = checked(d, doc, "POST", "/v1/domains/cat-slow.test/verify", token=t)
        assert (status, err["error"], headers.get("Retry-After")) == (429, "busy", "5")
        assert checked(d, doc, "POST", "/v1/domains/ben-check.test/verify", token=tok[B])[0] == 200
    finally:
        waiting.join(30)
        dns_server.clear_failure("cat-slow.test")
    assert first == [503]  # the resolver's time ran out: try later
    assert checked(d, doc, "POST", "/v1/domains/cat-slow.test/verify", token=t)[0] == 200
