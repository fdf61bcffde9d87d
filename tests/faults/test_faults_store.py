"""Store faults under a running daemon: the database locked by a long CLI transaction, a full disk, a
read-only data dir. Each gets a clear 4xx to the client and a clear log line, corrupts nothing, loses no
message that got a 250, and goes away when the fault does.

The disk is a small tmpfs mounted as the data dir (root only; skipped otherwise). The CLI runs in its own
process, as beside a real daemon, so no test process holds the database open across a mount change.
Linux refuses to remount a file system read-only while the daemon has its database open for writing, so
the read-only data dir is the one a start or restart meets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import errno
import json
import os
import smtplib
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fwdmail import store
from fwdmail.policy.directory import DirectoryCache
from fwdmail.runtime.executor import Blocking
from fwdmail.runtime.groupcommit import GroupCommitter
from fwdmail.store.models import database
from tests.support.daemon import Daemon
from tests.support.faults import ALICE, OWNER, integrity, setup
from tests.support.mx import cli, error_rows
from tests.support.mx import message as mx_message
from tests.support.outbound import connect, message, queue_id, send, submit, wait_until
from tests.support.smtp_sink import SmtpSink


def start(make_daemon: Callable[..., Daemon], sink: SmtpSink, mount: Callable[[Path], None] | None = None,
          data_timeout: float = 5) -> tuple[Daemon, str]:
    d = make_daemon({"delivery": {"routes": {"*": sink.address}, "data_timeout": data_timeout}}, start=False)
    if mount is not None:
        mount(d.data_dir)
    password = setup(d)
    d.start()
    d.wait_for_log("fwdmail ready")
    return d, password


def token() -> str:
    return f"tok{uuid.uuid4().hex}"


def subjects_list(sink: SmtpSink) -> list[str]:
    return [str(email.message_from_bytes(m.data)["Subject"]) for m in list(sink.messages)]


def subjects(sink: SmtpSink) -> set[str]:
    return set(subjects_list(sink))


def submit_token(d: Daemon, password: str, subject: str, body: str = "Hello there.\r\n") -> tuple[int, str]:
    """One submission with `subject`; a reply, or (0, why) when the connection failed."""
    try:
        return submit(d, ALICE, password, message(ALICE, subject=subject, body=body), timeout=120)
    except OSError as exc:
        return 0, repr(exc)


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """The single line a failing command printed; it names each of `words`."""
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode not in (0, None), out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert all(w in out for w in words), out
    return out


def mx_send(d: Daemon, rcpt: str, data: bytes) -> tuple[int, int | None]:
    """One MX transaction; (RCPT code, DATA code or None). Waits as long as RFC 5321 lets an MTA wait."""
    with smtplib.SMTP("127.0.0.1", d.mx_port, local_hostname="client.test", timeout=300) as s:
        s.ehlo()
        assert s.mail("sender@src.test")[0] == 250
        code = s.rcpt(rcpt)[0]
        return code, s.data(data)[0] if code == 250 else None


def show(d: Daemon, qid: str) -> dict[str, Any]:
    """`fwdmail emails show QID --json`, from its own process."""
    return json.loads(cli(d, "emails", "show", qid, "--json").stdout)


def in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run `fn` in a thread now; the returned callable joins it (bounded) and gives its result."""
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()

    def result() -> Any:
        t.join(180)
        assert box, "the call did not finish"
        return box[0]

    return result


@pytest.fixture
def tmpfs() -> Iterator[Callable[..., None]]:
    """`tmpfs(path, size="2m")` mounts a fresh tmpfs there; every mount is undone at teardown, also
    after a failure (lazily if a process still has files open on it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(path: Path, size: str = "2m") -> None:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {proc.stderr.strip()}")
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def remount(path: Path, mode: str) -> None:
    proc = subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr


def fill(directory: Path) -> Path:
    """Write a filler file until the file system has no room left; return it."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for _ in range(100_000):
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        else:
            raise AssertionError("the file system never filled up")
        for _ in range(100):  # the last partial block
            try:
                f.write(b"\0" * 512)
            except OSError:
                break
    return filler


# database locked

def test_database_locked_by_a_long_cli_transaction(make_daemon: Callable[..., Daemon],
                                                   sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink)
    before = token()
    assert submit_token(d, password, before)[0] == 250
    wait_until(lambda: before in subjects(sink), 30, "the first message to be delivered")
    assert mx_send(d, "a@ours.test", mx_message()) == (250, 250)  # the MX has its directory snapshot
    session = connect(d, timeout=120)
    session.login(ALICE, password)

    held = sqlite3.connect(d.data_dir / "fwdmail.db", timeout=30, isolation_level=None)
    try:
        held.execute("BEGIN IMMEDIATE")
        held.execute("UPDATE meta SET value = value")
        refused, mx = token(), token()
        data = message(ALICE, subject=refused)
        submission = in_thread(lambda: send(session, ALICE, ["bob@dest.test"], data))
        forwarded = in_thread(lambda: mx_send(d, "a@ours.test", mx_message(mx)))
        unknown = in_thread(lambda: mx_send(d, "nobody@ours.test", mx_message()))
        admin = in_thread(lambda: cli(d, "alias", "add", "b@ours.test", "b@dest.test", expect=None))
        code, text = submission()
        assert (code, text[:6]) == (451, "4.3.0 "), (code, text)
        assert forwarded() == (250, 250)
        assert mx in subjects(sink), "the MX forwards during the session, without the store"
        assert unknown() == (550, None), "refused, though its error-log row cannot be written"
        one_line_error(admin(), "database is locked")
        assert d.proc is not None and d.proc.poll() is None
    finally:
        held.rollback()
        held.close()

    logs = d.logs()
    assert "Traceback" not in logs
    assert "could not queue a submitted message: database is locked" in logs
    assert "could not write 1 SMTP error log row(s): database is locked" in logs
    again, after = token(), token()
    assert send(session, ALICE, ["bob@dest.test"], message(ALICE, subject=again))[0] == 250
    session.quit()
    assert submit_token(d, password, after)[0] == 250
    wait_until(lambda: {again, after} <= subjects(sink), 30, "the messages submitted after the lock")
    assert refused not in subjects(sink), "the refused message was never committed"
    cli(d, "alias", "add", "b@ours.test", "b@dest.test")
    assert mx_send(d, "b@ours.test", mx_message()) == (250, 250)
    assert mx_send(d, "nobody@ours.test", mx_message()) == (550, None)
    wait_until(lambda: "SMTP error log written again; 1 row(s) were dropped" in d.logs(), 30, "the count")
    assert [r["alias"] for r in error_rows(d) if r["code"] == 550] == ["nobody@ours.test"]
    assert integrity(d) == "ok"


def test_a_locked_store_fails_a_group_commit_once_not_once_per_message(tmp_path: Path) -> None:
    """Retrying each message alone costs one busy timeout per message, all on the database thread."""
    store.open_store(tmp_path / "fwdmail.db")
    store.add_account(OWNER)
    store.add_domain("example.test", OWNER, "sel", "not a key", "token")
    blocking = Blocking()
    calls: list[int] = []

    def enqueue(emails: Sequence[store.NewEmail], now: dt.datetime) -> list[str]:
        calls.append(len(emails))
        return store.enqueue(emails, now)

    def item(n: int) -> store.NewEmail:
        return store.NewEmail(queue_id=store.new_queue_id(), domain="example.test", mail_from=ALICE,
                              recipients=("bob@dest.test",), headers=f"Subject: {n}\r\n".encode(),
                              body=b"hi\r\n")

    async def scenario() -> list[BaseException | str]:
        await blocking.db(database.execute_sql, "PRAGMA busy_timeout = 200")
        committer = GroupCommitter(blocking, enqueue, store.utcnow)
        return await asyncio.gather(*(committer.submit(item(n)) for n in range(5)), return_exceptions=True)

    held = sqlite3.connect(tmp_path / "fwdmail.db", isolation_level=None)
    try:
        held.execute("BEGIN IMMEDIATE")
        held.execute("UPDATE meta SET value = value")
        results = asyncio.run(scenario())
    finally:
        held.rollback()
        held.close()
        blocking.shutdown()
        store.close_store()
    assert all(store.unavailable(r) and str(r) == "database is locked" for r in results), results
    assert calls == [5], "one attempt for the batch, no retry per message"


def test_the_mx_routes_from_its_snapshot_while_the_database_thread_is_held_up(tmp_path: Path) -> None:
    """The MX's directory refresh queues on the one database thread, behind writes that may wait out
    another process's lock for the whole busy timeout; RCPT gets the previous snapshot meanwhile."""
    store.open_store(tmp_path / "fwdmail.db")
    blocking = Blocking()
    held_up = threading.Event()
    now = [0.0]

    async def scenario() -> None:
        await blocking.db(store.add_account, OWNER)
        await blocking.db(store.add_domain, "ours.test", OWNER, "sel", "not a key", "token")
        cache = DirectoryCache(blocking, check_interval=0.2, clock=lambda: now[0], max_wait=0.1)
        first = await cache.get()
        stuck = asyncio.ensure_future(blocking.db(held_up.wait, 60))
        now[0] += 1
        try:
            assert await asyncio.wait_for(cache.get(), 30) is first
            assert first.hosts("ours.test")
        finally:
            held_up.set()
            await stuck

    try:
        asyncio.run(scenario())
    finally:
        held_up.set()
        blocking.shutdown()
        store.close_store()


# disk full

def test_disk_full(tmpfs: Callable[..., None], make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, mount=tmpfs)
    sink.behaviour.rcpt = {"bob@dest.test": "450 4.2.1 Mailbox busy, try later"}
    waiting = token()
    assert submit_token(d, password, waiting)[0] == 250  # deferred, retried while the disk is full
    wait_until(lambda: "deferred" in d.logs(), 30, "the first attempt to be deferred")
    filler = fill(d.data_dir)
    worker_failing = "queue worker: OperationalError: database or disk is full"
    d.wait_for_log(worker_failing)  # the deferred message is due again and cannot even be claimed

    refused = token()
    code, text = submit_token(d, password, refused, body=("y" * 998 + "\r\n") * 600)
    assert (code, text[:6]) == (452, "4.3.1 "), (code, text)
    small = token()
    small_reply = submit_token(d, password, small)
    assert small_reply[0] in (250, 452), small_reply  # 250 only if it still fitted, durably
    mx = token()
    assert mx_send(d, "a@ours.test", mx_message(mx)) == (250, 250), "the MX needs no disk"
    assert mx in subjects(sink)
    assert d.proc is not None and d.proc.poll() is None
    logs = d.logs()
    assert "could not queue a submitted message: database or disk is full" in logs
    assert logs.count(worker_failing) == 1, "the queue worker says it once, not at every poll"
    assert "Traceback" not in logs

    filler.unlink()
    sink.behaviour.rcpt = {}
    after = token()
    assert submit_token(d, password, after)[0] == 250
    accepted = {waiting, after} | ({small} if small_reply[0] == 250 else set())
    wait_until(lambda: accepted <= subjects(sink), 30, "every accepted message to be delivered")
    assert "queue worker: working again" in d.logs()
    assert refused not in subjects(sink)
    assert integrity(d) == "ok"


def test_disk_full_while_a_delivery_is_in_flight(tmpfs: Callable[..., None],
                                                 make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, mount=tmpfs, data_timeout=120)
    arrived, release = threading.Event(), threading.Event()

    def hold(_envelope: object) -> str | None:
        """The destination has the message and holds its reply until the test releases it."""
        arrived.set()
        return None if release.wait(60) else "451 4.3.0 test gave up"

    sink.behaviour.data = hold
    subject = token()
    qid = queue_id(submit_token(d, password, subject))
    assert arrived.wait(30), "the delivery did not start"
    filler = fill(d.data_dir)
    release.set()  # the destination accepts; the outcome cannot be written
    wait_until(lambda: subject in subjects(sink), 30, "the delivery")
    wait_until(lambda: "disk is full" in d.logs().split(qid, 1)[-1], 30, "the failed write to be logged")
    filler.unlink()
    rec = wait_until(lambda: (r := show(d, qid))["status"] == "delivered" and r, 30, "the delivery recorded")
    assert rec["attempts"] == 1 and rec["crash_count"] == 0, rec
    assert subjects_list(sink).count(subject) == 1, "recorded late, not delivered twice"

    arrived.clear()  # again, and this time the daemon is stopped while the disk is still full
    release.clear()
    subject = token()
    qid = queue_id(submit_token(d, password, subject))
    assert arrived.wait(30), "the second delivery did not start"
    filler = fill(d.data_dir)
    release.set()
    wait_until(lambda: "disk is full" in d.logs().split(qid, 1)[-1], 30, "the failed write to be logged")
    assert d.stop() == 0
    logs = d.logs()
    assert "could not give back this worker's claims (database or disk is full)" in logs
    assert "Traceback" not in logs
    filler.unlink()
    d.start()
    rec = wait_until(lambda: (r := show(d, qid))["status"] == "delivered" and r, 30, "the delivery recorded")
    assert subject in subjects(sink) and rec["crash_count"] == 1, rec  # delivered again: at least once
    assert integrity(d) == "ok"


# read-only data dir

def test_read_only_data_dir(tmpfs: Callable[..., None], make_daemon: Callable[..., Daemon],
                            sink: SmtpSink) -> None:
    d, password = start(make_daemon, sink, mount=tmpfs)
    sink.behaviour.rcpt = {"bob@dest.test": "450 4.2.1 Mailbox busy, try later"}
    waiting = token()
    assert submit_token(d, password, waiting)[0] == 250
    wait_until(lambda: "deferred" in d.logs(), 30, "the first attempt to be deferred")
    busy = subprocess.run(["mount", "-o", "remount,ro", str(d.data_dir)], capture_output=True, text=True,
                          timeout=30)
    assert busy.returncode != 0 and "busy" in busy.stderr, (
        "the kernel refuses to make a file system read-only while the daemon has its database open for "
        f"writing; if it no longer does, this test must cover that case: {busy.stderr}")
    assert d.stop() == 0

    remount(d.data_dir, "ro")
    why = f"data_dir: cannot set up {d.data_dir}: Read-only file system"
    assert one_line_error(cli(d, "serve", expect=None), why)
    assert one_line_error(cli(d, "emails", "list", expect=None), why)

    remount(d.data_dir, "rw")
    sink.behaviour.rcpt = {}
    d.start()
    wait_until(lambda: waiting in subjects(sink), 30, "the message queued before to be delivered")
    assert integrity(d) == "ok"
