"""Password guessing cannot starve the daemon (issue 13 item 5): scrypt runs on its own small pool whose
wait list is bounded (454 4.7.0 at once when full), so the MX's sender checks keep the CPU pool; failed
logins are budgeted in total and per alias (many addresses guessing one password); the per-client
lockout counts an IPv6 /64 as one client.

The daemon is real (`fwdmail serve`); attackers are raw SMTP sessions over implicit TLS from many
loopback addresses, each kept under its own lockout. No test asserts a time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import smtplib
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from fwdmail.runtime.executor import Blocking, Busy
from fwdmail.submission.logins import AuthLimiter, FailureBudget
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.hostile import TALLY, Closed, Session, no_tls_check, register_summary
from tests.support.mx import cli_batch
from tests.support.smtp_sink import SmtpSink

ALICE = "alice@hosted.test"
BOB = "bob@hosted.test"


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


def plain(login: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{login}\0{password}".encode())


def login_daemon(make_daemon: Callable[..., Daemon], sink: SmtpSink, **submission: int) -> tuple[Daemon, str]:
    """A daemon hosting hosted.test (aliases alice@, bob@) with `submission` settings; alice's password."""
    d = make_daemon({
        "delivery": {"routes": {"*": sink.address}},
        "submission": submission,
        "abuse": {"sender_auth_timeout": 1},
    }, start=False)
    cli_batch(d, [["account", "add", "owner@owner.test"],
                  ["domain", "add", "hosted.test", "--account", "owner@owner.test"],
                  ["alias", "add", ALICE, "alice@dest.test"],
                  ["alias", "add", BOB, "bob@dest.test"]])
    password = json.loads(d.cli("alias", "password", ALICE, "--json").output)["password"]
    d.start()
    return d, password


def auth_from(d: Daemon, source: str, login: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN over implicit TLS from `source`: the reply code and text."""
    with Session(d.submission_tls_port, source=source, tls=no_tls_check()) as s:
        assert s.cmd(b"EHLO client.test") == 250
        return s.text(plain(login, password))


def test_failed_logins_from_many_addresses_do_not_starve_the_mx_sender_checks(
        make_daemon: Callable[..., Daemon], sink: SmtpSink, dns_server: LoopbackDNS) -> None:
    """100 addresses keep failing logins (each far under its lockout, the failure budgets out of the
    way) while the MX forwards mail whose sender is checked by SPF and DMARC p=reject within a 1 s
    sender-auth timeout. Before, scrypt queued on the pool SPF runs on, SPF timed out and the mail got
    451; now scrypt waits on its own pool, and what does not fit its wait list gets 454 at once."""
    d, _ = login_daemon(make_daemon, sink, auth_failures_per_hour=100_000,
                        auth_failures_total_per_minute=100_000, auth_failures_per_alias_per_hour=100_000)
    sender = f"s{uuid.uuid4().hex[:8]}.test"
    dns_server.add(sender, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add(f"_dmarc.{sender}", "TXT", "v=DMARC1; p=reject")
    stop = threading.Event()
    codes: list[int] = []
    errors: list[BaseException] = []

    def attack(source: str) -> None:
        try:
            with Session(d.submission_tls_port, source=source, tls=no_tls_check()) as s:
                assert s.cmd(b"EHLO attacker.test") == 250
                for _ in range(200):
                    if stop.is_set():
                        return
                    code = s.cmd(plain(ALICE, uuid.uuid4().hex))
                    assert code in (535, 454), code
                    codes.append(code)
        except Closed:
            pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attack, args=(f"127.0.1.{n}",), daemon=True) for n in range(1, 101)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while len(codes) < 100 and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        outcomes = []
        for _ in range(3):
            body = (f"From: <a@{sender}>\r\nTo: <{ALICE}>\r\nSubject: check\r\n"
                    f"Message-ID: <{uuid.uuid4().hex}@{sender}>\r\n\r\nhello\r\n")
            with smtplib.SMTP("127.0.0.1", d.mx_port, local_hostname="client.test", timeout=60) as mx:
                outcomes.append(mx.sendmail(f"a@{sender}", [ALICE], body) or 250)
    except smtplib.SMTPResponseException as exc:
        outcomes.append(exc.smtp_code)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert outcomes == [250, 250, 250], outcomes
    assert len(sink.wait_for(3, 30)) == 3
    busy = codes.count(454)
    assert busy > 0, "the hashing wait list never filled: nothing was refused at once"
    TALLY.item("13.5 login starvation", len(codes),
               f"{busy} AUTH answered 454 at once, {codes.count(535)} 535; MX mail 3 x 250, no 451")


def test_many_addresses_guessing_one_alias_get_454_once_its_budget_is_spent(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    """Five failures for alice (from five addresses) spend her budget: further guesses for her, from
    anywhere, get 454 without a hash; another alias is still checked; alice's own password, verified
    just before, still logs her in (without a hash)."""
    d, password = login_daemon(make_daemon, sink, auth_failures_per_alias_per_hour=5,
                               auth_failures_total_per_minute=100_000)
    assert auth_from(d, "127.0.2.1", ALICE, password)[0] == 235
    codes = [auth_from(d, f"127.0.2.{10 + n}", ALICE, "wrong")[0] for n in range(8)]
    assert codes == [535] * 5 + [454] * 3, codes
    assert auth_from(d, "127.0.2.30", BOB, "wrong")[0] == 535
    assert auth_from(d, "127.0.2.31", ALICE, password)[0] == 235
    TALLY.item("13.5 login starvation", 10, "per-alias budget: 454 after 5 failures, alice still logs in")


def test_failures_on_many_aliases_get_454_once_the_total_budget_is_spent(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    """Six failures a minute in total: eight addresses guessing eight different logins get six 535
    and then 454; a login verified before still succeeds."""
    d, password = login_daemon(make_daemon, sink, auth_failures_total_per_minute=6,
                               auth_failures_per_alias_per_hour=100_000)
    assert auth_from(d, "127.0.3.1", ALICE, password)[0] == 235
    codes = [auth_from(d, f"127.0.3.{10 + n}", f"u{n}@hosted.test", "wrong")[0] for n in range(8)]
    assert codes == [535] * 6 + [454] * 2, codes
    assert auth_from(d, "127.0.3.31", ALICE, password)[0] == 235
    TALLY.item("13.5 login starvation", 9, "total budget: 454 after 6 failures, a known login still works")


def test_the_lockout_counts_an_ipv6_slash_64_as_one_client() -> None:
    lim = AuthLimiter(max_failures=3, lockout=600)
    assert not lim.failed("2001:db8:1:2::1", 0)
    assert not lim.failed("2001:db8:1:2::ffff", 1)
    assert lim.failed("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 2)
    assert lim.blocked("2001:db8:1:2::42", 3)
    assert not lim.blocked("2001:db8:1:3::1", 3)
    assert not lim.failed("::ffff:192.0.2.1", 4)
    assert not lim.failed("192.0.2.1", 5)
    assert lim.failed("192.0.2.1", 6)
    assert not lim.blocked("192.0.2.2", 7)


def test_failure_budgets_hold_a_bounded_number_of_names_and_refill() -> None:
    budget = FailureBudget(total_per_minute=1000, per_alias_per_hour=2, max_aliases=10)
    for n in range(100):
        budget.failed(f"u{n}@x.test".encode(), 0)
    assert len(budget._aliases._times) == 10
    budget.failed(b"alice@x.test", 1)
    assert budget.allows(b"ALICE@x.test", 2), "one failure of two"
    budget.failed(b"alice@x.test", 2)
    assert not budget.allows(b"alice@x.test", 3)
    assert budget.allows(b"alice@x.test", 3602), "an hour later"
    total = FailureBudget(total_per_minute=3, per_alias_per_hour=100)
    for n in range(3):
        total.failed(f"u{n}".encode(), n)
    assert not total.allows(b"someone-else", 10)
    assert total.allows(b"someone-else", 61)


def test_hashing_beyond_its_threads_and_wait_list_is_refused_at_once() -> None:
    """One hashing thread and a wait list of one: a third concurrent call is refused without waiting,
    and once the first two finish, a new one is taken again."""
    release = threading.Event()

    async def main() -> tuple[bool, str]:
        blocking = Blocking(hash_threads=1, hash_queue=1)
        try:
            first = asyncio.ensure_future(blocking.hash(release.wait, 30))
            second = asyncio.ensure_future(blocking.hash(release.wait, 30))
            await asyncio.sleep(0)
            try:
                await blocking.hash(release.wait, 30)
                refused = False
            except Busy:
                refused = True
            release.set()
            await asyncio.gather(first, second)
            return refused, await blocking.hash(lambda: threading.current_thread().name)
        finally:
            blocking.shutdown()

    refused, thread = asyncio.run(main())
    assert refused
    assert thread.startswith("fwdmail-hash")
