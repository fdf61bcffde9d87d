"""Web logins on a real store: sessions (hashed ids, expiry, stages), one-time password links, TOTP
(confirmation, replay refused), the login limits' counting, CSRF tokens, the retention of expired
sessions and links, and `[http] public_url`."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest

from fwdmail import store
from fwdmail.app import sessions
from fwdmail.app.weblogin import LoginLimits, client_net
from fwdmail.config import ConfigError, RetentionConfig, from_dict
from fwdmail.retention import jobs
from fwdmail.store.models import LoginLink, WebSession
from fwdmail.web import csrf

A = "alice@owner.test"
T0 = dt.datetime(2026, 5, 1, 12, 0, 0)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fwdmail.db"
    store.open_store(path)
    store.add_account(A)
    yield path
    store.close_store()


def test_a_session_is_stored_only_as_a_hash_and_expires(db: Path) -> None:
    sid = sessions.start_session(A, "full", T0)
    rows = list(WebSession.select())
    assert len(rows) == 1 and rows[0].id_hash == hashlib.sha256(sid.encode()).hexdigest()
    assert sid not in db.read_bytes().decode("latin-1")
    found = sessions.session_for(sid, T0 + sessions.SESSION_TTL - dt.timedelta(seconds=1))
    assert found is not None and found.account.email == A and found.stage == "full"
    assert sessions.session_for(sid, T0 + sessions.SESSION_TTL) is None
    assert sessions.session_for(sid + "x", T0) is None and sessions.session_for("x" * 500, T0) is None
    sessions.end_session(sid)
    assert sessions.session_for(sid, T0) is None


def test_the_second_factor_stage_is_short_and_promoted_in_place(db: Path) -> None:
    sid = sessions.start_session(A, "totp", T0)
    assert sessions.session_for(sid, T0 + dt.timedelta(minutes=6)) is None
    sessions.promote_session(sid, T0 + dt.timedelta(minutes=1))
    found = sessions.session_for(sid, T0 + dt.timedelta(hours=1))
    assert found is not None and found.stage == "full"


def test_a_new_password_ends_every_other_session(db: Path) -> None:
    keep = sessions.start_session(A, "full", T0)
    other = sessions.start_session(A, "full", T0)
    sessions.set_password(A, "scrypt$hash", T0, keep_session=keep)
    assert sessions.session_for(keep, T0) is not None and sessions.session_for(other, T0) is None


def test_a_link_sets_the_password_once_within_24_hours(db: Path) -> None:
    first = sessions.new_login_link(A, T0)
    second = sessions.new_login_link(A, T0)
    assert sessions.link_account(first.token, T0) is None  # a new link replaces the old one
    assert sessions.link_account(second.token, T0 + sessions.LINK_TTL) is None
    sid = sessions.start_session(A, "full", T0)
    account = sessions.use_login_link(second.token, "scrypt$new", T0 + dt.timedelta(hours=23))
    assert account is not None and account.email == A
    assert store.get_login_state(A).password_hash == "scrypt$new"
    assert sessions.session_for(sid, T0) is None
    assert sessions.use_login_link(second.token, "scrypt$again", T0) is None
    assert store.get_login_state(A).password_hash == "scrypt$new"
    assert [r.token_hash for r in LoginLink.select()] == []


def test_a_reset_forgets_the_password(db: Path) -> None:
    store.set_login(A, T0, password_hash="scrypt$old")
    link = sessions.reset_password(A.upper(), T0)
    assert store.get_login_state(A).password_hash is None and link.account.email == A
    assert sessions.login_state("nobody@owner.test") is None
    assert sessions.login_state("not an address") is None


def test_totp_needs_confirmation_and_a_code_is_accepted_once(db: Path) -> None:
    secret = sessions.begin_totp(A, T0)
    assert store.get_login_state(A).totp_secret is None
    totp = pyotp.TOTP(secret)
    at = T0.replace(tzinfo=dt.UTC)
    assert not sessions.confirm_totp(A, "12345", T0)
    assert sessions.confirm_totp(A, totp.at(at), T0)
    assert store.get_login_state(A).totp_secret == secret
    later = T0 + dt.timedelta(seconds=60)
    code = totp.at(later.replace(tzinfo=dt.UTC))
    assert sessions.accept_totp(A, code, later)
    assert not sessions.accept_totp(A, code, later)  # replayed
    assert not sessions.accept_totp(A, totp.at(at), later)  # older than the last accepted step
    assert not sessions.accept_totp(A, totp.at(later.replace(tzinfo=dt.UTC) + dt.timedelta(minutes=5)), later)
    uri = sessions.totp_uri(A, secret)
    assert uri == f"otpauth://totp/fwdmail%3Aalice%40owner.test?secret={secret}&issuer=fwdmail"
    sessions.disable_totp(A, later)
    assert sessions.accept_totp(A, "", later)  # no second factor any more


@pytest.mark.parametrize("address,network", [
    ("192.0.2.77", "192.0.2.0/24"), ("2001:db8:1:2:3::9", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.4", "198.51.100.0/24"), ("", ""), ("junk", ""),
])
def test_logins_are_counted_per_ipv4_24_and_ipv6_64(address: str, network: str) -> None:
    assert client_net(address) == network


def test_login_limits_per_client_account_and_total() -> None:
    limits = LoginLimits(per_client_per_hour=3, per_account_per_hour=2, total_per_minute=5)
    limits.failed("192.0.2.1", "a@x.test", 0.0)
    limits.failed("192.0.2.2", "A@X.test ", 1.0)
    assert not limits.allows("203.0.113.9", "a@x.test", 2.0)  # the account, from anywhere
    assert limits.allows("192.0.2.3", "b@x.test", 2.0)
    limits.failed("192.0.2.3", "b@x.test", 2.0)
    assert not limits.allows("192.0.2.99", "c@x.test", 3.0)  # the /24
    assert limits.allows("198.51.100.1", "c@x.test", 3.0)
    limits.failed("198.51.100.1", "c@x.test", 3.0)
    limits.failed("203.0.113.1", "d@x.test", 4.0)
    assert not limits.allows("2001:db8::1", "e@x.test", 5.0)  # five in the last minute, in all
    assert limits.allows("2001:db8::1", "e@x.test", 65.0)
    assert limits.allows("192.0.2.3", "a@x.test", 3601.0)  # an hour later


def test_csrf_tokens_bind_to_the_session_or_expire() -> None:
    key = csrf.new_key()
    token = csrf.for_session("session-one")
    assert csrf.valid(token, key, "session-one") and not csrf.valid(token, key, "session-two")
    assert not csrf.valid(token, key, None) and not csrf.valid("", key, "session-one")
    anon = csrf.anonymous(key, now=1000.0)
    assert csrf.valid(anon, key, None, now=1000.0 + csrf.ANONYMOUS_TTL)
    assert not csrf.valid(anon, key, None, now=1001.0 + csrf.ANONYMOUS_TTL)
    assert not csrf.valid(anon, csrf.new_key(), None, now=1000.0)
    assert not csrf.valid(anon, key, "session-one", now=1000.0)
    assert not csrf.valid("1000.", key, None, now=1000.0) and not csrf.valid("x" * 300, key, None)


def test_retention_removes_expired_sessions_and_links_only(db: Path) -> None:
    live = sessions.start_session(A, "full", T0)
    sessions.start_session(A, "full", T0 - sessions.SESSION_TTL)
    sessions.new_login_link(A, T0 - sessions.LINK_TTL)
    cfg = RetentionConfig()
    assert jobs.purge_now(T0, cfg, dry_run=True).counts["web_sessions"] == 2
    assert jobs.purge_now(T0, cfg).counts["web_sessions"] == 2
    assert WebSession.select().count() == 1 and LoginLink.select().count() == 0
    assert sessions.session_for(live, T0) is not None


def test_public_url_must_be_an_http_url() -> None:
    assert from_dict({"http": {"public_url": "https://mail.example.org"}}).http.public_url
    for bad in ("mail.example.org", "https://x.org/?q=1", "ftp://x.org", "https://x .org"):
        with pytest.raises(ConfigError) as exc:
            from_dict({"http": {"public_url": bad}})
        assert "http.public_url" in str(exc.value)
