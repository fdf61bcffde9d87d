"""The DNS answer and SPF result memo: used while fresh, never for negative answers, nothing in clear."""

from __future__ import annotations

import asyncio
import time

from fwdmail.auth import check as auth_check
from fwdmail.auth import dnsmemo
from fwdmail.auth import spf as auth_spf
from fwdmail.auth.dnsmemo import MAX_TTL, ExpiringMemo
from tests.support.auth import message, resolver, run, unique_domain
from tests.support.dns_server import LoopbackDNS

IP = "192.0.2.10"
OTHER_IP = "198.51.100.7"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_are_capped_and_the_oldest_goes_when_full() -> None:
    clock = Clock()
    memo: ExpiringMemo[str, int] = ExpiringMemo(max_entries=3, clock=clock)
    memo.put("a", 1, clock.now + 10)
    memo.put("gone", 2, clock.now - 1)  # already expired: not kept
    memo.put("far", 3, clock.now + 10 * MAX_TTL)
    assert memo.get("a") == 1 and memo.get("gone") is None and len(memo) == 2
    clock.now += 10
    assert memo.get("a") is None  # expired at its time
    assert memo.get("far") == 3
    clock.now += MAX_TTL
    assert memo.get("far") is None  # no entry outlives MAX_TTL
    for n in range(5):
        memo.put(f"k{n}", n, clock.now + 60)
    assert len(memo) == 3
    assert [memo.get(f"k{n}") for n in range(5)] == [None, None, 2, 3, 4]


def test_a_second_spf_check_asks_no_dns_and_other_clients_get_their_own_result(
        dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    dns_server.add(dom, "TXT", f"v=spf1 ip4:{IP} -all")
    dns_server.add(f"_dmarc.{dom}", "TXT", "v=DMARC1; p=reject")
    r = resolver(dns_server)

    async def checks() -> list[str]:
        msg = message(f"a@{dom}")
        first = await auth_check.check_sender(msg, f"a@{dom}", IP, "h.test", r)
        asked = len(dns_server.queries)
        again = [await auth_check.check_sender(msg, f"a@{dom}", IP, "h.test", r) for _ in range(3)]
        other = await auth_spf.check_spf(r, OTHER_IP, f"a@{dom}", "h.test")
        assert len(dns_server.queries) == asked  # SPF and DMARC answered from the memo
        return [first.spf.result, *(a.spf.result for a in again), first.dmarc.result, other.result]

    assert run(checks()) == ["pass", "pass", "pass", "pass", "pass", "fail"]


def test_a_changed_record_counts_once_its_answer_expires(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    dns_server.add(dom, "TXT", f"v=spf1 ip4:{IP} -all", ttl=1)
    r = resolver(dns_server)

    async def checks() -> tuple[str, str]:
        before = await auth_spf.check_spf(r, IP, f"a@{dom}", "h.test")
        dns_server.remove(dom, "TXT")
        dns_server.add(dom, "TXT", f"v=spf1 ip4:{OTHER_IP} -all", ttl=1)
        deadline = time.monotonic() + 10
        after = before
        while after.result == "pass" and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            after = await auth_spf.check_spf(r, IP, f"a@{dom}", "h.test")
        return before.result, after.result

    assert run(checks()) == ("pass", "fail")


def test_negative_answers_are_not_remembered(dns_server: LoopbackDNS) -> None:
    dom, void = unique_domain(), unique_domain("void")
    dns_server.add(dom, "TXT", f"v=spf1 a:{void} ip4:{IP} -all")
    r = resolver(dns_server)
    result = run(auth_spf.check_spf(r, IP, f"a@{dom}", "h.test"))
    memo = dnsmemo.memo_for(r)
    assert result.result == "pass"  # the a: term finds no name (a void lookup), ip4 matches
    assert len(memo.spf) == 0  # a result resting on a negative answer is evaluated afresh each time
    assert memo.answers.get((dom, "TXT")) is not None and memo.answers.get((void, "A")) is None


def test_temporary_failures_are_not_remembered(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    r = resolver(dns_server)
    dns_server.set_failure(dom, "SERVFAIL")

    async def checks() -> tuple[str, str]:
        failed = await auth_spf.check_spf(r, IP, f"a@{dom}", "h.test")
        dns_server.clear_failure(dom)
        dns_server.add(dom, "TXT", f"v=spf1 ip4:{IP} -all")
        return failed.result, (await auth_spf.check_spf(r, IP, f"a@{dom}", "h.test")).result

    assert run(checks()) == ("temperror", "pass")


def test_the_memo_holds_no_address_or_ip_in_the_clear(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    dns_server.add(dom, "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    r = resolver(dns_server)
    sender = f"secret.person@{dom}"
    result = run(auth_spf.check_spf(r, IP, sender, "h.test"))
    assert result.result == "pass"
    memo = dnsmemo.memo_for(r)
    assert len(memo.spf) == 1
    kept = repr(memo.spf._items) + repr(memo.answers._items)
    assert "secret.person" not in kept and IP not in kept
    assert dom in repr(memo.answers._items)  # answers are filed by domain name, like any DNS cache
