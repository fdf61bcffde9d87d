"""Submission end to end: real smtplib clients against `fwdmail serve`, delivery into a real SMTP sink.

One daemon serves the whole module. Tests that fail logins on purpose connect from their own loopback
address (127.0.0.x) so the per-IP limiter of one test cannot lock out another.
"""

from __future__ import annotations

import base64
import concurrent.futures
import email.utils
import json
import smtplib
import time
from collections.abc import Iterator

import dkim as dkimpy
import pytest

from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.outbound import (
    add_domain,
    connect,
    db_bytes,
    header,
    message,
    queue_id,
    send,
    show,
    submit,
    wait_status,
)
from tests.support.smtp_sink import SmtpSink

MAX_FAILURES = 3


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink,
           dns_server: LoopbackDNS) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("submission"), {
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"*": sink.address}},
        "submission": {"auth_failures_per_hour": MAX_FAILURES, "max_message_size": 200_000,
                       "max_recipients": 5, "max_connections_per_ip": 100},
    })
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def pw(daemon: Daemon) -> dict[str, str]:
    return {**add_domain(daemon, "example.test", "alice@example.test"),
            **add_domain(daemon, "catch.test", "*@catch.test")}


@pytest.fixture(autouse=True)
def _clean_sink(sink: SmtpSink) -> None:
    sink.reset()


ALICE = "alice@example.test"


def test_auth_is_neither_offered_nor_accepted_before_starttls(daemon: Daemon, pw: dict[str, str]) -> None:
    with connect(daemon, starttls=False) as s:
        assert not s.has_extn("auth")
        assert s.has_extn("starttls")
        assert login_once(s, ALICE, pw[ALICE])[0] == 530
        code, _ = s.docmd("AUTH", "LOGIN")
        assert code == 530
        code, _ = s.mail(ALICE)
        assert code == 530
    with connect(daemon) as s:
        assert s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"].split()


def test_plain_and_login_over_starttls_and_implicit_tls_give_the_queue_id(
        daemon: Daemon, pw: dict[str, str], sink: SmtpSink) -> None:
    ids = []
    for implicit, mechanism in ((False, "PLAIN"), (True, "LOGIN"), (True, "PLAIN"), (False, "LOGIN")):
        with connect(daemon, implicit=implicit) as s:
            s.user, s.password = ALICE, pw[ALICE]
            code, _ = s.auth(mechanism, getattr(s, f"auth_{mechanism.lower()}"))
            assert code == 235
            ids.append(queue_id(send(s, ALICE, ["bob@dest.test"], message(ALICE, subject=mechanism))))
    assert len(set(ids)) == 4
    got = sink.wait_for(4)
    assert sorted(m.rcpt_tos[0] for m in got) == ["bob@dest.test"] * 4
    for qid in ids:
        rec = wait_status(daemon, qid, "delivered")
        assert rec["mail_from"] == ALICE and rec["recipients"][0]["status"] == "delivered"
    assert sorted(q for m in got for q in ids if f"ESMTPSA id {q};" in m.data.decode()) == sorted(ids)


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def login_once(s: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's login() would try every mechanism in turn)."""
    return s.docmd("AUTH", "PLAIN " + _plain(user, password))


def test_wrong_password_and_unknown_login_are_refused(daemon: Daemon, pw: dict[str, str]) -> None:
    bad = [(ALICE, "wrong"), ("nobody@example.test", pw[ALICE]), ("not-an-address", "x"),
           ("*@example.test", "x")]
    for i, (user, password) in enumerate(bad):
        with connect(daemon, source=f"127.0.0.{11 + i}") as s:
            assert login_once(s, user, password) == (535, b"5.7.8 Authentication credentials invalid")
            assert s.mail(ALICE)[0] == 530, "no mail without a login"


def test_failed_logins_are_limited_per_ip_and_the_ip_is_never_written(daemon: Daemon,
                                                                        pw: dict[str, str]) -> None:
    for _ in range(MAX_FAILURES):
        with connect(daemon, source="127.0.0.21") as s:
            assert login_once(s, ALICE, "guess")[0] == 535
    with connect(daemon, source="127.0.0.21") as s:
        assert login_once(s, ALICE, pw[ALICE]) == (421, b"4.7.0 Too many failed logins, try again later")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.noop()
    with connect(daemon, source="127.0.0.22") as s:
        assert login_once(s, ALICE, pw[ALICE])[0] == 235, "another client IP is not affected"
    assert b"127.0.0.21" not in db_bytes(daemon)
    assert "127.0.0.21" not in daemon.logs()


def test_parallel_guesses_from_one_ip_cannot_outrun_the_limit(daemon: Daemon, pw: dict[str, str]) -> None:
    def guess(i: int) -> int:
        try:
            with connect(daemon, source="127.0.0.23") as s:
                return login_once(s, ALICE, f"guess {i}")[0]
        except smtplib.SMTPServerDisconnected:
            return 421

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(guess, range(12)))
    assert sorted(codes) == [421] * (12 - MAX_FAILURES) + [535] * MAX_FAILURES


def test_a_remembered_login_ends_with_a_new_password_and_never_admits_a_wrong_one(
        daemon: Daemon, pw: dict[str, str]) -> None:
    alias = "rotating@example.test"
    daemon.cli("alias", "add", alias, "someone@dest.test")
    old = json.loads(daemon.cli("alias", "password", alias, "--json").output)["password"]
    for _ in range(2):  # the second login is answered from the login cache
        with connect(daemon, source="127.0.0.31") as s:
            assert login_once(s, alias, old)[0] == 235
    with connect(daemon, source="127.0.0.32") as s:
        assert login_once(s, alias, old + "x")[0] == 535
    new = json.loads(daemon.cli("alias", "password", alias, "--json").output)["password"]
    with connect(daemon, source="127.0.0.33") as s:
        assert login_once(s, alias, old)[0] == 535, "the old password is refused once it was changed"
    with connect(daemon, source="127.0.0.31") as s:
        assert login_once(s, alias, new)[0] == 235
    daemon.cli("alias", "remove", alias)
    with connect(daemon, source="127.0.0.34") as s:
        assert login_once(s, alias, new)[0] == 535, "a removed alias cannot log in"


def test_sender_spoofing_is_refused(daemon: Daemon, pw: dict[str, str]) -> None:
    with connect(daemon) as s:
        s.login(ALICE, pw[ALICE])
        assert send(s, "bob@example.test", ["x@dest.test"], message(ALICE)) == (
            550, "5.7.1 Sender address not allowed for this login")
        assert send(s, "alice@catch.test", ["x@dest.test"], message(ALICE))[0] == 550
        assert send(s, ALICE, ["x@dest.test"], message("Alice <bob@example.test>")) == (
            550, "5.7.1 From header must be the one address you logged in as")
        assert send(s, ALICE, ["x@dest.test"], message(f'"{ALICE}" <evil@evil.test>'))[0] == 550
    with connect(daemon) as s:
        s.login("*@catch.test", pw["*@catch.test"])
        queue_id(send(s, "anyone@catch.test", ["x@dest.test"], message("Any One <anyone@catch.test>")))
        assert send(s, "anyone@example.test", ["x@dest.test"], message("anyone@example.test"))[0] == 550


def test_limits_recipients_size_and_future_date(daemon: Daemon, pw: dict[str, str]) -> None:
    with connect(daemon) as s:
        s.login(ALICE, pw[ALICE])
        assert s.mail(ALICE)[0] == 250
        codes = [s.rcpt(f"r{i}@dest.test")[0] for i in range(6)]
        assert codes == [250] * 5 + [452]
        s.rset()
        assert send(s, ALICE, ["r@dest.test"], message(ALICE, body="x" * 250_000))[0] == 552
        far = time.time() + 31 * 86400
        date = f"Date: {_date(far)}"
        assert send(s, ALICE, ["r@dest.test"], message(ALICE, extra=[date])) == (
            550, "5.7.1 Date header too far in the future")
        assert s.noop()[0] == 250, "the session goes on after a refusal"


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def test_bad_input_gets_clear_replies(daemon: Daemon, pw: dict[str, str]) -> None:
    with connect(daemon) as s:
        s.login(ALICE, pw[ALICE])
        assert send(s, ALICE, ["r@dest.test"], b"From: alice@example.test\r\nSubject: \xff\r\n\r\nx\r\n") == (
            550, "5.6.0 Message header is not valid UTF-8")
        assert send(s, ALICE, ["r@dest.test"], b"From: alice@example.test\r\nbroken header\r\n\r\nx\r\n") == (
            550, "5.6.0 Malformed message header")
        assert s.mail(ALICE)[0] == 250 and s.rcpt("r@dest.test")[0] == 250
        assert s.docmd("DATA")[0] == 354
        s.send(b"From: alice@example.test\r\n\r\nbare\nline\r\n.\r\n")
        code, _ = s.getreply()
        assert code == 550
        assert s.rcpt("not an address")[0] in (501, 503, 553)


def test_missing_date_and_message_id_are_added_and_bcc_removed(daemon: Daemon, pw: dict[str, str],
                                                                sink: SmtpSink) -> None:
    raw = (b"From: alice@example.test\r\nTo: bob@dest.test\r\nBcc: blind@dest.test\r\n"
           b"Subject: bare\r\n\r\nno date\r\n")
    qid = queue_id(submit(daemon, ALICE, pw[ALICE], raw, rcpts=["bob@dest.test", "blind@dest.test"]))
    (got,) = sink.wait_for(1)
    assert sorted(got.rcpt_tos) == ["blind@dest.test", "bob@dest.test"]
    assert b"blind@dest.test" not in got.data, "no recipient sees the blind copy"
    assert header(got.data, "Date") and header(got.data, "Message-ID").endswith("@example.test>")
    assert f"ESMTPSA id {qid};" in got.data.decode()
    assert got.mail_from == ALICE


def test_a_burst_of_concurrent_submissions_is_all_queued_and_signed(daemon: Daemon, pw: dict[str, str],
                                                                     sink: SmtpSink) -> None:
    """The queue claims and signs a burst in batches: each message still arrives once, signed on its own."""
    def one(i: int) -> str:
        return queue_id(submit(daemon, ALICE, pw[ALICE], message(ALICE, subject=f"burst {i}")))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, range(40)))
    assert len(set(ids)) == 40
    got = sink.wait_for(40)
    assert sorted(header(m.data, "Subject") for m in got) == sorted(f"burst {i}" for i in range(40))
    assert all(show(daemon, q)["status"] == "delivered" for q in ids)
    assert len(sink.messages) == 40, "each delivered once: a delivered message is never claimed again"
    (record,) = [r["value"] for r in json.loads(daemon.cli("domain", "dns", "example.test", "--json").output)
                 if "._domainkey." in r["name"]]
    assert all(dkimpy.verify(m.data, dnsfunc=lambda name, timeout=5: record.encode()) for m in got)


def test_log_lines_name_no_address_and_no_ip(daemon: Daemon, pw: dict[str, str]) -> None:
    qid = queue_id(submit(daemon, ALICE, pw[ALICE], message(ALICE)))
    wait_status(daemon, qid, "delivered")
    logs = daemon.logs()
    assert "submission listening" in logs
    assert [line for line in logs.splitlines() if qid in line and " DEBUG " not in line] == [], \
        "above debug level a clean submission and delivery log no line of their own"
    for forbidden in (ALICE, "bob@dest.test", "127.0.0.1", "owner@owner.test"):
        assert forbidden not in logs
