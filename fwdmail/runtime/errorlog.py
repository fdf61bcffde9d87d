"""The SMTP error-log writer: rows of 4xx/5xx replies (ours and destinations'), batched through the db thread.

Untrusted input: reply texts from SMTP clients and destinations, already masked and scrubbed of
addresses and IPs by the caller; what a refusal row may name is decided by the caller and `Gate`.
Rows never hold a client IP or a message body.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fwdmail import store
from fwdmail.runtime.batching import Batches, Waiting, settle
from fwdmail.runtime.executor import Blocking
from fwdmail.smtp.replies import SmtpError

__all__ = ["ErrorLogWriter", "ErrorRow", "Gate"]

_SUMMARY_LINES = 5

Counts = Counter[tuple[int, str, str]]  # (code, enhanced code, text) -> how many


@dataclass(frozen=True)
class ErrorRow:
    """One SMTP error-log row; `direction` "inbound" (our reply) or "outbound" (a destination's)."""

    at: dt.datetime
    direction: str
    domain: str
    alias: str
    code: int
    enhanced_code: str
    text: str

    @classmethod
    def inbound(cls, at: dt.datetime, domain: str, alias: str, error: SmtpError) -> ErrorRow:
        return cls(at, "inbound", domain, alias, error.code, error.enhanced_code, error.text)

    def as_tuple(self) -> tuple[dt.datetime, str, str, str, int, str, str]:
        """The row as `store.log_smtp_errors` takes it."""
        return (self.at, self.direction, self.domain, self.alias, self.code, self.enhanced_code, self.text)

    @property
    def error(self) -> SmtpError:
        return SmtpError(self.code, self.enhanced_code, self.text)


class Gate(Protocol):
    """Per-client and per-minute budgets of refusal rows (`policy.guessing.RowGate`)."""

    start: float  # when the current minute began (`time.monotonic()`)

    def admit(self, ip: str | None, error: SmtpError, now: float) -> bool: ...

    def count(self, error: SmtpError, now: float) -> None: ...

    def take(self) -> tuple[Counts, Counts]: ...


def _counts_text(counts: Counts) -> str:
    top = counts.most_common(_SUMMARY_LINES)
    shown = [f"{n} x {code} {enhanced} {text}" for (code, enhanced, text), n in top]
    rest = sum(counts.values()) - sum(n for _, n in top)
    return "; ".join(shown) + (f"; {rest} other" if rest else "")


class ErrorLogWriter:
    """Writes SMTP error-log rows through the db thread, batching rows that wait together.

    Rows the store refuses (locked, full, read-only) are dropped, not kept: the failure is logged once,
    and how many rows were lost once it works again. Refusals go through `gate`: past its per-client
    and per-minute budgets they are only counted, and each minute with any such count ends with one
    summary row (and refusals of things not hosted here, never written, with one log line of counts).
    """

    def __init__(self, blocking: Blocking, gate: Gate | None = None,
                 log: logging.Logger | None = None) -> None:
        self.blocking = blocking
        self.gate = gate
        self.log = log or logging.getLogger("fwdmail.errorlog")
        self.dropped = 0
        self._batches: Batches[tuple[ErrorRow, ...], None] = Batches(self._write)
        self._summary: asyncio.TimerHandle | None = None

    async def write(self, rows: Sequence[ErrorRow]) -> None:
        """Return once `rows` are committed (or the write failed, which is logged)."""
        if rows:
            await self._batches.put(tuple(rows))

    async def refusal(self, rows: Sequence[ErrorRow], ip: str | None) -> None:
        """Write the rows of one refusal of client `ip` (None: not known) if the gate lets them in."""
        if self.gate is None:
            await self.write(rows)
            return
        now = time.monotonic()
        admitted = [r for r in rows if self.gate.admit(ip, r.error, now)]
        if len(admitted) < len(rows):
            self._summarize_later()
        await self.write(admitted)

    def count(self, error: SmtpError) -> None:
        """A refusal of something not hosted here: counted, never written as a row of its own."""
        if self.gate is not None:
            self.gate.count(error, time.monotonic())
            self._summarize_later()

    def _summarize_later(self) -> None:
        if self._summary is None and self.gate is not None:
            delay = max(0.0, self.gate.start + 60.0 - time.monotonic())
            self._summary = asyncio.get_running_loop().call_later(delay, self._summarize)

    def _summarize(self) -> None:
        self._summary = None
        if self.gate is None:
            return
        withheld, not_hosted = self.gate.take()
        if not_hosted:
            top = not_hosted.most_common(_SUMMARY_LINES)
            self.log.info("refused %d recipient(s) not hosted here (counted, not logged): %s",
                          sum(not_hosted.values()), ", ".join(f"{code} {enhanced} x{n}"
                                                              for (code, enhanced, _), n in top))
        if withheld:
            total = sum(withheld.values())
            (code, enhanced, _), _ = withheld.most_common(1)[0]
            text = (f"{total} more refusal(s) in the minute, past the error-log write limit, "
                    f"not written one by one: {_counts_text(withheld)}")
            self.log.info("error log: %d refusal(s) past the write limit, summarised in one row", total)
            self._batches.add((ErrorRow(store.utcnow(), "inbound", "", "", code, enhanced, text),))

    async def _write(self, batch: list[Waiting[tuple[ErrorRow, ...], None]]) -> None:
        rows = [row.as_tuple() for w in batch for row in w.item]
        try:
            await self.blocking.db(store.log_smtp_errors, rows)
        except Exception as exc:
            if not self.dropped:
                self.log.warning("could not write %d SMTP error log row(s): %s; dropping them until it works",
                                 len(rows), store.failure(exc))
            self.dropped += len(rows)
        else:
            if self.dropped:
                self.log.warning("SMTP error log written again; %d row(s) were dropped", self.dropped)
            self.dropped = 0
        for w in batch:
            settle(w.future)

    async def close(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summarize()
        await self._batches.drain()
