"""How many sessions an SMTP listener kind holds, and which are inside a message.

Untrusted input: none read here; it bounds what connecting clients can make a listener hold (a cap
per listener kind, 421 past it) and lets a stopping service wait for the messages under way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

__all__ = ["Closable", "Sessions"]

log = logging.getLogger("fwdmail.smtp")


class Closable(Protocol):
    """What `Sessions` needs of an SMTP session."""

    def close(self, reply: str | None = None) -> None: ...


class Sessions:
    """The live sessions of a listener kind, and which are inside a message (from 354 to the reply after it).

    At most `cap` sessions (0: no cap) are admitted; a connection past it gets 421 at once, and the log one
    warning line per `warn_every` seconds. `drain` lets a stopping service wait for messages under way;
    `close` then ends every session with a 421.
    """

    def __init__(self, name: str = "SMTP", cap: int = 0, warn_every: float = 300.0) -> None:
        self.name = name
        self.cap = cap
        self.warn_every = warn_every
        self.refused = 0
        self.live: set[Closable] = set()
        self._busy: set[Closable] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._warned_at: float | None = None
        self._unreported = 0

    def __len__(self) -> int:
        return len(self.live)

    @property
    def busy(self) -> int:
        return len(self._busy)

    def add(self, session: Closable) -> bool:
        """Admit a session; False (nothing counted) at the cap."""
        if session in self.live:
            return True
        if self.cap and len(self.live) >= self.cap:
            self._refuse()
            return False
        self.live.add(session)
        return True

    def _refuse(self) -> None:
        self.refused += 1
        self._unreported += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= self.warn_every:
            log.warning("%s session cap of %d reached: new connections get 421 (%d refused since the last "
                        "warning)", self.name, self.cap, self._unreported)
            self._warned_at = now
            self._unreported = 0

    def discard(self, session: Closable) -> None:
        self.live.discard(session)
        self.leave(session)

    def enter(self, session: Closable) -> None:
        self._busy.add(session)
        self._idle.clear()

    def leave(self, session: Closable) -> None:
        self._busy.discard(session)
        if not self._busy:
            self._idle.set()

    async def drain(self, timeout: float, force: asyncio.Event) -> bool:
        """Wait until no session is inside a message, at most `timeout` or until `force` is set."""
        if not self._busy:
            return True
        waits = [asyncio.ensure_future(self._idle.wait()), asyncio.ensure_future(force.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return not self._busy

    def close(self, reply: str) -> None:
        """Send `reply` to every session and close it."""
        for session in list(self.live):
            session.close(reply)
