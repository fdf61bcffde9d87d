"""MX end to end, the delivery side: downstream 4xx/5xx/refused/timeout, partial failure and its notice,
no double delivery on the sender's retry, MX preference and fallback, size limit, loops, SMTP smuggling,
8BITMIME/SMTPUTF8 and DKIM signatures surviving the forward."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import dkim
import pytest

from fwdmail.runtime import keys
from tests.support.daemon import Daemon, free_port
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import CLIENT, error_rows, message, send, start_daemon
from tests.support.raw_smtp import RawSmtp
from tests.support.smtp_sink import SmtpSink

LIMIT = 100_000

SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["alias", "add", "ok@ours.test", "ok@dest.test"],
    ["alias", "add", "other@ours.test", "other@dest.test"],
    ["alias", "add", "temp@ours.test", "busy@dest.test"],
    ["alias", "add", "perm@ours.test", "gone@dest.test"],
    ["alias", "add", "down@ours.test", "x@down.test"],
    ["alias", "add", "part@ours.test", "fine@dest.test", "bad@dest.test"],
    ["alias", "add", "retry@ours.test", "r1@dest.test", "r2@dest.test"],
    ["alias", "add", "pref@ours.test", "u@pref.test"],
    ["alias", "add", "fall@ours.test", "u@fall.test"],
    ["alias", "add", "afall@ours.test", "u@afall.test"],
    ["alias", "add", "nullmx@ours.test", "u@nullmx.test"],
    ["alias", "add", "nx@ours.test", "u@nxdomain-mx.test"],
    ["alias", "add", "busy@ours.test", "u@busy.test"],
]

DNS = [
    ("pref.test", "MX", "10 mxa.pref.test."), ("pref.test", "MX", "20 mxb.pref.test."),
    ("mxa.pref.test", "A", "127.0.0.3"), ("mxb.pref.test", "A", "127.0.0.1"),
    ("fall.test", "MX", "10 mxa.fall.test."), ("fall.test", "MX", "20 mxb.fall.test."),
    ("mxa.fall.test", "A", "127.0.0.4"), ("mxb.fall.test", "A", "127.0.0.1"),
    ("afall.test", "A", "127.0.0.1"),
    ("nullmx.test", "MX", "0 ."),
    ("busy.test", "MX", "10 mx.busy.test."), ("mx.busy.test", "A", "127.0.0.5"),
]


@pytest.fixture(scope="module")
def downstream() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def second_mx(downstream: SmtpSink) -> Iterator[SmtpSink]:
    """The preferred MX of pref.test: another real server on 127.0.0.3, same port."""
    with SmtpSink(host="127.0.0.3", port=downstream.port) as s:
        yield s


@pytest.fixture
def sink(downstream: SmtpSink, second_mx: SmtpSink) -> SmtpSink:
    downstream.reset()
    second_mx.reset()
    return downstream


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
       downstream: SmtpSink) -> Iterator[Daemon]:
    for name, rtype, value in DNS:
        dns_server.add(name, rtype, value)
    routes = {"dest.test": downstream.address, "owner.test": downstream.address,
              "down.test": f"127.0.0.1:{free_port()}"}
    d = start_daemon(tmp_path_factory.mktemp("mx-delivery"), {
        "dns": {"nameservers": [dns_server.address]},
        "mx": {"max_message_size": LIMIT},
        "abuse": {"max_messages_per_ip_per_minute": 10_000, "max_errors_per_session": 1_000},
        "delivery": {"routes": routes, "port": downstream.port, "data_timeout": 2, "command_timeout": 3,
                     "connect_timeout": 2},
    }, SETUP)
    yield d
    d.stop()
    for name in {n for n, _, _ in DNS}:
        dns_server.remove(name)


# downstream failures

def test_downstream_4xx_at_rcpt_is_4xx_with_the_destination_masked(mx: Daemon, sink: SmtpSink) -> None:
    sink.behaviour.rcpt = {"busy@dest.test": "450 4.2.0 <busy@dest.test>: mailbox busy"}
    out = send(mx, "alice@src.test", ["temp@ours.test"], message())
    assert out.code == 450, out.text
    assert out.text == "4.2.0 <temp@ours.test>: <temp@ours.test>: mailbox busy"
    rows = [(r["direction"], r["alias"], r["code"], r["text"]) for r in error_rows(mx)]
    assert ("outbound", "temp@ours.test", 450, "<temp@ours.test>: mailbox busy") in rows
    assert any(r[:3] == ("inbound", "temp@ours.test", 450) for r in rows)
    assert "busy@dest.test" not in str(rows)


def test_downstream_4xx_after_data(mx: Daemon, sink: SmtpSink) -> None:
    sink.behaviour.data = "451 4.3.0 local problem"
    out = send(mx, "alice@src.test", ["ok@ours.test"], message())
    assert (out.code, out.text.split(" ")[0]) == (451, "4.3.0")


def test_downstream_421_is_451_to_the_sender(mx: Daemon, downstream: SmtpSink) -> None:
    with SmtpSink(host="127.0.0.5", port=downstream.port) as busy:
        busy.behaviour.connect = "421 4.3.2 Too busy"
        with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
            s.ehlo()
            s.mail("alice@src.test")
            assert s.rcpt("busy@ours.test")[0] == 250
            code, text = s.data(message())
            assert (code, text.split(b" ")[0]) == (451, b"4.3.2"), text
            assert s.noop()[0] == 250  # the session goes on: we did not hang up


def test_all_destinations_permanent_is_5xx_masked_as_the_alias(mx: Daemon, sink: SmtpSink) -> None:
    sink.behaviour.rcpt = {"gone@dest.test": "550 5.1.1 <gone@dest.test>: no such user"}
    out = send(mx, "alice@src.test", ["perm@ours.test"], message())
    assert out.code == 550
    assert out.text.startswith("5.1.1 <perm@ours.test>:") and "gone@dest.test" not in out.text
    assert sink.messages == []


def test_connection_refused_is_temporary(mx: Daemon, sink: SmtpSink) -> None:
    out = send(mx, "alice@src.test", ["down@ours.test"], message())
    assert out.code == 451 and out.text.startswith("4.4.1"), out.text


def test_downstream_timeout_is_temporary(mx: Daemon, sink: SmtpSink) -> None:
    sink.behaviour.stall_seconds_after_data = 4  # our data_timeout is 2 s
    out = send(mx, "alice@src.test", ["ok@ours.test"], message())
    assert out.code == 451 and out.text.startswith("4.4.2"), out.text


def test_partial_failure_is_250_and_the_owner_is_told(mx: Daemon, sink: SmtpSink) -> None:
    sink.behaviour.rcpt = {"bad@dest.test": "550 5.1.1 no such user"}
    out = send(mx, "alice@src.test", ["part@ours.test"], message("partial"))
    assert out.code == 250, out.text
    got = sink.wait_for(2)
    forwarded = [m for m in got if m.rcpt_tos == ["fine@dest.test"]]
    [notice] = [m for m in got if m.rcpt_tos == ["owner@owner.test"]]
    assert len(forwarded) == 1 and len(got) == 2
    assert notice.mail_from in ("", "<>")
    assert b"part@ours.test" in notice.data and b"bad@dest.test: 550 5.1.1 no such user" in notice.data
    assert b"partial" not in notice.data  # nothing of the message itself
    rows = [(r["direction"], r["alias"], r["code"]) for r in error_rows(mx)]
    assert ("outbound", "part@ours.test", 550) in rows


def test_retry_after_temporary_failure_does_not_deliver_twice(mx: Daemon, sink: SmtpSink) -> None:
    msg = message("retry")
    sink.behaviour.rcpt = {"r2@dest.test": "452 4.2.2 mailbox full"}
    first = send(mx, "alice@src.test", ["retry@ours.test"], msg)
    assert first.code == 452, first.text
    assert [m.rcpt_tos for m in sink.messages] == [["r1@dest.test"]]
    sink.behaviour.rcpt = {}
    second = send(mx, "alice@src.test", ["retry@ours.test"], msg)
    assert second.code == 250, second.text
    assert [m.rcpt_tos for m in sink.messages] == [["r1@dest.test"], ["r2@dest.test"]]
    # Once the whole message got through, the memory is dropped: a new send of it goes to both again.
    assert send(mx, "alice@src.test", ["retry@ours.test"], msg).code == 250
    assert sorted(sink.messages[2].rcpt_tos) == ["r1@dest.test", "r2@dest.test"]


# MX lookup (the shared delivery client)

def test_lowest_mx_preference_first(mx: Daemon, sink: SmtpSink, second_mx: SmtpSink) -> None:
    assert send(mx, "alice@src.test", ["pref@ours.test"], message()).code == 250
    assert [m.rcpt_tos for m in second_mx.messages] == [["u@pref.test"]]
    assert sink.messages == []


def test_next_mx_when_the_first_refuses(mx: Daemon, sink: SmtpSink) -> None:
    assert send(mx, "alice@src.test", ["fall@ours.test"], message()).code == 250
    assert [m.rcpt_tos for m in sink.messages] == [["u@fall.test"]]


def test_a_record_when_there_is_no_mx(mx: Daemon, sink: SmtpSink) -> None:
    assert send(mx, "alice@src.test", ["afall@ours.test"], message()).code == 250
    assert [m.rcpt_tos for m in sink.messages] == [["u@afall.test"]]


def test_null_mx_and_missing_domain_are_permanent(mx: Daemon, sink: SmtpSink) -> None:
    out = send(mx, "alice@src.test", ["nullmx@ours.test"], message())
    assert out.code == 556 and out.text.startswith("5.1.10 <nullmx@ours.test>"), out.text
    out = send(mx, "alice@src.test", ["nx@ours.test"], message())
    assert out.code == 550 and "u@nxdomain-mx.test" not in out.text, out.text


# data checks

def _body(size: int) -> bytes:
    line = b"x" * 78 + b"\r\n"
    return line * (size // len(line))


def test_size_limit(mx: Daemon, sink: SmtpSink) -> None:
    with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
        s.ehlo()
        assert s.esmtp_features["size"] == str(LIMIT)
        assert s.mail("alice@src.test", [f"SIZE={LIMIT + 1}"])[0] == 552
        assert s.mail("alice@src.test")[0] == 250
        assert s.rcpt("ok@ours.test")[0] == 250
        assert s.data(message(body=_body(LIMIT + 5000))) == (552, b"5.3.4 Message too big")
        assert s.mail("alice@src.test")[0] == 250  # the session is still in step
        assert s.rcpt("ok@ours.test")[0] == 250
        fits = message(body=_body(LIMIT - 2000))
        assert s.data(fits)[0] == 250
    [got] = sink.messages
    assert got.data.endswith(fits)
    rows = [(r["direction"], r["alias"], r["code"]) for r in error_rows(mx)]
    assert ("inbound", "ok@ours.test", 552) in rows


def test_too_many_received_headers_is_a_loop(mx: Daemon, sink: SmtpSink) -> None:
    hops = b"".join(b"Received: from hop%d.test by hop%d.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i)
                    for i in range(26))
    out = send(mx, "alice@src.test", ["ok@ours.test"], hops + message())
    assert (out.code, out.text) == (554, "5.4.6 Mail loop detected")
    assert send(mx, "alice@src.test", ["ok@ours.test"], hops.split(b"\r\n", 1)[1] + message()).code == 250


def test_our_own_marker_is_a_loop_for_the_same_alias(mx: Daemon, sink: SmtpSink) -> None:
    assert send(mx, "alice@src.test", ["ok@ours.test"], message()).code == 250
    came_back = sink.messages[0].data
    out = send(mx, "alice@src.test", ["ok@ours.test"], came_back)
    assert (out.code, out.text) == (554, "5.4.6 Mail loop detected")
    assert send(mx, "alice@src.test", ["other@ours.test"], came_back).code == 250  # another alias: fine


SMUGGLED = b"MAIL FROM:<evil@src.test>\r\nRCPT TO:<ok@ours.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"


@pytest.mark.parametrize("end", [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"])
def test_smuggling_is_not_an_end_of_data(mx: Daemon, sink: SmtpSink, end: bytes) -> None:
    c = RawSmtp(mx.mx_port)
    try:
        assert c.cmd(b"EHLO client.test\r\n")[0] == 250
        assert c.cmd(b"MAIL FROM:<alice@src.test>\r\n")[0] == 250
        assert c.cmd(b"RCPT TO:<ok@ours.test>\r\n")[0] == 250
        assert c.cmd(b"DATA\r\n")[0] == 354
        code, text = c.cmd(b"Subject: real\r\n\r\nhello" + end + SMUGGLED + b".\r\n")
        assert (code, text[:5]) == (550, b"5.5.2")
        assert c.cmd(b"QUIT\r\n")[0] == 221  # the smuggled commands were data, not commands
    finally:
        c.close()
    assert sink.messages == []


def test_bare_lf_inside_a_message_is_refused_and_a_clean_one_passes(mx: Daemon, sink: SmtpSink) -> None:
    c = RawSmtp(mx.mx_port)
    try:
        c.cmd(b"EHLO client.test\r\n")
        c.cmd(b"MAIL FROM:<alice@src.test>\r\n")
        c.cmd(b"RCPT TO:<ok@ours.test>\r\n")
        c.cmd(b"DATA\r\n")
        assert c.cmd(b"Subject: lf\r\n\r\none\ntwo\r\n.\r\n")[0] == 550
        c.cmd(b"MAIL FROM:<alice@src.test>\r\n")
        c.cmd(b"RCPT TO:<ok@ours.test>\r\n")
        c.cmd(b"DATA\r\n")
        assert c.cmd(b"Subject: crlf\r\n\r\n..dot\r\n.\r\n")[0] == 250
    finally:
        c.close()
    [got] = sink.messages
    assert got.data.endswith(b"\r\nSubject: crlf\r\n\r\n.dot\r\n")


def test_8bit_body_is_forwarded_byte_for_byte(mx: Daemon, sink: SmtpSink) -> None:
    msg = message(body="Grüße, ½ € — ok\r\n".encode())
    assert send(mx, "alice@src.test", ["ok@ours.test"], msg, mail_options=["BODY=8BITMIME"]).code == 250
    assert sink.messages[0].data.endswith(msg)


def test_smtputf8_sender(mx: Daemon, sink: SmtpSink) -> None:
    c = RawSmtp(mx.mx_port)
    try:
        c.cmd(b"EHLO client.test\r\n")
        assert c.cmd("MAIL FROM:<jürgen@src.test>\r\n".encode())[:1] == (553,)
        assert c.cmd("MAIL FROM:<jürgen@src.test> SMTPUTF8\r\n".encode())[0] == 250
        assert c.cmd(b"RCPT TO:<ok@ours.test>\r\n")[0] == 250
        assert c.cmd(b"DATA\r\n")[0] == 354
        assert c.cmd("Subject: ünïcode\r\n\r\nhi\r\n.\r\n".encode())[0] == 250
    finally:
        c.close()
    [got] = sink.messages
    assert got.mail_from.startswith("SRS0=") and got.mail_from.endswith("=src.test=jürgen@srs.fwdmail.test")
    assert got.data.endswith("Subject: ünïcode\r\n\r\nhi\r\n".encode())


def test_dkim_signature_survives_the_forward(mx: Daemon, sink: SmtpSink) -> None:
    pem = keys.generate_dkim_key(1024)
    msg = message("signed", body=b"A signed body.\r\n")
    signed = dkim.sign(msg, b"sel", b"src.test", pem.encode(),
                       include_headers=[b"from", b"to", b"subject", b"message-id"]) + msg
    assert send(mx, "alice@src.test", ["ok@ours.test"], signed).code == 250
    record = keys.dkim_public_record(pem).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name.rstrip(b".") == b"sel._domainkey.src.test" else b""

    assert dkim.verify(sink.messages[0].data, dnsfunc=dnsfunc)
