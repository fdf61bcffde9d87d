"""Helpers for the submission and queue tests: a real smtplib client, domain setup, bounded waits."""

from __future__ import annotations

import email.utils
import json
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.support.daemon import Daemon

T = TypeVar("T")

OWNER = "owner@owner.test"


def client_tls() -> ssl.SSLContext:
    """The daemon's certificate is self-signed: tests check the transport, not the chain."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def add_domain(d: Daemon, domain: str, *aliases: str, retention_days: int | None = None) -> dict[str, str]:
    """Add `domain` (account OWNER, created if needed) and aliases; return login -> password."""
    d.cli("account", "add", OWNER, expect=None)  # exit 1 when it exists already
    d.cli("domain", "add", domain, "--account", OWNER)
    if retention_days is not None:
        d.cli("domain", "set", domain, "--retention-days", str(retention_days))
    passwords = {}
    for alias in aliases:
        d.cli("alias", "add", alias, "someone@dest.test")
        out = json.loads(d.cli("alias", "password", alias, "--json").output)
        passwords[out["address"]] = out["password"]
    return passwords


def message(frm: str, to: str = "bob@dest.test", subject: str = "hello", body: str = "Hello there.\r\n",
            extra: Sequence[str] = ()) -> bytes:
    lines = [f"From: {frm}", f"To: {to}", f"Subject: {subject}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def connect(d: Daemon, *, source: str = "127.0.0.1", implicit: bool = False, starttls: bool = True,
            timeout: float = 15) -> smtplib.SMTP:
    """An smtplib session on the daemon's submission port (STARTTLS done), or on its implicit-TLS port."""
    if implicit:
        s: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", d.submission_tls_port, context=client_tls(),
                                           timeout=timeout, source_address=(source, 0))
        s.ehlo("client.test")
        return s
    s = smtplib.SMTP("127.0.0.1", d.submission_port, timeout=timeout, source_address=(source, 0))
    s.ehlo("client.test")
    if starttls:
        s.starttls(context=client_tls())
        s.ehlo("client.test")
    return s


def send(s: smtplib.SMTP, mail_from: str, rcpts: Sequence[str], data: bytes) -> tuple[int, str]:
    """MAIL, RCPT..., DATA on a logged-in session; the first refusal, or the reply to DATA."""
    code, text = s.mail(mail_from)
    if code != 250:
        s.rset()
        return code, text.decode()
    for rcpt in rcpts:
        code, text = s.rcpt(rcpt)
        if code != 250:
            s.rset()
            return code, text.decode()
    code, text = s.data(data)
    return code, text.decode()


def submit(d: Daemon, login: str, password: str, data: bytes, rcpts: Sequence[str] = ("bob@dest.test",),
           mail_from: str | None = None, **kw: Any) -> tuple[int, str]:
    with connect(d, **kw) as s:
        s.login(login, password)
        return send(s, mail_from or login, rcpts, data)


def queue_id(reply: tuple[int, str]) -> str:
    code, text = reply
    assert code == 250 and text.startswith("2.0.0 Queued as "), reply
    return text.rsplit(" ", 1)[1]


def wait_until(probe: Callable[[], T | None], timeout: float = 20, what: str = "condition",
               interval: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def show(d: Daemon, qid: str) -> dict[str, Any]:
    return json.loads(d.cli("emails", "show", qid, "--json").output)


def listing(d: Daemon, *args: str) -> list[dict[str, Any]]:
    return json.loads(d.cli("emails", "list", "--json", *args).output)


def wait_status(d: Daemon, qid: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        rec = show(d, qid)
        return rec if rec["status"] in statuses else None

    return wait_until(probe, timeout, f"email {qid} to become {'/'.join(statuses)}")


def db_bytes(d: Daemon) -> bytes:
    """The raw bytes of the database and its WAL and shm files."""
    out = b""
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{d.data_dir / 'fwdmail.db'}{suffix}")
        if p.exists():
            out += p.read_bytes()
    return out


def header(raw: bytes, name: str) -> str | None:
    msg = email.message_from_bytes(raw)
    value = msg.get(name)
    return None if value is None else str(value)


def rfc5322_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)
