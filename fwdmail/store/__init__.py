"""The store: SQLite through peewee, and the only code that writes queries.

Everything else calls these verbs; time-dependent verbs take `now` (naive UTC) as an argument.
"""

from __future__ import annotations

from fwdmail.store import driver  # first: loads peewee without psycopg (see there)

# isort: split

from peewee import DatabaseError as DatabaseFailure

from fwdmail.store.abuse import (
    AbuseRecord,
    list_abuse_events,
    record_abuse,
)
from fwdmail.store.bulk import (
    IMPORT_BATCH,
    ImportRow,
    ImportWrites,
    alias_page,
    domain_ids,
    domain_page,
    existing_destinations,
    import_batch,
    iter_aliases,
    undo_import,
)
from fwdmail.store.copy import TableCopy, TargetNotEmpty, copy_to
from fwdmail.store.db import (
    SCHEMA_VERSION,
    StoreError,
    checkpoint,
    close_store,
    data_version,
    failure,
    is_sqlite,
    meta_once,
    only_reads,
    open_store,
    reads,
    rest_after,
    run_read,
    run_write,
    storage_full,
    unavailable,
)
from fwdmail.store.directory import (
    ALIAS_KINDS,
    ALIAS_SOURCES,
    ALIAS_STATES,
    AccountRecord,
    AliasLookup,
    AliasRecord,
    AlreadyExists,
    DomainRecord,
    NotFound,
    add_account,
    add_alias,
    add_domain,
    alias_password_hash,
    delete_account,
    directory_changes,
    directory_snapshot,
    directory_version,
    get_account,
    get_alias,
    get_domain,
    list_accounts,
    list_aliases,
    list_domains,
    load_directory,
    lookup_aliases,
    lookup_key,
    mark_domain_verified,
    remove_alias,
    remove_domain,
    set_alias_destinations,
    set_alias_password,
    set_alias_state,
    update_domain,
)
from fwdmail.store.errorlog import (
    SmtpErrorRecord,
    list_smtp_errors,
    log_smtp_errors,
)
from fwdmail.store.httplog import (
    HttpLogRecord,
    count_http_logs_before,
    list_http_logs,
    log_http_requests,
    purge_http_logs_before,
)
from fwdmail.store.models import utcnow
from fwdmail.store.outbound import (
    EMAIL_STATUSES,
    FINAL_STATUSES,
    PENDING_STATUSES,
    WORKER_TAG,
    Attempt,
    AttemptOutcome,
    ClaimedEmail,
    EmailRecord,
    LoginRecord,
    NewEmail,
    RecipientRecord,
    claim_due,
    delete_email,
    enqueue,
    get_email,
    list_emails,
    login_record,
    new_queue_id,
    record_attempt,
    record_attempts,
    record_crash,
    release_claims,
    release_stale_claims,
    retry_email,
)
from fwdmail.store.queuestats import queue_depth
from fwdmail.store.retention import (
    VACUUMED_TABLES,
    count_abuse_events_before,
    count_bodies_due,
    count_emails_due,
    count_error_logs_before,
    delete_emails_due,
    hold_job_lock,
    last_retention_run,
    purge_abuse_events_before,
    purge_error_logs_before,
    redact_bodies_due,
    release_job_lock,
    set_last_retention_run,
    settle_deleted,
    settle_wal,
    take_lease,
    vacuum,
    wal_checkpoint,
)
from fwdmail.store.senderlists import (
    SENDER_RULE_KINDS,
    SenderRuleRecord,
    add_sender_rules,
    any_allow_rules,
    domain_sender_rules,
    list_sender_rules,
    remove_sender_rules,
    set_webhook_key,
    webhook_key,
)
from fwdmail.store.sessions import (
    LoginState,
    SessionRecord,
    add_login_link,
    add_session,
    count_expired_web_sessions,
    count_sessions,
    delete_session,
    delete_sessions,
    get_login_state,
    login_link_account,
    purge_login_links_before,
    purge_sessions_before,
    set_login,
    set_session_stage,
    take_login_link,
    web_session,
)
from fwdmail.store.tokens import (
    account_for_token,
    add_api_token,
    count_api_tokens,
    list_api_tokens,
    revoke_api_token,
)
