"""The metrics in-process: reasons are fixed codes, each `Metrics` has its own registry, a worker's notes
count in the serving process (and nothing else does), `/metrics` behind the Bearer token on the HTTP
listener, the `[metrics] listen` listener on a real socket, and the queue depth read from a real store."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from fwdmail import store
from fwdmail.config import Config, HttpConfig, MetricsConfig
from fwdmail.mx.workers import _NOTE_SIZE
from fwdmail.runtime import datadir
from fwdmail.runtime.context import Context
from fwdmail.runtime.metrics import NOTE, REASONS, Metrics, reason
from fwdmail.smtp import client, replies
from fwdmail.smtp.replies import SmtpError
from fwdmail.web import metrics as web_metrics
from fwdmail.web.server import ConnectionLimits, LimitedSite, RequestLog, WebService, make_app
from tests.support.daemon import free_port

TOKEN = "t0k3n-for-the-metrics-scrape"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("error,expected", [
    (replies.RELAY_DENIED, "relay_denied"),
    (replies.NO_SUCH_USER, "no_such_user"),
    (client.CONNECT_FAILED, "connect_failed"),
    (replies.DNSBL_LISTED.with_text(replies.DNSBL_LISTED.text.format(zone="zen.example.org")),
     "dnsbl_listed"),
    (SmtpError(451, "4.3.0", f"<alias@ours.test>: {replies.FORWARD_IN_PROGRESS.text}"),
     "forward_in_progress"),
    (SmtpError(550, "5.1.1", "<bob@dest.test>: user bob@dest.test unknown at 192.0.2.1"), "other"),
])
def test_a_reason_is_a_constant_name_never_the_text(error: SmtpError, expected: str) -> None:
    assert reason(error) == expected
    assert reason(SmtpError(552, "5.2.2", "mailbox of bob@dest.test full"), "destination") == "destination"
    assert reason(SmtpError(552, "5.2.2", "x"), "bob@dest.test") == "other"  # a default outside the set
    assert all(r.isidentifier() and r.islower() for r in REASONS)


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.forward("mx")
    a.refusal("mx", replies.RELAY_DENIED)
    seen_a, seen_b = samples(a.exposition(None).decode()), samples(b.exposition(None).decode())
    assert seen_a[("fwdmail_messages_forwarded_total", (("service", "mx"),))] == 1
    assert seen_a[("fwdmail_messages_refused_total", (("reason", "relay_denied"), ("service", "mx")))] == 1
    assert ("fwdmail_messages_forwarded_total", (("service", "mx"),)) not in seen_b


def test_a_workers_counts_reach_the_serving_process_in_notes_that_fit_the_pair() -> None:
    parent, worker = Metrics(), Metrics()
    notes: list[bytes] = []
    worker.relay = notes.append
    worker.track_sessions("mx", lambda: 3)
    worker.mx_reply(replies.FORWARDED, 0.2)
    worker.mx_reply(SmtpError(451, "4.3.0", "<a@ours.test>: 452 4.2.2 mailbox full").reply, 1.5)
    worker.refusal("mx", replies.ALIAS_LOOKUP_TIMEOUT)
    worker.report_sessions("mx")
    worker.report_sessions("mx")  # unchanged: not sent again
    assert notes and all(n.startswith(NOTE) and len(n) <= _NOTE_SIZE for n in notes)
    assert len([n for n in notes if n.startswith(NOTE + b"s|")]) == 1
    assert samples(worker.exposition(None).decode()).get(
        ("fwdmail_messages_forwarded_total", (("service", "mx"),))) is None  # a worker counts nothing itself
    assert all(parent.apply(1, n) for n in notes)
    seen = samples(parent.exposition(None).decode())
    assert seen[("fwdmail_messages_forwarded_total", (("service", "mx"),))] == 1
    assert seen[("fwdmail_messages_deferred_total", (("reason", "destination"), ("service", "mx")))] == 1
    timeout = (("reason", "alias_lookup_timeout"), ("service", "mx"))
    assert seen[("fwdmail_messages_deferred_total", timeout)] == 1
    assert seen[("fwdmail_mx_forward_seconds_count", (("outcome", "deferred"),))] == 1
    assert seen[("fwdmail_sessions_open", (("listener", "mx"),))] == 3
    parent.apply(1, b"")  # the worker is gone: its sessions are no longer open
    assert samples(parent.exposition(None).decode())[("fwdmail_sessions_open", (("listener", "mx"),))] == 0


@pytest.mark.parametrize("note", [
    b"mc|mx|refused|bob@dest.test|1", b"mc|mx|refused|relay_denied|0", b"mc|evil.test|refused|other|1",
    b"mc|mx|accepted|other|1", b"mh|mx|forwarded|-1", b"mh|mx|forwarded|nan", b"ms|192.0.2.1|4",
    b"ms|mx|-2", b"m\xff", b"mc|mx|refused|other", b"mz|1",
])
def test_a_note_with_anything_outside_the_fixed_sets_is_ignored(note: bytes) -> None:
    m = Metrics()
    assert m.apply(1, note) is False
    text = m.exposition(None).decode()
    assert "dest.test" not in text and "evil" not in text and "192.0.2.1" not in text
    assert not [v for k, v in samples(text).items() if k[0].endswith("_total") and v]


def _context(tmp_path: Path, http: tuple[str, ...] = (), **metrics: object) -> Context:
    cfg = Config(data_dir=str(tmp_path / "data"), hostname="mx.fwdmail.test", http=HttpConfig(listen=http),
                 metrics=MetricsConfig(**metrics))  # type: ignore[arg-type]
    runtime = datadir.prepare(cfg, create=True)
    store.close_store()
    return Context(runtime)


async def _close(ctx: Context) -> None:
    ctx.blocking.shutdown()
    await ctx.delivery.close()


def test_metrics_on_the_http_listener_need_the_token(tmp_path: Path) -> None:
    async def probe(ctx: Context) -> list[int]:
        app = make_app(ctx, RequestLog(ctx))
        web_metrics.register(app, ctx, ConnectionLimits(2, 4), LimitedSite)
        statuses = []
        async with TestClient(TestServer(app)) as http:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                            {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}"}):
                resp = await http.get("/metrics", headers=headers)
                statuses.append(resp.status)
                if resp.status == 200:
                    text = await resp.text()
                    assert resp.headers["Content-Type"].startswith("text/plain")
                    assert samples(text)[("fwdmail_store_up", ())] == 1
                    assert samples(text)[("fwdmail_queue_messages", (("state", "queued"),))] == 0
                else:
                    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer")
        await _close(ctx)
        return statuses

    assert asyncio.run(probe(_context(tmp_path, token=TOKEN))) == [401, 401, 401, 200]


def test_without_a_token_the_http_listener_has_no_metrics(tmp_path: Path) -> None:
    async def probe(ctx: Context) -> int:
        app = make_app(ctx, RequestLog(ctx))
        web_metrics.register(app, ctx, ConnectionLimits(2, 4), LimitedSite)
        async with TestClient(TestServer(app)) as http:
            status = (await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status
        await _close(ctx)
        return status

    assert asyncio.run(probe(_context(tmp_path))) == 404


def test_the_metrics_listener_serves_without_a_token_and_stops_with_the_http_service(tmp_path: Path) -> None:
    port = free_port()
    ctx = _context(tmp_path, (f"127.0.0.1:{free_port()}",), listen=(f"127.0.0.1:{port}",))

    def get(url: str) -> tuple[int, str]:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()

    async def run() -> tuple[int, str, bool]:
        service = WebService(ctx)
        await service.start()
        try:
            status, text = await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
        finally:
            await service.stop()
        try:
            await asyncio.to_thread(get, f"http://127.0.0.1:{port}/metrics")
            closed = False
        except OSError:
            closed = True
        await _close(ctx)
        return status, text, closed

    status, text, closed = asyncio.run(run())
    assert status == 200 and closed
    seen = samples(text)
    assert seen[("fwdmail_sessions_open", (("listener", "http"),))] == 0
    assert {k[1] for k in seen if k[0] == "fwdmail_queue_messages"} == {
        (("state", s),) for s in ("queued", "sending", "deferred", "held")}


def test_the_metrics_listener_bounds_connections_per_client_and_in_all(tmp_path: Path) -> None:
    port = free_port()
    ctx = _context(tmp_path, listen=(f"127.0.0.1:{port}",))

    async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))

    async def refused(source: str) -> bool:
        reader, writer = await connect(source)
        try:
            return await asyncio.wait_for(reader.read(1), 10) == b""
        except ConnectionResetError:
            return True
        finally:
            writer.close()

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\n\r\n")
        return (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")

    async def run() -> tuple[bool, bool, bool]:
        service = WebService(ctx)
        await service.start()
        held = []
        try:
            held = [await connect("127.0.0.1") for _ in range(web_metrics.MAX_CONNECTIONS_PER_IP)]
            per_client = await refused("127.0.0.1")  # the others' share is still free
            held += [await connect(f"127.0.0.{2 + i // web_metrics.MAX_CONNECTIONS_PER_IP}")
                     for i in range(web_metrics.MAX_CONNECTIONS - len(held))]
            in_all = await refused("127.0.0.99")
            still = all([await answers(r, w) for r, w in held])
        finally:
            for _, w in held:
                w.close()
            await service.stop()
            await _close(ctx)
        return per_client, in_all, still

    assert asyncio.run(run()) == (True, True, True)
