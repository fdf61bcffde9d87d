"""The shared SMTP client against a real SMTP server and a real DNS server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from fwdmail.config import from_dict
from fwdmail.smtp.client import Content, Delivery, data_stream
from fwdmail.smtp.replies import SmtpError
from tests.support.dns_server import LoopbackDNS
from tests.support.smtp_sink import SmtpSink
from tests.support.tls import server_context

MSG = b"From: a@src.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nhello\r\n.dot line\r\n"


def make(dns_server: LoopbackDNS, **delivery: Any) -> Delivery:
    cfg = from_dict({
        "hostname": "mx.fwdmail.test",
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "delivery": {"connect_timeout": 2, "command_timeout": 3, "data_timeout": 3, **delivery},
    })
    return Delivery(cfg)


def send(d: Delivery, rcpts: list[str], mail_from: str = "s@src.test",
         message: Content = MSG) -> dict[str, SmtpError | None]:
    async def go() -> dict[str, SmtpError | None]:
        try:
            return await d.send(mail_from, rcpts, message)
        finally:
            await d.close()
    return asyncio.run(go())


@pytest.fixture
def tls_sink() -> Iterator[SmtpSink]:
    with SmtpSink(tls_context=server_context(("localhost", "127.0.0.1", "mx1.tls.test"))) as s:
        yield s


def test_route_delivers_byte_exact(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = make(dns_server, routes={"dest.test": sink.address})
    assert send(d, ["b@dest.test", "c@dest.test"]) == {"b@dest.test": None, "c@dest.test": None}
    (got,) = sink.wait_for(1)
    assert got.mail_from == "s@src.test"
    assert got.rcpt_tos == ["b@dest.test", "c@dest.test"]
    assert got.data.replace(b"\r\n", b"\n") == MSG.replace(b"\r\n", b"\n")


_BITS = st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"\r\n.", b"\n.", b"\xe9"])
_PARTS = st.lists(st.lists(_BITS, max_size=10).map(b"".join), min_size=1, max_size=3)


@settings(max_examples=500, deadline=None)
@given(parts=_PARTS, size=st.integers(1, 8), views=st.booleans())
def test_the_data_stream_is_aiosmtplibs(parts: list[bytes], size: int, views: bool) -> None:
    """Written piece by piece, the DATA stream of a message in parts is what aiosmtplib sends for the
    parts joined: lone CR/LF made CRLF, a final CRLF, line-start dots doubled, the end marker."""
    whole = b"".join(parts)
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(whole)) + b".\r\n"
    message = tuple(memoryview(p) if views else p for p in parts)
    assert b"".join(data_stream(message, size)) == expected


def test_a_large_message_in_parts_arrives_whole(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    """Header parts and a body given as a memoryview, with dot lines across the 256 KiB pieces."""
    body = b"".join(b"." * (i % 3) + b"b\xc3\xa9" * (i * 7919 % 300) + b"\r\n" for i in range(3000))
    parts = (b"Received: x\r\n", b"From: a@src.test\r\nSubject: big\r\n", memoryview(b"X" + body)[1:])
    d = make(dns_server, routes={"dest.test": sink.address})
    assert send(d, ["b@dest.test"], message=parts) == {"b@dest.test": None}
    (got,) = sink.wait_for(1)
    assert got.data == b"".join(parts)


def test_null_sender(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = make(dns_server, routes={"*": sink.address})
    assert send(d, ["b@dest.test"], mail_from="") == {"b@dest.test": None}
    assert sink.wait_for(1)[0].mail_from == "<>"  # aiosmtpd records the null path as "<>"


def test_mx_lookup_and_preference_fallback(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    dns_server.add("pref.test", "MX", "10 dead.pref.test.")
    dns_server.add("pref.test", "MX", "20 live.pref.test.")
    dns_server.add("dead.pref.test", "A", "127.0.0.3")  # nothing listens there
    dns_server.add("live.pref.test", "A", "127.0.0.1")
    d = make(dns_server, port=sink.port)
    assert send(d, ["x@pref.test"]) == {"x@pref.test": None}
    assert sink.wait_for(1)[0].rcpt_tos == ["x@pref.test"]
    assert ("pref.test", "MX") in dns_server.queries


def test_implicit_mx_from_a_record(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    dns_server.add("amx.test", "A", "127.0.0.1")
    d = make(dns_server, port=sink.port)
    assert send(d, ["x@amx.test"]) == {"x@amx.test": None}


def test_dns_failures(dns_server: LoopbackDNS) -> None:
    dns_server.add("nullmx.test", "MX", "0 .")
    dns_server.set_failure("servfail.test", "SERVFAIL")
    d = make(dns_server, port=1)
    res = send(d, ["a@nullmx.test", "b@nxdomain.test", "c@servfail.test"])
    assert res["a@nullmx.test"] is not None and res["a@nullmx.test"].permanent
    assert res["a@nullmx.test"].enhanced_code == "5.1.10"
    assert res["b@nxdomain.test"] is not None and res["b@nxdomain.test"].permanent
    assert res["c@servfail.test"] is not None and res["c@servfail.test"].temporary


def test_per_recipient_replies_and_data_failure(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    sink.behaviour.rcpt = {"gone@dest.test": "550 5.1.1 No such user", "busy@dest.test": "450 4.2.1 Busy"}
    d = make(dns_server, routes={"*": sink.address})
    res = send(d, ["gone@dest.test", "busy@dest.test", "ok@dest.test"])
    assert res["ok@dest.test"] is None
    assert res["gone@dest.test"] == SmtpError(550, "5.1.1", "No such user")
    assert res["busy@dest.test"] is not None and res["busy@dest.test"].temporary
    assert sink.wait_for(1)[0].rcpt_tos == ["ok@dest.test"]

    sink.reset()
    sink.behaviour.data = "554 5.7.1 Rejected as spam"
    res = send(make(dns_server, routes={"*": sink.address}), ["a@dest.test", "b@dest.test"])
    assert all(e == SmtpError(554, "5.7.1", "Rejected as spam") for e in res.values())


def test_connection_reuse(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = make(dns_server, routes={"*": sink.address})

    async def go() -> list[dict[str, SmtpError | None]]:
        try:
            return [await d.send("s@src.test", [f"r{i}@dest.test"], MSG) for i in range(3)]
        finally:
            await d.close()

    assert all(r == {f"r{i}@dest.test": None} for i, r in enumerate(asyncio.run(go())))
    sink.wait_for(3)
    assert sink.connections == 1


def test_connect_refused_and_421_are_temporary(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    res = send(make(dns_server, routes={"*": "127.0.0.1:1"}), ["a@dest.test"])
    assert res["a@dest.test"] is not None and res["a@dest.test"].temporary
    sink.behaviour.connect = "421 4.3.2 Too busy"
    res = send(make(dns_server, routes={"*": sink.address}), ["a@dest.test"])
    assert res["a@dest.test"] is not None and res["a@dest.test"].temporary


def test_stall_and_drop_are_temporary(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    sink.behaviour.stall_seconds_after_data = 5
    res = send(make(dns_server, routes={"*": sink.address}, data_timeout=1), ["a@dest.test"])
    assert res["a@dest.test"] is not None and res["a@dest.test"].temporary
    sink.reset()
    sink.behaviour.close_mid_data = True
    res = send(make(dns_server, routes={"*": sink.address}), ["a@dest.test"])
    assert res["a@dest.test"] is not None and res["a@dest.test"].temporary
    assert sink.messages == []


def test_opportunistic_starttls(dns_server: LoopbackDNS, tls_sink: SmtpSink) -> None:
    d = make(dns_server, routes={"*": tls_sink.address})
    assert send(d, ["a@dest.test"]) == {"a@dest.test": None}
    assert tls_sink.wait_for(1)[0].tls is True
    d = make(dns_server, routes={"*": tls_sink.address}, starttls="off")
    assert send(d, ["a@dest.test"]) == {"a@dest.test": None}
    assert tls_sink.wait_for(2)[1].tls is False


def test_utf8_address_needs_smtputf8(dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    d = make(dns_server, routes={"*": sink.address})
    res = send(d, ["jörg@dest.test"], message="Subject: ü\r\n\r\nü\r\n".encode())
    assert res == {"jörg@dest.test": None}
    assert sink.wait_for(1)[0].rcpt_tos == ["jörg@dest.test"]
