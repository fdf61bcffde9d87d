"""The daemon's Prometheus metrics: messages forwarded, refused, deferred and queued (by a fixed reason
code), delivery latency histograms, open sessions per listener kind, and the queue's depth by state.

Untrusted input: SMTP errors (ours, or a destination's reply) are reduced to a fixed reason code: the
name of one of our reply constants, else "destination" or "other". No label value ever comes from an
address, a domain, an IP or a reply's text. Notes from MX worker processes (our own) are checked against
the same fixed sets before they count.

Each `Metrics` has its own registry (never prometheus-client's global one). In an MX or queue worker
process `relay` is set: every event becomes a short note sent to the serving process over the worker's
pair (`mx.workers`, `queue.workers`), whose `Metrics.apply` counts it, so one scrape of the serving
process sees all of them; a worker never builds a registry, nor imports prometheus-client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from fwdmail.smtp import client, replies
from fwdmail.smtp.replies import SmtpError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["LISTENERS", "QUEUE_STATES", "SERVICES", "Metrics", "reason"]

SERVICES = ("mx", "submission", "queue")
LISTENERS = ("mx", "submission", "http")
QUEUE_STATES = ("queued", "sending", "deferred", "held")
OUTCOMES = ("forwarded", "refused", "deferred")
NOTE = b"m"
"""The first byte of a worker's metrics note on the MX pair (the other notes start with other bytes)."""

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_AGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 5 * 86400.0)


def _known() -> tuple[dict[tuple[int, str, str], str], list[tuple[int, str, str, str]]]:
    """Our reply constants by (code, enhanced code, text), and those with a "{field}" by text prefix."""
    exact: dict[tuple[int, str, str], str] = {}
    templates: list[tuple[int, str, str, str]] = []
    for module in (replies, client):
        for name, value in vars(module).items():
            if isinstance(value, SmtpError) and name.isupper():
                if "{" in value.text:
                    prefix = value.text.split("{")[0]
                    templates.append((value.code, value.enhanced_code, prefix, name.lower()))
                else:
                    exact.setdefault((value.code, value.enhanced_code, value.text), name.lower())
    return exact, templates


_EXACT, _TEMPLATES = _known()
REASONS = frozenset([*_EXACT.values(), *(t[3] for t in _TEMPLATES), "destination", "other"])


def _without_quoted_recipient(text: str) -> str:
    """A reply text without the "<address>: " the MX puts before a destination's failure."""
    if text.startswith("<") and ">: " in text:
        return text.split(">: ", 1)[1]
    return text


def reason(error: SmtpError, default: str = "other") -> str:
    """The fixed reason code of `error`: its constant's name, else `default` ("destination" for a
    destination's own reply)."""
    text = _without_quoted_recipient(error.text)
    name = _EXACT.get((error.code, error.enhanced_code, text))
    if name is not None:
        return name
    for code, enhanced, prefix, templated in _TEMPLATES:
        if (error.code, error.enhanced_code) == (code, enhanced) and text.startswith(prefix):
            return templated
    return default if default in REASONS else "other"


@dataclass
class _Depth:
    """The queue's depth as last read from the store (None: the read failed)."""

    by_state: dict[str, int] | None = None


class _Gauges:
    """Collected at scrape time: open sessions per listener kind, the queue depth, the store's health."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily  # only a scrape needs it (see _Series)

        m = self.metrics
        sessions = GaugeMetricFamily("fwdmail_sessions_open", "Open sessions (connections) per listener kind",
                                     labels=["listener"])
        for listener in LISTENERS:
            local = m.session_counts.get(listener)
            total = (local() if local is not None else 0) + sum(
                n for (_, kind), n in m.remote_sessions.items() if kind == listener)
            sessions.add_metric([listener], total)
        yield sessions
        depth = m.depth.by_state
        yield GaugeMetricFamily("fwdmail_store_up", "1 if the last scrape could read the queue depth",
                                value=0 if depth is None else 1)
        if depth is not None:
            family = GaugeMetricFamily("fwdmail_queue_messages", "Outbound messages not yet final, by state",
                                       labels=["state"])
            for state in QUEUE_STATES:
                family.add_metric([state], depth.get(state, 0))
            yield family


class _Series:
    """The registry and its counters and histograms; prometheus-client is imported here, on first use, so
    that workers (which relay every event) never load it."""

    def __init__(self, gauges: _Gauges) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.forwarded = Counter("fwdmail_messages_forwarded", "Messages forwarded: MX messages answered 250 "
                                 "after forwarding; queue recipients delivered", ["service"], registry=r)
        self.refused = Counter("fwdmail_messages_refused", "Refusals (5xx) by reason: MX and submission "
                               "commands refused; queue recipients bounced", ["service", "reason"],
                               registry=r)
        self.deferred = Counter("fwdmail_messages_deferred", "Deferrals (4xx) by reason: MX and submission "
                                "commands deferred; queue recipients to retry", ["service", "reason"],
                                registry=r)
        self.queued = Counter("fwdmail_messages_queued", "Submitted messages committed to the outbound queue",
                              registry=r)
        self.mx_seconds = Histogram("fwdmail_mx_forward_seconds", "From the end of DATA to the MX's reply "
                                    "(forwarding to every destination)", ["outcome"],
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("fwdmail_queue_attempt_seconds", "One delivery attempt of a queued "
                                       "message (signing and sending)", ["outcome"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_age = Histogram("fwdmail_queue_delivered_after_seconds", "From submission to delivery "
                                   "(per attempt that delivered)", buckets=_AGE_BUCKETS, registry=r)
        r.register(gauges)


class Metrics:
    """The counters every service bumps through `ctx.metrics`, and what a scrape reads."""

    def __init__(self) -> None:
        self.session_counts: dict[str, Callable[[], int]] = {}
        self.remote_sessions: dict[tuple[int, str], int] = {}
        self.depth = _Depth()
        self.relay: Callable[[bytes], None] | None = None
        self._reported: dict[str, int] = {}
        self._children: dict[tuple[str, ...], Any] = {}  # labelled series, looked up once each

    @cached_property
    def series(self) -> _Series:
        return _Series(_Gauges(self))

    # events

    def refusal(self, service: str, error: SmtpError, default: str = "other") -> None:
        """A 4xx (deferred) or 5xx (refused) of `service`, counted by `reason`."""
        outcome = "refused" if error.permanent else "deferred"
        self._count(service, outcome, reason(error, default))

    def forward(self, service: str, n: int = 1) -> None:
        self._count(service, "forwarded", "", n)

    def queue(self) -> None:
        self.series.queued.inc()

    def mx_reply(self, reply: str, seconds: float) -> None:
        """The MX's reply after DATA (forwarded, refused or deferred by its reason), and how long it took."""
        if reply.startswith("2"):
            outcome = "forwarded"
            self.forward("mx")
        else:
            error = SmtpError.parse(reply)
            outcome = "refused" if error.permanent else "deferred"
            self.refusal("mx", error, "destination")
        self._observe("mx", outcome, seconds)

    def attempt(self, outcome: str, seconds: float, age: float | None) -> None:
        """A queue delivery attempt: its outcome ("forwarded" if any recipient took it), its time, and
        the message's age when delivered."""
        self._observe("queue", outcome, seconds)
        if age is not None:
            self._age(age)

    def _age(self, seconds: float) -> None:
        if self.relay is not None:
            self.relay(NOTE + f"a|{seconds:.3f}".encode())
        else:
            self.series.queue_age.observe(max(0.0, seconds))

    def track_sessions(self, listener: str, count: Callable[[], int]) -> None:
        """Read `count()` at each scrape as this process's open sessions of `listener`."""
        self.session_counts[listener] = count

    def report_sessions(self, listener: str) -> None:
        """In a worker: send this process's open sessions of `listener` if they changed."""
        count = self.session_counts.get(listener)
        n = count() if count is not None else 0
        if self.relay is not None and self._reported.get(listener) != n:
            self._reported[listener] = n
            self.relay(NOTE + f"s|{listener}|{n}".encode())

    # across processes

    def _count(self, service: str, outcome: str, why: str, n: int = 1) -> None:
        if self.relay is not None:
            self.relay(NOTE + f"c|{service}|{outcome}|{why}|{n}".encode())
        else:
            self._child(outcome, service, why).inc(n)

    def _observe(self, service: str, outcome: str, seconds: float) -> None:
        if self.relay is not None:
            self.relay(NOTE + f"h|{service}|{outcome}|{seconds:.6f}".encode())
        else:
            self._child("seconds", service, outcome).observe(max(0.0, seconds))

    def _child(self, kind: str, first: str, second: str) -> Any:
        key = (kind, first, second)
        child = self._children.get(key)
        if child is None:
            series = self.series
            if kind == "seconds":
                child = (series.mx_seconds if first == "mx" else series.queue_seconds).labels(second)
            elif kind == "forwarded":
                child = series.forwarded.labels(first)
            else:
                child = (series.refused if kind == "refused" else series.deferred).labels(first, second)
            self._children[key] = child
        return child

    def apply(self, source: int, note: bytes) -> bool:
        """Count a worker's note (from the worker numbered `source`); an empty note: that worker is gone.
        False for a note that is not a valid one (ignored)."""
        if not note:
            for key in [k for k in self.remote_sessions if k[0] == source]:
                del self.remote_sessions[key]
            return True
        try:
            kind, *fields = note.removeprefix(NOTE).decode("ascii").split("|")
            if kind == "c" and len(fields) == 4:
                service, outcome, why, n = fields
                if (service in SERVICES and outcome in OUTCOMES and (why in REASONS or not why)
                        and 0 < int(n) <= 1000):
                    self._count(service, outcome, why, int(n))
                    return True
            elif kind == "h" and len(fields) == 3:
                service, outcome, seconds = fields
                if service in SERVICES and outcome in OUTCOMES and 0 <= float(seconds) < 1e6:
                    self._observe(service, outcome, float(seconds))
                    return True
            elif kind == "a" and len(fields) == 1 and 0 <= float(fields[0]) < 1e9:
                self._age(float(fields[0]))
                return True
            elif kind == "s" and len(fields) == 2 and fields[0] in LISTENERS and 0 <= int(fields[1]) < 10**7:
                self.remote_sessions[(source, fields[0])] = int(fields[1])
                return True
        except (UnicodeDecodeError, ValueError):
            pass
        return False

    def exposition(self, depth: dict[str, int] | None) -> bytes:
        """The text exposition format, with `depth` (None: unreadable) as the queue's depth."""
        from prometheus_client import generate_latest  # only the serving process scrapes (see _Series)

        self.depth.by_state = depth
        return generate_latest(self.series.registry)
