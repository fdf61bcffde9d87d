"""Test data written straight through the models, for rows whose app verbs belong to other modules.

Also the byte-level probe the retention tests use: which files of a data dir contain a given token.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
from pathlib import Path

from fwdmail import store
from fwdmail.store.models import AbuseEvent, Domain, OutboundEmail, OutboundRecipient, SmtpErrorLog, database

T0 = dt.datetime(2024, 6, 1, 12, 0, 0)
"""A fixed "now" for store-level tests."""


def token(label: str = "tok") -> str:
    """A unique marker that cannot occur by chance in a database file."""
    return f"{label}{secrets.token_hex(12)}"


def make_domain(name: str, account: str | None = None, retention_days: int = 0) -> store.DomainRecord:
    """An account (created if missing) owning `name`, with a placeholder DKIM key (no RSA needed)."""
    account = account or f"owner@{name}"
    try:
        store.add_account(account)
    except store.AlreadyExists:
        pass
    store.add_domain(name, account, "sel", "placeholder-dkim-key", token("verify"))
    return store.update_domain(name, retention_days=retention_days)


def add_outbound(domain: str, *, body: bytes = b"hello\r\n", status: str = "delivered",
                 created_at: dt.datetime = T0, final_at: dt.datetime | None = None,
                 date_header: dt.datetime | None = None, headers: bytes = b"Subject: hi\r\n",
                 recipients: tuple[str, ...] = ("rcpt@dest.test",)) -> int:
    """An outbound message with its recipients; `final_at` defaults to `created_at` for final statuses."""
    if final_at is None and status in store.FINAL_STATUSES:
        final_at = created_at
    with database.atomic():
        row = OutboundEmail.create(
            queue_id=token("q"), domain=Domain.get(Domain.name == domain), mail_from=f"me@{domain}",
            headers=headers, body=body, size=len(headers) + len(body), date_header=date_header,
            status=status, created_at=created_at, next_attempt_at=created_at, final_at=final_at,
        )
        for rcpt in recipients:
            OutboundRecipient.create(email=row, address=rcpt, status="delivered", updated_at=created_at)
    return row.id


def add_error_log(created_at: dt.datetime, domain: str | None = None, alias: str = "",
                  text: str = "No such user") -> int:
    dom = Domain.get_or_none(Domain.name == domain) if domain else None
    return SmtpErrorLog.create(
        created_at=created_at, direction="inbound", domain=dom, domain_name=domain or "", alias=alias,
        code=550, enhanced_code="5.1.1", text=text,
    ).id


def add_abuse_event(created_at: dt.datetime, client_ip: str | None = "192.0.2.1", detail: str = "",
                    domain: str | None = None) -> int:
    return store.record_abuse(created_at, "spam", client_ip, domain, detail)


def send_through_queue(domain: str, body: bytes, accepted: dt.datetime, delivered: dt.datetime,
                       date_header: dt.datetime | None) -> str:
    """A message enqueued, claimed and delivered by the queue's own verbs; returns its queue id."""
    queue_id = token("q")
    store.enqueue([store.NewEmail(queue_id, domain, f"me@{domain}", ("rcpt@dest.test",),
                                  b"Subject: hi\r\n", body, date_header=date_header)], accepted)
    (claimed,) = store.claim_due(accepted, "worker", 1)
    outcome = store.record_attempt(claimed.id, claimed.token, delivered, delivered=["rcpt@dest.test"])
    assert outcome is not None and outcome.final
    return queue_id


def outbound(email_id: int) -> OutboundEmail | None:
    return OutboundEmail.get_or_none(OutboundEmail.id == email_id)


def recipient_count(email_id: int) -> int:
    return OutboundRecipient.select().where(OutboundRecipient.email == email_id).count()


def error_log_exists(log_id: int) -> bool:
    return SmtpErrorLog.get_or_none(SmtpErrorLog.id == log_id) is not None


def abuse_event_exists(event_id: int) -> bool:
    return AbuseEvent.get_or_none(AbuseEvent.id == event_id) is not None


def rename_table(old: str, new: str) -> None:
    """Break (or mend) a table under the store's feet, to make a job fail for real."""
    database.execute_sql(f'ALTER TABLE "{old}" RENAME TO "{new}"')


def filler(domain: str, n: int = 120) -> None:
    """Mail of mixed sizes around the tokens, so pages split, overflow and get freed for real."""
    for i in range(n):
        body = os.urandom(40 if i % 3 else 6000).hex().encode()
        add_outbound(domain, body=body, created_at=T0 - i * dt.timedelta(minutes=1), date_header=T0)


class Owned:
    """An account with a domain, alias, password hash, DKIM key, outbound mail, error log and abuse record,
    each carrying its own token. Its tokened message is "held", so a running queue leaves it alone."""

    def __init__(self, label: str) -> None:
        self.t = {k: token(k) for k in ("account", "domain", "alias", "hash", "dkim", "body", "hdr", "err",
                                        "spam")}
        self.email, self.domain = f"{self.t['account']}@{label}.example", f"{self.t['domain']}.test"
        store.add_account(self.email)
        store.add_domain(self.domain, self.email, "sel", f"-----BEGIN KEY-----{self.t['dkim']}", token("v"))
        store.add_alias(self.domain, "exact", self.t["alias"], ["dest@elsewhere.test"])
        store.set_alias_password(self.domain, "exact", self.t["alias"], f"scrypt${self.t['hash']}")
        filler(self.domain, 40)
        add_outbound(self.domain, status="held", body=self.t["body"].encode() * 500,
                     headers=f"Subject: {self.t['hdr']}\r\n".encode(), date_header=T0)
        add_error_log(T0, self.domain, alias=f"{self.t['alias']}@{self.domain}", text=self.t["err"])
        add_abuse_event(T0, detail=self.t["spam"], domain=self.domain)

    def tokens(self, *but: str) -> list[str]:
        return [v for k, v in self.t.items() if k not in but]


def files_containing(root: Path, needle: str) -> list[str]:
    """Every file under `root` whose raw bytes contain `needle`, as paths relative to `root`.

    The files are read by a separate process (grep): opening and closing the database file here would
    drop this process's SQLite locks (POSIX locks belong to the process, not the descriptor).
    """
    found = subprocess.run(["grep", "-rlaF", "--", needle, str(root)], capture_output=True, check=False)
    if found.returncode not in (0, 1):
        raise RuntimeError(f"grep failed: {found.stderr.decode(errors='replace')}")
    return sorted(str(Path(line).relative_to(root)) for line in found.stdout.decode().splitlines())
