"""Regex aliases cannot starve the MX's event loop (issue 13 item 5): `alias add` refuses a pattern that
backtracks on adversarial local parts, and a pattern already stored is matched under budgets per RCPT,
per transaction, per client and in total, after which its RCPTs get a 4xx for a while.

The daemon is real (`fwdmail serve`), clients are raw SMTP sessions from several loopback addresses.
No test asserts a time: each asserts how many slow lookups the attackers got before the 4xx.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from fwdmail.config import ConfigError, from_dict
from fwdmail.policy.routing import RegexBudget
from fwdmail.smtp import replies
from tests.support.daemon import Daemon
from tests.support.hostile import TALLY, Session, register_summary, session
from tests.support.mx import cli, cli_batch, message, store_regex_alias
from tests.support.smtp_sink import SmtpSink

CATASTROPHIC = "(a|a)+$"
SLOW_RCPT = b"RCPT TO:<" + b"a" * 50 + b"!@redos.test>"
MATCH_TIMEOUT = 0.01
TIMEOUT_TEXT = replies.ALIAS_LOOKUP_TIMEOUT.text.encode()
SETUP = [["account", "add", "owner@owner.test"],
         ["domain", "add", "redos.test", "--account", "owner@owner.test"],
         ["alias", "add", "fine@redos.test", "fine@dest.test"],
         ["alias", "add", "/^sales-(.+)$/@redos.test", "sales@dest.test"]]

@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


def redos_daemon(make_daemon: Callable[..., Daemon], sink: SmtpSink, **mx: float) -> Daemon:
    """A daemon hosting redos.test with `CATASTROPHIC` stored as it was before `alias add` checked
    patterns (written to the store directly), an exact alias and a sane regex alias."""
    d = make_daemon({
        "delivery": {"routes": {"*": sink.address}},
        "mx": {"regex_match_timeout": MATCH_TIMEOUT, **mx},
        "abuse": {"max_connections_per_ip": 100, "max_errors_per_session": 1000,
                  "max_messages_per_ip_per_minute": 1000},
    }, start=False)
    cli_batch(d, SETUP)
    store_regex_alias(d, "redos.test", CATASTROPHIC, "slow@dest.test")
    return d.start(wait_ports=[d.mx_port])


def slow_rcpts(s: Session, n: int) -> list[bytes]:
    """The last reply line of each of `n` RCPTs to the catastrophic alias (all must be 4xx)."""
    out = []
    for _ in range(n):
        code, text = s.text(SLOW_RCPT)
        assert 400 <= code < 500, (code, text)
        out.append(text)
    return out


def timeouts(texts: list[bytes]) -> int:
    """How many of the replies were a lookup that ran until it timed out (the loop paid for it)."""
    return sum(t.endswith(TIMEOUT_TEXT) for t in texts)


def budget_spent(texts: list[bytes]) -> int:
    return sum(t.endswith(replies.REGEX_BUDGET_SPENT.text.encode()) for t in texts)


def test_alias_add_refuses_a_pattern_that_backtracks_on_adversarial_local_parts(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(start=False)
    cli_batch(d, [["account", "add", "owner@owner.test"],
                  ["domain", "add", "redos.test", "--account", "owner@owner.test"]])
    bad = ["(a|a)+$", "(a|aa)+$", "(x+x+)+y", r"^(\d|\d\d)+$", "(sales|sale|s)+$"]
    for pattern in bad:
        proc = cli(d, "alias", "add", f"/{pattern}/@redos.test", "x@dest.test", expect=1)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "backtracks" in lines[0], proc.stderr
    good = [r"^(.+)-sales$", r"^[a-z]+\d*$", "^(foo|bar)-.*$", r"^sales-(.+)$", r"^([a-z]+)\.([a-z]+)$"]
    cli_batch(d, [["alias", "add", f"/{pattern}/@redos.test", "x@dest.test"] for pattern in good])
    listed = json.loads(cli(d, "alias", "list", "--json").stdout)
    assert sorted(a["address"] for a in listed) == sorted(f"/{p}/@redos.test" for p in good)
    TALLY.item("13.5 regex starvation", len(bad), "alias add refuses every catastrophic pattern tried")


def test_attackers_sharing_an_address_get_4xx_once_its_regex_budget_is_spent(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    """16 sessions from 127.0.0.1 ask for the catastrophic alias 20 times each. The client's budget
    (0.055 s a minute, a lookup needs 10 ms of it left) allows 5 slow lookups, then every one is refused
    at once (the refill during the test is far under another 10 ms).
    An innocent client on 127.0.0.2 meanwhile has its sane regex recipient resolved and mail forwarded."""
    d = redos_daemon(make_daemon, sink, regex_seconds_per_ip_per_minute=0.055,
                     regex_seconds_per_transaction=1.0, regex_seconds_per_minute=10.0)
    attackers, per_session = 16, 20
    results: list[list[bytes]] = []
    errors: list[BaseException] = []
    ready = threading.Barrier(attackers + 1, timeout=60)

    def attack() -> None:
        try:
            with session(d.mx_port) as s:
                assert s.cmd(b"EHLO attacker.test") == 250
                assert s.cmd(b"MAIL FROM:<x@src.test>") == 250
                ready.wait()
                results.append(slow_rcpts(s, per_session))
        except BaseException as exc:
            errors.append(exc)
            ready.abort()

    threads = [threading.Thread(target=attack, daemon=True) for _ in range(attackers)]
    for t in threads:
        t.start()
    latencies = []
    with session(d.mx_port, source="127.0.0.2") as innocent:
        assert innocent.cmd(b"EHLO innocent.test") == 250
        ready.wait()
        for _ in range(20):
            start = time.perf_counter()
            assert innocent.cmd(b"NOOP") == 250
            latencies.append(time.perf_counter() - start)
        assert innocent.cmd(b"MAIL FROM:<y@src.test>") == 250
        assert innocent.cmd(b"RCPT TO:<sales-team@redos.test>") == 250
        assert innocent.cmd(b"RCPT TO:<fine@redos.test>") == 250
        assert innocent.cmd(b"DATA") == 354
        innocent.send(message() + b".\r\n")
        assert innocent.reply()[0] == 250
    for t in threads:
        t.join(120)
    assert not errors, errors
    texts = [t for r in results for t in r]
    assert len(texts) == attackers * per_session
    slow = timeouts(texts)
    assert slow <= 6, f"{slow} lookups ran to their timeout"
    assert budget_spent(texts) == len(texts) - slow
    forwarded = sorted(r for m in sink.wait_for(2, 30) for r in m.rcpt_tos)
    assert forwarded == ["fine@dest.test", "sales@dest.test"]
    print(f"innocent NOOP latency: max {max(latencies) * 1000:.1f} ms, "
          f"median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms; slow lookups {slow}")
    TALLY.item("13.5 regex starvation", len(texts),
               f"{slow} slow lookups, then 4xx at once for the client; innocent served")


def test_one_transaction_gets_4xx_once_its_regex_budget_is_spent(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    """A transaction may spend 0.025 s on regex lookups (two timeouts of 10 ms, one if the first overran
    by 5 ms); its next RCPT to a regex domain is refused without matching, an exact alias still
    resolves, and a new transaction starts afresh."""
    d = redos_daemon(make_daemon, sink, regex_seconds_per_transaction=0.025,
                     regex_seconds_per_ip_per_minute=10.0, regex_seconds_per_minute=10.0)
    with session(d.mx_port) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<x@src.test>") == 250
        first = slow_rcpts(s, 5)
        assert timeouts(first) in (1, 2) and budget_spent(first) == 5 - timeouts(first), first
        assert s.cmd(b"RCPT TO:<fine@redos.test>") == 250
        assert s.cmd(b"RSET") == 250
        assert s.cmd(b"MAIL FROM:<x@src.test>") == 250
        again = slow_rcpts(s, 1)
        assert timeouts(again) == 1, again
    TALLY.item("13.5 regex starvation", 6, "per-transaction budget: 4xx after two slow lookups")


def test_many_addresses_together_get_4xx_once_the_total_regex_budget_is_spent(
        make_daemon: Callable[..., Daemon], sink: SmtpSink) -> None:
    """Eight addresses, each within its own budget (three slow lookups), spend the total (0.105 s a
    minute, ten slow lookups, fewer if the timeouts overran); then a ninth address gets the 4xx on its
    first RCPT to the regex domain, while exact aliases of the same domain still resolve."""
    d = redos_daemon(make_daemon, sink, regex_seconds_per_ip_per_minute=0.035,
                     regex_seconds_per_transaction=1.0, regex_seconds_per_minute=0.105)
    texts = []
    for n in range(8):
        with session(d.mx_port, source=f"127.0.0.{10 + n}") as s:
            assert s.cmd(b"EHLO attacker.test") == 250
            assert s.cmd(b"MAIL FROM:<x@src.test>") == 250
            texts += slow_rcpts(s, 4)
    slow = timeouts(texts)
    assert 3 < slow <= 10, f"{slow} lookups ran to their timeout"
    with session(d.mx_port, source="127.0.0.30") as s:
        assert s.cmd(b"EHLO fresh.test") == 250
        assert s.cmd(b"MAIL FROM:<x@src.test>") == 250
        assert budget_spent(slow_rcpts(s, 1)) == 1
        assert s.cmd(b"RCPT TO:<fine@redos.test>") == 250
    TALLY.item("13.5 regex starvation", len(texts) + 1, f"total budget: {slow} slow lookups from 8 clients")


@pytest.mark.parametrize(("key", "value", "error"), [
    ("regex_match_timeout", 0, "must be greater than 0"),
    ("regex_seconds_per_transaction", -1, "must be greater than 0"),
    ("regex_seconds_per_ip_per_minute", 0, "must be greater than 0"),
    ("regex_seconds_per_minute", 0, "must be greater than 0"),
])
def test_regex_budget_keys_are_validated(key: str, value: float, error: str) -> None:
    with pytest.raises(ConfigError, match=f"mx.{key}: {error}"):
        from_dict({"mx": {key: value}})


def test_the_regex_budget_remembers_a_bounded_number_of_clients_and_counts_a_slash_64_as_one() -> None:
    now = [0.0]
    budget = RegexBudget(0.01, 1.0, 0.02, 100.0, clock=lambda: now[0], max_clients=10)
    for n in range(100):
        budget.meter(f"192.0.2.{n}", {}).charge(0.01)
    assert len(budget.clients) == 10
    budget.meter("2001:db8:1:2::1", {}).charge(0.015)
    assert budget.meter("2001:db8:1:2::ffff", {}).allowance() == 0, "same /64: its budget is spent"
    assert budget.meter("2001:db8:1:3::1", {}).allowance() == 0.01, "another /64 is not"
    now[0] = 60.0
    assert budget.meter("2001:db8:1:2::ffff", {}).allowance() == 0.01, "refilled a minute later"
