"""MX end to end: alias resolution, disabled aliases, relay attempts, SRS forward and reverse, live CLI
edits and the error log, through the real daemon to a real downstream SMTP server on loopback."""

from __future__ import annotations

import datetime as dt
import json
import re
import smtplib
import ssl
import time
from collections.abc import Iterator

import pytest

from fwdmail.mail import srs
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import CLIENT, cli, error_rows, message, send, start_daemon
from tests.support.smtp_sink import SmtpSink

SECRET = "mx-forward-test-secret"
SRS_DOMAIN = "srs.fwdmail.test"
RECEIVED = re.compile(
    rb"Received: from client\.test by mx\.fwdmail\.test \(fwdmail\) with (ESMTPS?) id F[0-9A-F]{15};"
    rb"\r\n\t[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000\r\n"
)

SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["domain", "add", "catch.test", "--account", "owner@owner.test"],
    ["domain", "add", "bücher.test", "--account", "owner@owner.test"],
    ["alias", "add", "exact@ours.test", "one@dest.test"],
    ["alias", "add", "/^(.+)-sales$/@ours.test", "$1@dest.test", "team@dest.test"],
    ["alias", "add", "multi@ours.test", "a@dest.test", "b@dest.test", "c@dest.test"],
    ["alias", "add", "overlap@ours.test", "c@dest.test", "d@dest.test"],
    ["alias", "add", "*@catch.test", "catchall@dest.test"],
    ["alias", "add", "named@catch.test", "named@dest.test"],
    ["alias", "add", "info@bücher.test", "idn@dest.test"],
    ["alias", "add", "quiet@ours.test", "q@dest.test"],
    ["alias", "disable", "quiet@ours.test", "--mode", "quiet"],
    ["alias", "add", "tempfail@ours.test", "t@dest.test"],
    ["alias", "disable", "tempfail@ours.test", "--mode", "tempfail"],
    ["alias", "add", "reject@ours.test", "r@dest.test"],
    ["alias", "disable", "reject@ours.test", "--mode", "reject"],
]


@pytest.fixture
def sink(clean_downstream: SmtpSink) -> SmtpSink:
    return clean_downstream


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
       downstream: SmtpSink) -> Iterator[Daemon]:
    # other.test also leads to the sink, so that relaying to it would show there
    routes = {dom: downstream.address for dom in ("dest.test", "owner.test", "src.test", "first.test",
                                                  "other.test")}
    d = start_daemon(tmp_path_factory.mktemp("mx-forward"), {
        "dns": {"nameservers": [dns_server.address]},
        "srs": {"secret": SECRET},
        "delivery": {"routes": routes},
        "abuse": {"max_messages_per_ip_per_minute": 10_000, "max_errors_per_session": 1_000},
    }, SETUP)
    yield d
    d.stop()


def srs_now(sender: str) -> set[str]:
    """The SRS form of `sender` today (and tomorrow's, in case the test crosses midnight)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return {srs.forward(sender, SECRET.encode(), SRS_DOMAIN, t)
            for t in (now, now + dt.timedelta(seconds=60))}


def test_exact_alias_forwards_byte_for_byte_with_srs_and_private_received(mx: Daemon, sink: SmtpSink) -> None:
    msg = message(body=b"..a line starting with a dot\r\nbody\r\n")
    out = send(mx, "alice@src.test", ["exact@ours.test"], msg)
    assert out.rcpts == [(250, b"2.1.5 Recipient OK")]
    assert out.code == 250, out.text
    [got] = sink.messages
    assert got.rcpt_tos == ["one@dest.test"]
    assert got.mail_from in srs_now("alice@src.test")
    assert got.mail_from.startswith("SRS0=") and got.mail_from.endswith("@" + SRS_DOMAIN)
    assert got.data.endswith(msg)
    head = got.data[: -len(msg)]
    ours = RECEIVED.match(head)
    assert ours, head
    # Below our Received, only the sender-authentication trace (Authentication-Results, ARC) may be added.
    lines = head[ours.end():].split(b"\r\n")
    added = [line.split(b":")[0] for line in lines if line and line[:1] not in b" \t"]
    assert all(name == b"Authentication-Results" or name.startswith(b"ARC-") for name in added), added
    assert b"127.0.0.1" not in head and b"exact@ours.test" not in head and b"one@dest.test" not in head


def test_plus_addressing_keeps_the_tag_on_the_destination(mx: Daemon, sink: SmtpSink) -> None:
    assert send(mx, "alice@src.test", ["exact+news@ours.test"], message()).code == 250
    assert [m.rcpt_tos for m in sink.messages] == [["one+news@dest.test"]]


def test_regex_alias_substitutes_the_group(mx: Daemon, sink: SmtpSink) -> None:
    assert send(mx, "alice@src.test", ["bob-sales@ours.test"], message()).code == 250
    [got] = sink.messages
    assert sorted(got.rcpt_tos) == ["bob@dest.test", "team@dest.test"]


def test_catch_all_after_exact(mx: Daemon, sink: SmtpSink) -> None:
    assert send(mx, "alice@src.test", ["whatever@catch.test"], message()).code == 250
    assert send(mx, "alice@src.test", ["named@catch.test"], message()).code == 250
    assert [m.rcpt_tos for m in sink.messages] == [["catchall@dest.test"], ["named@dest.test"]]


def test_multiple_destinations_are_delivered_once_each(mx: Daemon, sink: SmtpSink) -> None:
    out = send(mx, "alice@src.test", ["multi@ours.test", "overlap@ours.test", "MULTI@ours.test"], message())
    assert [c for c, _ in out.rcpts] == [250, 250, 250]
    assert out.code == 250, out.text
    delivered = [r for m in sink.messages for r in m.rcpt_tos]
    assert sorted(delivered) == ["a@dest.test", "b@dest.test", "c@dest.test", "d@dest.test"]


def test_disabled_aliases(mx: Daemon, sink: SmtpSink) -> None:
    out = send(mx, "alice@src.test", ["quiet@ours.test"], message())
    assert out.rcpts[0][0] == 250 and out.code == 250
    assert sink.messages == []
    out = send(mx, "alice@src.test", ["tempfail@ours.test", "reject@ours.test"], message())
    (tcode, ttext), (rcode, rtext) = out.rcpts
    assert tcode in (421, 450) and ttext.startswith(b"4.")
    assert rcode == 550 and rtext.startswith(b"5.")
    assert out.data is None
    rows = {(r["alias"], r["code"]) for r in error_rows(mx)}
    assert {("tempfail@ours.test", tcode), ("reject@ours.test", 550)} <= rows


def test_unknown_recipient_is_550_511(mx: Daemon, sink: SmtpSink) -> None:
    out = send(mx, "alice@src.test", ["nobody@ours.test"], message())
    assert out.rcpts == [(550, b"5.1.1 No such user here")]


RELAY_TRICKS = [
    "victim@other.test",
    "victim@OTHER.TEST",
    "user%victim@ours.test",
    '"victim@other.test"@ours.test',
    "@ours.test:victim@other.test",
    "victim@other.test@ours.test",
    "victim@other.test.",
    "victim@OTHER.TEST.",
    "exact@ours.test.",
    "victim@[127.0.0.1]",
    "victim@ours.test@other.test",
    "victim@other.test%ours.test",
    "victim@BÜCHER.example",
    "victim@bücher.example",
    "victim@xn--bcher-kva.example",
    "victim@srs.fwdmail.test",
    "SRS0=abcd=AA=other.test=victim@srs.fwdmail.test",
]


def test_never_an_open_relay(mx: Daemon, sink: SmtpSink) -> None:
    with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
        s.ehlo()
        assert s.mail("alice@src.test", ["SMTPUTF8"])[0] == 250
        codes = {rcpt: s.rcpt(rcpt) for rcpt in RELAY_TRICKS}
        assert {r: c for r, (c, _) in codes.items() if c != 550} == {}
        assert codes["victim@other.test"][1] == b"5.7.1 Relaying denied"
        assert s.docmd("DATA")[0] == 503
    assert sink.messages == []


CATCH_ALL_TRICKS = [
    "victim%other.test@catch.test",
    '"victim@other.test"@catch.test',
    "@catch.test:victim@other.test",
    "victim@other.test@catch.test",
    "victim@other.test@CATCH.TEST",
    "victim@catch.test.",
]


def test_relay_tricks_on_a_catch_all_domain_reach_only_the_catch_all(mx: Daemon, sink: SmtpSink) -> None:
    with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
        s.ehlo()
        assert s.mail("alice@src.test")[0] == 250
        codes = {rcpt: s.rcpt(rcpt)[0] for rcpt in CATCH_ALL_TRICKS}
        assert codes["victim%other.test@catch.test"] == 250  # a local part like any other
        assert set(codes.values()) <= {250, 550}, codes
        assert s.data(message())[0] == 250
    assert [m.rcpt_tos for m in sink.messages] == [["catchall@dest.test"]]


def test_hosted_domains_match_in_any_case_and_idn_form(mx: Daemon, sink: SmtpSink) -> None:
    rcpts = ["EXACT@OURS.TEST", "info@xn--bcher-kva.test", "info@BÜCHER.test"]
    out = send(mx, "alice@src.test", rcpts, message(), mail_options=["SMTPUTF8"])
    assert [c for c, _ in out.rcpts] == [250, 250, 250]
    assert out.code == 250, out.text
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == ["idn@dest.test", "one@dest.test"]


def test_ehlo_advertises_size_8bitmime_smtputf8_starttls_and_no_auth(mx: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
        s.ehlo()
        assert s.esmtp_features["size"] == str(50 * 1024 * 1024)
        assert {"8bitmime", "smtputf8", "starttls"} <= set(s.esmtp_features)
        assert "auth" not in s.esmtp_features


def test_forwarding_over_starttls_says_esmtps(mx: Daemon, sink: SmtpSink) -> None:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
        s.starttls(context=tls)
        s.ehlo()
        s.mail("alice@src.test")
        assert s.rcpt("exact@ours.test")[0] == 250
        msg = message()
        assert s.data(msg)[0] == 250
    [got] = sink.messages
    m = RECEIVED.match(got.data)
    assert m and m.group(1) == b"ESMTPS"


def test_srs_bounce_is_reversed_to_the_original_sender(mx: Daemon, sink: SmtpSink) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    bounce_to = srs.forward("bounce-me@src.test", SECRET.encode(), SRS_DOMAIN, now)
    out = send(mx, "", [bounce_to], message("bounce"))
    assert out.rcpts[0][0] == 250, out.rcpts
    assert out.code == 250, out.text
    [got] = sink.messages
    assert got.rcpt_tos == ["bounce-me@src.test"]
    assert got.mail_from in ("", "<>")  # the sink (aiosmtpd) records the null sender as "<>"


def test_refused_bounce_is_logged_without_the_address_its_srs_encodes(mx: Daemon, sink: SmtpSink) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    bounce_to = srs.forward("gone-sender@src.test", SECRET.encode(), SRS_DOMAIN, now)
    sink.behaviour.rcpt = {"gone-sender@src.test": "550 5.1.1 <gone-sender@src.test>: no such user"}
    before = len(error_rows(mx))
    out = send(mx, "", [bounce_to], message("bounce"))
    assert out.code == 550 and "gone-sender@src.test" not in out.text, out.text
    rows = error_rows(mx)[before:]
    assert {(r["direction"], r["alias"], r["code"]) for r in rows} == {
        ("outbound", "(SRS bounce)", 550), ("inbound", "(SRS bounce)", 550)}
    assert "gone-sender" not in str(rows) and "src.test" not in str(rows), rows


def test_srs1_is_reversed_to_the_first_forwarder(mx: Daemon, sink: SmtpSink) -> None:
    srs0 = "SRS0=8Nqu=IZ=example.com=alice@first.test"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    srs1 = srs.forward(srs0, SECRET.encode(), SRS_DOMAIN, now)
    assert srs1.startswith("SRS1=") and "=first.test==8Nqu=IZ=example.com=alice@" in srs1
    out = send(mx, "", [srs1], message("bounce"))
    assert out.code == 250, (out.rcpts, out.text)
    assert [m.rcpt_tos for m in sink.messages] == [[srs0]]


def test_invalid_or_expired_srs_is_refused(mx: Daemon, sink: SmtpSink) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    expired = srs.forward("old@src.test", SECRET.encode(), SRS_DOMAIN, now - dt.timedelta(days=22))
    still_ok = srs.forward("old@src.test", SECRET.encode(), SRS_DOMAIN, now - dt.timedelta(days=20))
    good = srs.forward("x@src.test", SECRET.encode(), SRS_DOMAIN, now)
    tampered = good.replace("=x@", "=y@")
    wrong_key = srs.forward("x@src.test", b"another secret", SRS_DOMAIN, now)
    with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
        s.ehlo()
        s.mail("")
        for bad in (expired, tampered, wrong_key, f"SRS0=zz@{SRS_DOMAIN}"):
            assert s.rcpt(bad) == (550, b"5.1.1 Invalid or expired bounce address"), bad
        assert s.rcpt(still_ok)[0] == 250
    assert sink.messages == []


def test_cli_alias_changes_are_seen_while_running(mx: Daemon, sink: SmtpSink) -> None:
    def rcpt_code(address: str, want: int) -> int:
        deadline = time.monotonic() + 10
        with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
            s.ehlo()
            s.mail("alice@src.test")
            while True:
                code = s.rcpt(address)[0]
                if code == want or time.monotonic() > deadline:
                    return code
                s.rset()
                s.mail("alice@src.test")
                time.sleep(0.05)

    assert rcpt_code("late@ours.test", 550) == 550
    cli(mx, "alias", "add", "late@ours.test", "late@dest.test")
    assert rcpt_code("late@ours.test", 250) == 250
    assert send(mx, "alice@src.test", ["late@ours.test"], message()).code == 250
    assert [m.rcpt_tos for m in sink.messages] == [["late@dest.test"]]
    cli(mx, "alias", "disable", "late@ours.test", "--mode", "tempfail")
    assert rcpt_code("late@ours.test", 450) == 450
    cli(mx, "alias", "remove", "late@ours.test")
    assert rcpt_code("late@ours.test", 550) == 550


def test_logs_command_lists_errors_without_ips(mx: Daemon) -> None:
    send(mx, "alice@src.test", ["nobody-logged@ours.test", "victim@elsewhere.test"], message())
    ours = json.loads(cli(mx, "logs", "--json", "--domain", "OURS.test").stdout)
    assert {"direction": "inbound", "domain": "ours.test", "alias": "nobody-logged@ours.test", "code": 550,
            "enhanced_code": "5.1.1", "text": "No such user here"} in [
        {k: v for k, v in r.items() if k != "time"} for r in ours]
    assert all(r["domain"] == "ours.test" for r in ours)
    other = json.loads(cli(mx, "logs", "--json", "--domain", "elsewhere.test").stdout)
    assert other == [], "a relay attempt is counted, never stored: the log names only hosted domains"
    table = cli(mx, "logs").stdout
    assert "nobody-logged@ours.test" in table and "5.1.1" in table
    everything = json.dumps(error_rows(mx), default=str)
    assert "127.0.0.1" not in everything and "src.test" not in everything
    bad = cli(mx, "logs", "--domain", "not a domain", expect=1)
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr


def test_bad_sender_syntax_is_refused_and_logged_without_the_sender(mx: Daemon) -> None:
    before = len(error_rows(mx))
    with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
        s.ehlo()
        assert s.docmd('MAIL FROM:<"a b"@bad-sender.test>') == (553, b"5.1.7 Bad sender address syntax")
        assert s.docmd("MAIL FROM:<a@b@bad-sender.test>") == (553, b"5.1.7 Bad sender address syntax")
        assert s.docmd("MAIL FROM:<alice@src.test>")[0] == 250
    rows = error_rows(mx)[before:]
    assert [(r["direction"], r["domain_name"], r["alias"], r["code"], r["enhanced_code"]) for r in rows] == [
        ("inbound", "", "", 553, "5.1.7")] * 2
    assert "bad-sender" not in str(rows)


def test_received_header_never_names_an_ip_helo(mx: Daemon, sink: SmtpSink) -> None:
    with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname="[127.0.0.1]", timeout=30) as s:
        s.ehlo()
        s.mail("alice@src.test")
        s.rcpt("exact@ours.test")
        assert s.data(message())[0] == 250
    [got] = sink.messages
    first = got.data.split(b"\r\n", 1)[0]
    assert first.startswith(b"Received: from unknown by mx.fwdmail.test")


def test_protocol_errors_are_logged_without_client_input(mx: Daemon) -> None:
    """Replies no MX decision produced (syntax, sequence, SIZE) are error-log rows too, scrubbed."""
    before = len(error_rows(mx))
    with smtplib.SMTP("127.0.0.1", mx.mx_port, local_hostname=CLIENT, timeout=30) as s:
        s.ehlo()
        assert s.docmd("XSPY", "victim@leak.test 127.0.0.9")[0] == 500
        assert s.docmd("RCPT TO:<someone@ours.test>")[0] == 503
        assert s.docmd("MAIL FROM:<alice@src.test> SIZE=999999999999")[0] == 552
    deadline = time.monotonic() + 10
    while len(error_rows(mx)) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = error_rows(mx)[before:]
    assert sorted(r["code"] for r in rows) == [500, 503, 552]
    assert all(r["direction"] == "inbound" and r["domain_name"] == "" and r["alias"] == "" for r in rows)
    assert "leak.test" not in str(rows) and "127.0.0" not in str(rows) and "src.test" not in str(rows)
