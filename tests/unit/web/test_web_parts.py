"""The web part's pure pieces: reading the Authorization header, the client network a log row keeps,
X-Forwarded-For only from trusted proxies, connection counting, and the OpenAPI document against the
routes actually served."""

from __future__ import annotations

import base64
import ipaddress

import pytest
from aiohttp.test_utils import make_mocked_request

from fwdmail.app.httplog import client_network
from fwdmail.web import api
from fwdmail.web.auth import presented_token
from fwdmail.web.openapi import document
from fwdmail.web.server import ConnectionLimits, client_address


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("header,token", [
    ("Bearer fwd_abc", "fwd_abc"), ("bearer   fwd_abc  ", "fwd_abc"), (basic("fwd_abc:"), "fwd_abc"),
    (basic("fwd_abc:ignored"), "fwd_abc"), (basic(":fwd_abc"), "fwd_abc"), ("", None), ("Bearer", None),
    ("Basic !!!", None), ("Basic " + base64.b64encode(b"\xff\xfe").decode(), None), ("Digest x", None),
    ("Bearer " + "a" * 2000, None),
])
def test_the_token_is_read_from_basic_or_bearer(header: str, token: str | None) -> None:
    assert presented_token(header) == token


@pytest.mark.parametrize("address,network", [
    ("192.0.2.77", "192.0.2.0/24"), ("2001:db8:1:2::9", "2001:db8:1::/48"), ("::ffff:198.51.100.4",
                                                                               "198.51.100.0/24"),
    ("fe80::1%eth0", "fe80::/48"), ("", ""), (None, ""), ("not-an-ip", ""),
])
def test_a_log_row_keeps_the_network_never_the_address(address: str | None, network: str) -> None:
    assert client_network(address) == network


def _request(peer: str, forwarded: str | None = None) -> object:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    req = make_mocked_request("GET", "/", headers=headers)
    req._transport_peername = (peer, 1234)  # type: ignore[attr-defined]
    return req


def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address(_request("203.0.113.5", "198.51.100.1"), ()) == "203.0.113.5"
    assert client_address(_request("203.0.113.5", "198.51.100.1"), proxies) == "203.0.113.5"
    assert client_address(_request("10.1.1.1", "198.51.100.1"), proxies) == "198.51.100.1"
    # a client's own X-Forwarded-For entries before the proxy's are not believed
    assert client_address(_request("10.1.1.1", "1.2.3.4, 198.51.100.1, 10.2.2.2"), proxies) == "198.51.100.1"
    assert client_address(_request("10.1.1.1", "junk"), proxies) == ""


def test_connections_are_bounded_per_client_and_in_all() -> None:
    limits = ConnectionLimits(per_client=2, total=3)
    assert limits.admit("a") and limits.admit("a") and not limits.admit("a")
    assert limits.admit("b") and not limits.admit("c")
    limits.release("a")
    assert limits.admit("c") and not limits.admit("a")
    for client in ("a", "b", "c"):
        limits.release(client)
    assert limits.open == 0 and limits.by_client == {}


def test_the_openapi_document_covers_exactly_the_served_routes() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    served = {(r.method.lower(), r.path) for r in api.routes()}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    refs = {r for r in _refs(doc)}
    assert {r.rsplit("/", 1)[-1] for r in refs} <= set(doc["components"]["schemas"])


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_the_aiohttp_site_members_the_limited_site_relies_on_are_there() -> None:
    """`LimitedSite.start` replaces `TCPSite.start` using private members of aiohttp's sites: an aiohttp
    outside the pinned range that renames or drops one fails here, not in production."""
    import inspect

    from aiohttp import web

    site_source = inspect.getsource(web.TCPSite.__init__) + inspect.getsource(web.BaseSite.__init__)
    for member in ("self._runner", "self._host", "self._port", "self._server"):
        assert member in site_source, f"aiohttp's sites no longer set {member}"
    started = inspect.getsource(web.TCPSite.start)
    assert "create_server" in started and "self._runner.server" in started
    assert inspect.iscoroutinefunction(web.BaseSite.start)


def test_the_documented_email_statuses_are_the_stores() -> None:
    from fwdmail.app.emails import STATUSES

    schemas = document()["components"]["schemas"]
    assert sorted(schemas["Email"]["properties"]["status"]["enum"]) == sorted(STATUSES)
