"""Proof that the test-support servers (DNS, SMTP sink, TLS) behave as documented."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from tests.support import tls
from tests.support.dns_server import LoopbackDNS
from tests.support.smtp_sink import SmtpSink

CLIENT = "client.test"  # explicit EHLO name: smtplib would otherwise call socket.getfqdn()
MSG = b"From: a@src.test\r\nTo: b@dst.test\r\nSubject: hi\r\n\r\nhello\r\n"
DKIM_KEY = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 9  # ~420 chars


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def dns_module() -> Iterator[LoopbackDNS]:
    with LoopbackDNS() as server:
        yield server


@pytest.fixture
def dns_server(dns_module: LoopbackDNS) -> LoopbackDNS:
    dns_module.clear()
    return dns_module


def resolver_for(server: LoopbackDNS, lifetime: float = 2.0) -> dns.resolver.Resolver:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = server.port
    res.lifetime = lifetime
    res.cache = None
    return res


@pytest.fixture
def tls_sink() -> Iterator[SmtpSink]:
    with SmtpSink(tls_context=tls.server_context()) as server:
        yield server


def smtp(server: SmtpSink, timeout: float = 5.0) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, local_hostname=CLIENT, timeout=timeout)


# --------------------------------------------------------------------------- DNS
def test_dns_address_format(dns_server: LoopbackDNS) -> None:
    assert dns_server.address == f"127.0.0.1:{dns_server.port}"
    assert dns_server.port > 0


def test_dns_resolves_mx_a_aaaa_txt(dns_server: LoopbackDNS) -> None:
    dns_server.add("Example.COM.", "MX", "20 mx2.example.com.")
    dns_server.add("example.com", "MX", "10 mx1.example.com")
    dns_server.add("mx1.example.com", "A", "127.0.0.10")
    dns_server.add("mx1.example.com", "AAAA", "::1")
    dns_server.add("example.com", "TXT", "v=spf1 -all")
    dns_server.add("sel._domainkey.example.com", "TXT", DKIM_KEY)
    res = resolver_for(dns_server)

    mx = sorted((r.preference, r.exchange.to_text()) for r in res.resolve("example.com", "MX"))
    assert mx == [(10, "mx1.example.com."), (20, "mx2.example.com.")]
    assert [r.address for r in res.resolve("MX1.example.com.", "A")] == ["127.0.0.10"]
    assert [r.address for r in res.resolve("mx1.example.com", "AAAA")] == ["::1"]
    assert [b"".join(r.strings) for r in res.resolve("example.com", "TXT")] == [b"v=spf1 -all"]

    (dkim,) = res.resolve("sel._domainkey.example.com", "TXT")
    assert len(DKIM_KEY) > 255 and len(dkim.strings) > 1
    assert all(len(s) <= 255 for s in dkim.strings)
    assert b"".join(dkim.strings).decode() == DKIM_KEY
    assert ("example.com", "MX") in dns_server.queries


def test_dns_asyncresolver(dns_server: LoopbackDNS) -> None:
    dns_server.add("example.org", "MX", "5 mx.example.org.")
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")

    async def lookup() -> tuple[list[str], bytes]:
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = ["127.0.0.1"]
        res.port = dns_server.port
        res.lifetime = 2.0
        mx = await res.resolve("example.org", "MX")
        txt = await res.resolve("_dmarc.example.org", "TXT")
        return [r.exchange.to_text() for r in mx], b"".join(txt[0].strings)

    assert asyncio.run(lookup()) == (["mx.example.org."], b"v=DMARC1; p=reject")


def test_dns_nxdomain_and_nodata(dns_server: LoopbackDNS) -> None:
    dns_server.add("example.net", "A", "127.0.0.3")
    res = resolver_for(dns_server)
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("missing.example.net", "A")
    with pytest.raises(dns.resolver.NoAnswer):  # name exists, no MX: NODATA
        res.resolve("example.net", "MX")


def test_dns_cname_followed(dns_server: LoopbackDNS) -> None:
    dns_server.add("alias.example.com", "CNAME", "real.example.com.")
    dns_server.add("real.example.com", "A", "127.0.0.4")
    answer = resolver_for(dns_server).resolve("alias.example.com", "A")
    assert [r.address for r in answer] == ["127.0.0.4"]
    assert answer.canonical_name.to_text() == "real.example.com."


@pytest.mark.parametrize("mode", ["SERVFAIL", "REFUSED", "NXDOMAIN"])
def test_dns_failure_modes(dns_server: LoopbackDNS, mode: str) -> None:
    dns_server.add("broken.example.com", "MX", "10 mx.example.com.")
    dns_server.set_failure("broken.example.com.", mode)  # type: ignore[arg-type]
    reply = dns.query.udp(
        dns.message.make_query("broken.example.com", "MX"), "127.0.0.1", port=dns_server.port, timeout=2
    )
    assert reply.rcode() == dns.rcode.from_text(mode)
    expected = dns.resolver.NXDOMAIN if mode == "NXDOMAIN" else dns.resolver.NoNameservers
    with pytest.raises(expected):
        resolver_for(dns_server).resolve("broken.example.com", "MX")

    dns_server.clear_failure("BROKEN.example.com")
    assert len(resolver_for(dns_server).resolve("broken.example.com", "MX")) == 1


def test_dns_timeout(dns_server: LoopbackDNS) -> None:
    dns_server.set_failure("slow.example.com", "timeout")
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver_for(dns_server, lifetime=0.3).resolve("slow.example.com", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.tcp(
            dns.message.make_query("slow.example.com", "A"), "127.0.0.1", port=dns_server.port, timeout=0.3
        )


def test_dns_tcp_and_udp_truncation(dns_server: LoopbackDNS) -> None:
    big = "k=" + "x" * 3000
    dns_server.add("big.example.com", "TXT", big)
    query = dns.message.make_query("big.example.com", "TXT")
    udp = dns.query.udp(query, "127.0.0.1", port=dns_server.port, timeout=2)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = dns.query.tcp(query, "127.0.0.1", port=dns_server.port, timeout=2)
    assert b"".join(tcp.answer[0][0].strings).decode() == big
    # With EDNS (payload >= 1232) a ~1 KB answer still fits in one UDP datagram.
    dns_server.add("mid.example.com", "TXT", "m" * 900)
    edns_query = dns.message.make_query("mid.example.com", "TXT", use_edns=0, payload=4096)
    edns_reply = dns.query.udp(edns_query, "127.0.0.1", port=dns_server.port, timeout=2)
    assert edns_reply.edns == 0 and not edns_reply.flags & dns.flags.TC
    assert len(b"".join(edns_reply.answer[0][0].strings)) == 900
    # The stub resolver falls back to TCP transparently.
    (txt,) = resolver_for(dns_server).resolve("big.example.com", "TXT")
    assert b"".join(txt.strings).decode() == big


def test_dns_remove_clear_and_live_mutation(dns_server: LoopbackDNS) -> None:
    res = resolver_for(dns_server)
    dns_server.add("host.example.com", "A", "127.0.0.5")
    dns_server.add("host.example.com", "TXT", "hello")
    dns_server.remove("host.example.com", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("host.example.com", "A")
    dns_server.remove("host.example.com")
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("host.example.com", "TXT")

    def writer() -> None:
        for i in range(200):
            dns_server.add("busy.example.com", "A", f"127.0.1.{i % 250}")

    thread = threading.Thread(target=writer)
    thread.start()
    for _ in range(20):
        try:
            res.resolve("busy.example.com", "A")
        except dns.resolver.NXDOMAIN:
            pass
    thread.join()
    assert len(res.resolve("busy.example.com", "A")) == 200

    dns_server.clear()
    assert dns_server.queries == []
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("busy.example.com", "A")


def test_dns_rejects_bad_values(dns_server: LoopbackDNS) -> None:
    with pytest.raises(ValueError):
        dns_server.add("x.example.com", "MX", "mx.example.com")
    with pytest.raises(ValueError):
        dns_server.add("x.example.com", "A", "::1")
    with pytest.raises(ValueError):
        dns_server.add("x.example.com", "SRV", "0 0 25 x.")
    with pytest.raises(ValueError):
        dns_server.set_failure("x.example.com", "BOOM")  # type: ignore[arg-type]


# -------------------------------------------------------------------------- SMTP
def test_sink_records_delivery(sink: SmtpSink) -> None:
    assert sink.address == f"127.0.0.1:{sink.port}"
    with smtp(sink) as client:
        assert client.sendmail("a@src.test", ["b@dst.test", "C@dst.test"], MSG) == {}
    (msg,) = sink.wait_for(1)
    assert msg.mail_from == "a@src.test"
    assert msg.rcpt_tos == ["b@dst.test", "C@dst.test"]
    assert msg.data == MSG
    assert msg.tls is False
    assert msg.peer.startswith("127.0.0.1:")
    assert sink.connections == 1

    sink.reset()
    assert sink.messages == [] and sink.connections == 0


def test_sink_wait_for_times_out(sink: SmtpSink) -> None:
    with pytest.raises(AssertionError, match="expected at least 1 message"):
        sink.wait_for(1, timeout=0.1)


def test_sink_starttls_verified_with_test_ca(tls_sink: SmtpSink) -> None:
    with smtp(tls_sink) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=tls.client_context())
        client.ehlo()
        client.sendmail("a@src.test", ["b@dst.test"], MSG)
    assert tls_sink.wait_for(1)[0].tls is True

    # Untrusted CA: verification must fail.
    with smtp(tls_sink) as client, pytest.raises(ssl.SSLCertVerificationError):
        client.starttls(context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


def test_sink_aiosmtplib_starttls(tls_sink: SmtpSink) -> None:
    async def send() -> None:
        await aiosmtplib.send(
            MSG,
            sender="a@src.test",
            recipients=["b@dst.test"],
            hostname=tls_sink.host,
            port=tls_sink.port,
            local_hostname=CLIENT,
            start_tls=True,
            tls_context=tls.client_context(),
            timeout=5,
        )

    asyncio.run(send())
    (msg,) = tls_sink.wait_for(1)
    assert msg.tls and msg.rcpt_tos == ["b@dst.test"]


def test_sink_rcpt_replies(sink: SmtpSink) -> None:
    sink.behaviour.rcpt = {"nouser@dst.test": "550 5.1.1 No such user", "busy@dst.test": "450 4.2.0 busy"}
    with smtp(sink) as client:
        refused = client.sendmail("a@src.test", ["NoUser@dst.test", "busy@dst.test", "ok@dst.test"], MSG)
        assert refused == {
            "NoUser@dst.test": (550, b"5.1.1 No such user"),
            "busy@dst.test": (450, b"4.2.0 busy"),
        }
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("a@src.test", ["nouser@dst.test"], MSG)
    assert [m.rcpt_tos for m in sink.wait_for(1)] == [["ok@dst.test"]]


def test_sink_mail_reply(sink: SmtpSink) -> None:
    sink.behaviour.mail = "451 4.7.1 greylisted"
    with smtp(sink) as client, pytest.raises(smtplib.SMTPSenderRefused) as err:
        client.sendmail("a@src.test", ["b@dst.test"], MSG)
    assert err.value.smtp_code == 451
    assert sink.messages == []


def test_sink_data_replies_then_default(sink: SmtpSink) -> None:
    sink.behaviour.data_replies = ["451 4.3.0 try later", None]
    with smtp(sink) as client:
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("a@src.test", ["b@dst.test"], MSG)
        assert err.value.smtp_code == 451
        client.rset()
        assert client.sendmail("a@src.test", ["b@dst.test"], MSG) == {}
        client.rset()
        assert client.sendmail("a@src.test", ["b@dst.test"], MSG) == {}
    assert len(sink.wait_for(2)) == 2
    assert sink.behaviour.data_replies == []


def test_sink_data_reply_and_callable(sink: SmtpSink) -> None:
    sink.behaviour.data = "554 5.7.1 rejected"
    with smtp(sink) as client:
        with pytest.raises(smtplib.SMTPDataError) as err:
            client.sendmail("a@src.test", ["b@dst.test"], MSG)
        assert err.value.smtp_code == 554
        sink.behaviour.data = lambda env: (
            "552 5.3.4 too big" if len(env.original_content or b"") > 100 else None
        )
        client.rset()
        client.sendmail("a@src.test", ["b@dst.test"], MSG)
        client.rset()
        with pytest.raises(smtplib.SMTPDataError):
            client.sendmail("a@src.test", ["b@dst.test"], MSG + b"x" * 200 + b"\r\n")
    assert len(sink.wait_for(1)) == 1


def test_sink_connect_reply(sink: SmtpSink) -> None:
    sink.behaviour.connect = "421 4.3.2 busy"
    with pytest.raises(smtplib.SMTPConnectError) as err:
        smtp(sink)
    assert err.value.smtp_code == 421
    assert sink.connections == 1


def test_sink_stall_triggers_client_timeout(sink: SmtpSink) -> None:
    sink.behaviour.stall_seconds_after_data = 2.0
    with smtp(sink, timeout=0.3) as client, pytest.raises(smtplib.SMTPServerDisconnected):
        client.sendmail("a@src.test", ["b@dst.test"], MSG)
    assert sink.messages == []


def test_sink_close_mid_data(sink: SmtpSink) -> None:
    sink.behaviour.close_mid_data = True
    with smtp(sink) as client, pytest.raises(smtplib.SMTPServerDisconnected):
        client.sendmail("a@src.test", ["b@dst.test"], MSG)
    assert sink.messages == []


def test_sink_restart_keeps_port() -> None:
    with SmtpSink() as server:
        port = server.port
        server.stop()
        with pytest.raises(ConnectionRefusedError):
            smtplib.SMTP(server.host, port, local_hostname=CLIENT, timeout=1)
        server.start()
        assert server.port == port
        with smtp(server) as client:
            client.sendmail("a@src.test", ["b@dst.test"], MSG)
        server.wait_for(1)


def test_sink_refuses_non_loopback() -> None:
    with pytest.raises(ValueError):
        SmtpSink(host="10.0.0.1")
    with pytest.raises(ValueError):
        LoopbackDNS(host="0.0.0.0")


# --------------------------------------------------------------------------- TLS
def test_tls_cert_files(tmp_path: Path) -> None:
    cert, key = tls.server_cert_files(tmp_path)
    assert cert.exists() and key.exists()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ca_file = tls.ca_cert_file(tmp_path)
    client = ssl.create_default_context(cafile=str(ca_file))
    assert client.get_ca_certs()
