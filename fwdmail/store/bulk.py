"""Bulk verbs on aliases: an import written in short batches (and undone if one fails), and listings that
read the directory page by page so memory stays flat whatever its size.

Values arrive validated by `fwdmail.app.aliases`; nothing here parses what an admin typed. Writes begin
IMMEDIATE (on SQLite) and each batch is its own transaction, so a running daemon's writes get the lock
between them.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from fwdmail.store.db import reads, rest_after, sql, writing
from fwdmail.store.directory import AliasRecord, DomainRecord, NotFound, _bump_directory, _domain_record
from fwdmail.store.models import Account, Alias, Domain, database, lookup_key, utcnow

__all__ = [
    "IMPORT_BATCH", "ImportRow", "ImportWrites", "alias_page", "domain_ids", "domain_page",
    "existing_destinations", "import_batch", "iter_aliases", "undo_import",
]

# At most this many aliases per write transaction (a few ms each: the daemon's writes wait no longer).
IMPORT_BATCH = 1000
# A listing reads this many aliases per query.
LIST_PAGE = 1000
# SQLite takes at most 32,766 bound values per statement; keys are looked up this many at a time.
_LOOKUP_CHUNK = 5000


@dataclass(frozen=True)
class ImportRow:
    domain_id: int
    kind: str
    local: str
    destinations: tuple[str, ...]


@dataclass
class ImportWrites:
    """What an import wrote so far: enough to undo it, and its counts."""

    inserted: list[int] = field(default_factory=list)
    replaced: list[tuple[int, str]] = field(default_factory=list)  # (alias id, destinations before, JSON)
    unchanged: int = 0


def _changed(domain_ids: Iterable[int] | None = None) -> None:
    """Tell running daemons the directory changed (inside the caller's transaction), as `add_alias` does:
    in the domains of `domain_ids` (each daemon drops only those from its cache), or in any."""
    if domain_ids is None:
        _bump_directory()
        return
    wanted = sorted(set(domain_ids))
    names: list[str] = []
    for chunk in _chunks(wanted, _LOOKUP_CHUNK):
        names += [n for (n,) in Domain.select(Domain.name).where(Domain.id.in_(list(chunk))).tuples()]
    _bump_directory(names)


def _chunks(items: Sequence[object], size: int) -> Iterator[Sequence[object]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@reads
def domain_ids(names: Iterable[str]) -> dict[str, int]:
    """The ids of those of `names` that are hosted domains."""
    found: dict[str, int] = {}
    wanted = sorted(set(names))
    for chunk in _chunks(wanted, _LOOKUP_CHUNK):
        for name, ident in Domain.select(Domain.name, Domain.id).where(Domain.name.in_(chunk)).tuples():
            found[name] = ident
    return found


def _existing(keys: Sequence[tuple[int, str, str]]) -> dict[tuple[int, str, str], tuple[int, str]]:
    """(domain id, kind, local) -> (alias id, destinations JSON) for those of `keys` that exist: each key
    one probe of the (domain, kind, local) index."""
    out: dict[tuple[int, str, str], tuple[int, str]] = {}
    for chunk in _chunks(list(keys), _LOOKUP_CHUNK):
        values = ", ".join(["(?, ?, ?)"] * len(chunk))
        query = (f"WITH k(d, kd, l) AS (VALUES {values}) "
               "SELECT a.id, a.domain_id, a.kind, a.local, a.destinations FROM k "
               "JOIN alias AS a ON a.domain_id = k.d AND a.kind = k.kd AND a.local = k.l")
        params = [v for key in chunk for v in key]  # type: ignore[union-attr]
        for ident, dom, kind, local, dests in database.execute_sql(sql(query), params).fetchall():
            out[(dom, kind, local)] = (ident, dests)
    return out


@reads
def existing_destinations(keys: Sequence[tuple[int, str, str]],
                          ) -> dict[tuple[int, str, str], tuple[str, ...]]:
    """(domain id, kind, local) -> destinations, for those of `keys` that are aliases already."""
    return {k: tuple(json.loads(dests)) for k, (_, dests) in _existing(keys).items()}


def import_batch(rows: Sequence[ImportRow], writes: ImportWrites) -> None:
    """Write one batch in one transaction: a new alias is inserted, an existing one gets the new
    destinations (its state and password stay). What was written is added to `writes` only once the
    transaction committed, so `undo_import` undoes exactly what is in the store."""
    inserted: list[int] = []
    replaced: list[tuple[int, str]] = []
    unchanged = 0
    created = str(utcnow())  # as peewee writes a DateTimeField to SQLite
    with writing():
        existing = _existing([(r.domain_id, r.kind, r.local) for r in rows])
        new = []
        touched: set[int] = set()
        for r in rows:
            dests = json.dumps(list(r.destinations))
            found = existing.get((r.domain_id, r.kind, r.local))
            if found is None:
                new.append((r.domain_id, r.kind, r.local, dests, "enabled", created))
            elif found[1] == dests:
                unchanged += 1
                continue
            else:
                Alias.update(destinations=dests).where(Alias.id == found[0]).execute()
                replaced.append((found[0], found[1]))
            touched.add(r.domain_id)
        for chunk in _chunks(new, 2000):
            inserted.extend(_insert(chunk))
        if touched:
            _changed(touched)
    writes.inserted.extend(inserted)
    writes.replaced.extend(replaced)
    writes.unchanged += unchanged


def _insert(rows: Sequence[tuple[object, ...]]) -> list[int]:
    """Insert alias rows (domain_id, kind, local, destinations, state, created_at) with the lookup key
    the MX finds an exact alias by; return their ids. One plain statement: peewee's query builder costs
    ten times SQLite's own work at this size."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows))
    query = (f"INSERT INTO alias (domain_id, kind, local, lookup, destinations, state, created_at) "
             f"VALUES {values} RETURNING id")
    params = [v for r in rows for v in (*r[:3], lookup_key(str(r[2])), *r[3:])]
    return [row[0] for row in database.execute_sql(sql(query), params).fetchall()]


def undo_import(writes: ImportWrites) -> None:
    """Delete the aliases an import inserted and give the ones it replaced their destinations back, in
    batches as it wrote them."""
    for chunk in _chunks(writes.inserted, IMPORT_BATCH):
        started = time.monotonic()
        with writing():
            Alias.delete().where(Alias.id.in_(list(chunk))).execute()
            _changed()
        time.sleep(rest_after(started))
    for chunk in _chunks(writes.replaced, IMPORT_BATCH):
        with writing():
            for ident, dests in chunk:  # type: ignore[misc]
                Alias.update(destinations=dests).where(Alias.id == ident).execute()
            _changed()
    writes.inserted.clear()
    writes.replaced.clear()


@reads
def iter_aliases(domain: str | None = None, search: str | None = None,
                 page: int = LIST_PAGE) -> Iterator[AliasRecord]:
    """Every alias (or those of `domain`), ordered by domain, kind and local part as `list_aliases`, read
    `page` at a time by key (never the whole directory at once). `search` keeps the aliases whose address
    or a destination contains it (case-insensitive)."""
    needle = search.lower() if search else None
    after_name = ""
    while True:
        q = (Domain.select(Domain.id, Domain.name, Account.email).join(Account)
             .where(Domain.name > after_name).order_by(Domain.name).limit(page))
        if domain is not None:
            q = q.where(Domain.name == domain)
        domains = list(q.tuples())
        for dom_id, name, account in domains:
            yield from _domain_aliases(dom_id, name, account, needle, page)
        if len(domains) < page:
            return
        after_name = domains[-1][1]


_PAGE_SQL = ("SELECT id, kind, local, destinations, state, password_hash IS NOT NULL, created_at FROM alias "
             "WHERE domain_id = ? AND (kind > ? OR (kind = ? AND local > ?)) ORDER BY kind, local LIMIT ?")


def _domain_aliases(dom_id: int, name: str, account: str, needle: str | None,
                    page: int) -> Iterator[AliasRecord]:
    """The aliases of one domain, a page at a time by (kind, local): each page one range of the
    (domain, kind, local) index. Plain SQL: peewee's row conversion would double a listing's time."""
    after = ("", "")
    while True:
        rows = database.execute_sql(sql(_PAGE_SQL), (dom_id, after[0], after[0], after[1], page)).fetchall()
        for ident, kind, local, dests, state, has_password, created in rows:
            rec = AliasRecord(ident, name, kind, local, tuple(json.loads(dests)), state, bool(has_password),
                              account, _datetime(created))
            if needle is None or needle in rec.address.lower() or any(
                    needle in d.lower() for d in rec.destinations):
                yield rec
        if len(rows) < page:
            return
        after = (rows[-1][1], rows[-1][2])


@reads
def alias_page(domain: str, after: tuple[str, str], limit: int) -> list[AliasRecord]:
    """At most `limit` aliases of the hosted `domain` that come after (kind, local) `after` in the listing
    order (("", "") for the first): one range of the (domain, kind, local) index, so a page is the same
    whatever was inserted before it. `NotFound` if the domain is not hosted."""
    row = (Domain.select(Domain.id, Domain.name, Account.email).join(Account)
           .where(Domain.name == domain).tuples().first())
    if row is None:
        raise NotFound(f"no domain {domain}")
    dom_id, name, account = row
    rows = database.execute_sql(sql(_PAGE_SQL), (dom_id, after[0], after[0], after[1], limit)).fetchall()
    return [AliasRecord(ident, name, kind, local, tuple(json.loads(dests)), state, bool(has_password),
                        account, _datetime(created))
            for ident, kind, local, dests, state, has_password, created in rows]


@reads
def domain_page(account_email: str, after: str, limit: int) -> list[DomainRecord]:
    """At most `limit` of the account's domains named after `after` ("" for the first), by name."""
    q = (Domain.select(Domain, Account).join(Account)
         .where(Account.email == account_email, Domain.name > after).order_by(Domain.name).limit(limit))
    return [_domain_record(d) for d in q]


def _datetime(value: object) -> dt.datetime:
    """A DateTimeField as SQLite returns it (the text peewee wrote) as peewee reads it back."""
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    return Alias.created_at.python_value(value)
