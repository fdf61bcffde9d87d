"""Aliases from DNS: a domain set `--aliases-from dns|both` answered from the `forward-email=` TXT records
the loopback DNS server serves, through `DirectoryCache` and the daemon's resolver (no SMTP sockets)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from fwdmail import store
from fwdmail.auth.resolver import async_resolver
from fwdmail.config import ConfigError, DnsConfig, from_dict
from fwdmail.mail.addresses import parse_address
from fwdmail.policy.directory import DirectoryCache
from fwdmail.policy.dnsaliases import DnsAliases
from fwdmail.policy.routing import Route
from fwdmail.runtime.executor import Blocking
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError
from tests.support.dns_server import LoopbackDNS

T = TypeVar("T")
OWNER = "owner@owner.test"
_names = itertools.count()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fwdmail.db"
    store.open_store(path)
    store.add_account(OWNER)
    yield path
    store.close_store()


def hosted(source: str = "dns", verified: bool = True) -> str:
    """A fresh hosted domain taking its aliases from `source`."""
    name = f"d{next(_names)}-{os.getpid()}.dnsalias.test"
    store.add_domain(name, OWNER, "sel", "not a key", "token")
    store.update_domain(name, aliases_from=source)
    if verified:
        store.mark_domain_verified(name, store.utcnow())
    return name


def run(dns_server: LoopbackDNS, scenario: Callable[[DirectoryCache, DnsAliases], Awaitable[T]],
        timeout: float = 2.0, **limits: int) -> T:
    blocking = Blocking()
    resolver = async_resolver(DnsConfig(nameservers=(dns_server.address,), timeout=timeout))
    aliases = DnsAliases(resolver, blocking.cpu, **limits)
    try:
        return asyncio.run(scenario(DirectoryCache(blocking, dns=aliases), aliases))
    finally:
        blocking.shutdown()


def routes(dns_server: LoopbackDNS, addresses: list[str]) -> list[Route | SmtpError]:
    async def scenario(cache: DirectoryCache, _: DnsAliases) -> list[Route | SmtpError]:
        return [await cache.route(parse_address(a)) for a in addresses]
    return run(dns_server, scenario)


def dests(found: Route | SmtpError) -> tuple[str, ...] | SmtpError:
    return found.destinations if isinstance(found, Route) else found


def test_every_syntax_is_served(db: Path, dns_server: LoopbackDNS) -> None:
    d = hosted()
    dns_server.add(d, "TXT", "v=spf1 -all")
    dns_server.add(d, "TXT", "forward-email-site-verification=abc")
    dns_server.add(d, "TXT", "forward-email=hello:one@dest.test,hello:two@dest.test,"
                             "/^(.+)-sales$/:$1@dest.test")
    dns_server.add(d, "TXT", "forward-email=!quiet:q@dest.test, !!soft:s@dest.test, !!!hard:h@dest.test")
    dns_server.add(d, "TXT", "forward-email=hook:https://Hooks.Example/in,hook:h@dest.test,plain:http://x.example/,"
                             "junk:not-an-address,catch@dest.test")
    found = routes(dns_server, [f"hello@{d}", f"HELLO+tag@{d}", f"bob-sales@{d}", f"quiet@{d}", f"soft@{d}",
                                f"hard@{d}", f"hook@{d}", f"plain@{d}", f"junk@{d}", f"anyone@{d}"])
    assert [dests(f) for f in found] == [
        ("one@dest.test", "two@dest.test"), ("one+tag@dest.test", "two+tag@dest.test"), ("bob@dest.test",),
        (), replies.ALIAS_TEMPFAIL, replies.ALIAS_REJECTED, ("https://hooks.example/in", "h@dest.test"),
        ("catch@dest.test",), ("catch@dest.test",), ("catch@dest.test",)]
    quiet = found[3]
    assert isinstance(quiet, Route) and quiet.discard and quiet.alias == f"quiet@{d}"
    assert isinstance(found[0], Route) and found[0].alias == f"hello@{d}" and found[0].account_email == OWNER


def test_no_records_or_no_domain_means_no_dns_aliases(db: Path, dns_server: LoopbackDNS) -> None:
    nxdomain, other_txt = hosted(), hosted()
    dns_server.add(other_txt, "TXT", "v=spf1 -all")
    assert routes(dns_server, [f"a@{nxdomain}", f"a@{other_txt}"]) == [replies.NO_SUCH_USER] * 2


@pytest.mark.parametrize("mode", ["SERVFAIL", "timeout"])
def test_a_dns_failure_is_a_4xx_and_is_not_remembered(db: Path, dns_server: LoopbackDNS, mode: str) -> None:
    d = hosted()
    dns_server.add(d, "TXT", "forward-email=a:a@dest.test")
    dns_server.set_failure(d, mode)  # type: ignore[arg-type]

    async def scenario(cache: DirectoryCache, _: DnsAliases) -> list[Route | SmtpError]:
        failed = await cache.route(parse_address(f"a@{d}"))
        dns_server.clear_failure(d)
        return [failed, await cache.route(parse_address(f"a@{d}"))]

    failed, served = run(dns_server, scenario, timeout=0.5)
    assert failed is replies.DNS_ALIASES_TEMPFAIL
    assert (failed.code, failed.enhanced_code) == (451, "4.4.3") and failed.temporary
    assert dests(served) == ("a@dest.test",)


def test_a_change_is_seen_when_the_ttl_runs_out(db: Path, dns_server: LoopbackDNS) -> None:
    d = hosted()
    dns_server.add(d, "TXT", "forward-email=a:old@dest.test", ttl=1)

    async def scenario(cache: DirectoryCache, aliases: DnsAliases) -> list[object]:
        first = await cache.route(parse_address(f"a@{d}"))
        dns_server.remove(d, "TXT")
        dns_server.add(d, "TXT", "forward-email=a:new@dest.test", ttl=1)
        cached = await cache.route(parse_address(f"a@{d}"))
        asked = aliases.lookups
        await asyncio.sleep(1.2)  # the TTL runs out; nothing asserted about how long anything took
        return [first, cached, asked, await cache.route(parse_address(f"a@{d}")), aliases.lookups]

    first, cached, asked, later, asked_later = run(dns_server, scenario)
    assert dests(first) == dests(cached) == ("old@dest.test",) and asked == 1
    assert dests(later) == ("new@dest.test",) and asked_later == 2


def test_an_unverified_domain_is_not_served_nor_asked_about(db: Path, dns_server: LoopbackDNS) -> None:
    d = hosted(verified=False)
    dns_server.add(d, "TXT", "forward-email=a:a@dest.test")
    before = len(dns_server.queries)
    assert routes(dns_server, [f"a@{d}"]) == [replies.DNS_ALIASES_UNVERIFIED]
    assert (d, "TXT") not in dns_server.queries[before:]
    assert replies.DNS_ALIASES_UNVERIFIED.code == 550


def test_both_asks_the_store_first_and_dns_for_the_rest(db: Path, dns_server: LoopbackDNS) -> None:
    d, store_catch_all = hosted("both"), hosted("both")
    store.add_alias(d, "exact", "a", ["store@dest.test"])
    store.add_alias(store_catch_all, "catch-all", "*", ["store-all@dest.test"])
    for name in (d, store_catch_all):
        dns_server.add(name, "TXT", "forward-email=a:dns@dest.test,b:dns-b@dest.test")
    found = routes(dns_server, [f"a@{d}", f"b@{d}", f"c@{d}", f"b@{store_catch_all}"])
    assert [dests(f) for f in found] == [("store@dest.test",), ("dns-b@dest.test",), replies.NO_SUCH_USER,
                                         ("store-all@dest.test",)]


def test_store_mode_never_asks_dns(db: Path, dns_server: LoopbackDNS) -> None:
    d = hosted("store")
    dns_server.add(d, "TXT", "forward-email=a:dns@dest.test")
    before = len(dns_server.queries)
    assert routes(dns_server, [f"a@{d}"]) == [replies.NO_SUCH_USER]
    assert (d, "TXT") not in dns_server.queries[before:]


def test_a_backtracking_regex_is_skipped_as_alias_add_refuses_it(db: Path, dns_server: LoopbackDNS) -> None:
    d = hosted()
    dns_server.add(d, "TXT", "forward-email=/(a|a)+$/:slow@dest.test,/^(b+)$/:fast@dest.test")
    found = routes(dns_server, [f"{'a' * 50}!@{d}", f"bb@{d}"])  # unchecked, the first would time out
    assert [dests(f) for f in found] == [replies.NO_SUCH_USER, ("fast@dest.test",)]


def test_the_cache_is_bounded_in_entries(db: Path, dns_server: LoopbackDNS) -> None:
    domains = [hosted() for _ in range(15)]
    for d in domains:
        dns_server.add(d, "TXT", "forward-email=a:a@dest.test")

    async def scenario(cache: DirectoryCache, aliases: DnsAliases) -> tuple[list[object], int, int]:
        found = [await cache.route(parse_address(f"a@{d}")) for d in domains]
        return found, aliases.entries, aliases.bytes

    found, entries, size = run(dns_server, scenario, max_entries=10)
    assert [dests(f) for f in found] == [("a@dest.test",)] * 15
    assert entries == 10 and 0 < size < 10 * 10_000


def test_concurrent_recipients_ask_dns_once(db: Path, dns_server: LoopbackDNS) -> None:
    d = hosted()
    dns_server.add(d, "TXT", "forward-email=a:a@dest.test")
    before = len(dns_server.queries)

    async def scenario(cache: DirectoryCache, aliases: DnsAliases) -> tuple[list[object], int]:
        found = await asyncio.gather(*(cache.route(parse_address(f"a+{i}@{d}")) for i in range(20)))
        return list(found), aliases.lookups

    found, lookups = run(dns_server, scenario)
    assert [dests(f) for f in found] == [(f"a+{i}@dest.test",) for i in range(20)]
    assert lookups == 1 and dns_server.queries[before:].count((d, "TXT")) == 1


def test_regex_entries_per_domain_are_bounded(db: Path, dns_server: LoopbackDNS) -> None:
    d = hosted()
    entries = [f"/^r{i}$/:r{i}@dest.test" for i in range(60)]
    dns_server.add(d, "TXT", "forward-email=" + ",".join(entries[:30]))
    dns_server.add(d, "TXT", "forward-email=" + ",".join(entries[30:]))
    found = routes(dns_server, [f"r0@{d}", f"r49@{d}", f"r50@{d}", f"r59@{d}"])
    assert [dests(f) for f in found] == [("r0@dest.test",), ("r49@dest.test",), replies.NO_SUCH_USER,
                                         replies.NO_SUCH_USER]


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("dns_aliases_cache_max_entries", 5, "mx.dns_aliases_cache_max_entries: must be from 10 to 10000000"),
    ("dns_aliases_cache_max_bytes", 1000, "mx.dns_aliases_cache_max_bytes: must be from 1048576 (1 MiB)"),
])
def test_cache_settings_are_checked(key: str, value: int, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"mx": {key: value}})
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    cfg = from_dict({"mx": {"dns_aliases_cache_max_entries": 50, "dns_aliases_cache_max_bytes": 1 << 21}}).mx
    assert (cfg.dns_aliases_cache_max_entries, cfg.dns_aliases_cache_max_bytes) == (50, 1 << 21)
