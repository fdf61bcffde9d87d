"""Hostile SMTP input against the real daemon: smuggling, STARTTLS command injection, pipelining abuse,
1 MB command lines, endless headers, NUL bytes, non-UTF-8, broken MIME, AUTH brute force and a
pathological regex alias.

After each fault the daemon must answer in step (every reply line `NNN-`/`NNN `, one reply per command),
keep serving new sessions, deliver nothing that was not accepted, and log no traceback.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from fwdmail import store
from fwdmail.mail.addresses import parse_address
from fwdmail.policy.routing import Directory, Route, resolve
from fwdmail.smtp import replies
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.hostile import (
    TALLY,
    Closed,
    Session,
    assert_clean_log,
    delivered,
    no_tls_check,
    register_summary,
    session,
    still_serving,
)
from tests.support.mx import cli_batch, store_regex_alias
from tests.support.smtp_sink import SmtpSink

MAX_RECIPIENTS = 20
MAX_ERRORS = 20
AUTH_FAILURES = 4
MEGABYTE = 1 << 20
ALICE = "alice@example.test"

SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["domain", "add", "catch.test", "--account", "owner@owner.test"],
    ["domain", "add", "example.test", "--account", "owner@owner.test"],
    ["alias", "add", "ok@ours.test", "one@dest.test"],
    ["alias", "add", "two@ours.test", "two@dest.test"],
    ["alias", "add", "*@catch.test", "catch@dest.test"],
    ["alias", "add", ALICE, "alice@dest.test"],
]


def message(subject: str | None = None, body: bytes = b"hello\r\n", headers: bytes = b"") -> bytes:
    """A small CRLF message with a unique Message-ID (so the dedup memory never links two tests)."""
    subject = subject or uuid.uuid4().hex
    return (b"From: Sender <sender@src.test>\r\nTo: ok@ours.test\r\n" + headers +
            f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@src.test>\r\n\r\n".encode() + body)


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


@pytest.fixture
def sink(clean_downstream: SmtpSink) -> SmtpSink:
    return clean_downstream


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
           downstream: SmtpSink) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("hostile-smtp"), {
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"*": downstream.address}},
        "mx": {"max_recipients": MAX_RECIPIENTS},
        "abuse": {"max_messages_per_ip_per_minute": 10_000, "max_errors_per_session": MAX_ERRORS,
                  "max_connections_per_ip": 1_000, "max_junk_commands": 1_000},
        "submission": {"auth_failures_per_hour": AUTH_FAILURES},
    })
    cli_batch(d, SETUP)
    d.start()
    yield d
    d.stop()
    assert_clean_log(d)


@pytest.fixture(scope="module")
def alice_password(daemon: Daemon) -> str:
    return json.loads(daemon.cli("alias", "password", ALICE, "--json").output)["password"]


@pytest.fixture(autouse=True)
def _survived(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the module's daemon: no traceback in its log since the test began and, if the
    test injected a fault, a new session is still served."""
    d = request.getfixturevalue("daemon") if "daemon" in request.fixturenames else None
    start = len(d.logs()) if d is not None else 0
    faults = TALLY.faults_injected
    yield
    if d is not None:
        assert_clean_log(d, start)
        if TALLY.faults_injected > faults:
            still_serving(d)


def fault(inputs: int = 1) -> None:
    """Count one fault scenario of `inputs` hostile inputs; `_survived` checks the daemon survived it."""
    TALLY.faults_injected += 1
    TALLY.hostile_inputs_tried += inputs


def mx_session(d: Daemon, helo: bytes = b"client.test") -> Session:
    s = Session(d.mx_port)
    assert s.cmd(b"EHLO " + helo) == 250
    return s


def in_transaction(s: Session, *rcpts: bytes) -> None:
    assert s.cmd(b"MAIL FROM:<alice@src.test>") == 250
    for rcpt in rcpts or (b"ok@ours.test",):
        assert s.cmd(b"RCPT TO:<" + rcpt + b">") == 250
    assert s.cmd(b"DATA") == 354


def forward_one(s: Session, msg: bytes | None = None) -> bytes:
    """A normal transaction on `s` that must be forwarded; returns the message sent."""
    msg = msg or message()
    in_transaction(s)
    s.send(msg + b".\r\n")
    code, lines = s.reply()
    assert code == 250, lines
    return msg


def starttls_session(d: Daemon, port: int | None = None) -> Session:
    s = Session(port or d.submission_port)
    assert s.cmd(b"EHLO client.test") == 250
    assert s.cmd(b"STARTTLS") == 220
    s.starttls(no_tls_check())
    assert s.cmd(b"EHLO client.test") == 250
    return s


def plain(login: str, password: str) -> bytes:
    return base64.b64encode(f"\0{login}\0{password}".encode())


# SMTP smuggling

SMUGGLED = (b"MAIL FROM:<evil@src.test>\r\nRCPT TO:<two@ours.test>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nevil\r\n")
ENDINGS = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r\n\n.\r\n",
           b"\r\n.\n\r\n"]


@pytest.mark.parametrize("writes", ["one-write", "byte-by-byte"])
@pytest.mark.parametrize("end", ENDINGS, ids=[e.decode().encode("unicode_escape").decode() for e in ENDINGS])
def test_smuggled_end_of_data_is_data_and_the_message_is_refused(daemon: Daemon, sink: SmtpSink, end: bytes,
                                                                writes: str) -> None:
    fault()
    with mx_session(daemon) as s:
        in_transaction(s)
        payload = b"Subject: real\r\n\r\nhello" + end + SMUGGLED + b".\r\n"
        if writes == "one-write":
            s.send(payload)
        else:
            for i in range(len(payload)):
                s.send(payload[i:i + 1])
        code, lines = s.reply()
        assert (code, lines[-1][4:9]) == (550, b"5.5.2"), lines
        assert s.cmd(b"NOOP") == 250, "the smuggled commands were data, not commands"
        forward_one(s)
        assert s.cmd(b"QUIT") == 221
    got = delivered(sink, 1)
    assert [m.rcpt_tos for m in got] == [["one@dest.test"]]
    assert b"smuggled" not in got[0].data


@pytest.mark.parametrize("bare", [b"one\rtwo\r\n", b"one\ntwo\r\n", b"\n", b"\r", b"trailing\r\r\n"])
def test_bare_cr_or_lf_anywhere_refuses_the_whole_message(daemon: Daemon, sink: SmtpSink,
                                                           bare: bytes) -> None:
    fault()
    with mx_session(daemon) as s:
        in_transaction(s)
        s.send(message(body=b"before\r\n" + bare + b"after\r\n") + b".\r\n")
        assert s.reply()[0] == 550
        assert s.cmd(b"QUIT") == 221
    assert sink.messages == []


def test_an_end_of_data_split_over_many_writes_still_ends_the_message(daemon: Daemon, sink: SmtpSink) -> None:
    with mx_session(daemon) as s:
        in_transaction(s)
        msg = message(body=b"..dot-stuffed\r\nlast")
        s.send(msg)
        for byte in b"\r\n.\r\n":
            s.send(bytes([byte]))
        assert s.reply()[0] == 250
        assert s.cmd(b"QUIT") == 221
    [got] = delivered(sink, 1)
    assert got.data.endswith(msg.replace(b"..dot", b".dot") + b"\r\n")


# STARTTLS command injection

INJECTED = b"EHLO evil.test\r\nMAIL FROM:<evil@src.test>\r\nRCPT TO:<ok@ours.test>\r\n"


@pytest.mark.parametrize("listener", ["mx", "submission"])
def test_commands_sent_with_starttls_in_one_packet_are_discarded(daemon: Daemon, sink: SmtpSink,
                                                                listener: str) -> None:
    fault()
    port = daemon.mx_port if listener == "mx" else daemon.submission_port
    with session(port) as s:
        assert s.cmd(b"EHLO client.test") == 250
        s.send(b"STARTTLS\r\n" + INJECTED)
        code, lines = s.reply()
        assert code == 220, lines
        s.starttls(no_tls_check())
        s.send(b"NOOP\r\n")
        assert s.reply()[1] == [b"250 2.0.0 OK\r\n"], "the first reply after the handshake is the NOOP's"
        assert s.cmd(b"MAIL FROM:<alice@src.test>") == 503, "the injected EHLO was not executed"
        assert s.cmd(b"EHLO client.test") == 250
        if listener == "mx":
            assert s.cmd(b"RCPT TO:<ok@ours.test>") == 503, "the injected MAIL was not executed"
            forward_one(s)
        assert s.cmd(b"QUIT") == 221
    if listener == "mx":
        assert len(delivered(sink, 1)) == 1


def test_plaintext_after_starttls_before_the_handshake_ends_the_session(daemon: Daemon) -> None:
    """A client (or a man in the middle) that goes on in plaintext gets no command executed."""
    fault()
    with session(daemon.submission_port) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"STARTTLS") == 220
        s.send(b"MAIL FROM:<alice@example.test>\r\n")
        assert s.closed()


# Command lines

@pytest.mark.parametrize("line", [
    b"NOOP " + b"x" * MEGABYTE,
    b"MAIL FROM:<" + b"a" * MEGABYTE + b"@src.test>",
    b"X" * MEGABYTE,
    b"EHLO " + b"h" * MEGABYTE,
], ids=["noop", "mail", "garbage", "ehlo"])
def test_a_one_megabyte_command_line_gets_500_and_the_session_stays_in_step(daemon: Daemon, sink: SmtpSink,
                                                                           line: bytes) -> None:
    fault()
    with mx_session(daemon) as s:
        for i in range(0, len(line), 65536):
            s.send(line[i:i + 65536])
        s.send(b"\r\n")
        assert s.reply()[0] == 500
        assert s.cmd(b"NOOP") == 250
        forward_one(s)
    delivered(sink, 1)


def test_one_megabyte_lines_on_submission_before_and_after_tls(daemon: Daemon) -> None:
    fault(2)
    with session(daemon.submission_port) as s:
        assert s.cmd(b"NOOP " + b"x" * MEGABYTE) == 500
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"STARTTLS") == 220
        s.starttls(no_tls_check())
        assert s.cmd(b"AUTH PLAIN " + b"A" * MEGABYTE) == 500
        assert s.cmd(b"NOOP") == 250


def test_a_one_megabyte_auth_response_gets_a_clear_500_and_the_session_stays_in_step(
        daemon: Daemon, alice_password: str) -> None:
    fault()
    with starttls_session(daemon) as s:
        assert s.cmd(b"AUTH PLAIN") == 334
        code, text = s.text(b"A" * MEGABYTE)
        assert (code, text[:5]) == (500, b"5.5.6"), text
        assert s.cmd(b"NOOP") == 250
        assert s.cmd(b"AUTH LOGIN") == 334
        assert s.cmd(b"B" * MEGABYTE) == 500
        assert s.cmd(b"AUTH PLAIN") == 334
        assert s.cmd(plain(ALICE, alice_password)) == 235, "an over-long line is no failed login"


def test_unknown_commands_are_not_echoed_and_end_with_421(daemon: Daemon) -> None:
    fault(5)
    with mx_session(daemon) as s:
        for bad in (b"NO\x00OP", b"\x01\x02\x03", b"EH\rLO x", b"FOO bar"):
            assert s.text(bad) == (500, b"5.5.2 Error: command not recognized")
        assert s.text(b"\x7f") == (421, b"4.7.0 Too many unrecognized commands, closing the connection")
        assert s.closed()


def test_replies_never_carry_control_characters_sent_by_the_client(daemon: Daemon) -> None:
    fault(4)
    with mx_session(daemon) as s:
        for line in (b"VRFY <\x00\x01\r\x7f", b"NO\x00OP", b"MAIL FROM:<\x00@src.test>", b"HELP \x00\x1b[2J"):
            s.send(line + b"\r\n")
            _, lines = s.reply()
            assert all(c >= 0x20 and c != 0x7f for reply in lines for c in reply[:-2]), lines


def test_too_many_errors_end_the_session_with_421(daemon: Daemon) -> None:
    fault(MAX_ERRORS + 10)
    with mx_session(daemon) as s:
        s.send(b"MAIL FROM:<not an address\r\n" * (MAX_ERRORS + 10))
        codes = []
        try:
            for _ in range(MAX_ERRORS + 10):
                codes.append(s.reply()[0])
        except Closed:
            pass
        assert codes == [553] * (MAX_ERRORS + 1) + [421], codes


# Pipelining abuse

def test_hundreds_of_commands_in_one_write_are_answered_in_order(daemon: Daemon) -> None:
    fault(500)
    group = (b"RSET\r\nNOOP\r\nMAIL FROM:<alice@src.test>\r\nRCPT TO:<ok@ours.test>\r\n"
             b"RCPT TO:<two@ours.test>\r\n")
    with mx_session(daemon) as s:
        s.send(group * 100)
        codes = [s.reply()[0] for _ in range(500)]
        assert codes == [250] * 500
        assert s.cmd(b"QUIT") == 221


def test_recipients_beyond_the_limit_get_452_and_the_message_goes_once(daemon: Daemon,
                                                                       sink: SmtpSink) -> None:
    over = MAX_ERRORS // 2
    fault(over)
    rcpts = b"".join(b"RCPT TO:<r%d@catch.test>\r\n" % i for i in range(MAX_RECIPIENTS + over))
    with mx_session(daemon) as s:
        s.send(b"MAIL FROM:<alice@src.test>\r\n" + rcpts + b"DATA\r\n")
        codes = [s.reply()[0] for _ in range(MAX_RECIPIENTS + over + 2)]
        assert codes == [250] + [250] * MAX_RECIPIENTS + [452] * over + [354]
        s.send(message() + b".\r\n")
        assert s.reply()[0] == 250
    assert [m.rcpt_tos for m in delivered(sink, 1)] == [["catch@dest.test"]]


def test_data_pipelined_after_refused_recipients_gets_503(daemon: Daemon, sink: SmtpSink) -> None:
    fault()
    with mx_session(daemon) as s:
        s.send(b"MAIL FROM:<alice@src.test>\r\nRCPT TO:<victim@other.test>\r\nRCPT TO:<nobody@ours.test>\r\n"
               b"DATA\r\n")
        assert [s.reply()[0] for _ in range(4)] == [250, 550, 550, 503]
        assert s.cmd(b"NOOP") == 250
    assert sink.messages == []


def test_a_client_that_does_not_wait_for_354_still_gets_one_message_through(daemon: Daemon,
                                                                           sink: SmtpSink) -> None:
    fault()
    msg = message()
    with mx_session(daemon) as s:
        s.send(b"MAIL FROM:<alice@src.test>\r\nRCPT TO:<ok@ours.test>\r\nRCPT TO:<victim@other.test>\r\n"
               b"DATA\r\n" + msg + b".\r\nNOOP\r\n")
        assert [s.reply()[0] for _ in range(6)] == [250, 250, 550, 354, 250, 250]
    [got] = delivered(sink, 1)
    assert got.rcpt_tos == ["one@dest.test"] and got.data.endswith(msg)


def test_twenty_whole_transactions_in_one_write(daemon: Daemon, sink: SmtpSink) -> None:
    fault(20)
    msgs = [message() for _ in range(20)]
    batch = b"".join(b"MAIL FROM:<alice@src.test>\r\nRCPT TO:<ok@ours.test>\r\nDATA\r\n" + m + b".\r\n"
                     for m in msgs)
    with mx_session(daemon) as s:
        s.send(batch + b"QUIT\r\n")
        codes = [s.reply()[0] for _ in range(4 * 20 + 1)]
        assert codes == [250, 250, 354, 250] * 20 + [221]
    got = delivered(sink, 20)
    assert sorted(m.data[-len(msgs[0]):] for m in got) == sorted(msgs)


# Message content

@pytest.mark.parametrize("headers", [
    b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 60) for i in range(40_000)),
    b"X-Long: " + b"v" * (2 * MEGABYTE) + b"\r\n",
    b"X-Folded: start\r\n" + b"\tcontinued " * 300_000 + b"\r\n",
], ids=["many-fields", "one-long-field", "one-long-folded-field"])
def test_endless_headers_get_552_and_the_session_stays_in_step(daemon: Daemon, sink: SmtpSink,
                                                               headers: bytes) -> None:
    fault()
    with mx_session(daemon) as s:
        in_transaction(s)
        s.send(message(headers=headers) + b".\r\n")
        code, lines = s.reply()
        assert code == 552, lines
        assert s.cmd(b"NOOP") == 250
        forward_one(s)
    assert len(delivered(sink, 1)) == 1


def test_a_message_that_is_all_header_and_no_end_gets_552(daemon: Daemon, sink: SmtpSink) -> None:
    fault()
    with mx_session(daemon) as s:
        in_transaction(s)
        s.send(b"".join(b"X-H%d: v\r\n" % i for i in range(200_000)) + b".\r\n")
        assert s.reply()[0] == 552
    assert sink.messages == []


def test_a_big_body_with_a_small_header_is_forwarded(daemon: Daemon, sink: SmtpSink) -> None:
    msg = message(body=b"".join(b"line %d of a long body\r\n" % i for i in range(100_000)))
    with mx_session(daemon) as s:
        forward_one(s, msg)
    [got] = delivered(sink, 1)
    assert got.data.endswith(msg)


def test_nul_bytes_in_commands_get_clear_replies(daemon: Daemon, sink: SmtpSink) -> None:
    fault(6)
    with mx_session(daemon, helo=b"cli\x00ent.test") as s:
        assert s.cmd(b"MAIL FROM:<al\x00ice@src.test>") == 553
        assert s.cmd(b"MAIL FROM:<alice@src.test>\x00") in (501, 553)
        assert s.cmd(b"MAIL FROM:<alice@src.test>") == 250
        assert s.cmd(b"RCPT TO:<ok@ours.test\x00>") == 550
        assert s.cmd(b"RCPT TO:<ok\x00@ours.test>") == 550
        assert s.cmd(b"\x00\x00\x00") == 500
        assert s.cmd(b"RCPT TO:<ok@ours.test>") == 250
        assert s.cmd(b"DATA") == 354
        msg = message()
        s.send(msg + b".\r\n")
        assert s.reply()[0] == 250
    [got] = delivered(sink, 1)
    assert b"\x00" not in got.data[:-len(msg)], "our Received header names no NUL from the HELO"


@pytest.mark.parametrize("msg", [
    b"From: a@src.test\r\nSubject: nul\x00in header\r\n\r\nbody\x00with nul\r\n",
    b"From: a@src.test\r\nSubject: Gr\xfc\xdfe aus K\xf6ln\r\n\r\nlatin-1 \xe9t\xe9\r\n",
    b"From: \xff\xfe <a@src.test>\r\nTo: \xc3\x28@ours.test\r\n\r\nbad utf-8 \xc3\x28\r\n",
    b"From: a@src.test\r\nSubject: =?x-unknown?q?what=3F?= =?utf-8?b?!!!?=\r\n\r\nbody\r\n",
], ids=["nul", "latin-1", "invalid-utf-8", "bad-encoded-words"])
def test_odd_bytes_in_a_message_are_forwarded_unchanged(daemon: Daemon, sink: SmtpSink, msg: bytes) -> None:
    fault()
    with mx_session(daemon) as s:
        forward_one(s, msg)
    [got] = delivered(sink, 1)
    assert got.data.endswith(msg)


def test_non_utf8_in_commands_gets_clear_replies(daemon: Daemon, sink: SmtpSink) -> None:
    fault(4)
    with mx_session(daemon, helo=b"\xff\xfe.test") as s:
        assert s.cmd(b"MAIL FROM:<\xff@src.test>") == 553
        assert s.cmd(b"MAIL FROM:<\xff@src.test> SMTPUTF8") == 553
        assert s.cmd(b"MAIL FROM:<alice@src.test>") == 250
        assert s.cmd(b"RCPT TO:<\xff@ours.test>") == 550
        assert s.cmd(b"RCPT TO:<ok@\xff.test>") == 550
        assert s.cmd(b"RCPT TO:<ok@ours.test>") == 250
        assert s.cmd(b"DATA") == 354
        msg = message()
        s.send(msg + b".\r\n")
        assert s.reply()[0] == 250
    [got] = delivered(sink, 1)
    assert got.data.startswith(b"Received: from unknown by ")


BOUNDARY = b"b0undary"
BROKEN_MIME = {
    "no-boundary-parameter": b"Content-Type: multipart/mixed\r\n\r\n--x\r\nhello\r\n--x--\r\n",
    "boundary-never-used": b"Content-Type: multipart/mixed; boundary=nope\r\n\r\nno parts at all\r\n",
    "unterminated-multipart": b"Content-Type: multipart/mixed; boundary=" + BOUNDARY + b"\r\n\r\n--" +
                              BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nopen part\r\n",
    "deeply-nested": b"".join(b"Content-Type: multipart/mixed; boundary=n%d\r\n\r\n--n%d\r\n" % (i, i)
                              for i in range(3000)) + b"\r\ninnermost\r\n",
    "ten-thousand-parts": b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" +
                          b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 10_000 + b"--p--\r\n",
    "bad-base64": b"Content-Transfer-Encoding: base64\r\n\r\n!!!not*base64===\r\n",
    "bad-quoted-printable": b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=\r\n",
    "unterminated-parameter": b'Content-Type: text/plain; charset="utf-8\r\n\r\nbody\r\n',
    "unknown-charset": b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\nbody\r\n",
    "garbage-content-type": b"Content-Type: ;;;===///\r\nMIME-Version: 9.9\r\n\r\nbody\r\n",
    "rfc822-of-garbage": b"Content-Type: message/rfc822\r\n\r\n\x01\x02 not a message\r\n",
    "header-line-without-colon": b"This is not a header\r\nX-After: still a header?\r\n\r\nbody\r\n",
    "continuation-first": b"\tcontinued from nothing\r\n\r\nbody\r\n",
    "two-from-fields": b"From: second@src.test\r\n\r\nbody\r\n",
}


@pytest.mark.parametrize("name", list(BROKEN_MIME))
def test_broken_mime_is_forwarded_unchanged_or_refused_clearly(daemon: Daemon, sink: SmtpSink,
                                                               name: str) -> None:
    fault()
    msg = message(body=b"")[:-2] + BROKEN_MIME[name]
    with mx_session(daemon) as s:
        in_transaction(s)
        s.send(msg + b".\r\n")
        code, lines = s.reply()
        assert code == 250 or 550 <= code < 560, lines
    if code == 250:
        [got] = delivered(sink, 1)
        assert got.data.endswith(msg)
    else:
        assert sink.messages == []


# AUTH brute force

def test_auth_brute_force_locks_out_one_address_only(daemon: Daemon, alice_password: str) -> None:
    fault(AUTH_FAILURES + 2)
    with _submission_from(daemon, "127.0.0.41") as s:
        guesses = b"".join(b"AUTH PLAIN " + plain(ALICE, f"guess{i}") + b"\r\n" for i in range(AUTH_FAILURES))
        s.send(guesses)
        assert [s.reply()[0] for _ in range(AUTH_FAILURES)] == [535] * AUTH_FAILURES
        code, text = s.text(b"AUTH PLAIN " + plain(ALICE, alice_password))
        assert (code, text) == (421, b"4.7.0 Too many failed logins, try again later")
        assert s.closed()
    with _submission_from(daemon, "127.0.0.41") as s:
        assert s.cmd(b"AUTH PLAIN " + plain(ALICE, alice_password)) == 421, "still locked out"
    with _submission_from(daemon, "127.0.0.42") as s:
        assert s.cmd(b"AUTH PLAIN " + plain(ALICE, alice_password)) == 235, "another address is not"
    assert "127.0.0.41" not in daemon.logs()


def test_unreadable_auth_gets_clear_replies(daemon: Daemon, alice_password: str) -> None:
    fault(5)
    with _submission_from(daemon, "127.0.0.43") as s:
        assert s.cmd(b"AUTH PLAIN !!!") == 501
        assert s.cmd(b"AUTH PLAIN " + base64.b64encode(b"no separators")) == 501
        assert s.cmd(b"AUTH PLAIN " + base64.b64encode(b"\0\xff\xfe\0\xff")) == 535
        assert s.cmd(b"AUTH LOGIN") == 334
        assert s.cmd(b"*") == 501
        assert s.cmd(b"AUTH NTLM") == 504
        assert s.cmd(b"AUTH PLAIN " + plain(ALICE, alice_password)) == 235


def _submission_from(d: Daemon, source: str) -> Session:
    s = Session(d.submission_port, source=source)
    assert s.cmd(b"EHLO client.test") == 250
    assert s.cmd(b"STARTTLS") == 220
    s.starttls(no_tls_check())
    assert s.cmd(b"EHLO client.test") == 250
    return s


# A pathological regex alias

def test_a_catastrophic_regex_alias_is_a_451_and_a_sane_one_still_matches() -> None:
    now = dt.datetime(2026, 1, 1)
    domain = store.DomainRecord(id=1, name="redos.test", account_email="owner@owner.test",
                                verification_token="", dkim_selector="sel", dkim_private_key="",
                                retention_days=0, verified_at=None, auth_policy="enforce",
                                friendly_from=False, require_tls_inbound=False, created_at=now)
    aliases = [store.AliasRecord(id=i, domain="redos.test", kind="regex", local=pattern, destinations=(dest,),
                                 state="enabled", has_password=False, account_email="owner@owner.test",
                                 created_at=now)
               for i, (pattern, dest) in enumerate([("(a|a)+$", "slow@dest.test"), ("^b", "b@dest.test")])]
    directory = Directory.build([domain], aliases)
    assert resolve(directory, parse_address("a" * 50 + "!@redos.test")) is replies.ALIAS_LOOKUP_TIMEOUT
    found = resolve(directory, parse_address("bob@redos.test"))
    assert isinstance(found, Route) and found.destinations == ("b@dest.test",)


@dataclass
class _Result:
    code: int | None = None
    error: BaseException | None = None


def test_a_catastrophic_regex_alias_does_not_stall_the_daemon(make_daemon: Callable[..., Daemon],
                                                              sink: SmtpSink) -> None:
    """`(a|a)+$` against "aaa…a!" takes Python's `re` longer than anyone waits; while one session asks
    for such a recipient, another must still be served, and the first must get a clear reply."""
    fault()
    d = make_daemon({"delivery": {"routes": {"*": sink.address}}}, start=False)
    cli_batch(d, [["account", "add", "owner@owner.test"], ["domain", "add", "redos.test", "--account",
                                                           "owner@owner.test"],
                  ["alias", "add", "fine@redos.test", "fine@dest.test"]])
    store_regex_alias(d, "redos.test", "(a|a)+$", "slow@dest.test")  # `alias add` refuses it
    d.start()
    slow = _Result()
    started = threading.Event()

    def ask() -> None:
        try:
            with session(d.mx_port, timeout=120) as s:
                assert s.cmd(b"EHLO client.test") == 250
                assert s.cmd(b"MAIL FROM:<alice@src.test>") == 250
                started.set()
                slow.code = s.cmd(b"RCPT TO:<" + b"a" * 50 + b"!@redos.test>")
        except BaseException as exc:
            slow.error = exc
        finally:
            started.set()

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    assert started.wait(60)
    with session(d.mx_port, timeout=60) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<alice@src.test>") == 250
        assert s.cmd(b"RCPT TO:<fine@redos.test>") == 250
        assert s.cmd(b"DATA") == 354
        s.send(message() + b".\r\n")
        assert s.reply()[0] == 250
    worker.join(120)
    assert slow.error is None, slow.error
    assert slow.code == 451, "the lookup gave up: a temporary failure"
    assert [m.rcpt_tos for m in delivered(sink, 1)] == [["fine@dest.test"]]
    assert_clean_log(d)
    TALLY.faults_survived += 1
