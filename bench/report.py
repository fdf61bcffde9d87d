"""Results: one record per measurement, summarised per (system, workload) over rounds, targets, JSON.

Ratios are taken within a round (fwdmail's value over Postfix's value measured minutes apart on the same
machine), then summarised over rounds: on a noisy machine these are the figures that count.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

POSTFIX = "postfix"
STACK = "postfix-stack"
"""Postfix with postsrsd, rspamd (checks, ARC seal) and OpenDKIM: the anchor of issue 18."""
FLOOR = "floor"
OPENSSL = "openssl"
FWDMAIL = "fwdmail"
MIB = 1024 * 1024


@dataclass
class Record:
    """One measurement of one system on one workload in one round."""

    system: str
    workload: str
    round: int
    unit: str
    value: float | None
    floor_ref: str = FLOOR
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mib: float | None = None
    cpu_ms_per_msg: float | None = None
    note: str = ""
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread | None:
        kept = [v for v in values if v is not None]
        if not kept:
            return None
        return cls(statistics.median(kept), min(kept), max(kept), len(kept))


@dataclass
class Line:
    """A (system, workload) summarised over its rounds."""

    system: str
    workload: str
    unit: str
    value: Spread | None
    vs_postfix: Spread | None
    vs_floor: Spread | None
    vs_stack: Spread | None
    p50_ms: Spread | None
    p99_ms: Spread | None
    peak_rss_mib: Spread | None
    cpu_ms_per_msg: Spread | None
    notes: list[str]
    errors: list[str]


def _index(records: list[Record]) -> dict[tuple[str, str, int], Record]:
    return {(r.system, r.workload, r.round): r for r in records if r.error is None and r.value is not None}


def _ratios(group: list[Record], index: dict[tuple[str, str, int], Record], reference: str) -> Spread | None:
    ratios = []
    for r in group:
        ref = index.get((reference, r.workload, r.round))
        if r.value is not None and r.error is None and ref is not None and ref.value:
            ratios.append(r.value / ref.value)
    return Spread.of(ratios)


def _notes(records: list[Record]) -> list[str]:
    """The first round's note, marked as such when later rounds said something else (other figures)."""
    notes = [r.note for r in records if r.note]
    if not notes:
        return []
    return [notes[0] if len(set(notes)) == 1 else f"{notes[0]} (round {records[0].round})"]


def summarise(records: list[Record]) -> list[Line]:
    index = _index(records)
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.system, r.workload), []).append(r)
    lines = []
    for (system, workload), group in groups.items():
        ok = [r for r in group if r.error is None]
        lines.append(Line(
            system=system, workload=workload, unit=group[0].unit,
            value=Spread.of(r.value for r in ok),
            vs_postfix=None if system == POSTFIX else _ratios(group, index, POSTFIX),
            vs_floor=None if system == group[0].floor_ref else _ratios(group, index, group[0].floor_ref),
            vs_stack=None if system in (POSTFIX, STACK) else _ratios(group, index, STACK),
            p50_ms=Spread.of(r.p50_ms for r in ok),
            p99_ms=Spread.of(r.p99_ms for r in ok),
            peak_rss_mib=Spread.of(r.peak_rss_mib for r in ok),
            cpu_ms_per_msg=Spread.of(r.cpu_ms_per_msg for r in ok),
            notes=_notes(ok),
            errors=[f"round {r.round}: {r.error}" for r in group if r.error],
        ))
    return lines


@dataclass
class Target:
    name: str
    measured: float | None
    limit: float
    at_least: bool
    unit: str = "x"
    issue: int = 7

    @property
    def met(self) -> bool | None:
        if self.measured is None:
            return None
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit


def _find(lines: list[Line], system: str, workload: str) -> Line | None:
    return next((ln for ln in lines if ln.system == system and ln.workload == workload), None)


def _pick(lines: list[Line], system: str, workload: str, attr: str) -> float | None:
    line = _find(lines, system, workload)
    spread = getattr(line, attr) if line is not None else None
    return spread.median if spread is not None else None


@dataclass(frozen=True)
class TargetSpec:
    """How to read one target of the issue off the summary lines."""

    name: str
    system: str
    workload: str
    attr: str
    limit: float | Callable[[], float]
    at_least: bool
    unit: str = "x"
    issue: int = 7
    """The issue that set the target (7: the first performance issue; 18: against the postfix-stack)."""

    def evaluate(self, lines: list[Line]) -> Target:
        limit = self.limit() if callable(self.limit) else self.limit
        return Target(self.name, _pick(lines, self.system, self.workload, self.attr), limit,
                      self.at_least, self.unit, self.issue)


def evaluate(specs: list[TargetSpec], lines: list[Line]) -> list[Target]:
    return [spec.evaluate(lines) for spec in specs]


def _fmt_value(value: float, unit: str) -> str:
    if unit == "MiB":
        return f"{value:,.1f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _fmt_spread(spread: Spread | None, unit: str) -> tuple[str, str]:
    if spread is None:
        return "—", ""
    if spread.n == 1:
        return _fmt_value(spread.median, unit), ""
    return _fmt_value(spread.median, unit), f"{_fmt_value(spread.low, unit)}–{_fmt_value(spread.high, unit)}"


def _fmt_ratio(spread: Spread | None) -> str:
    if spread is None:
        return ""
    if spread.n == 1:
        return f"{spread.median:.2f}"
    return f"{spread.median:.2f} ({spread.low:.2f}–{spread.high:.2f})"


def _fmt_ms(spread: Spread | None) -> str:
    return "" if spread is None else f"{spread.median:.1f}"


def _fmt_cpu(spread: Spread | None) -> str:
    return "" if spread is None else f"{spread.median:.2f}"


def print_table(lines: list[Line], targets: list[Target], console: Console | None = None) -> None:
    console = console or Console(width=200)
    table = Table(title="fwdmail bench (median over rounds; spread = min–max; ratios taken within a round)")
    for name, justify in [("system", "left"), ("workload", "left"), ("value", "right"), ("unit", "left"),
                          ("spread", "right"), ("× Postfix", "right"), ("× floor", "right"),
                          ("× stack", "right"),
                          ("p50 ms", "right"), ("p99 ms", "right"), ("peak RSS MiB", "right"),
                          ("CPU ms/msg", "right"),
                          ("notes", "left")]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for ln in lines:
        value, spread = _fmt_spread(ln.value, ln.unit)
        rss = _fmt_spread(ln.peak_rss_mib, "MiB")[0] if ln.peak_rss_mib else ""
        notes = "; ".join(ln.notes + [f"[red]{e}[/red]" for e in ln.errors])
        table.add_row(ln.system, ln.workload, value, ln.unit, spread, _fmt_ratio(ln.vs_postfix),
                      _fmt_ratio(ln.vs_floor), _fmt_ratio(ln.vs_stack), _fmt_ms(ln.p50_ms),
                      _fmt_ms(ln.p99_ms), rss, _fmt_cpu(ln.cpu_ms_per_msg), notes)
    console.print(table)
    goals = Table(title="Targets (medians; issue 7's first, then issue 18's against the postfix-stack)")
    for name in ("issue", "target", "measured", "limit", "status"):
        goals.add_column(name)
    for t in targets:
        measured = "—" if t.measured is None else f"{t.measured:,.2f} {t.unit}"
        status = {True: "[green]met[/green]", False: "[red]not met[/red]", None: "not measured"}[t.met]
        limit = f"{'≥' if t.at_least else '≤'} {t.limit:,.2f} {t.unit}"
        goals.add_row(str(t.issue), t.name, measured, limit, status)
    console.print(goals)


def write_json(path: Path, meta: dict[str, Any], records: list[Record], lines: list[Line],
               targets: list[Target]) -> None:
    data = {
        "meta": meta,
        "summary": [asdict(ln) for ln in lines],
        "targets": [{**asdict(t), "met": t.met} for t in targets],
        "runs": [asdict(r) for r in records],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _md_spread(spread: dict[str, Any] | None, unit: str) -> tuple[str, str]:
    return _fmt_spread(Spread(**spread) if spread else None, unit)


def _md_ratio(spread: dict[str, Any] | None) -> str:
    return _fmt_ratio(Spread(**spread) if spread else None)


def _md_number(spread: dict[str, Any] | None, digits: int = 1) -> str:
    return "" if not spread else f"{spread['median']:.{digits}f}"


def to_markdown(data: dict[str, Any]) -> str:
    """The summary and targets of a results JSON as Markdown tables (for bench/README.md)."""
    out = ["| system | workload | value | spread | × Postfix | × floor | × stack | p50 ms | p99 ms "
           "| peak RSS MiB | CPU ms/msg | notes |", "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for ln in data["summary"]:
        value, spread = _md_spread(ln["value"], ln["unit"])
        cells = [ln["system"], ln["workload"], f"{value} {ln['unit']}", spread, _md_ratio(ln["vs_postfix"]),
                 _md_ratio(ln["vs_floor"]), _md_ratio(ln.get("vs_stack")), _md_number(ln["p50_ms"]),
                 _md_number(ln["p99_ms"]),
                 _md_number(ln["peak_rss_mib"]), _md_number(ln.get("cpu_ms_per_msg"), 2),
                 "; ".join(ln["notes"] + ln["errors"])]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "| issue | target | measured | limit | status |", "|---|---|--:|--:|---|"]
    for t in data["targets"]:
        measured = "—" if t["measured"] is None else f"{t['measured']:,.2f} {t['unit']}"
        status = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        limit = f"{'≥' if t['at_least'] else '≤'} {t['limit']:,.2f} {t['unit']}"
        out.append(f"| {t.get('issue', 7)} | {t['name']} | {measured} | {limit} | {status} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    source = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
    print(to_markdown(json.loads(source.read_text())))
