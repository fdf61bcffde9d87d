"""Per-recipient lookups through `DirectoryCache`: the same answers as a whole `Directory`, changes seen
per domain, negative answers forgotten after their time, and the cache's bounds (no sockets); on SQLite and
on PostgreSQL (the `opened` fixture)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from fwdmail import store
from fwdmail.app import aliases as app_aliases
from fwdmail.config import ConfigError, from_dict
from fwdmail.mail.addresses import parse_address
from fwdmail.policy.directory import DirectoryCache, _Lru
from fwdmail.policy.routing import Directory, Route, resolve
from fwdmail.runtime.executor import Blocking
from fwdmail.smtp import replies
from tests.support.engines import Opened

T = TypeVar("T")
OWNER = "owner@owner.test"


@pytest.fixture
def db(opened: Opened) -> Opened:
    store.add_account(OWNER)
    for name in ("ours.test", "catch.test", "other.test"):
        store.add_domain(name, OWNER, "sel", "not a key", "token")
    return opened


def run(scenario: Callable[[Blocking], Awaitable[T]]) -> T:
    blocking = Blocking()
    try:
        return asyncio.run(scenario(blocking))
    finally:
        blocking.shutdown()


def whole(address: str) -> Route | replies.SmtpError:
    domains, aliases = store.load_directory()
    return resolve(Directory.build(domains, aliases), parse_address(address))


ADDRESSES = [
    "sales@ours.test", "SALES@Ours.Test", "bob+News@ours.test", "eve-sales@ours.test", "bob-sales@ours.test",
    "Eve-SALES@ours.test", "nobody@ours.test", "nobody+tag@ours.test", "Mixed@ours.test", "mixed@ours.test",
    "off@ours.test", "off+x@ours.test", "quiet@ours.test", "b@catch.test", "c@catch.test", "x@catch.test",
    "someone@other.test", "someone@stranger.test", "+tag@ours.test", "bob+@ours.test",
]


def test_every_kind_answers_as_the_whole_directory_does(db: Opened) -> None:
    for address, dests in [
        ("sales@ours.test", ["exact@dest.test"]),
        ("bob@ours.test", ["bob@dest.test", "bob2@dest.test"]),
        ("/^(.+)-sales$/@ours.test", ["$1@dest.test", "team@dest.test"]),
        ("*@ours.test", ["catchall@dest.test"]),
        ("Mixed@ours.test", ["first@dest.test"]),
        ("off@ours.test", ["off@dest.test"]),
        ("quiet@ours.test", ["quiet@dest.test"]),
        ("/^(a)?b$/@catch.test", ["x$1@dest.test", "y@dest.test"]),
        ("/^c(.*)$/@catch.test", ["$1@dest.test"]),
    ]:
        app_aliases.add_alias(address, dests)
    store.add_alias("ours.test", "exact", "MIXED", ["second@dest.test"])  # differs only in case: the later
    app_aliases.set_alias_state("off@ours.test", "reject")
    app_aliases.set_alias_state("quiet@ours.test", "quiet")

    async def scenario(blocking: Blocking) -> list[Route | replies.SmtpError]:
        cache = DirectoryCache(blocking)
        cold = [await cache.route(parse_address(a)) for a in ADDRESSES]
        warm = [await cache.route(parse_address(a)) for a in ADDRESSES]
        assert warm == cold
        return cold

    assert run(scenario) == [whole(a) for a in ADDRESSES]


def test_changes_are_seen_per_domain_after_the_check_interval(db: Opened) -> None:
    app_aliases.add_alias("one@ours.test", ["one@dest.test"])
    app_aliases.add_alias("kept@catch.test", ["kept@dest.test"])
    now = [0.0]

    async def route(cache: DirectoryCache, address: str) -> Route | replies.SmtpError:
        return await cache.route(parse_address(address))

    async def scenario(blocking: Blocking) -> None:
        cache = DirectoryCache(blocking, check_interval=0.2, clock=lambda: now[0])
        assert isinstance(await route(cache, "one@ours.test"), Route)
        assert await route(cache, "two@ours.test") is replies.NO_SUCH_USER
        assert isinstance(await route(cache, "kept@catch.test"), Route)
        assert await route(cache, "x@new.test") is replies.RELAY_DENIED
        cached = cache.entries

        async def changed(fn: Callable[..., object], *args: object) -> None:
            await blocking.db(fn, *args)
            now[0] += 0.25

        await changed(app_aliases.add_alias, "two@ours.test", ["two@dest.test"])
        assert isinstance(await route(cache, "two@ours.test"), Route)
        assert cache.entries <= cached, "only ours.test was dropped and read again"

        await changed(app_aliases.set_alias_state, "one@ours.test", "tempfail")
        assert await route(cache, "one@ours.test") is replies.ALIAS_TEMPFAIL
        await changed(app_aliases.set_alias_state, "one@ours.test", "enabled")
        assert isinstance(await route(cache, "one@ours.test"), Route)
        await changed(app_aliases.remove_alias, "one@ours.test")
        assert await route(cache, "one@ours.test") is replies.NO_SUCH_USER

        await changed(store.add_domain, "new.test", OWNER, "sel", "not a key", "token")
        assert await route(cache, "x@new.test") is replies.NO_SUCH_USER
        assert await cache.hosts("new.test")
        await changed(store.remove_domain, "ours.test")
        assert await route(cache, "two@ours.test") is replies.RELAY_DENIED
        assert not await cache.hosts("ours.test")
        assert isinstance(await route(cache, "kept@catch.test"), Route)

    run(scenario)


def test_nothing_is_read_again_before_the_check_interval(db: Opened) -> None:
    now = [0.0]

    async def scenario(blocking: Blocking) -> None:
        cache = DirectoryCache(blocking, check_interval=0.2, clock=lambda: now[0])
        assert await cache.route(parse_address("late@ours.test")) is replies.NO_SUCH_USER
        await blocking.db(app_aliases.add_alias, "late@ours.test", ["late@dest.test"])
        assert await cache.route(parse_address("late@ours.test")) is replies.NO_SUCH_USER
        now[0] += 0.25
        assert isinstance(await cache.route(parse_address("late@ours.test")), Route)

    run(scenario)


def insert_unannounced(db: Opened, domain: str, local: str) -> None:
    """An alias written without recording the change (as no verb does): only expiry can reveal it."""
    [(domain_id,)] = db.outside("SELECT id FROM domain WHERE name = ?", (domain,))
    db.outside("INSERT INTO alias (domain_id, kind, local, lookup, destinations, state, created_at) "
               "VALUES (?, 'exact', ?, ?, ?, 'enabled', '2026-01-01 00:00:00')",
               (domain_id, local, local.lower(), json.dumps(["late@dest.test"])))


def test_negative_answers_expire(db: Opened) -> None:
    now = [0.0]

    async def scenario(blocking: Blocking) -> None:
        cache = DirectoryCache(blocking, check_interval=0.2, clock=lambda: now[0], negative_ttl=5.0)
        assert await cache.route(parse_address("late@ours.test")) is replies.NO_SUCH_USER
        await blocking.db(insert_unannounced, db, "ours.test", "late")
        now[0] += 4.9
        assert await cache.route(parse_address("late@ours.test")) is replies.NO_SUCH_USER, "still cached"
        now[0] += 0.1
        assert isinstance(await cache.route(parse_address("late@ours.test")), Route)

    run(scenario)


def test_the_cache_stays_within_its_entries_and_bytes(db: Opened) -> None:
    with store.models.database.atomic():
        for i in range(300):
            store.add_alias("ours.test", "exact", f"u{i}", [f"u{i}@dest.test", f"v{i}@dest.test"])

    async def fill(cache: DirectoryCache) -> list[int]:
        sizes = []
        for i in range(300):
            assert isinstance(await cache.route(parse_address(f"u{i}@ours.test")), Route)
            assert await cache.route(parse_address(f"nobody{i}@ours.test")) is replies.NO_SUCH_USER
            assert await cache.route(parse_address(f"x@stranger{i}.test")) is replies.RELAY_DENIED
            sizes.append(cache.entries)
            assert cache.bytes <= cache._cache.max_bytes
        return sizes

    async def scenario(blocking: Blocking) -> None:
        by_count = DirectoryCache(blocking, max_entries=100)
        assert max(await fill(by_count)) == 100
        by_bytes = DirectoryCache(blocking, max_bytes=20_000)
        await fill(by_bytes)
        assert 0 < by_bytes.bytes <= 20_000 and by_bytes.entries < 100
        assert isinstance(await by_bytes.route(parse_address("u0@ours.test")), Route)  # evicted, read again

    run(scenario)


def test_a_lookup_overtaken_by_a_change_is_not_cached(db: Opened) -> None:
    """A lookup that read the store before a change and finished after the check that dropped its domain
    answers with what it read, but leaves nothing stale in the cache."""
    now = [0.0]

    async def scenario(blocking: Blocking) -> None:
        cache = DirectoryCache(blocking, check_interval=0.2, clock=lambda: now[0])
        await cache.hosts("ours.test")
        real = blocking.db

        async def overtaken(fn: Callable[..., T], *args: object) -> T:
            result = await real(fn, *args)
            cache._epoch += 1
            return result

        blocking.db = overtaken  # type: ignore[method-assign]
        assert await cache.route(parse_address("gone@ours.test")) is replies.NO_SUCH_USER
        blocking.db = real  # type: ignore[method-assign]
        await blocking.db(insert_unannounced, db, "ours.test", "gone")
        assert isinstance(await cache.route(parse_address("gone@ours.test")), Route)

    run(scenario)


@pytest.mark.parametrize("key, value, needle", [
    ("directory_cache_max_entries", 10,
     "mx.directory_cache_max_entries: must be from 100 to 10000000, got 10"),
    ("directory_cache_max_bytes", 1000, "mx.directory_cache_max_bytes: must be from 1048576 (1 MiB)"),
    ("directory_negative_ttl", -1.0, "mx.directory_negative_ttl: must be 0 or more seconds, got -1.0"),
])
def test_cache_settings_are_checked(key: str, value: float, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict({"mx": {key: value}})
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    cfg = from_dict({"mx": {"directory_cache_max_entries": 500, "directory_negative_ttl": 0.0}}).mx
    assert (cfg.directory_cache_max_entries, cfg.directory_negative_ttl) == (500, 0.0)


def test_a_change_frees_nothing_on_the_loop_and_stale_entries_go_first() -> None:
    """Dropping a domain (or all) marks its entries stale at once instead of freeing them there and then
    (tens of thousands of entries took ~12 ms of the event loop); a stale entry is never served, is
    removed when asked for, and is evicted before fresh ones (it is the least recently used)."""
    lru = _Lru(max_entries=100, max_bytes=1 << 20)
    for i in range(60):
        lru.put(("a.test", f"u{i}"), f"old{i}", 10, float("inf"))
    for i in range(40):
        lru.put(("b.test", f"u{i}"), f"b{i}", 10, float("inf"))
    lru.drop_domain("a.test")
    assert len(lru) == 100 and lru.bytes == 1000, "nothing freed by the change itself"
    assert lru.get(("a.test", "u0"), 0.0) == (False, None)
    assert len(lru) == 99, "a stale entry asked for is removed"
    assert lru.get(("b.test", "u0"), 0.0) == (True, "b0")
    lru.put(("a.test", "u1"), "new1", 10, float("inf"))
    assert lru.get(("a.test", "u1"), 0.0) == (True, "new1"), "put after the change: fresh"
    for i in range(59):  # 99 + 59: the 58 stale a.test entries left are evicted, nothing else
        lru.put(("c.test", f"u{i}"), f"c{i}", 10, float("inf"))
    assert len(lru) == 100
    assert all(lru.get(("b.test", f"u{i}"), 0.0)[0] for i in range(40)), "stale a.test entries went first"
    assert lru.get(("a.test", "u1"), 0.0) == (True, "new1")
    lru.clear()
    assert len(lru) == 100
    assert not any(lru.get(("c.test", f"u{i}"), 0.0)[0] for i in range(59))


def test_a_long_list_of_dropped_domains_becomes_one_clear() -> None:
    lru = _Lru(max_entries=100, max_bytes=1 << 20)
    lru.put(("kept-until-clear.test", "x"), "x", 10, float("inf"))
    for i in range(1000):
        lru.drop_domain(f"d{i}.test")
    assert lru.get(("kept-until-clear.test", "x"), 0.0) == (True, "x")
    lru.drop_domain("one-more.test")  # past the 1,000 remembered: everything is dropped instead
    assert lru.get(("kept-until-clear.test", "x"), 0.0) == (False, None)
    assert len(lru._dropped) == 0
