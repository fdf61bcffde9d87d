"""Everything the CLI prints goes through here: tables, lines, panels, progress bars and JSON.

Handles untrusted input: stored text from outside (destinations' replies, SMTP clients' input, message
headers, values an older release stored unchecked). It is never read as rich markup, and control,
format and bidi characters are shown as visible escapes (`\\x1b`, `\\u202e`), so a value can neither
colour, link, move the cursor nor reorder what the admin sees. JSON keeps the values exact, with those
characters escaped by JSON itself.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from fwdmail.app import HIDDEN_CHARS

if TYPE_CHECKING:  # rich is imported where output is made: `fwdmail serve` and its workers never load it
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

_KEPT = frozenset("\n\t")


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(value: object, *, multiline: bool = False) -> str:
    """`value` as text whose control, format and bidi characters are written as escapes.

    Newlines and tabs stay only when `multiline` (a message text); in one-line fields they are escaped.
    """
    text = "" if value is None else str(value)
    return HIDDEN_CHARS.sub(lambda m: m.group() if multiline and m.group() in _KEPT else _escape(m.group()),
                            text)


def text(value: object, *, multiline: bool = False) -> Text:
    """A rich Text (never parsed as markup, no emoji codes, no highlighting) of `visible(value)`."""
    from rich.text import Text

    return Text(visible(value, multiline=multiline))


def console(*, stderr: bool = False) -> Console:
    """The console every table goes to; outside a terminal, as wide as COLUMNS (default 200)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "200") or 200)
    from rich.console import Console

    return Console(width=width, soft_wrap=False, stderr=stderr, markup=False, emoji=False, highlight=False)


def new_table(title: str, columns: Sequence[str]) -> Table:
    from rich.table import Table

    t = Table(title=text(title), title_justify="left")
    for c in columns:
        t.add_column(text(c), overflow="fold")
    return t


def add_row(t: Table, values: Sequence[object]) -> None:
    t.add_row(*(text(v) for v in values))


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]],
          out: Console | None = None) -> None:
    """Print a table; every title, heading and cell is shown as `visible` text."""
    t = new_table(title, columns)
    for r in rows:
        add_row(t, r)
    (out or console()).print(t)


def panel(title: str, body: object, out: Console | None = None) -> None:
    """Print a multi-line text (a message's body) in a frame."""
    from rich.panel import Panel

    (out or console()).print(Panel(text(body, multiline=True), title=text(title), title_align="left"))


@contextmanager
def progress(steps: Iterable[tuple[str, str, int | None]]) -> Iterator[Callable[[str, int], None]]:
    """A transient progress bar on stderr, one line per (key, title, total); yields `advance(key, n)`."""
    from rich.progress import Progress

    with Progress(console=console(stderr=True), transient=True) as bar:
        tasks = {key: bar.add_task(title, total=total) for key, title, total in steps}
        yield lambda key, n: bar.advance(tasks[key], n)


@contextmanager
def terminal_progress(title: str, total: int) -> Iterator[Callable[[int], None]]:
    """`progress` with one bar, shown only when stderr is a terminal (scripts and logs get no bar)."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    with progress([("", title, total)]) as advance:
        yield lambda n: advance("", n)


# Streamed listings print this many rows (a table chunk, or JSON items) per write.
STREAM_CHUNK = 500


def stream_table(title: str, columns: Sequence[tuple[str, int | None]], rows: Iterable[Sequence[object]],
                 out: Console | None = None) -> int:
    """Print a table as its rows come, `STREAM_CHUNK` at a time, without holding them all: every chunk
    has the same column widths (a fixed width, or None for an equal share of the rest), so the chunks
    read as one table. Cells are `visible` text as in `table`. Returns the number of rows."""
    from rich import box
    from rich.table import Table

    out = out or console()
    count = 0
    chunk: Table | None = None

    def fresh(first: bool) -> Table:
        t = Table(title=text(title) if first else None, title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, show_header=first, expand=True, width=out.width)
        for name, width in columns:
            t.add_column(text(name), overflow="fold", width=width, ratio=None if width else 1,
                         no_wrap=False)
        return t

    for r in rows:
        if chunk is None:
            chunk = fresh(count == 0)
        add_row(chunk, r)
        count += 1
        if count % STREAM_CHUNK == 0:
            out.print(chunk)
            chunk = None
    if chunk is not None or count == 0:
        out.print(chunk or fresh(True))
    return count


_QUOTE = json.encoder.encode_basestring  # C, non-ASCII kept as ensure_ascii=False keeps it
_SCALAR = json.JSONEncoder(ensure_ascii=False).encode


class _Unusual(Exception):
    """A value `_layout` leaves to json.dumps."""


def _layout(value: Any, level: int) -> str:
    """`json.dumps(value, indent=2, ensure_ascii=False)` for plain dicts, lists and scalars, nested at
    `level`: json's indented encoder is pure Python, this one leaves each scalar to its C encoder."""
    if isinstance(value, str):
        return _QUOTE(value)
    if isinstance(value, int | float | bool) or value is None:
        return _SCALAR(value)
    if isinstance(value, dt.date):
        return _QUOTE(_iso(value))
    inner = "\n" + "  " * (level + 1)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _Unusual
        body = ",".join(f"{inner}{_QUOTE(k)}: {_layout(v, level + 1)}"
                        for k, v in value.items())
        return f"{{{body}\n{'  ' * level}}}" if value else "{}"
    if isinstance(value, list | tuple):
        body = ",".join(inner + _layout(v, level + 1) for v in value)
        return f"[{body}\n{'  ' * level}]" if value else "[]"
    raise _Unusual


def _item_text(item: Any) -> str:
    """`json_text(item)` nested one level in an array, as fast as the item allows."""
    try:
        out = _layout(item, 1)
    except _Unusual:
        return json_text(item).replace("\n", "\n  ")
    if out.isascii() and "\x7f" not in out:  # json escaped every other hidden ASCII character already
        return out
    return HIDDEN_CHARS.sub(lambda m: m.group() if m.group() == "\n" else json.dumps(m.group())[1:-1], out)


def stream_json(items: Iterable[Any]) -> int:
    """Write one JSON array item by item, as `emit_json` would write the whole list (same text), without
    holding it. Returns the number of items."""
    count = 0
    buffer: list[str] = []
    for item in items:
        buffer.append(("[\n  " if count == 0 else ",\n  ") + _item_text(item))
        count += 1
        if len(buffer) >= STREAM_CHUNK:
            click.echo("".join(buffer), nl=False)
            buffer.clear()
    buffer.append("\n]" if count else "[]")
    click.echo("".join(buffer))
    return count


def line(value: object, *, err: bool = False, multiline: bool = False) -> None:
    """Print a plain line (no markup is involved, but outside text is still shown visibly)."""
    click.echo(visible(value, multiline=multiline), err=err)


def _iso(v: Any) -> str:
    if isinstance(v, dt.datetime):
        return v.isoformat() + ("Z" if v.tzinfo is None else "")  # the store keeps naive UTC
    return v.isoformat() if isinstance(v, dt.date) else str(v)


def json_text(data: Any) -> str:
    """Indented JSON, UTF-8 kept readable, every hidden character escaped as JSON (`\\u001b`)."""
    out = json.dumps(data, indent=2, default=_iso, ensure_ascii=False)
    # Outside strings there is only ASCII layout (newlines kept), so any other hidden character is inside
    # a string, where its escape means the same; json.dumps of it alone gives that escape.
    return HIDDEN_CHARS.sub(lambda m: m.group() if m.group() == "\n" else json.dumps(m.group())[1:-1], out)


def emit_json(data: Any) -> None:
    click.echo(json_text(data))
