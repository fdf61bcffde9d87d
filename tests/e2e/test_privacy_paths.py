"""Privacy contract on the paths other than a clean forward, with debug logging on: refused mail, SRS
bounces, partial failures and submission logins. Error rows never hold the client IP, the sender or the
body; log lines never name an address, an IP or a password, and none had to be scrubbed to get there
("[address]" and "[ip]" in a log would mean code wrote one and only the scrubber hid it).

Every client connects from 127.0.0.2 (or 127.0.0.3), so an IP in a row or log line is easy to spot.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fwdmail.mail import srs
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import CLIENT, cli, cli_batch, db_rows, error_rows, message, send
from tests.support.outbound import connect, db_bytes, queue_id, wait_status
from tests.support.outbound import send as submit_on
from tests.support.raw_smtp import RawSmtp
from tests.support.smtp_sink import SmtpSink

CLIENT_IP = "127.0.0.2"
OTHER_IP = "127.0.0.3"
SENDER = "private.sender@sender-domain.test"
ALIAS = "secret-alias@ours.test"
DEST = "hidden.dest@dest.test"
PART = "part-alias@ours.test"
REFUSING = "refusing.dest@dest.test"
OWNER = "owner@owner.test"
LOGIN = "login-alias@ours.test"
SRS_DOMAIN = "srs.fwdmail.test"
WRONG_PASSWORD = "Wrong-Guess-4f2a9c"
SUBJECT = "a private subject 51c3"
BODY = "A private body 8e0d.\r\n"
FOREVER = ("private.sender", "sender-domain", "hidden.dest", "refusing.dest", "stranger", "j\u00f6rg",
           CLIENT_IP, OTHER_IP, WRONG_PASSWORD, "a private subject", "A private body")


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture(autouse=True)
def _fresh_sink(sink: SmtpSink) -> None:
    sink.reset()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
           sink: SmtpSink) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("privacy-paths"), {
        "log_level": "debug",
        "dns": {"nameservers": [dns_server.address]},
        "mx": {"max_recipients": 2},
        "submission": {"auth_failures_per_hour": 3},
        "delivery": {"routes": {"*": sink.address}},
    })
    cli_batch(d, [
        ["account", "add", OWNER],
        ["domain", "add", "ours.test", "--account", OWNER],
        ["alias", "add", ALIAS, DEST],
        ["alias", "add", PART, DEST, REFUSING],
        ["alias", "add", LOGIN, DEST],
    ])
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def password(daemon: Daemon) -> str:
    return str(json.loads(cli(daemon, "alias", "password", LOGIN, "--json").stdout)["password"])


def srs_secret(d: Daemon) -> bytes:
    return (d.data_dir / "srs.secret").read_bytes().strip()


def table_counts(d: Daemon) -> dict[str, int]:
    names = [r[0] for r in db_rows(d, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: db_rows(d, f'SELECT count(*) FROM "{n}"')[0][0] for n in names if n != "meta"}


def assert_clean_logs(d: Daemon, start: int, *extra: str) -> str:
    """The log since `start`: names nothing of FOREVER or `extra`, and nothing was scrubbed."""
    logs = d.logs()[start:]
    assert "DEBUG" in d.logs(), "the daemon must log at debug level for this test to mean anything"
    for needle in (*FOREVER, *extra, "[address]", "[ip]", "Traceback"):
        assert needle.lower() not in logs.lower(), (needle, logs)
    return logs


def assert_clean_rows(rows: list[dict[str, Any]], *extra: str) -> None:
    text = json.dumps(rows, default=str, ensure_ascii=False).lower()
    for needle in (*FOREVER, *extra):
        assert needle.lower() not in text, (needle, rows)


def test_refused_mail_leaves_a_row_without_ip_sender_or_body_and_no_log_naming_them(
        daemon: Daemon, sink: SmtpSink) -> None:
    start, before = len(daemon.logs()), len(error_rows(daemon))
    # The destination's reply echoes our SRS sender (it encodes the sender's address), the destination
    # and an IP: the row keeps the code and the gist, masked as the alias, scrubbed of the rest.
    sink.behaviour.data = lambda env: (f"554 5.7.1 <{env.mail_from}> to <{env.rcpt_tos[0].upper()}> "
                                       f"refused; spam from {CLIENT_IP}")
    msg = message(SUBJECT, body=BODY.encode(), headers=f"Reply-To: {SENDER}\r\n".encode())
    out = send(daemon, SENDER, [ALIAS], msg, source=CLIENT_IP)
    assert out.code == 554, out.text
    assert "hidden.dest" not in out.text.lower() and out.text.startswith(f"5.7.1 <{ALIAS}>")
    sink.behaviour.data = None

    # Refused before DATA: an unknown user, a relay attempt, a stranger past max_recipients; and a
    # message refused as a whole (a loop). The refusals naming no hosted domain are counted, not stored.
    with smtplib.SMTP("127.0.0.1", daemon.mx_port, local_hostname=CLIENT, timeout=30,
                      source_address=(CLIENT_IP, 0)) as s:
        s.ehlo()
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt("nobody@ours.test")[0] == 550
        assert s.rcpt("stranger@elsewhere.test")[0] == 550
        assert s.rcpt(ALIAS)[0] == 250
        assert s.rcpt(PART)[0] == 250
        assert s.rcpt("stranger2@elsewhere.test")[0] == 452
        looping = message(SUBJECT, body=BODY.encode(), headers=b"Received: from a by b\r\n" * 200)
        assert s.data(looping)[0] == 554
    rows = error_rows(daemon)[before:]
    assert sorted((r["direction"], r["alias"], r["code"]) for r in rows) == sorted([
        ("outbound", ALIAS, 554), ("inbound", ALIAS, 554), ("inbound", "nobody@ours.test", 550),
        ("inbound", ALIAS, 554), ("inbound", PART, 554)])
    [outbound] = [r for r in rows if r["direction"] == "outbound"]
    assert outbound["text"] == f"<[address]> to <{ALIAS}> refused; spam from [ip]", outbound["text"]
    assert_clean_rows(rows)
    assert sink.messages == []
    assert_clean_logs(daemon, start)


def test_non_ascii_stranger_without_smtputf8_is_not_logged(daemon: Daemon) -> None:
    start, before = len(daemon.logs()), len(error_rows(daemon))
    raw = RawSmtp(daemon.mx_port)
    try:
        assert raw.cmd(b"EHLO client.test\r\n")[0] == 250
        assert raw.cmd(f"MAIL FROM:<{SENDER}>\r\n".encode())[0] == 250
        assert raw.cmd("RCPT TO:<j\u00f6rg@elsewhere.test>\r\n".encode())[0] == 553
        assert raw.cmd(b"QUIT\r\n")[0] == 221
    finally:
        raw.close()
    assert error_rows(daemon)[before:] == [], "a stranger's refusal is counted, not stored"
    assert_clean_logs(daemon, start)


def test_srs_bounce_forwarded_writes_nothing_and_refused_names_no_address(
        daemon: Daemon, sink: SmtpSink) -> None:
    start, counts = len(daemon.logs()), table_counts(daemon)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    bounce_to = srs.forward(SENDER, srs_secret(daemon), SRS_DOMAIN, now)
    bounce = message("Undelivered " + SUBJECT, body=BODY.encode())
    assert send(daemon, "", [bounce_to], bounce, source=CLIENT_IP).code == 250
    [got] = sink.messages
    assert got.rcpt_tos == [SENDER]
    assert table_counts(daemon) == counts, "a forwarded bounce wrote a row"
    assert_clean_logs(daemon, start)

    sink.reset()
    sink.behaviour.rcpt = {SENDER: f"550 5.1.1 <{SENDER.upper()}>: no such user ({CLIENT_IP})"}
    out = send(daemon, "", [bounce_to], bounce, source=CLIENT_IP)
    assert out.code == 550
    rows = error_rows(daemon)[-2:]
    assert {(r["direction"], r["alias"]) for r in rows} == {("outbound", "(SRS bounce)"),
                                                            ("inbound", "(SRS bounce)")}
    assert_clean_rows(rows, bounce_to)
    assert_clean_logs(daemon, start, bounce_to)


def test_partial_failure_notice_and_row_hold_no_ip_and_nothing_of_the_message(
        daemon: Daemon, sink: SmtpSink) -> None:
    start, before = len(daemon.logs()), len(error_rows(daemon))
    sink.behaviour.rcpt = {REFUSING: f"550 5.1.1 <{REFUSING}>: gone"}
    msg = message(SUBJECT, body=BODY.encode(), headers=f"Reply-To: {SENDER}\r\n".encode())
    assert send(daemon, SENDER, [PART], msg, source=CLIENT_IP).code == 250
    got = sink.wait_for(2)
    [notice] = [m for m in got if m.rcpt_tos == [OWNER]]
    assert f"{REFUSING}: 550 5.1.1".encode() in notice.data  # the owner's own destination, for the owner
    for needle in (CLIENT_IP, "private.sender", "sender-domain", SUBJECT, BODY.strip()):
        assert needle.encode() not in notice.data, needle
    rows = error_rows(daemon)[before:]
    assert [(r["direction"], r["alias"], r["code"], r["text"]) for r in rows] == [
        ("outbound", PART, 550, f"<{PART}>: gone")]
    assert_clean_rows(rows)
    assert_clean_logs(daemon, start)


def test_header_contents_quoted_by_a_failed_arc_check_stay_out_of_the_log(
        daemon: Daemon, sink: SmtpSink) -> None:
    """dkimpy's reason for a broken ARC set quotes the header it choked on."""
    start = len(daemon.logs())
    bad = f"not*base64 {SUBJECT} {SENDER}".encode()
    arc = (b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=sender-domain.test; s=sel; t=1; b=" + bad + b"\r\n"
           b"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=sender-domain.test; s=sel; t=1;"
           b" h=from; bh=AAAA; b=" + bad + b"\r\n"
           b"ARC-Authentication-Results: i=1; mx.test; spf=pass\r\n")
    out = send(daemon, SENDER, [ALIAS], message(body=BODY.encode(), headers=arc), source=CLIENT_IP)
    assert out.code == 250, out.text
    assert b"arc=fail" in sink.wait_for(1)[0].data
    assert "ARC chain does not validate" in assert_clean_logs(daemon, start)


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_submission_logins_and_mail_log_no_password_ip_or_address(
        daemon: Daemon, sink: SmtpSink, password: str) -> None:
    start = len(daemon.logs())
    with connect(daemon, source=CLIENT_IP) as s:
        assert s.docmd("AUTH", "PLAIN " + _plain(LOGIN, WRONG_PASSWORD))[0] == 535
        assert s.docmd("AUTH", "PLAIN " + _plain("nobody@ours.test", WRONG_PASSWORD))[0] == 535
        assert s.docmd("AUTH", "LOGIN " + base64.b64encode(LOGIN.encode()).decode())[0] == 334
        assert s.docmd(base64.b64encode(WRONG_PASSWORD.encode()).decode())[0] == 535
    with connect(daemon, source=CLIENT_IP) as s:
        assert s.docmd("AUTH", "PLAIN " + _plain(LOGIN, password))[0] == 421, "locked out, in memory"
    with connect(daemon, source=OTHER_IP) as s:
        s.login(LOGIN, password)
        msg = f"From: {LOGIN}\r\nTo: {DEST}\r\nSubject: {SUBJECT}\r\n\r\n{BODY}".encode()
        qid = queue_id(submit_on(s, LOGIN, [DEST], msg))
    assert wait_status(daemon, qid, "delivered")["redacted"]
    assert BODY.strip().encode() in sink.wait_for(1)[0].data

    logs = assert_clean_logs(daemon, start, password, LOGIN, DEST, _plain(LOGIN, password),
                             _plain(LOGIN, WRONG_PASSWORD))
    assert "submission login failed" in logs and f"queued {qid}" in logs
    needles = [n.encode() for n in (CLIENT_IP, OTHER_IP, WRONG_PASSWORD, password, BODY.strip())]
    deadline = time.monotonic() + 10  # the queue checkpoints the WAL within a second of a redaction
    while any(n in db_bytes(daemon) for n in needles) and time.monotonic() < deadline:
        time.sleep(0.1)
    stored = db_bytes(daemon)
    for needle in needles:
        assert needle not in stored, needle
    assert db_rows(daemon, "SELECT count(*) FROM abuse_event")[0][0] == 0


def _open_files(pid: int) -> set[str]:
    """The paths of the files process `pid` holds open (sockets, pipes and the like left out)."""
    fds = Path(f"/proc/{pid}/fd")
    links = set()
    for fd in fds.iterdir():
        try:
            links.add(os.readlink(fd))
        except FileNotFoundError:
            continue
    return {link for link in links if link.startswith("/")}


def test_a_large_forwarded_message_is_held_in_memory_only(daemon: Daemon, sink: SmtpSink) -> None:
    """While the destination holds its reply, the daemon has the whole message and no file but its own
    database and log open: nothing spooled it to disk (a deleted temp file shows as "(deleted)")."""
    assert daemon.proc is not None and Path(f"/proc/{daemon.proc.pid}/fd").is_dir()
    arrived, release = threading.Event(), threading.Event()
    seen: list[set[str]] = []

    def hold(envelope: object) -> None:
        arrived.set()
        release.wait(30)
        return None

    sink.behaviour.data = hold
    body = (b"A private body 8e0d " * 3 + b"\r\n") * 50_000  # 3 MB
    result: list[int | None] = []
    client = threading.Thread(target=lambda: result.append(
        send(daemon, SENDER, [ALIAS], message(SUBJECT, body=body), source=CLIENT_IP).code))
    client.start()
    try:
        assert arrived.wait(30), "the message never reached the destination"
        seen.append(_open_files(daemon.proc.pid))
    finally:
        release.set()
        client.join(60)
    assert result == [250]
    db = str(daemon.data_dir / "fwdmail.db")
    allowed = {db, f"{db}-wal", f"{db}-shm", str(daemon.log_path), "/dev/null", "/dev/urandom",
               str(daemon.data_dir / "serve.lock")}  # holds only the daemon's pid
    assert seen[0] - allowed == set(), seen[0]
    assert len(sink.wait_for(1)[0].data) > len(body)
