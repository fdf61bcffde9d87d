"""peewee models. Only modules inside `fwdmail.store` import this."""

from __future__ import annotations

import datetime as dt

import peewee as pw

database = pw.DatabaseProxy()


def utcnow() -> dt.datetime:
    """Naive UTC now; every timestamp in the store is naive UTC."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False


class Meta(BaseModel):
    """Key/value facts about the store itself: schema version, directory version."""

    key = pw.CharField(primary_key=True)
    value = pw.TextField()


class Account(BaseModel):
    email = pw.CharField(unique=True)
    created_at = pw.DateTimeField(default=utcnow)


class Domain(BaseModel):
    name = pw.CharField(unique=True)
    account = pw.ForeignKeyField(Account, backref="domains", on_delete="CASCADE")
    verification_token = pw.CharField()
    dkim_selector = pw.CharField()
    dkim_private_key = pw.TextField()
    retention_days = pw.IntegerField(default=0)
    verified_at = pw.DateTimeField(null=True)
    auth_policy = pw.CharField(default="enforce")
    friendly_from = pw.BooleanField(default=False)
    require_tls_inbound = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=utcnow)
    aliases_from = pw.CharField(default="store")  # issue 17: store | dns | both


def lookup_key(local: str) -> str:
    """What an exact alias is found by: its local part, case folded as the MX compares local parts."""
    return local.lower()


class Alias(BaseModel):
    """An alias. `lookup` is `lookup_key(local)`, filled in on every insert (`insert`, `insert_many`,
    `create`), so the MX finds an exact alias by one indexed query whatever its case."""

    domain = pw.ForeignKeyField(Domain, backref="aliases", on_delete="CASCADE")
    kind = pw.CharField()  # exact | catch-all | regex
    local = pw.CharField()  # local part, "*", or the regex pattern
    lookup = pw.CharField(default="")
    destinations = pw.TextField()  # JSON list of addresses
    state = pw.CharField(default="enabled")  # enabled | quiet | tempfail | reject
    password_hash = pw.CharField(null=True)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("domain", "kind", "local"), True), (("domain", "kind", "lookup"), False))

    @classmethod
    def insert(cls, __data: dict[object, object] | None = None, **insert: object) -> pw.ModelInsert:
        row = _with_lookup(dict(__data or {}, **insert))
        return super().insert(row)

    @classmethod
    def insert_many(cls, rows: object, fields: list[object] | None = None) -> pw.ModelInsert:
        if fields is None:
            rows = [_with_lookup(dict(r)) if isinstance(r, dict) else r for r in rows]  # type: ignore[attr-defined]
        elif any(_name(f) == "local" for f in fields) and not any(_name(f) == "lookup" for f in fields):
            at = [_name(f) for f in fields].index("local")
            rows = [(*r, lookup_key(r[at])) for r in rows]  # type: ignore[attr-defined]
            fields = [*fields, cls.lookup]
        return super().insert_many(rows, fields)


def _name(key: object) -> str:
    return key.name if isinstance(key, pw.Field) else str(key)


def _with_lookup(row: dict[object, object]) -> dict[object, object]:
    names = {_name(k): k for k in row}
    if "local" in names and not row.get(names.get("lookup", "lookup")):
        row[Alias.lookup] = lookup_key(str(row[names["local"]]))
    return row


class DirectoryChange(BaseModel):
    """The directory version at which each domain last changed ("*": every domain), so a process polls
    "what changed since version N" with one indexed query and drops only those domains from its cache."""

    domain = pw.CharField(primary_key=True)
    version = pw.BigIntegerField(index=True)


class Lease(BaseModel):
    """A cluster-wide "once per interval" lock: the job `name` is taken until `expires_at` (naive UTC, the
    database's clock on PostgreSQL)."""

    name = pw.CharField(primary_key=True)
    expires_at = pw.DateTimeField()


class OutboundEmail(BaseModel):
    queue_id = pw.CharField(unique=True)
    domain = pw.ForeignKeyField(Domain, backref="outbound", on_delete="CASCADE")
    alias = pw.ForeignKeyField(Alias, null=True, backref="outbound", on_delete="SET NULL")
    mail_from = pw.CharField()
    headers = pw.BlobField()
    body = pw.BlobField(null=True)
    size = pw.IntegerField()
    subject = pw.TextField(default="")
    date_header = pw.DateTimeField(null=True)
    status = pw.CharField(default="queued", index=True)  # queued|deferred|delivered|bounced|partial|held
    created_at = pw.DateTimeField(default=utcnow)
    send_at = pw.DateTimeField(null=True)  # sending starts here (a future Date); lifetime counts from it
    next_attempt_at = pw.DateTimeField(index=True)
    claimed_at = pw.DateTimeField(null=True)
    claim_token = pw.CharField(null=True)
    claim_node = pw.CharField(null=True)  # the node whose worker holds the claim (`[cluster] node_id`)
    attempts = pw.IntegerField(default=0)
    crash_count = pw.IntegerField(default=0)
    final_at = pw.DateTimeField(null=True)
    redacted_at = pw.DateTimeField(null=True)
    delay_notified = pw.BooleanField(default=False)
    dsn_sent = pw.BooleanField(default=False)


class OutboundRecipient(BaseModel):
    email = pw.ForeignKeyField(OutboundEmail, backref="recipients", on_delete="CASCADE")
    address = pw.CharField()
    status = pw.CharField(default="queued")  # queued | deferred | delivered | bounced
    attempts = pw.IntegerField(default=0)
    code = pw.IntegerField(null=True)
    enhanced_code = pw.CharField(null=True)
    text = pw.TextField(null=True)
    updated_at = pw.DateTimeField(default=utcnow)


class SmtpErrorLog(BaseModel):
    """An inbound or outbound 4xx/5xx: never a client IP, never a body."""

    created_at = pw.DateTimeField(default=utcnow, index=True)
    direction = pw.CharField()  # inbound | outbound
    domain = pw.ForeignKeyField(Domain, null=True, backref="error_logs", on_delete="CASCADE")
    domain_name = pw.CharField(default="")
    alias = pw.CharField(default="")
    code = pw.IntegerField()
    enhanced_code = pw.CharField(default="")
    text = pw.TextField(default="")


class AbuseEvent(BaseModel):
    """Spam or malicious activity, with what is needed to act on it (kept 7 days)."""

    created_at = pw.DateTimeField(default=utcnow, index=True)
    kind = pw.CharField()
    client_ip = pw.CharField(null=True)
    domain = pw.ForeignKeyField(Domain, null=True, backref="abuse_events", on_delete="CASCADE")
    detail = pw.TextField(default="")


class ApiToken(BaseModel):
    """An account's API token, kept only as the SHA-256 of the token (shown once, never stored)."""

    account = pw.ForeignKeyField(Account, backref="api_tokens", on_delete="CASCADE")
    token_hash = pw.CharField(unique=True)
    created_at = pw.DateTimeField(default=utcnow)


class HttpLog(BaseModel):
    """One web/API request: the route pattern (never the path as sent, a query string or a body) and the
    client's network (/24 or /48), never its address. Kept 30 days."""

    created_at = pw.DateTimeField(default=utcnow, index=True)
    account = pw.ForeignKeyField(Account, null=True, backref="http_logs", on_delete="CASCADE")
    method = pw.CharField()
    route = pw.CharField()
    status = pw.IntegerField()
    duration_ms = pw.IntegerField()
    client_net = pw.CharField(default="")


# -- web logins (issue 16, "My Account" pages) --
class AccountLogin(BaseModel):
    """An account's web login: the scrypt hash of its password and, when enabled, its TOTP secret
    (`totp_pending`: a secret shown for confirmation, not yet required). `totp_step`: the last time step
    accepted, so a code is never accepted twice."""

    account = pw.ForeignKeyField(Account, unique=True, backref="logins", on_delete="CASCADE")
    password_hash = pw.CharField(null=True)
    totp_secret = pw.CharField(null=True)
    totp_pending = pw.CharField(null=True)
    totp_step = pw.BigIntegerField(default=0)
    updated_at = pw.DateTimeField(default=utcnow)


class WebSession(BaseModel):
    """A web session, kept as the SHA-256 of the cookie's id (never the id). `stage` is "totp" between
    the password and the second factor, then "full"."""

    account = pw.ForeignKeyField(Account, backref="web_sessions", on_delete="CASCADE")
    id_hash = pw.CharField(unique=True)
    stage = pw.CharField(default="full")
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField(index=True)


class LoginLink(BaseModel):
    """A one-time link to set an account's password (invite or reset), kept as the SHA-256 of its token."""

    account = pw.ForeignKeyField(Account, backref="login_links", on_delete="CASCADE")
    token_hash = pw.CharField(unique=True)
    created_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField(index=True)


# issue 17: sender allow/deny lists and webhook signing keys, per domain

class SenderRule(BaseModel):
    """One entry of a domain's sender allow or deny list: an address, `@domain`, IP or CIDR."""

    domain = pw.ForeignKeyField(Domain, backref="sender_rules", on_delete="CASCADE")
    kind = pw.CharField()  # allow | deny
    pattern = pw.CharField()
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("domain", "kind", "pattern"), True),)


class WebhookKey(BaseModel):
    """The key a domain's webhook POSTs are signed with (HMAC-SHA256), as `domain webhook-key` prints it."""

    domain = pw.ForeignKeyField(Domain, backref="webhook_keys", on_delete="CASCADE", unique=True)
    key = pw.CharField()
    created_at = pw.DateTimeField(default=utcnow)


ALL_MODELS: list[type[BaseModel]] = [
    Meta, Account, Domain, Alias, DirectoryChange, Lease, OutboundEmail, OutboundRecipient, SmtpErrorLog,
    AbuseEvent, ApiToken, HttpLog,
    AccountLogin, WebSession, LoginLink, SenderRule, WebhookKey,
]
