"""Aliases in Postfix's virtual(5) format: `fwdmail alias import` and `fwdmail alias export`.

Handles untrusted input: the file being imported (anything a migration script or another system wrote).
Each line is checked as `alias add` checks its arguments, every line before anything is written; a line's
problem is reported with its number and the file's text quoted (the CLI shows it escaped). Lines and the
number of reported problems are bounded. Memory stays flat whatever the file's size: the checked lines go
to an unnamed temporary file (the spool) as they are checked, and are written from it a batch at a time;
only a 64-bit hash per alias (to find duplicates) and the domains named are kept in memory.

The format: `address destination[, destination...]` (commas and/or blanks between destinations), `#`
comments and blank lines, a line starting with a blank continuing the one before (as postmap reads it).
Addresses: `user@dom`, a catch-all as `@dom` (virtual(5)) or `*@dom`, and `/regex/@dom`. A key that is a
bare domain (`example.com  anything`, Postfix's virtual alias domain line) asks only that the domain exist.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from fwdmail import store
from fwdmail.app.aliases import check_alias, iter_aliases
from fwdmail.app.domains import add_domain
from fwdmail.mail.addresses import (
    AddressError,
    AliasSpec,
    is_webhook,
    normalize_address,
    normalize_domain,
)

__all__ = [
    "MAX_LINE", "ImportPlan", "ImportProblem", "ImportRefused", "ImportSummary", "apply_import",
    "dry_run_summary", "export_lines", "plan_import",
]

# A logical line (continuations included) longer than this is refused: no alias needs it.
MAX_LINE = 8192
# At most this many problems are kept to show; the rest are only counted.
MAX_PROBLEMS = 100
_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class ImportProblem:
    line: int
    reason: str


class ImportRefused(ValueError):
    """The file has problems: nothing was imported. `problems` holds the first `MAX_PROBLEMS`."""

    def __init__(self, problems: list[ImportProblem], total: int) -> None:
        super().__init__(f"nothing imported: {total} problem{'s' if total != 1 else ''} in the file")
        self.problems = problems
        self.total = total


@dataclass(frozen=True)
class _Entry:
    line: int
    domain: str
    kind: str
    local: str
    destinations: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"/{self.local}/@{self.domain}" if self.kind == "regex" else f"{self.local}@{self.domain}"


# Checked lines read back from the spool this many at a time (a dry run's count, the duplicate search).
_CHUNK = 5000


class _Spool:
    """Checked entries in an unnamed temporary file, one per line (tab-separated: no checked value holds
    a blank), read back in order as often as needed."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        self.count = 0

    def add(self, e: _Entry) -> None:
        self.file.write("\t".join((str(e.line), e.domain, e.kind, e.local, *e.destinations)) + "\n")
        self.count += 1

    def __iter__(self) -> Iterator[_Entry]:
        self.file.flush()
        self.file.seek(0)
        for text in self.file:
            line, domain, kind, local, *dests = text.rstrip("\n").split("\t")
            yield _Entry(int(line), domain, kind, local, tuple(dests))

    def chunks(self, size: int) -> Iterator[list[_Entry]]:
        chunk: list[_Entry] = []
        for e in self:
            chunk.append(e)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def close(self) -> None:
        self.file.close()


@dataclass
class ImportPlan:
    """A checked file: what `apply_import` will write (`entries` aliases, kept in a temporary file until
    `close`), and its counts as the store stands now."""

    spool: _Spool
    domain_ids: dict[str, int]
    missing_domains: list[str]
    account: str | None
    added: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def entries(self) -> int:
        return self.spool.count

    def close(self) -> None:
        self.spool.close()

    def __enter__(self) -> ImportPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ImportSummary:
    added: int
    updated: int
    unchanged: int
    domains_created: int
    dry_run: bool
    seconds: float = 0.0

    @property
    def line(self) -> str:
        head = "dry run, nothing written: would import" if self.dry_run else "imported"
        verb = "to create" if self.dry_run else "created"
        return (f"{head} {self.added + self.updated + self.unchanged} aliases: {self.added} added, "
                f"{self.updated} updated, {self.unchanged} unchanged; {self.domains_created} domains {verb}")


@dataclass
class _Problems:
    kept: list[ImportProblem] = field(default_factory=list)
    total: int = 0

    def add(self, line: int, reason: str) -> None:
        """Count a problem; the `MAX_PROBLEMS` with the lowest line numbers are kept."""
        self.total += 1
        self.kept.append(ImportProblem(line, reason))
        if len(self.kept) >= 2 * MAX_PROBLEMS:
            self.kept = self.sorted()

    def sorted(self) -> list[ImportProblem]:
        return sorted(self.kept, key=lambda p: p.line)[:MAX_PROBLEMS]


def _logical_lines(lines: Iterable[str], problems: _Problems) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each logical line, comments and blank lines left out."""
    start, parts, size = 0, [], 0
    for number, raw in enumerate(lines, 1):
        text = raw.rstrip("\r\n")
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        if text[0] in " \t" and parts:
            size += len(text)
            if size <= MAX_LINE:
                parts.append(text)
            continue
        if parts:
            yield _bounded(start, parts, size, problems)
        start, parts, size = number, [text], len(text)
    if parts:
        yield _bounded(start, parts, size, problems)


def _bounded(start: int, parts: list[str], size: int, problems: _Problems) -> tuple[int, str]:
    if size > MAX_LINE:
        problems.add(start, f"line longer than {MAX_LINE} characters")
        return start, ""
    return start, " ".join(p.strip() for p in parts)


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:60] + "…" + text[-12:])


def _parse(text: str) -> tuple[AliasSpec | None, tuple[str, ...], str | None]:
    """(alias, destinations, None), (None, (), domain) for a domain line, or raise ValueError."""
    key, *rest = text.split(None, 1)
    dests = [d for d in _SEPARATORS.split(rest[0]) if d] if rest else []
    if "@" not in key:
        try:
            return None, (), normalize_domain(key)
        except AddressError:
            raise ValueError(f"{_short(key)} is neither an address nor a domain (fwdmail needs "
                             "user@domain, @domain, *@domain or /regex/@domain)") from None
    if key.startswith("@"):
        key = "*" + key
    if not dests:
        raise ValueError(f"{_short(key)} has no destination")
    for d in dests:
        if "@" not in d and not is_webhook(d):
            raise ValueError(f"destination {_short(d)} is not an address (local delivery is not forwarding)")
    spec, checked = check_alias(key, dests)
    return spec, tuple(checked), None


def plan_import(lines: Iterable[str], account: str | None = None, *, count: bool = True) -> ImportPlan:
    """Check every line of a virtual(5) file and the domains it names, writing nothing to the store; raise
    `ImportRefused` listing the problems. With `account`, missing domains are to be created for it.
    `count` reads what would be added, updated or unchanged (a dry run's answer). The caller closes the
    plan (its spool)."""
    problems = _Problems()
    acct = None
    if account is not None:
        acct = normalize_address(account).lower()
        store.get_account(acct)
    spool = _Spool()
    try:
        domain_lines = _check_lines(lines, spool, problems)
        ids = store.domain_ids(domain_lines)
        missing = sorted(set(domain_lines) - set(ids))
        if missing and acct is None:
            for name in missing:
                problems.add(domain_lines[name], f"no domain {name} (give --account EMAIL to create it)")
        if problems.total:
            raise ImportRefused(problems.sorted(), problems.total)
        plan = ImportPlan(spool, ids, missing, acct)
        if count:
            _count(plan)
    except BaseException:
        spool.close()
        raise
    return plan


def _check_lines(lines: Iterable[str], spool: _Spool, problems: _Problems) -> dict[str, int]:
    """Check each line into `spool` (or `problems`); the domains named, with the first line naming each.
    A duplicate is told by its key's hash, then confirmed by the keys themselves (`_duplicates`)."""
    seen: set[int] = set()
    suspects: set[int] = set()
    domain_lines: dict[str, int] = {}
    for number, text in _logical_lines(lines, problems):
        if not text:
            continue
        try:
            spec, dests, domain = _parse(text)
        except (AddressError, ValueError) as exc:
            problems.add(number, str(exc))
            continue
        if spec is None:
            assert domain is not None
            domain_lines.setdefault(domain, number)
            continue
        key = hash((spec.domain, spec.kind, spec.local))
        if key in seen:
            suspects.add(key)
        seen.add(key)
        domain_lines.setdefault(spec.domain, number)
        spool.add(_Entry(number, spec.domain, spec.kind, spec.local, dests))
    del seen
    if suspects:
        _duplicates(spool, suspects, problems)
    return domain_lines


def _duplicates(spool: _Spool, suspects: set[int], problems: _Problems) -> None:
    """Each alias given on more than one line (among those whose key hashes are `suspects`)."""
    first: dict[tuple[str, str, str], int] = {}
    for e in spool:
        key = (e.domain, e.kind, e.local)
        if hash(key) not in suspects:
            continue
        if key in first:
            problems.add(e.line, f"{_short(e.address)} is already on line {first[key]}")
        else:
            first[key] = e.line


def _count(plan: ImportPlan) -> None:
    """Added, updated and unchanged as the store stands now (aliases of missing domains are all new)."""
    for chunk in plan.spool.chunks(_CHUNK):
        keys = [(plan.domain_ids[e.domain], e.kind, e.local) for e in chunk if e.domain in plan.domain_ids]
        existing = store.existing_destinations(keys)
        for e in chunk:
            dom = plan.domain_ids.get(e.domain)
            before = existing.get((dom, e.kind, e.local)) if dom is not None else None
            if before is None:
                plan.added += 1
            elif before == e.destinations:
                plan.unchanged += 1
            else:
                plan.updated += 1


def dry_run_summary(plan: ImportPlan) -> ImportSummary:
    return ImportSummary(plan.added, plan.updated, plan.unchanged, len(plan.missing_domains), dry_run=True)


def apply_import(plan: ImportPlan, now: dt.datetime,
                 advance: Callable[[int], None] | None = None) -> ImportSummary:
    """Write a checked plan: missing domains first, then the aliases `store.IMPORT_BATCH` per
    transaction, read from the spool as they are written. If a write fails, what this import wrote is
    undone before the error is raised again."""
    started = time.monotonic()
    created: list[str] = []
    writes = store.ImportWrites()
    try:
        for name in plan.missing_domains:
            assert plan.account is not None
            plan.domain_ids[name] = add_domain(name, plan.account, now).id
            created.append(name)
        rest, done = 0.0, 0.0  # between batches the lock is free: reading the next one counts as rest
        for chunk in plan.spool.chunks(store.IMPORT_BATCH):
            batch = [store.ImportRow(plan.domain_ids[e.domain], e.kind, e.local, e.destinations)
                     for e in chunk]
            time.sleep(max(0.0, rest - (time.monotonic() - done)))
            began = time.monotonic()
            store.import_batch(batch, writes)
            done = time.monotonic()
            rest = store.rest_after(began)
            if advance is not None:
                advance(len(batch))
    except BaseException as exc:
        _undo(writes, created, exc)
        raise
    added = len(writes.inserted)
    return ImportSummary(added, len(writes.replaced), writes.unchanged, len(created), dry_run=False,
                         seconds=time.monotonic() - started)


def _undo(writes: store.ImportWrites, created: list[str], exc: BaseException) -> None:
    """Remove what a failed import wrote; say so on the exception (or that the undo failed too)."""
    wrote = len(writes.inserted) + len(writes.replaced)
    try:
        store.undo_import(writes)
        for name in reversed(created):
            store.remove_domain(name)
    except Exception as again:  # the first failure is the one to raise
        exc.add_note(f"undoing the import failed too ({store.failure(again)}): {wrote} aliases and "
                     f"{len(created)} domains it wrote may remain")
        return
    exc.add_note(f"the import was undone: {wrote} aliases and {len(created)} domains it wrote were removed "
                 "or restored")


def export_lines(domain: str | None = None) -> Iterator[str]:
    """The aliases as virtual(5) lines (catch-alls as `@dom`), streamed from the store."""
    for a in iter_aliases(domain):
        key = f"@{a.domain}" if a.kind == "catch-all" else a.address
        yield f"{key} {', '.join(a.destinations)}"
