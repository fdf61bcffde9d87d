"""Alias resolution policy (no sockets) and the directory cache that follows CLI edits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwdmail import store
from fwdmail.app import aliases as app_aliases
from fwdmail.mail.addresses import parse_address
from fwdmail.policy.directory import DirectoryCache
from fwdmail.policy.routing import MAX_DESTINATIONS, Directory, Route, resolve
from fwdmail.runtime.executor import Blocking
from fwdmail.smtp import replies


@pytest.fixture
def db(tmp_path: Path) -> Iterator[None]:
    store.open_store(tmp_path / "fwdmail.db")
    store.add_account("owner@owner.test")
    for name in ("ours.test", "catch.test"):
        store.add_domain(name, "owner@owner.test", "sel", "not a key", "token")
    yield
    store.close_store()


def add(address: str, *destinations: str) -> None:
    app_aliases.add_alias(address, list(destinations))


def directory() -> Directory:
    domains, aliases = store.load_directory()
    return Directory.build(domains, aliases, store.directory_version())


def route(address: str) -> Route | replies.SmtpError:
    return resolve(directory(), parse_address(address))


def dests(address: str) -> tuple[str, ...]:
    r = route(address)
    assert isinstance(r, Route), r
    return r.destinations


def test_order_exact_plus_regex_catch_all(db: None) -> None:
    add("sales@ours.test", "exact@dest.test")
    add("bob@ours.test", "bob@dest.test", "bob2@dest.test")
    add("/^(.+)-sales$/@ours.test", "$1@dest.test", "team@dest.test")
    add("*@ours.test", "catchall@dest.test")
    assert dests("sales@ours.test") == ("exact@dest.test",)
    assert dests("SALES@Ours.Test") == ("exact@dest.test",)
    assert dests("bob+News@ours.test") == ("bob+News@dest.test", "bob2+News@dest.test")
    assert dests("eve-sales@ours.test") == ("eve@dest.test", "team@dest.test")
    assert dests("bob-sales@ours.test") == ("bob@dest.test", "team@dest.test")  # regex, not bob's exact
    assert dests("Eve-SALES@ours.test") == ("Eve@dest.test", "team@dest.test")  # $1 as written, like a tag
    assert dests("nobody@ours.test") == ("catchall@dest.test",)
    assert dests("nobody+tag@ours.test") == ("catchall@dest.test",)


def test_route_names_the_alias_and_its_owner(db: None) -> None:
    add("/^(.+)-sales$/@ours.test", "$1@dest.test")
    r = route("x-sales@ours.test")
    assert isinstance(r, Route)
    assert (r.alias, r.domain, r.account_email, r.discard) == (
        "/^(.+)-sales$/@ours.test", "ours.test", "owner@owner.test", False)


def test_unknown_and_foreign(db: None) -> None:
    assert route("nobody@ours.test") is replies.NO_SUCH_USER
    assert route("someone@other.test") is replies.RELAY_DENIED
    assert route("nobody@catch.test") is replies.NO_SUCH_USER


def test_regex_substitution_that_makes_no_address_is_dropped(db: None) -> None:
    add("/^(a)?b$/@ours.test", "x$1@dest.test", "y@dest.test")
    assert dests("b@ours.test") == ("x@dest.test", "y@dest.test")
    add("/^c(.*)$/@ours.test", "$1@dest.test")
    assert route("c@ours.test") is replies.NO_SUCH_USER  # "@dest.test" is not an address


def test_destinations_deduplicated_and_capped(db: None) -> None:
    add("/^(.+)$/@catch.test", "$1@dest.test", "same@dest.test", *(f"d{i}@dest.test" for i in range(8)))
    assert dests("same@catch.test") == ("same@dest.test", *(f"d{i}@dest.test" for i in range(8)))
    assert len(dests("other@catch.test")) == MAX_DESTINATIONS


@pytest.mark.parametrize("state, expected", [
    ("tempfail", replies.ALIAS_TEMPFAIL),
    ("reject", replies.ALIAS_REJECTED),
])
def test_disabled_states(db: None, state: str, expected: replies.SmtpError) -> None:
    add("off@ours.test", "off@dest.test")
    app_aliases.set_alias_state("off@ours.test", state)
    assert route("off@ours.test") is expected
    assert route("off+tag@ours.test") is expected


def test_quiet_accepts_and_discards(db: None) -> None:
    add("off@ours.test", "off@dest.test")
    app_aliases.set_alias_state("off@ours.test", "quiet")
    r = route("off@ours.test")
    assert isinstance(r, Route) and r.discard and r.destinations == ()
    assert replies.ALIAS_TEMPFAIL.code in (421, 450) and replies.ALIAS_TEMPFAIL.enhanced_code.startswith("4.")
    assert replies.ALIAS_REJECTED.code == 550 and replies.ALIAS_REJECTED.enhanced_code.startswith("5.")


def test_cache_reloads_only_when_the_version_changes(db: None) -> None:
    add("one@ours.test", "one@dest.test")
    now = [0.0]
    blocking = Blocking()

    async def scenario() -> None:
        cache = DirectoryCache(blocking, check_interval=0.2, clock=lambda: now[0])
        first = await cache.get()
        assert first.hosts("ours.test")
        assert not isinstance(resolve(first, parse_address("one@ours.test")), replies.SmtpError)
        await blocking.db(add, "two@ours.test", "two@dest.test")
        assert await cache.get() is first  # checked less than 0.2 s ago: no store access
        now[0] += 0.2
        second = await cache.get()
        assert second is not first
        assert isinstance(resolve(second, parse_address("two@ours.test")), Route)
        now[0] += 0.2
        assert await cache.get() is second  # version unchanged: same snapshot
        gets = await asyncio.gather(*(cache.get() for _ in range(20)))
        assert all(g is second for g in gets)

    try:
        asyncio.run(scenario())
    finally:
        blocking.shutdown()
