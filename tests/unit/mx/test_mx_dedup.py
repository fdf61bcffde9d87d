"""The in-memory "already delivered" memory and notice rate limit: bounded in count and time."""

from __future__ import annotations

import asyncio
import time

from fwdmail.mail.headers import head as header_block
from fwdmail.mail.received import count_received
from fwdmail.mx.dedup import DeliveredMemory, fingerprint, message_digest
from fwdmail.runtime.expiring import OncePerWindow


def test_fingerprint_is_per_message_and_destination() -> None:
    a, b = message_digest(b"one"), message_digest(b"two")
    assert fingerprint(a, "X@dest.test") == fingerprint(a, "x@dest.test")
    prints = {fingerprint(a, "x@dest.test"), fingerprint(a, "y@dest.test"), fingerprint(b, "x@dest.test")}
    assert len(prints) == 3
    assert b"dest.test" not in fingerprint(a, "x@dest.test")
    keyed = fingerprint(a, "x@dest.test", b"secret one")
    assert keyed == fingerprint(a, "X@dest.test", b"secret one")
    assert keyed not in {fingerprint(a, "x@dest.test"), fingerprint(a, "x@dest.test", b"secret two")}, \
        "without the key nobody can tell whether this message went to this address"


def test_memory_expires_after_ttl() -> None:
    mem = DeliveredMemory(ttl=10, max_entries=100)
    fp = fingerprint(message_digest(b"m"), "x@dest.test")
    mem.remember(fp, now=100)
    assert mem.seen(fp, now=109.9)
    assert not mem.seen(fp, now=110)
    assert len(mem) == 0


def test_memory_is_bounded_oldest_first() -> None:
    mem = DeliveredMemory(ttl=1000, max_entries=3)
    fps = [fingerprint(message_digest(bytes([i])), "x@dest.test") for i in range(5)]
    for i, fp in enumerate(fps):
        mem.remember(fp, now=i)
    assert len(mem) == 3
    assert [mem.seen(fp, now=5) for fp in fps] == [False, False, True, True, True]
    mem.forget(fps[3])
    assert not mem.seen(fps[3], now=5)


def test_rate_limiter_allows_one_per_interval() -> None:
    rl = OncePerWindow(interval=60)
    assert rl.allow("a@ours.test", now=0)
    assert not rl.allow("a@ours.test", now=59)
    assert rl.allow("b@ours.test", now=59)
    assert rl.allow("a@ours.test", now=60)


def test_received_counting_looks_at_headers_only() -> None:
    msg = b"Received: a\r\nreceived : b\r\nX: y\r\n\tReceived: folded, not a header\r\n\r\nReceived: body\r\n"
    assert count_received(header_block(msg)) == 2
    assert header_block(b"\r\nReceived: x\r\n") == b""
    assert count_received(header_block(b"Received: only headers\r\n")) == 1


def test_in_flight_marks_are_shared_tell_the_waiters_and_expire_when_a_process_died() -> None:
    notes: list[bytes] = []
    here = DeliveredMemory(ttl=100, max_entries=10, flight_ttl=5)
    there = DeliveredMemory(ttl=100, max_entries=10, flight_ttl=5)
    here.tell = notes.append
    fp, other = (fingerprint(message_digest(b"m"), d) for d in ("x@dest.test", "y@dest.test"))
    here.start(fp)
    here.start(other)
    for note in notes:
        there.apply(note)
    assert here.flying(fp, 0) and there.flying(fp, time.monotonic())

    async def wait_for_landings() -> tuple[set[bytes], set[bytes]]:
        near = asyncio.ensure_future(here.settle([fp, other], 30))
        far = asyncio.ensure_future(there.settle([fp, other], 30))
        await asyncio.sleep(0)
        here.land(fp, True)
        here.land(other, False)
        for note in notes[2:]:
            there.apply(note)
        return await asyncio.wait_for(near, 5), await asyncio.wait_for(far, 5)

    near, far = asyncio.run(wait_for_landings())
    assert near == far == {fp}, "the waiters learn which copy was delivered, here and in the other process"
    now = time.monotonic()
    assert not there.flying(fp, now) and not there.flying(other, now)
    assert not there.seen(fp, now), "only the waiters: the memory itself is the MX's decision"
    there.apply(b"i" + other)
    assert there.flying(other, now) and not there.flying(other, now + 60), "a dead process's mark expires"
