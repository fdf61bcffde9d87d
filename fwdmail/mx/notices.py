"""Partial-failure notices: telling an alias's owner that some of its destinations refused a message.

Untrusted input: destinations' reply texts (shown to the alias's owner, whitespace-collapsed and cut
to length). Nothing of the forwarded message is in the notice; at most one per alias per interval (with
`[cluster] redis_url` for all nodes together: a mark per alias, a keyed hash with the interval as TTL).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from dataclasses import dataclass

from fwdmail import store
from fwdmail.mail.dates import rfc5322
from fwdmail.runtime.expiring import OncePerWindow
from fwdmail.runtime.sharedstate import SharedState, SharedUnavailable
from fwdmail.runtime.tasks import cancel_and_wait
from fwdmail.smtp.client import Delivery
from fwdmail.smtp.replies import SmtpError

__all__ = ["PartialNotices", "Refused"]

log = logging.getLogger("fwdmail.mx")


@dataclass(frozen=True)
class Refused:
    """One destination of an alias that refused a message permanently, and its reply."""

    destination: str
    error: SmtpError


def _oneline(text: str) -> str:
    return " ".join(text.split())[:200]


class PartialNotices:
    """Sends each notice in the background, through the MX's delivery, from postmaster@`hostname`."""

    def __init__(self, hostname: str, delivery: Delivery, interval: float,
                 shared: SharedState | None = None) -> None:
        self.hostname = hostname
        self.delivery = delivery
        self.interval = interval
        self.gate = OncePerWindow(interval)
        self.shared = shared
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, alias: str, owner: str, refused: list[Refused], mono: float) -> None:
        """Tell `owner` (if any, and not already told within the interval) what refused `alias`'s copy."""
        if not owner or not self.gate.allow(alias, mono):
            return
        message = self.message(owner, alias, refused, store.utcnow())
        task = asyncio.get_running_loop().create_task(self._send(owner, message, alias))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def message(self, owner: str, alias: str, refused: list[Refused], now: dt.datetime) -> bytes:
        """A short text message telling the alias's owner which destinations refused a message."""
        lines = [
            f"From: fwdmail <postmaster@{self.hostname}>",
            f"To: <{owner}>",
            f"Subject: Some destinations of {alias} refused a message",
            f"Date: {rfc5322(now)}",
            f"Message-ID: <{secrets.token_hex(12)}@{self.hostname}>",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            f"A message to {alias} was forwarded, but these destinations refused it permanently:",
            "",
            *(f"  {r.destination}: {r.error.code} {r.error.enhanced_code} {_oneline(r.error.text)}"
              for r in refused),
            "",
            "The other destinations accepted it, so the sender was told it was delivered.",
            "Nothing of the message was kept. Check these destinations, or remove them from the alias.",
            "",
        ]
        return "\r\n".join(lines).encode("utf-8")

    async def _send(self, owner: str, message: bytes, alias: str = "") -> None:
        if self.shared is not None:
            try:
                if not await self.shared.add(self.shared.key("notice", alias.lower()), self.interval):
                    log.debug("partial-failure notice not sent: one was sent within the interval")
                    return
            except SharedUnavailable:
                log.warning("partial-failure notice not sent: the shared state is unavailable")
                return
        try:
            result = await self.delivery.send("", [owner], message)
        except Exception as exc:
            log.warning("partial-failure notice failed: %s", type(exc).__name__)
            return
        err = result.get(owner)
        if err is not None:
            log.info("partial-failure notice not delivered: %s %s", err.code, err.enhanced_code)

    async def close(self) -> None:
        """Stop the notices still being sent."""
        await cancel_and_wait(self._tasks)
