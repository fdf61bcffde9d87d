"""Another process holding the store's write lock does not stall the daemon.

While a writer elsewhere (a long CLI transaction, here a bare `BEGIN IMMEDIATE` in its own process) holds
SQLite's write lock, reads (routing a recipient, a submission login) go on from the daemon's own read
connection, and a write (queueing a submitted message, an error-log row) gives up after the short
`[store] write_lock_timeout`: the client gets its reply while the lock is still held, not once it is
released. Large CLI deletions commit in short batches, so the daemon keeps serving while they run.
"""

from __future__ import annotations

import datetime as dt
import os
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon
from tests.support.faults import ALICE, integrity, setup
from tests.support.mx import cli, error_rows
from tests.support.mx import message as mx_message
from tests.support.outbound import connect, message, send, submit, wait_until
from tests.support.smtp_sink import SmtpSink

BULK = 20_000  # messages (and error-log rows) of the account a CLI command deletes while the daemon serves
HOLD = 8.0  # the longest the holder keeps the lock when the test does not end it sooner (seconds)

# Takes the write lock, says so, and keeps it until told (a line on stdin) or HOLD seconds pass.
_HOLDER = """
import select, sqlite3, sys
con = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE meta SET value = value")
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))
con.rollback()
print("released", flush=True)
"""


class LockHolder:
    """Another process holding the daemon's database write lock."""

    def __init__(self, db: Path, hold: float = HOLD) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db), str(hold)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "locked\n"

    def holding(self) -> bool:
        return self.proc.poll() is None

    def release(self) -> None:
        assert self.proc.stdin is not None
        if self.holding():
            self.proc.stdin.write("release\n")
            self.proc.stdin.flush()
        assert self.proc.wait(30) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def in_thread(fn: Callable[[], Any]) -> Callable[[], tuple[Any, float]]:
    """Run `fn` in a thread now; the returned callable joins it (bounded) and gives (result, when done)."""
    box: list[tuple[Any, float]] = []
    t = threading.Thread(target=lambda: box.append((fn(), time.monotonic())), daemon=True)
    t.start()

    def result() -> tuple[Any, float]:
        t.join(120)
        assert box, "the call did not finish"
        return box[0]

    return result


def subject() -> str:
    return f"tok{uuid.uuid4().hex}"


def subjects(sink: SmtpSink) -> set[str]:
    import email

    return {str(email.message_from_bytes(m.data)["Subject"]) for m in list(sink.messages)}


def mx_send(d: Daemon, rcpt: str, data: bytes) -> tuple[int, int | None]:
    with smtplib.SMTP("127.0.0.1", d.mx_port, local_hostname="client.test", timeout=120) as s:
        s.ehlo()
        assert s.mail("sender@src.test")[0] == 250
        code = s.rcpt(rcpt)[0]
        return code, s.data(data)[0] if code == 250 else None


def login_and_send(d: Daemon, password: str, data: bytes) -> tuple[int, int, str]:
    """A new submission session: the AUTH reply (a read), then the DATA reply (a write)."""
    with connect(d, timeout=120) as s:
        auth = s.login(ALICE, password)[0]
        code, text = send(s, ALICE, ["bob@dest.test"], data)
        return auth, code, text


def start(make_daemon: Callable[..., Daemon], sink: SmtpSink) -> tuple[Daemon, str]:
    # The per-client message rate is lifted: on a slow machine the delete lasts long enough for the loop
    # below to send more than a minute's default allowance from 127.0.0.1 (451 4.7.1 at MAIL).
    d = make_daemon({"delivery": {"routes": {"*": sink.address}},
                     "abuse": {"max_messages_per_ip_per_minute": 100_000}}, start=False)
    password = setup(d)
    d.start()
    d.wait_for_log("fwdmail ready")
    return d, password


def test_a_held_write_lock_stalls_neither_reads_nor_the_replies_to_writes(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink)
    first = subject()
    assert submit(d, ALICE, password, message(ALICE, subject=first))[0] == 250
    assert mx_send(d, "a@ours.test", mx_message()) == (250, 250)  # the MX has its directory snapshot
    cli(d, "alias", "add", "b@ours.test", "b@dest.test")  # only a fresh read of the directory knows it

    refused, forwarded = subject(), subject()
    writer = connect(d, timeout=120)
    writer.login(ALICE, password)
    assert writer.mail(ALICE)[0] == 250 and writer.rcpt("bob@dest.test")[0] == 250
    holder = LockHolder(d.data_dir / "fwdmail.db")
    try:
        locked_at = time.monotonic()
        queued = in_thread(lambda: writer.data(message(ALICE, subject=refused)))
        time.sleep(0.3)  # its DATA reaches the daemon, whose writer thread now waits for the lock
        login = in_thread(lambda: login_and_send(d, password, message(ALICE, subject=subject())))
        known = in_thread(lambda: mx_send(d, "b@ours.test", mx_message(forwarded)))
        unknown = in_thread(lambda: mx_send(d, "nobody@ours.test", mx_message()))
        (code, text), queued_at = queued()
        (auth, code2, _), login_at = login()
        known_reply, known_at = known()
        unknown_reply, unknown_at = unknown()
        still_held = holder.holding()
    finally:
        holder.release() if holder.holding() else holder.kill()

    took = {k: round(t - locked_at, 2) for k, t in (
        ("submission", queued_at), ("login + submission", login_at), ("mx known", known_at),
        ("mx unknown", unknown_at))}
    print(f"replies during the lock, seconds after it was taken: {took}")
    assert (code, text[:6]) == (451, b"4.3.0 "), (code, text)
    assert auth == 235 and code2 == 451, "a login only reads: it does not queue behind the waiting write"
    assert known_reply == (250, 250), "routed from a fresh directory read, forwarded without the store"
    assert unknown_reply == (550, None), "refused, though its error-log row cannot be written"
    assert still_held, f"the replies came only after the lock was released: {took}"
    assert forwarded in subjects(sink)
    writer.quit()

    logs = d.logs()
    assert "could not queue a submitted message: database is locked" in logs
    assert "could not write 1 SMTP error log row(s): database is locked" in logs
    assert "Traceback" not in logs
    after = subject()
    assert submit(d, ALICE, password, message(ALICE, subject=after))[0] == 250
    wait_until(lambda: {first, after} <= subjects(sink), 30, "the messages accepted before and after")
    assert refused not in subjects(sink), "the refused message was never committed"
    assert mx_send(d, "nobody@ours.test", mx_message()) == (550, None)
    wait_until(lambda: "SMTP error log written again; 1 row(s) were dropped" in d.logs(), 30, "the count")
    assert [r["alias"] for r in error_rows(d) if r["code"] == 550][-1:] == ["nobody@ours.test"]
    assert integrity(d) == "ok"


def _bulk_mail(db: Path, domain: str, count: int, body: bytes) -> None:
    """`count` delivered messages of `domain`, straight into the database from this process."""
    con = sqlite3.connect(db, timeout=30)
    try:
        (domain_id,) = con.execute("SELECT id FROM domain WHERE name = ?", (domain,)).fetchone()
        now = dt.datetime(2024, 6, 1).isoformat(" ")
        with con:
            con.executemany(
                "INSERT INTO outbound_email (queue_id, domain_id, mail_from, headers, body, size, subject,"
                " status, created_at, next_attempt_at, attempts, crash_count, delay_notified, dsn_sent)"
                " VALUES (?, ?, ?, ?, ?, ?, '', 'delivered', ?, ?, 1, 0, 0, 0)",
                ((f"BULK{i:08d}", domain_id, f"me@{domain}", b"Subject: bulk\r\n", body, len(body), now, now)
                 for i in range(count)))
            con.execute("INSERT INTO outbound_recipient (email_id, address, status, attempts, updated_at)"
                        " SELECT id, 'r@dest.test', 'delivered', 1, created_at FROM outbound_email"
                        " WHERE domain_id = ?", (domain_id,))
            con.executemany(
                "INSERT INTO smtp_error_log (created_at, direction, domain_id, domain_name, alias, code,"
                " enhanced_code, text) VALUES (?, 'inbound', ?, ?, 'x', 550, '5.1.1', 'No such user')",
                ((now, domain_id, domain) for _ in range(count)))
    finally:
        con.close()


def test_the_daemon_keeps_serving_while_a_large_account_delete_runs(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink)
    cli(d, "account", "add", "big@owner.test")
    cli(d, "domain", "add", "big.test", "--account", "big@owner.test")
    _bulk_mail(d.data_dir / "fwdmail.db", "big.test", BULK, os.urandom(500).hex().encode())

    env = dict(os.environ, COLUMNS="300")
    deleting = subprocess.Popen([sys.executable, "-m", "fwdmail", "--config", str(d.config_path), "account",
                                 "delete", "big@owner.test", "--yes", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    served: list[tuple[int, int]] = []
    began = time.monotonic()
    try:
        midway = lambda: 0 < _left(d) < 2 * BULK  # noqa: E731
        wait_until(lambda: deleting.poll() is not None or midway(), 60, "the delete to commit a part")
        for _ in range(200):
            if not midway():
                break
            code = submit(d, ALICE, password, message(ALICE, subject=subject()), timeout=120)[0]
            rcpt = mx_send(d, "nobody@ours.test", mx_message())[0]
            if midway():  # both replies came while the delete was in the middle of its work
                served.append((code, rcpt))
        out, err = deleting.communicate(timeout=300)
    finally:
        if deleting.poll() is None:
            deleting.kill()
            deleting.wait()
    assert deleting.returncode == 0, err
    assert f'"emails": {BULK}' in out and f'"smtp_error_logs": {BULK}' in out, out
    print(f"{len(served)} submissions and MX refusals served while the delete ran "
          f"({time.monotonic() - began:.1f} s): {set(served)}")
    assert served, "the delete ended before the daemon was asked anything"
    assert all(s == (250, 550) for s in served), served
    assert integrity(d) == "ok"


def _left(d: Daemon) -> int:
    """How many of the bulk messages and error-log rows are still there (committed)."""
    con = sqlite3.connect(f"file:{d.data_dir / 'fwdmail.db'}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT (SELECT count(*) FROM outbound_email WHERE queue_id LIKE 'BULK%')"
                           " + (SELECT count(*) FROM smtp_error_log WHERE domain_name = 'big.test')"
                           ).fetchone()[0]
    finally:
        con.close()
