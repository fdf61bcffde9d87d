"""Aliases published in DNS TXT records, in Forward Email's `forward-email=` syntax.

Untrusted input: the TXT records of a hosted domain, as any DNS server answers them (bytes, any length,
any content). Only records starting `forward-email=` are read (`forward-email-site-verification=`,
`forward-email-port=` and every other record are ignored); each holds comma-separated entries, and the
entries of all such records are joined:

    name:destination         an exact alias (several entries with one name: several destinations)
    destination              a catch-all (several: several destinations)
    /regex/:destination      a regex alias matched against the local part; `$1`..`$9` in the destination
    !entry  !!entry  !!!entry   the entry disabled: quiet (250, dropped), tempfail (4xx), reject (5xx);
                             the destination may be left out (`!name`, `!/regex/`)
    https://... as destination   a webhook URL, kept only when the caller accepts webhooks (`accept_url`)

An entry that does not parse is skipped and counted, never raised; what is read is bounded
(`MAX_TEXT` bytes, `MAX_ENTRIES` entries, `MAX_DESTINATIONS` per alias). Regex entries are checked to
compile here; the MX's backtracking refusal (`policy.routing.slow_probe`) is its caller's job.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import regex

from fwdmail import store
from fwdmail.mail.addresses import HIDDEN_CHARS, AddressError, normalize_address, parse_address

__all__ = ["MAX_ENTRIES", "MAX_TEXT", "PREFIX", "TxtAliases", "parse_records"]

PREFIX = "forward-email="
MAX_TEXT = 64 * 1024  # bytes of forward-email= text read per domain (a TCP DNS answer is at most 64 KiB)
MAX_ENTRIES = 1000  # entries read per domain
MAX_DESTINATIONS = 10  # per alias, as `alias add` allows
MAX_PATTERN = 512  # characters of one regex

_STATES = {0: "enabled", 1: "quiet", 2: "tempfail", 3: "reject"}
_STRICTNESS = {"quiet": 1, "tempfail": 2, "reject": 3}
_REGEX_ENTRY = re.compile(r"/(.+?)/([a-z]*)(?::(.*))?", re.DOTALL)
_FLAGS = set("gimsuy")
_EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class TxtAliases:
    """The aliases read from one domain's records (as `store.AliasRecord`s, ids in the order their
    names first appear), and how many entries were skipped as bad or refused as webhook URLs."""

    aliases: tuple[store.AliasRecord, ...] = ()
    skipped: int = 0
    webhooks_refused: int = 0
    records: int = 0  # forward-email= records read


@dataclass
class _Alias:
    kind: str
    local: str
    destinations: list[str] = field(default_factory=list)
    disabled: int = 0  # the strictest disable mode among its entries (0: none)
    refused_urls: bool = False


def _is_url(text: str) -> bool:
    lowered = text[:8].lower()
    return lowered.startswith(("https://", "http://"))


class _Bad(ValueError):
    """One entry that does not parse."""


class _Reader:
    def __init__(self, domain: str, accept_url: Callable[[str], str] | None) -> None:
        self.domain = domain
        self.accept_url = accept_url
        self.aliases: dict[tuple[str, str], _Alias] = {}
        self.skipped = 0
        self.webhooks_refused = 0

    def entry(self, text: str) -> None:
        bangs = len(text) - len(text.lstrip("!"))
        if bangs > 3:
            raise _Bad("more than three '!'")
        body = text[bangs:].strip()
        if not body:
            raise _Bad("empty entry")
        kind, local, dest = self._split(body)
        if dest is None and not bangs:
            raise _Bad("no destination")
        alias = self.aliases.get((kind, local))
        if alias is None:
            if len(self.aliases) >= MAX_ENTRIES:
                raise _Bad("too many aliases")
            alias = self.aliases[(kind, local)] = _Alias(kind, local)
        if bangs:
            alias.disabled = max(alias.disabled, bangs)  # a disabled entry's destination is not used
            return
        assert dest is not None
        kept = self._destination(dest, alias)
        if kept is None or kept.lower() in (d.lower() for d in alias.destinations):
            return
        if len(alias.destinations) >= MAX_DESTINATIONS:
            raise _Bad("too many destinations")
        alias.destinations.append(kept)

    def _split(self, body: str) -> tuple[str, str, str | None]:
        """(kind, local part or pattern or "*", destination or None)."""
        if body.startswith("/"):
            m = _REGEX_ENTRY.fullmatch(body)
            if m is None or not set(m.group(2)) <= _FLAGS:
                raise _Bad("bad regex entry")
            pattern = m.group(1)
            if len(pattern) > MAX_PATTERN or HIDDEN_CHARS.search(pattern):
                raise _Bad("bad pattern")
            try:
                regex.compile(pattern, regex.IGNORECASE)
            except (regex.error, RecursionError, OverflowError):
                raise _Bad("pattern does not compile") from None
            return "regex", pattern, m.group(3).strip() if m.group(3) is not None else None
        if _is_url(body) or ":" not in body:
            if "@" in body or _is_url(body):
                return "catch-all", "*", body
            return "exact", self._name(body), None  # `!name` with no destination
        name, _, dest = body.partition(":")
        return "exact", self._name(name.strip()), dest.strip()

    def _name(self, name: str) -> str:
        try:
            addr = parse_address(f"{name}@{self.domain}")
        except AddressError:
            raise _Bad("bad alias name") from None
        if "+" in addr.local or "$" in addr.local:
            raise _Bad("bad alias name")
        return store.lookup_key(addr.local)

    def _destination(self, dest: str, alias: _Alias) -> str | None:
        if _is_url(dest):
            if self.accept_url is None:
                self.webhooks_refused += 1
                alias.refused_urls = True
                return None
            try:
                return self.accept_url(dest)
            except (AddressError, ValueError):
                raise _Bad("bad webhook URL") from None
        try:
            return normalize_address(dest)
        except AddressError:
            raise _Bad("bad destination") from None

    def result(self, account_email: str, records: int) -> TxtAliases:
        out = []
        for alias in self.aliases.values():
            if alias.destinations:
                state = "enabled"
            elif alias.disabled:
                state = _STATES[alias.disabled]
            elif alias.refused_urls:
                state = "reject"  # its webhooks cannot be served: refused, not sent to the catch-all
            else:
                continue
            out.append(store.AliasRecord(
                len(out) + 1, self.domain, alias.kind, alias.local, tuple(alias.destinations), state,
                False, account_email, _EPOCH))
        return TxtAliases(tuple(out), self.skipped, self.webhooks_refused, records)


def _texts(records: Iterable[bytes | str]) -> Iterable[str]:
    """The part after `forward-email=` of each record that has it, within MAX_TEXT bytes in all."""
    budget = MAX_TEXT
    for raw in records:
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        if data[:len(PREFIX)].lower() != PREFIX.encode():
            continue
        budget -= len(data)
        if budget < 0:
            return
        yield data[len(PREFIX):].decode("utf-8", "replace")


def parse_records(records: Iterable[bytes | str], domain: str, account_email: str = "",
                  accept_url: Callable[[str], str] | None = None) -> TxtAliases:
    """The aliases of `domain` in its TXT `records` (each record's strings joined). Webhook URL
    destinations are kept as `accept_url` returns them (it raises ValueError for a bad one); without
    it they are refused and counted, and an alias left with nothing but refused URLs is a `reject`."""
    reader = _Reader(domain, accept_url)
    count = 0
    for text in _texts(records):
        count += 1
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "\ufffd" in part or HIDDEN_CHARS.search(part):
                reader.skipped += 1
                continue
            try:
                reader.entry(part)
            except _Bad:
                reader.skipped += 1
    return reader.result(account_email, count)
