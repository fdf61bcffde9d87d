"""Verbs on the outbound queue: submitted mail, its recipients, delivery attempts, claims and redaction.

Time-dependent verbs take `now` (naive UTC). Callers get plain records, never peewee objects. Verbs that
read and then write begin IMMEDIATE on SQLite, so they wait for another writer instead of failing on a stale
snapshot; on PostgreSQL they lock the rows they read (`FOR UPDATE`) and re-check them once locked.
The verbs every submitted message goes through (`enqueue`, `claim_due`, `record_attempts`) use fixed
parameterised SQL (plain SQL that PostgreSQL takes as well) instead of building peewee queries, whose
compilation cost more than SQLite's work on them.

Longer than ~400 lines on purpose: the claim, attempt, retry and redaction verbs keep one invariant
together (a message is claimed by one worker, recorded once per attempt, redacted once final); split
apart, each half would have to restate it.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import peewee as pw

from fwdmail.store.db import is_sqlite, locking, reads, sql, unsynced, writing
from fwdmail.store.directory import NotFound
from fwdmail.store.errorlog import log_smtp_errors
from fwdmail.store.models import Alias, Domain, OutboundEmail, OutboundRecipient, database

__all__ = [
    "EMAIL_STATUSES", "FINAL_STATUSES", "PENDING_STATUSES", "WORKER_TAG", "Attempt", "AttemptOutcome",
    "ClaimedEmail", "EmailRecord", "LoginRecord", "NewEmail", "RecipientRecord", "claim_due", "delete_email",
    "enqueue",
    "get_email", "list_emails", "login_record", "new_queue_id", "record_attempt", "record_attempts",
    "record_crash", "release_claims", "release_stale_claims", "retry_email",
]

WORKER_TAG = "/"
"""Between the node id and the worker's number in a queue worker's claim tag (never in a node id)."""
PENDING_STATUSES = ("queued", "deferred")
FINAL_STATUSES = ("delivered", "bounced", "partial")
EMAIL_STATUSES = (*PENDING_STATUSES, *FINAL_STATUSES, "held")


def new_queue_id() -> str:
    """A fresh queue id: 16 uppercase hex digits."""
    return secrets.token_hex(8).upper()


class Reply(Protocol):
    """What the queue stores of an SMTP reply (the daemon's `SmtpError` fits)."""

    code: int
    enhanced_code: str
    text: str


@dataclass(frozen=True)
class NewEmail:
    """A message to put in the queue. `headers` ends with CRLF; the message is headers + CRLF + body."""

    queue_id: str
    domain: str
    mail_from: str
    recipients: tuple[str, ...]
    headers: bytes
    body: bytes
    subject: str = ""
    date_header: dt.datetime | None = None
    send_at: dt.datetime | None = None
    alias_id: int | None = None


@dataclass(frozen=True)
class LoginRecord:
    """An alias that may log in to submission."""

    alias_id: int
    domain: str
    kind: str
    local: str
    password_hash: str | None


@dataclass(frozen=True)
class RecipientRecord:
    address: str
    status: str
    attempts: int
    code: int | None
    enhanced_code: str | None
    text: str | None
    updated_at: dt.datetime


@dataclass(frozen=True)
class EmailRecord:
    id: int
    queue_id: str
    domain: str
    mail_from: str
    status: str
    subject: str
    date_header: dt.datetime | None
    size: int
    created_at: dt.datetime
    send_at: dt.datetime | None
    next_attempt_at: dt.datetime
    claimed_at: dt.datetime | None
    attempts: int
    crash_count: int
    final_at: dt.datetime | None
    redacted_at: dt.datetime | None
    delay_notified: bool
    dsn_sent: bool
    recipients: tuple[RecipientRecord, ...]
    headers: bytes | None = None
    body: bytes | None = None

    @property
    def redacted(self) -> bool:
        return self.redacted_at is not None


@dataclass(frozen=True)
class ClaimedEmail:
    """A due message a worker now owns: what it needs to sign and deliver it."""

    id: int
    queue_id: str
    token: str
    domain: str
    dkim_selector: str
    dkim_private_key: str
    account_email: str
    mail_from: str
    headers: bytes
    body: bytes
    recipients: tuple[str, ...]
    created_at: dt.datetime
    send_at: dt.datetime
    attempts: int
    delay_notified: bool

    @property
    def message(self) -> bytes:
        return self.headers + b"\r\n" + self.body


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt of a claimed message, as `record_attempts` writes it."""

    email_id: int
    token: str
    now: dt.datetime
    delivered: Sequence[str] = ()
    deferred: Mapping[str, Reply] = field(default_factory=dict)
    bounced: Mapping[str, Reply] = field(default_factory=dict)
    retry_at: dt.datetime | None = None
    notices: Sequence[NewEmail] = ()
    delay_notified: bool = False


@dataclass(frozen=True)
class AttemptOutcome:
    status: str
    final: bool
    redacted: bool


def _run(text: str, params: Sequence[Any] = ()) -> Any:
    return database.execute_sql(sql(text), params)


def _run_many(text: str, rows: Sequence[Sequence[Any]]) -> None:
    if rows:
        database.cursor().executemany(sql(text), rows)


def _for_update(text: str, of: str = "") -> str:
    """`text` locking the rows it reads on PostgreSQL (`of`: only that table's); SQLite's write
    transaction holds the whole database already."""
    return text if is_sqlite() else f"{text} FOR UPDATE{f' OF {of}' if of else ''}"


def _when(value: object) -> dt.datetime:
    """A timestamp read by plain SQL (SQLite gives text), as peewee would return it."""
    return OutboundEmail.created_at.python_value(value)  # type: ignore[no-any-return]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _blob(value: object) -> bytes | None:
    return None if value is None else bytes(value)  # type: ignore[arg-type]


def _recipient_record(r: OutboundRecipient) -> RecipientRecord:
    return RecipientRecord(r.address, r.status, r.attempts, r.code, r.enhanced_code, r.text, r.updated_at)


def _email_record(e: OutboundEmail, domain: str, recipients: list[OutboundRecipient],
                  content: bool = False) -> EmailRecord:
    return EmailRecord(
        e.id, e.queue_id, domain, e.mail_from, e.status, e.subject, e.date_header, e.size, e.created_at,
        e.send_at, e.next_attempt_at, e.claimed_at, e.attempts, e.crash_count, e.final_at, e.redacted_at,
        e.delay_notified, e.dsn_sent, tuple(_recipient_record(r) for r in recipients),
        _blob(e.headers) if content else None, _blob(e.body) if content else None,
    )


@reads
def login_record(domain: str, kind: str, local: str) -> LoginRecord | None:
    """The alias a submission login names, with its password hash; None if there is no such alias."""
    row = (
        Alias.select(Alias.id, Alias.kind, Alias.local, Alias.password_hash, Domain.name).join(Domain)
        .where(Domain.name == domain, Alias.kind == kind, Alias.local == local)
        .first()
    )
    if row is None:
        return None
    return LoginRecord(row.id, row.domain.name, row.kind, row.local, row.password_hash)


_INSERT_EMAIL = (
    'INSERT INTO "outbound_email" (queue_id, domain_id, alias_id, mail_from, headers, body, size, subject, '
    "date_header, status, created_at, send_at, next_attempt_at, attempts, crash_count, delay_notified, "
    "dsn_sent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?) RETURNING id"
)
_INSERT_RECIPIENT = ('INSERT INTO "outbound_recipient" (email_id, address, status, attempts, updated_at) '
                     "VALUES (?, ?, ?, 0, ?)")


def _insert(email: NewEmail, domain_id: int, now: dt.datetime) -> int:
    send_at = max(email.send_at or now, now)
    (email_id,) = _run(_INSERT_EMAIL, (
        email.queue_id, domain_id, email.alias_id, email.mail_from, email.headers, email.body,
        len(email.headers) + 2 + len(email.body), email.subject, email.date_header, "queued", now, send_at,
        send_at, False, False,
    )).fetchone()
    _run_many(_INSERT_RECIPIENT, [(email_id, a, "queued", now) for a in email.recipients])
    return int(email_id)


def _domain_ids(names: set[str]) -> dict[str, int]:
    rows = _run(f'SELECT name, id FROM "domain" WHERE name IN ({_marks(len(names))})', sorted(names))
    return dict(rows.fetchall())


def enqueue(emails: Sequence[NewEmail], now: dt.datetime) -> list[str]:
    """Store messages in one transaction (one durable commit for all); return their queue ids."""
    if not emails:
        return []
    with writing():
        ids = _domain_ids({e.domain for e in emails})
        for email in emails:
            if email.domain not in ids:
                raise NotFound(f"no domain {email.domain}")
            _insert(email, ids[email.domain], now)
    return [e.queue_id for e in emails]


_DUE = ('SELECT id FROM "outbound_email" WHERE status IN (?, ?) AND next_attempt_at <= ? '
        "AND claimed_at IS NULL ORDER BY next_attempt_at, id LIMIT ?")
_CLAIMED = (
    "SELECT e.id, e.queue_id, d.name, d.dkim_selector, d.dkim_private_key, a.email, e.mail_from, e.headers, "
    "e.body, e.created_at, e.send_at, e.attempts, e.delay_notified "
    'FROM "outbound_email" e JOIN "domain" d ON d.id = e.domain_id JOIN "account" a ON a.id = d.account_id '
    "WHERE e.id IN ({}) ORDER BY e.next_attempt_at, e.id"
)


def _db_now(now: dt.datetime) -> tuple[str, tuple[Any, ...]]:
    """The time a claim is stamped with, as SQL and its parameters: the database's clock on PostgreSQL
    (every node judges a stale claim by the same clock), the verb's `now` on SQLite (one machine)."""
    return ("?", (now,)) if is_sqlite() else ("(now() AT TIME ZONE 'UTC')", ())


def claim_due(now: dt.datetime, token: str, limit: int, node: str = "") -> list[ClaimedEmail]:
    """Claim up to `limit` unclaimed messages due at `now` (oldest due first) for the worker `token` of
    the node `node`.

    On PostgreSQL the due rows are locked with `SKIP LOCKED`: rows another node is claiming right now are
    passed over, not waited for, so nodes claiming at once neither block each other nor share a message.
    The claim is committed without an fsync: if a power loss takes it back, the message is merely due
    again (the commit that records its delivery attempt syncs the claim with it).
    """
    if limit <= 0:
        return []
    due = (*PENDING_STATUSES, now, limit)
    if _run(_DUE, due).fetchone() is None:
        return []  # the common idle poll: a read, no write lock
    with unsynced(), writing():
        ids = [r[0] for r in _run(_DUE if is_sqlite() else f"{_DUE} FOR UPDATE SKIP LOCKED", due).fetchall()]
        if not ids:
            return []
        marks = _marks(len(ids))
        stamp, stamp_params = _db_now(now)
        _run(f'UPDATE "outbound_email" SET claimed_at = {stamp}, claim_token = ?, claim_node = ? '
             f"WHERE id IN ({marks})", (*stamp_params, token, node or None, *ids))
        pending: dict[int, list[str]] = {i: [] for i in ids}
        for email_id, address in _run(
                f'SELECT email_id, address FROM "outbound_recipient" WHERE email_id IN ({marks}) '
                "AND status IN (?, ?) ORDER BY id", (*ids, *PENDING_STATUSES)).fetchall():
            pending[email_id].append(address)
        return [_claimed(row, token, pending) for row in _run(_CLAIMED.format(marks), ids).fetchall()]


def _claimed(row: tuple[Any, ...], token: str, pending: dict[int, list[str]]) -> ClaimedEmail:
    (email_id, queue_id, domain, selector, key, account, mail_from, headers, body, created_at, send_at,
     attempts, delay_notified) = row
    created = _when(created_at)
    return ClaimedEmail(
        email_id, queue_id, token, domain, selector, key, account, mail_from, bytes(headers),
        bytes(body or b""), tuple(pending[email_id]), created, _when(send_at) if send_at else created,
        attempts, bool(delay_notified),
    )


_SET_RECIPIENT = (
    'UPDATE "outbound_recipient" SET status = ?, attempts = attempts + 1, updated_at = ?, code = ?, '
    'enhanced_code = ?, "text" = ? WHERE email_id = ? AND address = ? AND status IN (?, ?)'
)


def _overall_status(statuses: list[str]) -> str:
    """A message's status after an attempt, from its recipients' statuses."""
    if any(s in PENDING_STATUSES for s in statuses):
        return "deferred"
    if all(s == "delivered" for s in statuses):
        return "delivered"
    if all(s == "bounced" for s in statuses):
        return "bounced"
    return "partial"


def record_attempt(email_id: int, token: str, now: dt.datetime, *,
                   delivered: Sequence[str] = (), deferred: Mapping[str, Reply] | None = None,
                   bounced: Mapping[str, Reply] | None = None, retry_at: dt.datetime | None = None,
                   notices: Sequence[NewEmail] = (), delay_notified: bool = False) -> AttemptOutcome | None:
    """`record_attempts` of this one attempt."""
    attempt = Attempt(email_id, token, now, delivered, deferred or {}, bounced or {}, retry_at, notices,
                      delay_notified)
    return record_attempts([attempt])[0]


def record_attempts(attempts: Sequence[Attempt],
                    now: dt.datetime | None = None) -> list[AttemptOutcome | None]:
    """Record delivery attempts in one transaction (one durable commit for all) and release their claims.

    Per recipient: delivered, deferred or bounced (with the reply); every deferral and bounce is also an
    outbound SMTP error log row. An attempt's `notices` (DSNs, delay notices) are queued in the same
    transaction. A message with no recipient left pending reaches its final state; its body is redacted at
    once when its domain keeps none (retention_days 0). Each attempt carries its own time (`now` is only
    the group committer's). An attempt on a message that is gone or no longer claimed by its token gets
    None.
    """
    with writing():
        return _record_attempts(attempts)


class _Claim(NamedTuple):
    token: str | None
    mail_from: str
    domain_id: int
    domain: str
    retention_days: int


_ATTEMPTED = ("SELECT e.id, e.claim_token, e.mail_from, d.id, d.name, d.retention_days "
              'FROM "outbound_email" e JOIN "domain" d ON d.id = e.domain_id WHERE e.id IN ({})')


def _record_attempts(attempts: Sequence[Attempt]) -> list[AttemptOutcome | None]:
    """The work of `record_attempts` in a few statements for the whole batch, not a few per message."""
    ids = sorted({a.email_id for a in attempts})
    claims = {row[0]: _Claim(*row[1:])
              for row in _run(_for_update(_ATTEMPTED.format(_marks(len(ids))), "e"), ids).fetchall()}
    ours: dict[int, Attempt] = {}
    for a in attempts:
        row = claims.get(a.email_id)
        if row is not None and row.token == a.token and a.email_id not in ours:
            ours[a.email_id] = a
    if not ours:
        return [None] * len(attempts)
    _run_many(_SET_RECIPIENT, [
        (status, a.now, reply.code if reply else None, reply.enhanced_code if reply else None,
         reply.text if reply else None, a.email_id, address, *PENDING_STATUSES)
        for a in ours.values()
        for status, replies in (("delivered", dict.fromkeys(a.delivered)), ("deferred", a.deferred),
                                ("bounced", a.bounced))
        for address, reply in replies.items()
    ])
    log_smtp_errors([
        (a.now, "outbound", claims[a.email_id].domain, claims[a.email_id].mail_from, r.code, r.enhanced_code,
         r.text)
        for a in ours.values() for r in (*a.deferred.values(), *a.bounced.values())
    ])
    for a in ours.values():
        for notice in a.notices:
            _insert(notice, claims[a.email_id].domain_id, a.now)
    statuses: dict[int, list[str]] = {email_id: [] for email_id in ours}
    for email_id, status in _run(f'SELECT email_id, status FROM "outbound_recipient" WHERE email_id IN '
                                 f"({_marks(len(ours))})", list(ours)).fetchall():
        statuses[email_id].append(status)
    outcomes: dict[int, AttemptOutcome] = {}
    updates: dict[tuple[str, ...], list[tuple[object, ...]]] = {}
    for email_id, a in ours.items():
        outcomes[email_id], changes = _attempt_changes(a, statuses[email_id], claims[email_id].retention_days)
        updates.setdefault(tuple(changes), []).append((*changes.values(), email_id))
    for columns, rows in updates.items():
        assignments = ", ".join(f"{column} = ?" for column in columns)
        _run_many(f'UPDATE "outbound_email" SET attempts = attempts + 1, {assignments} WHERE id = ?', rows)
    seen: set[int] = set()
    out: list[AttemptOutcome | None] = []
    for a in attempts:
        first = ours.get(a.email_id) is a and a.email_id not in seen
        seen.add(a.email_id)
        out.append(outcomes[a.email_id] if first else None)
    return out


def _attempt_changes(a: Attempt, statuses: list[str],
                     retention_days: int) -> tuple[AttemptOutcome, dict[str, object]]:
    """An attempt's outcome and the columns it sets on its message, given its recipients' statuses."""
    status = _overall_status(statuses)
    final = status in FINAL_STATUSES
    changes: dict[str, object] = {"status": status, "claimed_at": None, "claim_token": None,
                                  "claim_node": None}
    if a.bounced and a.notices:
        changes["dsn_sent"] = True
    if a.delay_notified:
        changes["delay_notified"] = True
    redacted = False
    if final:
        changes["final_at"] = a.now
        if retention_days == 0:
            changes["body"] = None
            changes["redacted_at"] = a.now
            redacted = True
    else:
        changes["next_attempt_at"] = a.retry_at or a.now
    return AttemptOutcome(status, final, redacted), changes


def record_crash(email_id: int, token: str, now: dt.datetime, retry_at: dt.datetime,
                 max_crashes: int) -> str | None:
    """The worker failed on this message: count it, release the claim, hold it after `max_crashes`."""
    with writing():
        email = locking(OutboundEmail.select().where(OutboundEmail.id == email_id)).first()
        if email is None or email.claim_token != token:
            return None
        return _crashed(email, now, retry_at, max_crashes)


def _crashed(email: OutboundEmail, now: dt.datetime, retry_at: dt.datetime, max_crashes: int) -> str:
    email.crash_count += 1
    email.claimed_at = None
    email.claim_token = None
    email.claim_node = None
    if email.crash_count >= max_crashes:
        email.status = "held"
    email.next_attempt_at = retry_at
    email.save()
    return email.status


def release_stale_claims(now: dt.datetime, max_crashes: int, claimed_before: dt.datetime | None = None,
                         exclude: Sequence[int] = (), *, node: str | None = None,
                         older_than: float | None = None) -> tuple[int, int]:
    """Take back claims of workers that died: all claims, or those of the node `node` (a node's start:
    never another live node's), or those made before `claimed_before`, or more than `older_than` seconds
    ago by the database's clock on PostgreSQL (the verb's `now` on SQLite). A claim with no node (made
    before claims were tagged) counts as every node's. A node's claims include those of its queue worker
    processes, tagged `node/<index>` (`WORKER_TAG`); a worker's tag matches only its own.

    Each counts as a crash of that message; a message that reaches `max_crashes` is held for the admin,
    never dropped. Returns (released, held).
    """
    released = held = 0
    with writing():
        q = OutboundEmail.select().where(OutboundEmail.claimed_at.is_null(False))
        if node is not None:
            q = q.where((OutboundEmail.claim_node == node) | OutboundEmail.claim_node.is_null()
                        | (pw.fn.SUBSTR(OutboundEmail.claim_node, 1, len(node) + 1) == f"{node}{WORKER_TAG}"))
        if claimed_before is not None:
            q = q.where(OutboundEmail.claimed_at < claimed_before)
        if older_than is not None:
            q = q.where(OutboundEmail.claimed_at < (
                now - dt.timedelta(seconds=older_than) if is_sqlite()
                else pw.SQL("(now() AT TIME ZONE 'UTC') - %s * interval '1 second'", (older_than,))))
        if exclude:
            q = q.where(OutboundEmail.id.not_in(list(exclude)))
        for email in locking(q):
            released += 1
            if _crashed(email, now, now, max_crashes) == "held":
                held += 1
    return released, held


def release_claims(token: str, now: dt.datetime) -> int:
    """Give back, without counting a crash, the claims of a worker that stops cleanly."""
    return (
        OutboundEmail.update(claimed_at=None, claim_token=None, claim_node=None, next_attempt_at=now)
        .where(OutboundEmail.claim_token == token).execute()
    )


def _email(queue_id: str, lock: bool = False) -> OutboundEmail:
    q = OutboundEmail.select().where(OutboundEmail.queue_id == queue_id)
    row = (locking(q) if lock else q).first()
    if row is None:
        raise NotFound(f"no email {queue_id}")
    return row


def get_email(queue_id: str) -> EmailRecord:
    """One message with its recipients, headers and (unless redacted) body."""
    e = _email(queue_id)
    recipients = list(e.recipients.order_by(OutboundRecipient.id))
    return _email_record(e, Domain.get_by_id(e.domain_id).name, recipients, content=True)


def list_emails(status: str | None = None, domain: str | None = None,
                limit: int | None = None) -> list[EmailRecord]:
    """Messages newest first, optionally of one status and/or one domain (headers and body left out)."""
    q = listing().order_by(OutboundEmail.created_at.desc(), OutboundEmail.id.desc())
    if status is not None:
        q = q.where(OutboundEmail.status == status)
    if domain is not None:
        q = q.where(Domain.name == domain)
    if limit is not None:
        q = q.limit(limit)
    return listed(list(q))


def listing() -> pw.ModelSelect:
    """Messages joined to their domain, headers and body left out (for `listed`)."""
    fields = [f for f in OutboundEmail._meta.sorted_fields if f.name not in ("headers", "body")]
    return OutboundEmail.select(*fields, Domain.name).join(Domain)


def listed(emails: list[OutboundEmail]) -> list[EmailRecord]:
    """Rows of a `listing` as records, with their recipients read in one query."""
    recipients: dict[int, list[OutboundRecipient]] = {e.id: [] for e in emails}
    if emails:
        for r in (OutboundRecipient.select().where(OutboundRecipient.email.in_(list(recipients)))
                  .order_by(OutboundRecipient.id)):
            recipients[r.email_id].append(r)
    return [_email_record(e, e.domain.name, recipients[e.id]) for e in emails]


def retry_email(queue_id: str, now: dt.datetime) -> EmailRecord:
    """Make a queued, deferred or held message due now (a held one gets its crash count reset)."""
    with writing():
        e = _email(queue_id, lock=True)
        if e.status in FINAL_STATUSES:
            raise ValueError(f"email {queue_id} is {e.status}: there is nothing left to retry")
        if e.claimed_at is not None:
            raise ValueError(f"email {queue_id} is being delivered right now")
        if e.status == "held":
            e.status = "deferred" if e.attempts else "queued"
            e.crash_count = 0
        e.next_attempt_at = now
        e.save()
    return get_email(queue_id)


def delete_email(queue_id: str) -> None:
    """Delete a message with its recipients (the caller then settles the WAL: `settle_deleted`)."""
    with writing():
        _email(queue_id).delete_instance()
