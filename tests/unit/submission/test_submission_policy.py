"""Submission policy without a socket: the login limiter, sender rules and message preparation."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Sequence

import pytest

from fwdmail.config import SubmissionConfig
from fwdmail.mail.headers import split as split_message
from fwdmail.runtime.executor import Blocking
from fwdmail.runtime.groupcommit import GroupCommitter
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError
from fwdmail.submission.logins import AuthLimiter, Login, LoginCache
from fwdmail.submission.message import parse_header_block, prepare_message

NOW = dt.datetime(2030, 5, 1, 12, 0, 0)
CFG = SubmissionConfig()
ALICE = Login(1, "example.test", "exact", "alice")
CATCH_ALL = Login(2, "example.test", "catch-all", "*")


def prepare(content: bytes, login: Login = ALICE) -> object:
    return prepare_message(login, content, NOW, CFG, "mx.fwdmail.test", "QID1")


def refused(content: bytes, login: Login = ALICE) -> SmtpError:
    with pytest.raises(SmtpError) as info:
        prepare(content, login)
    return info.value


def test_limiter_locks_out_after_max_failures_within_the_window_then_forgets() -> None:
    lim = AuthLimiter(max_failures=3, lockout=600, window=3600)
    assert not lim.failed("192.0.2.1", 0)
    assert not lim.failed("192.0.2.1", 10)
    assert not lim.blocked("192.0.2.1", 11)
    assert lim.failed("192.0.2.1", 20)
    assert lim.blocked("192.0.2.1", 21)
    assert not lim.blocked("192.0.2.2", 21), "another IP is not affected"
    assert lim.blocked("192.0.2.1", 619)
    assert not lim.blocked("192.0.2.1", 620), "the lockout ends"
    assert not lim.failed("192.0.2.1", 621), "and the count starts again"


def test_limiter_counts_only_failures_inside_the_window() -> None:
    lim = AuthLimiter(max_failures=2, lockout=600, window=3600)
    assert not lim.failed("ip", 0)
    assert not lim.failed("ip", 3600), "the first failure left the window"
    assert lim.failed("ip", 3601)


def test_limiter_memory_is_bounded() -> None:
    lim = AuthLimiter(max_failures=5, lockout=60, max_entries=100)
    for i in range(1000):
        lim.failed(f"ip{i}", float(i))
    assert len(lim._failures) == 100
    assert "ip999" in lim._failures and "ip0" not in lim._failures


def test_limiter_turns_serialise_one_ip_and_are_forgotten_after() -> None:
    lim = AuthLimiter(max_failures=2, lockout=60)
    checked: list[str] = []

    async def attempt(ip: str) -> None:
        async with lim.turn(ip):
            if lim.blocked(ip, 0):
                return
            checked.append(ip)
            await asyncio.sleep(0)
            lim.failed(ip, 0)

    async def scenario() -> None:
        await asyncio.gather(*(attempt(ip) for ip in ["a"] * 10 + ["b"] * 10))

    asyncio.run(scenario())
    assert checked.count("a") == 2 and checked.count("b") == 2
    assert lim._turns == {}, "no IP is remembered once its logins are checked"


def test_login_cache_matches_only_the_same_password_and_hash_until_it_expires() -> None:
    cache = LoginCache(ttl=60, max_entries=2)
    assert not cache.verified(1, "hash-a", "secret", 0)
    cache.remember(1, "hash-a", "secret", 0)
    assert cache.verified(1, "hash-a", "secret", 59)
    assert not cache.verified(1, "hash-a", "Secret", 59)
    assert not cache.verified(2, "hash-a", "secret", 59), "per alias"
    assert not cache.verified(1, "hash-b", "secret", 59), "a changed password hash forgets the entry"
    assert not cache.verified(1, "hash-a", "secret", 59)
    cache.remember(1, "hash-a", "secret", 0)
    assert not cache.verified(1, "hash-a", "secret", 60), "expired"
    for alias in (1, 2, 3):
        cache.remember(alias, "h", "p", 0)
    assert [cache.verified(a, "h", "p", 1) for a in (1, 2, 3)] == [False, True, True], "bounded"


@pytest.mark.parametrize(("login", "address", "ok"), [
    (ALICE, "alice@example.test", True),
    (ALICE, "Alice@EXAMPLE.test", True),
    (ALICE, "bob@example.test", False),
    (ALICE, "alice+tag@example.test", False),
    (ALICE, "alice@example.test.evil", False),
    (ALICE, "alice@other.test", False),
    (ALICE, "not an address", False),
    (CATCH_ALL, "anyone@example.test", True),
    (CATCH_ALL, "anyone@other.test", False),
])
def test_sender_rules(login: Login, address: str, ok: bool) -> None:
    assert login.may_send_as(address) is ok


def test_missing_date_and_message_id_are_added_and_received_has_no_client_ip() -> None:
    msg = prepare(b"From: Alice <alice@example.test>\r\nTo: b@dest.test\r\n"
                  b"Subject: =?utf-8?q?h=C3=A9?=\r\n\r\nhi\r\n")
    assert msg.headers.startswith(b"Received: by mx.fwdmail.test (fwdmail) with ESMTPSA id QID1;")
    assert b"\r\nDate: Wed, 01 May 2030 12:00:00 +0000\r\n" in msg.headers
    assert b"\r\nMessage-ID: <" in msg.headers and b"@example.test>\r\n" in msg.headers
    assert msg.body == b"hi\r\n"
    assert msg.subject == "hé"
    assert msg.send_at == NOW
    assert b"127.0.0" not in msg.headers


def test_existing_date_and_message_id_are_kept() -> None:
    content = (b"From: alice@example.test\r\nDate: Tue, 30 Apr 2030 10:00:00 -0200\r\n"
               b"Message-ID: <own@example.test>\r\n\r\nbody\r\n")
    msg = prepare(content)
    assert msg.headers.count(b"Date:") == 1 and msg.headers.count(b"Message-ID:") == 1
    assert msg.date == dt.datetime(2030, 4, 30, 12, 0)
    assert msg.send_at == NOW, "a past Date sends now"


def test_future_date_schedules_and_too_far_is_refused() -> None:
    soon = b"From: alice@example.test\r\nDate: Fri, 10 May 2030 08:00:00 +0000\r\n\r\nx\r\n"
    assert prepare(soon).send_at == dt.datetime(2030, 5, 10, 8, 0)
    far = b"From: alice@example.test\r\nDate: Mon, 03 Jun 2030 12:00:00 +0000\r\n\r\nx\r\n"
    assert refused(far) == replies.DATE_TOO_FAR


def test_bcc_fields_are_removed_with_their_folded_lines() -> None:
    msg = prepare(b"From: alice@example.test\r\nTo: b@dest.test\r\nBcc: hidden@dest.test,\r\n"
                  b"\tsecret@dest.test\r\nSubject: s\r\nBCC: again@dest.test\r\nX-Bcc-Note: kept\r\n"
                  b"\r\nbody\r\n")
    assert b"hidden" not in msg.headers and b"secret" not in msg.headers and b"again" not in msg.headers
    assert b"\r\nTo: b@dest.test\r\nSubject: s\r\nX-Bcc-Note: kept\r\nDate: " in msg.headers
    assert msg.body == b"body\r\n"


@pytest.mark.parametrize("content", [
    b"To: b@dest.test\r\n\r\nno from\r\n",
    b"From: bob@example.test\r\n\r\nspoofed\r\n",
    b"From: alice@example.test, bob@example.test\r\n\r\ntwo\r\n",
    b"From: alice@example.test\r\nFrom: alice@example.test\r\n\r\ntwice\r\n",
    b"From: \"alice@example.test\" <mallory@evil.test>\r\n\r\ndisplay-name trick\r\n",
    b"\r\nbody only\r\n",
])
def test_from_header_must_be_the_login(content: bytes) -> None:
    assert refused(content) == replies.FROM_NOT_ALLOWED


def test_catch_all_may_use_any_from_of_its_domain() -> None:
    assert prepare(b"From: x.y@example.test\r\n\r\nok\r\n", CATCH_ALL).body == b"ok\r\n"
    assert refused(b"From: x@other.test\r\n\r\nno\r\n", CATCH_ALL) == replies.FROM_NOT_ALLOWED


@pytest.mark.parametrize(("content", "error"), [
    (b"From: alice@example.test\r\nSubject: \xff\xfe\r\n\r\nx\r\n", replies.HEADER_NOT_UTF8),
    (b"From: alice@example.test\r\nno colon here\r\n\r\nx\r\n", replies.HEADER_MALFORMED),
    (b" folded first\r\nFrom: alice@example.test\r\n\r\nx\r\n", replies.HEADER_MALFORMED),
    (b"From: alice@example.test\r\nDate: yesterday-ish\r\n\r\nx\r\n", replies.BAD_DATE),
])
def test_malformed_headers_get_a_clear_refusal(content: bytes, error: SmtpError) -> None:
    assert refused(content) == error


def test_split_and_parse_keep_folding_and_non_ascii() -> None:
    block, body = split_message(b"Subject: a\r\n  b\r\nX-N: caf\xc3\xa9\r\n\r\nline\r\n\r\n")
    assert body == b"line\r\n\r\n"
    assert parse_header_block(block) == [("Subject", " a  b"), ("X-N", " café")]
    assert split_message(b"From: a@b.test\r\n") == (b"From: a@b.test\r\n", b"")


# group commit

def test_concurrent_submissions_share_commits_and_a_bad_one_fails_alone() -> None:
    blocking = Blocking()
    first_batch_started = threading.Event()
    release = threading.Event()
    batches: list[list[int]] = []

    def commit(items: Sequence[int], now: dt.datetime) -> list[str]:
        batches.append(list(items))
        if len(batches) == 1:
            first_batch_started.set()
            release.wait(10)
        if 13 in items:
            raise ValueError("bad item")
        return [f"id{i}" for i in items]

    async def scenario() -> list[str | BaseException]:
        gc = GroupCommitter(blocking, commit, lambda: NOW)
        first = asyncio.ensure_future(gc.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, first_batch_started.wait, 10)
        rest = [asyncio.ensure_future(gc.submit(i)) for i in range(1, 20)]
        await asyncio.sleep(0)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    try:
        results = asyncio.run(scenario())
    finally:
        blocking.shutdown()
    assert batches[0] == [0]
    assert batches[1] == list(range(1, 20)), "everything that arrived during a commit shares the next one"
    assert len(batches) == 2 + 19, "the failed batch is retried one item at a time"
    assert isinstance(results[13], ValueError)
    assert [r for i, r in enumerate(results) if i != 13] == [f"id{i}" for i in range(20) if i != 13]
