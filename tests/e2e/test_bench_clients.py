"""The bench's paced latency client (bench/clients.py) against a capturing SMTP server on loopback."""

from __future__ import annotations

import asyncio
from email.parser import BytesHeaderParser

from bench.clients import measure_latency
from tests.support.smtp_sink import SmtpSink


def test_latency_client_sends_each_message_distinct() -> None:
    # fwdmail answers a repeat of a message it has just forwarded 250 without forwarding it again, so
    # identical messages never all reach the bench's sink and the latency rows waited for them in vain.
    sink = SmtpSink("127.0.0.1").start()
    try:
        result = asyncio.run(measure_latency(sink.port, rate=50, count=6, duration=5, size=2048, sessions=2,
                                             sender="someone@sender.bench.test",
                                             recipient="user@fwd.bench.test"))
        got = sink.wait_for(6, 10)
    finally:
        sink.stop()

    assert (result.sent, result.failed, result.errors) == (6, 0, [])
    ids = {BytesHeaderParser().parsebytes(m.data)["Message-ID"] for m in got}
    assert len(ids) == 6
