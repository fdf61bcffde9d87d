"""Webhook destinations end to end: the real daemon POSTs to a loopback HTTPS server (trustme) whose
name the loopback DNS server resolves; the signature is checked with the key the CLI prints."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import json
import pathlib
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import cli, cli_batch, message, send, start_daemon
from tests.support.tls import ca_cert_file
from tests.support.webhook_server import WebhookServer

HOOK = "hook.test"
SETUP = [["account", "add", "owner@owner.test"],
         ["domain", "add", "hooks.test", "--account", "owner@owner.test"]]
US = "mx.fwdmail.test"


@pytest.fixture(scope="module")
def hooks() -> Iterator[WebhookServer]:
    with WebhookServer([HOOK, "other-hook.test"]) as server:
        yield server


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS) -> Iterator[Daemon]:
    dns_server.add(HOOK, "A", "127.0.0.1")
    tmp = tmp_path_factory.mktemp("webhooks")
    d = start_daemon(tmp, {
        "dns": {"nameservers": [dns_server.address]},
        "webhooks": {"allow_private": True, "ca_file": str(ca_cert_file(tmp / "ca")), "timeout": 2,
                     "max_attachment_size": 1000, "max_connections": 2, "max_body_size": 20_000},
        "abuse": {"max_messages_per_ip_per_minute": 10_000},
    }, SETUP)
    yield d
    d.stop()


def alias_to(d: Daemon, *destinations: str) -> str:
    """A new alias of hooks.test forwarding to `destinations`."""
    name = f"a{uuid.uuid4().hex[:10]}@hooks.test"
    cli_batch(d, [["alias", "add", name, *destinations]])
    return name


def path() -> str:
    return f"/in/{uuid.uuid4().hex}"


def multipart(attachment: bytes) -> bytes:
    att = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
    body = (b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain h\xc3\xa9llo\r\n"
            b"--XX\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n"
            b"--XX\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"a.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + att + b"--XX--\r\n")
    return message(headers=b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n", body=body)


def test_signed_post_carries_envelope_parts_attachments_and_our_auth_results(
        mx: Daemon, hooks: WebhookServer) -> None:
    p = path()
    rcpt = alias_to(mx, hooks.url(HOOK, p))
    out = send(mx, "sender@src.test", [rcpt], multipart(b"\x00\x01binary" * 10))
    assert out.code == 250, out.text
    [req] = hooks.received(p)
    key = cli(mx, "domain", "webhook-key", "hooks.test").stdout.strip()
    sig = dict(part.split("=", 1) for part in req.headers["x-webhook-signature"].split(","))
    assert abs(int(sig["t"]) - time.time()) < 120
    want = hmac.new(key.encode(), f"{sig['t']}.".encode() + req.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(sig["v1"], want)
    doc = json.loads(req.body)
    assert doc["envelope"] == {"mail_from": "sender@src.test", "rcpt_to": rcpt, "alias": rcpt}
    assert doc["text"].startswith("plain héllo") and doc["html"].startswith("<p>html</p>")
    [att] = doc["attachments"]
    assert att["filename"] == "a.bin" and att["truncated"] is False
    assert base64.b64decode(att["content"]) == b"\x00\x01binary" * 10
    assert att["sha256"] == hashlib.sha256(b"\x00\x01binary" * 10).hexdigest()
    assert doc["authentication_results"] and doc["authentication_results"][0].startswith(US)
    assert any(h["name"] == "subject" for h in doc["headers"])


def test_rotated_key_signs_the_next_post(mx: Daemon, hooks: WebhookServer) -> None:
    p = path()
    rcpt = alias_to(mx, hooks.url(HOOK, p))
    old = cli(mx, "domain", "webhook-key", "hooks.test").stdout.strip()
    new = cli(mx, "domain", "webhook-key", "hooks.test", "--rotate").stdout.strip()
    assert new != old and cli(mx, "domain", "webhook-key", "hooks.test").stdout.strip() == new
    assert send(mx, "sender@src.test", [rcpt], message()).code == 250
    [req] = hooks.received(p)
    t, v1 = (part.split("=", 1)[1] for part in req.headers["x-webhook-signature"].split(","))
    assert v1 == hmac.new(new.encode(), f"{t}.".encode() + req.body, hashlib.sha256).hexdigest()


def test_oversize_attachment_is_listed_with_its_hash_but_no_content(mx: Daemon, hooks: WebhookServer) -> None:
    p = path()
    rcpt = alias_to(mx, hooks.url(HOOK, p))
    big = bytes(range(256)) * 20  # 5120 bytes, over max_attachment_size = 1000
    assert send(mx, "sender@src.test", [rcpt], multipart(big)).code == 250
    [att] = json.loads(hooks.received(p)[0].body)["attachments"]
    assert att == {"filename": "a.bin", "content_type": "application/octet-stream", "size": len(big),
                   "sha256": hashlib.sha256(big).hexdigest(), "truncated": True, "content": None}


def test_5xx_is_temporary_and_the_retry_does_not_post_twice_to_the_hook_that_took_it(
        mx: Daemon, hooks: WebhookServer) -> None:
    took, failed = path(), path()
    hooks.behave(failed, [503, 200])
    rcpt = alias_to(mx, hooks.url(HOOK, took), hooks.url(HOOK, failed))
    msg = message()
    first = send(mx, "sender@src.test", [rcpt], msg)
    assert first.code == 451, first.text
    assert "HTTP 503" in first.text and hooks.url(HOOK, failed) not in first.text
    retry = send(mx, "sender@src.test", [rcpt], msg)
    assert retry.code == 250, retry.text
    assert len(hooks.received(took)) == 1
    assert len(hooks.received(failed)) == 2


def test_other_4xx_is_permanent(mx: Daemon, hooks: WebhookServer) -> None:
    p = path()
    hooks.behave(p, [404])
    rcpt = alias_to(mx, hooks.url(HOOK, p))
    out = send(mx, "sender@src.test", [rcpt], message())
    assert out.code == 550 and "HTTP 404" in out.text, out.text


def test_redirect_is_not_followed(mx: Daemon, hooks: WebhookServer) -> None:
    p, target = path(), path()
    hooks.behave(p, [302], location=hooks.url(HOOK, target))
    out = send(mx, "sender@src.test", [alias_to(mx, hooks.url(HOOK, p))], message())
    assert out.code == 550 and "redirect" in out.text, out.text
    assert hooks.received(target) == []


def test_timeout_is_temporary(mx: Daemon, hooks: WebhookServer) -> None:
    p = path()
    hooks.behave(p, [200], delay=4)  # [webhooks] timeout = 2
    out = send(mx, "sender@src.test", [alias_to(mx, hooks.url(HOOK, p))], message())
    assert out.code == 451 and "in time" in out.text, out.text


def test_certificate_for_another_name_is_not_trusted(mx: Daemon, dns_server: LoopbackDNS,
                                                     hooks: WebhookServer) -> None:
    dns_server.add("wrong-name.test", "A", "127.0.0.1")  # the server's certificate does not name it
    p = path()
    out = send(mx, "sender@src.test", [alias_to(mx, hooks.url("wrong-name.test", p))], message())
    assert out.code == 451, out.text
    assert hooks.received(p) == []


def test_alias_add_refuses_plain_http(mx: Daemon) -> None:
    proc = cli(mx, "alias", "add", "plain@hooks.test", "http://hook.test/in", expect=None)
    assert proc.returncode != 0 and "only https://" in proc.stderr + proc.stdout


# SSRF: with allow_private off, names resolving to each non-public range are refused before any connection

NON_PUBLIC = {
    "loopback4": ("A", "127.0.0.1"), "private10": ("A", "10.1.2.3"), "private172": ("A", "172.16.5.4"),
    "private192": ("A", "192.168.1.1"), "linklocal4": ("A", "169.254.169.254"), "cgnat": ("A", "100.64.0.1"),
    "multicast4": ("A", "224.0.0.1"), "unspecified4": ("A", "0.0.0.0"), "reserved4": ("A", "240.0.0.1"),
    "benchmark": ("A", "198.18.0.1"), "loopback6": ("AAAA", "::1"), "uniquelocal": ("AAAA", "fd00::1"),
    "linklocal6": ("AAAA", "fe80::1"), "multicast6": ("AAAA", "ff02::1"),
    "mapped": ("AAAA", "::ffff:127.0.0.1"), "nat64": ("AAAA", "64:ff9b::a00:1"),
    "sixtofour": ("AAAA", "2002:c0a8:101::1"), "documentation6": ("AAAA", "2001:db8::1"),
}


@pytest.fixture(scope="module")
def strict_mx(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS) -> Iterator[Daemon]:
    for label, (rtype, value) in NON_PUBLIC.items():
        dns_server.add(f"{label}.ssrf.test", rtype, value)
    tmp = tmp_path_factory.mktemp("webhooks-strict")
    d = start_daemon(tmp, {
        "dns": {"nameservers": [dns_server.address]},
        "webhooks": {"ca_file": str(ca_cert_file(tmp / "ca"))},
        "abuse": {"max_messages_per_ip_per_minute": 10_000},
    }, SETUP)
    yield d
    d.stop()


@pytest.mark.parametrize("label", sorted(NON_PUBLIC))
def test_non_public_hosts_are_refused(strict_mx: Daemon, hooks: WebhookServer, label: str) -> None:
    p = path()
    rcpt = alias_to(strict_mx, hooks.url(f"{label}.ssrf.test", p))
    out = send(strict_mx, "sender@src.test", [rcpt], message())
    assert out.code == 550 and "refused" in out.text, out.text
    assert hooks.received(p) == []


def test_ip_literal_loopback_is_refused(strict_mx: Daemon, hooks: WebhookServer) -> None:
    p = path()
    out = send(strict_mx, "sender@src.test", [alias_to(strict_mx, hooks.url("127.0.0.1", p))], message())
    assert out.code == 550 and "loopback" in out.text, out.text
    assert hooks.received(p) == []


def test_import_and_the_api_take_webhook_destinations(mx: Daemon, hooks: WebhookServer,
                                                      tmp_path: pathlib.Path) -> None:
    by_import, by_api = path(), path()
    listing = tmp_path / "virtual"
    listing.write_text(f"imported@hooks.test {hooks.url(HOOK, by_import)}, someone@dest.test\n")
    cli(mx, "alias", "import", str(listing))
    token = json.loads(cli(mx, "account", "token", "owner@owner.test", "--json").stdout)["token"]
    req = urllib.request.Request(
        f"http://127.0.0.1:{mx.http_port}/v1/domains/hooks.test/aliases", method="POST",
        data=json.dumps({"address": "viaapi", "destinations": [hooks.url(HOOK, by_api)]}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 201
    assert send(mx, "sender@src.test", ["viaapi@hooks.test"], message()).code == 250
    assert len(hooks.received(by_api)) == 1
    refused = urllib.request.Request(
        f"http://127.0.0.1:{mx.http_port}/v1/domains/hooks.test/aliases", method="POST",
        data=json.dumps({"address": "plain", "destinations": ["http://hook.test/x"]}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(refused, timeout=30)
    assert err.value.code == 400 and b"only https://" in err.value.read()
    exported = cli(mx, "alias", "export", "--domain", "hooks.test").stdout
    assert hooks.url(HOOK, by_import) in exported


def test_posts_in_flight_are_capped_in_all(mx: Daemon, hooks: WebhookServer) -> None:
    paths = [path() for _ in range(4)]
    rcpts = []
    for p in paths:
        hooks.behave(p, [200], delay=1)
        rcpts.append(alias_to(mx, hooks.url(HOOK, p)))
    with hooks.lock:
        hooks.most_in_flight = 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda r: send(mx, f"s{r[:4]}@src.test", [r], message()), rcpts))
    assert [o.code for o in outs] == [250] * 4
    assert all(len(hooks.received(p)) == 1 for p in paths)
    assert hooks.most_in_flight == 2  # [webhooks] max_connections


def test_a_huge_answer_is_not_read_to_its_end(mx: Daemon, hooks: WebhookServer) -> None:
    p = path()
    hooks.behave(p, [200], answer_bytes=200 * 1024 * 1024)
    out = send(mx, "sender@src.test", [alias_to(mx, hooks.url(HOOK, p))], message())
    assert out.code == 250, out.text
    assert len(hooks.received(p)) == 1
    deadline = time.monotonic() + 30
    while p not in hooks.answer_sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hooks.answer_sent[p] < 50 * 1024 * 1024  # the MX hung up once the status was in


def test_a_message_too_big_for_the_body_limit_is_refused_once_attachments_are_left_out(
        mx: Daemon, hooks: WebhookServer) -> None:
    p = path()
    rcpt = alias_to(mx, hooks.url(HOOK, p))
    fits = send(mx, "sender@src.test", [rcpt], multipart(b"a" * 900))  # well under max_body_size
    assert fits.code == 250
    too_big = send(mx, "sender@src.test", [rcpt], message(body=b"x" * 30_000 + b"\r\n"))
    assert too_big.code == 552 and "too big" in too_big.text, too_big.text
    assert len(hooks.received(p)) == 1


def test_the_host_is_resolved_once_and_the_checked_address_connected_to(
        mx: Daemon, dns_server: LoopbackDNS, hooks: WebhookServer) -> None:
    name = "other-hook.test"  # in the hook server's certificate; used by this test alone
    dns_server.add(name, "A", "127.0.0.1", ttl=0)  # no caching: a second lookup would show
    p = path()
    rcpt = alias_to(mx, hooks.url(name, p))
    asked_before = len(dns_server.queries)
    assert send(mx, "sender@src.test", [rcpt], message()).code == 250
    asked = [q for q in dns_server.queries[asked_before:] if q[0].rstrip(".") == name]
    assert sorted(t for _, t in asked) == ["A", "AAAA"]
    assert len(hooks.received(p)) == 1
