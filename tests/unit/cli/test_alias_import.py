"""`fwdmail alias import | export` (Postfix virtual(5) format) and the streamed `alias list`."""

from __future__ import annotations

import io
import json
import sqlite3
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from fwdmail import store
from fwdmail.app import aliases
from fwdmail.app.shapes import alias_json
from fwdmail.cli import render
from tests.support.daemon import Daemon

ACCOUNT = "you@example.org"

EVERY_KIND = """\
# moved from Postfix
example.com        anything
hello@example.com  you@example.org
@example.com       you@example.org, backup@example.net
*@example.net      you@example.org
/^(.+)-sales$/@example.com  sales+$1@example.org
Team@example.net   a@example.org b@example.org,c@example.org
    d@example.org

only@bücher.example you@example.org
"""


@pytest.fixture
def d(tmp_path: Path) -> Daemon:
    (tmp_path / "one").mkdir()
    daemon = Daemon(tmp_path / "one")
    daemon.cli("init")
    daemon.cli("account", "add", ACCOUNT)
    return daemon


@contextmanager
def opened(d: Daemon) -> Iterator[None]:
    store.open_store(d.data_dir / "fwdmail.db")
    try:
        yield
    finally:
        store.close_store()


def listed(d: Daemon, *args: str) -> list[dict[str, Any]]:
    return json.loads(d.cli("alias", "list", "--json", *args).stdout)


def write(d: Daemon, text: str) -> str:
    path = d.dir / "virtual"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_every_kind_round_trips_through_export_and_a_fresh_data_dir(d: Daemon, tmp_path: Path) -> None:
    out = d.cli("alias", "import", write(d, EVERY_KIND), "--account", ACCOUNT).stdout
    assert out == "imported 6 aliases: 6 added, 0 updated, 0 unchanged; 3 domains created\n"
    by_address = {a["address"]: (a["kind"], a["destinations"]) for a in listed(d)}
    assert by_address == {
        "hello@example.com": ("exact", ["you@example.org"]),
        "*@example.com": ("catch-all", ["you@example.org", "backup@example.net"]),
        "*@example.net": ("catch-all", ["you@example.org"]),
        "/^(.+)-sales$/@example.com": ("regex", ["sales+$1@example.org"]),
        "team@example.net": ("exact", ["a@example.org", "b@example.org", "c@example.org", "d@example.org"]),
        "only@xn--bcher-kva.example": ("exact", ["you@example.org"]),
    }
    first = d.cli("alias", "export").stdout
    assert "@example.com you@example.org, backup@example.net\n" in first  # a catch-all as virtual(5) has it

    (tmp_path / "two").mkdir()
    fresh = Daemon(tmp_path / "two")
    fresh.cli("init")
    fresh.cli("account", "add", ACCOUNT)
    fresh.cli("alias", "import", "-", "--account", ACCOUNT, input=first)
    again = fresh.dir / "exported"
    fresh.cli("alias", "export", "--output", str(again))
    assert again.read_text(encoding="utf-8") == first
    assert fresh.cli("alias", "export", "--domain", "example.net").stdout == (
        "@example.net you@example.org\nteam@example.net a@example.org, b@example.org, c@example.org, "
        "d@example.org\n")
    # importing the same file again changes nothing
    assert fresh.cli("alias", "import", str(again)).stdout == (
        "imported 6 aliases: 0 added, 0 updated, 6 unchanged; 0 domains created\n")


def test_an_existing_alias_gets_the_files_destinations_and_keeps_its_state(d: Daemon) -> None:
    d.cli("domain", "add", "example.com", "--account", ACCOUNT)
    d.cli("alias", "add", "a@example.com", "old@example.org")
    d.cli("alias", "add", "b@example.com", "same@example.org")
    d.cli("alias", "disable", "a@example.com", "--mode", "quiet")
    with opened(d):
        version = store.directory_version()
    text = "a@example.com new@example.org\nb@example.com same@example.org\nc@example.com new@example.org\n"
    out = d.cli("alias", "import", "-", input=text).stdout
    assert out == "imported 3 aliases: 1 added, 1 updated, 1 unchanged; 0 domains created\n"
    got = {a["address"]: (a["destinations"], a["state"]) for a in listed(d)}
    assert got["a@example.com"] == (["new@example.org"], "quiet")
    assert got["b@example.com"] == (["same@example.org"], "enabled")
    with opened(d):
        assert store.directory_version() > version  # a running daemon sees the change


def test_problems_are_listed_by_line_and_nothing_is_imported(d: Daemon) -> None:
    d.cli("domain", "add", "example.com", "--account", ACCOUNT)
    d.cli("alias", "add", "kept@example.com", "you@example.org")
    text = ("ok@example.com you@example.org\n"
            "# a comment\n"
            "bad@@example.com you@example.org\n"
            "dest@example.com not-an-address\n"
            "x@unknown.example you@example.org\n"
            "\n"
            "OK@example.com other@example.org\n"
            "nodest@example.com\n"
            "kept@example.com changed@example.org\n")
    path = write(d, text)
    result = d.cli("alias", "import", path, expect=1)
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        f"{path}:3: invalid address 'bad@@example.com': more than one @",
        f"{path}:4: destination 'not-an-address' is not an address (local delivery is not forwarding)",
        f"{path}:5: no domain unknown.example (give --account EMAIL to create it)",
        f"{path}:7: 'ok@example.com' is already on line 1",
        f"{path}:8: 'nodest@example.com' has no destination",
        "Error: nothing imported: 5 problems in the file",
    ]
    assert result.stdout == ""
    assert [(a["address"], a["destinations"]) for a in listed(d)] == [
        ("kept@example.com", ["you@example.org"])]
    # with --account the missing domain is no problem, the others still are: still nothing written
    d.cli("alias", "import", path, "--account", ACCOUNT, expect=1)
    assert len(listed(d)) == 1
    assert [x["name"] for x in json.loads(d.cli("domain", "list", "--json").stdout)] == ["example.com"]


def test_the_alias_add_checks_apply_to_every_line(d: Daemon) -> None:
    d.cli("domain", "add", "example.com", "--account", ACCOUNT)
    result = d.cli("alias", "import", "-", expect=1, input=(
        "self@example.com self@example.com\n"
        "plus+tag@example.com you@example.org\n"
        "/(a|a)+$/@example.com you@example.org\n"
        "/^(x)$/@example.com $2@example.org\n"
        "exact@example.com $1@example.org\n"))
    lines = result.stderr.splitlines()
    assert [ln.split(":", 2)[:2] for ln in lines[:-1]] == [["-", str(n)] for n in range(1, 6)]
    assert "cannot forward to itself" in lines[0] and "plus-addressing" in lines[1]
    assert "backtracks" in lines[2] and "uses $2" in lines[3] and "only for /regex/" in lines[4]
    assert listed(d) == []


def test_dry_run_counts_and_writes_nothing(d: Daemon) -> None:
    with opened(d):
        version = store.directory_version()
    out = d.cli("alias", "import", write(d, EVERY_KIND), "--account", ACCOUNT, "--dry-run").stdout
    assert out == ("dry run, nothing written: would import 6 aliases: 6 added, 0 updated, 0 unchanged; "
                   "3 domains to create\n")
    assert listed(d) == []
    assert json.loads(d.cli("domain", "list", "--json").stdout) == []
    with opened(d):
        assert store.directory_version() == version


def test_hostile_text_in_the_file_is_shown_escaped(d: Daemon) -> None:
    d.cli("domain", "add", "example.com", "--account", ACCOUNT)
    result = d.cli("alias", "import", "-", expect=1, input=(
        "\x1b[2J\x1b]8;;http://evil/\x07x@example.com you@example.org\n"
        "a\u202eb@example.com you@example.org\n"
        "ok@example.com \x1b[31mred@example.org\n"
        "\x1b[31m\n"))
    assert "\x1b" not in result.output and "\u202e" not in result.output and "\x07" not in result.output
    assert "\\x1b[2J" in result.output and "\\u202e" in result.output
    assert len(result.stderr.splitlines()) == 5  # four lines, one summary
    assert listed(d) == []


def test_undecodable_bytes_and_overlong_lines_are_line_errors(d: Daemon) -> None:
    d.cli("domain", "add", "example.com", "--account", ACCOUNT)
    path = d.dir / "virtual"
    path.write_bytes(b"a\xff@example.com you@example.org\nb@example.com " + b"x" * 9000 + b"@example.org\n")
    result = d.cli("alias", "import", str(path), expect=1)
    assert result.stderr.splitlines()[:2] == [
        f"{path}:1: invalid alias 'a\\udcff@example.com': not valid UTF-8",
        f"{path}:2: line longer than 8192 characters",
    ]


def test_a_write_failing_midway_undoes_what_the_import_wrote(d: Daemon) -> None:
    """A real failure of SQLite in the second batch (a trigger aborts one insert): the first batch,
    committed already, and the domain created for it are removed again."""
    d.cli("domain", "add", "example.com", "--account", ACCOUNT)
    d.cli("alias", "add", "existing@example.com", "old@example.org")
    db = sqlite3.connect(d.data_dir / "fwdmail.db")
    db.execute("CREATE TRIGGER boom BEFORE INSERT ON alias WHEN NEW.local = 'user1500' "
               "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    db.commit()
    db.close()
    text = "existing@example.com new@example.org\n" + "".join(
        f"user{i}@{'example.com' if i % 2 else 'new.example'} you@example.org\n" for i in range(2000))
    result = d.cli("alias", "import", "-", "--account", ACCOUNT, input=text, expect=1)
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == [  # the first batch: 999 added, 1 updated
        "the import was undone: 1000 aliases and 1 domains it wrote were removed or restored",
        "Error: disk on fire"]
    assert [(a["address"], a["destinations"]) for a in listed(d)] == [
        ("existing@example.com", ["old@example.org"])]
    assert [x["name"] for x in json.loads(d.cli("domain", "list", "--json").stdout)] == ["example.com"]


def _many(d: Daemon, count: int, domains: int = 20) -> None:
    """`count` aliases over `domains` domains, straight through the store's bulk verbs."""
    with opened(d):
        for i in range(domains):
            store.add_domain(f"d{i:02}.example", ACCOUNT, "s", "k", "t")
        ids = store.domain_ids(f"d{i:02}.example" for i in range(domains))
        rows = [store.ImportRow(ids[f"d{i % domains:02}.example"], "exact", f"user{i:05}",
                                (f"dest{i}@example.org", "backup@example.net")) for i in range(count)]
        writes = store.ImportWrites()
        for start in range(0, count, store.IMPORT_BATCH):
            store.import_batch(rows[start:start + store.IMPORT_BATCH], writes)


def test_list_filters_by_domain_and_search_text(d: Daemon) -> None:
    _many(d, 200, domains=4)
    assert len(listed(d)) == 200
    assert {a["address"].split("@")[1] for a in listed(d, "--domain", "D01.example")} == {"d01.example"}
    found = listed(d, "--search", "USER0012")
    assert [a["address"] for a in found] == sorted(
        (f"user{i:05}@d{i % 4:02}.example" for i in range(120, 130)), key=lambda a: a.split("@")[::-1])
    assert [a["address"] for a in listed(d, "--search", "dest7@")] == ["user00007@d03.example"]
    assert listed(d, "--domain", "d02.example", "--search", "user0001") == [
        a for a in listed(d, "--search", "user0001") if a["address"].endswith("@d02.example")]
    table = d.cli("alias", "list", "--search", "user0012").stdout
    assert table.count("user0012") == 10 and table.count("destinations") == 1


def test_streamed_json_is_what_the_whole_list_gave(d: Daemon) -> None:
    d.cli("alias", "import", write(d, EVERY_KIND), "--account", ACCOUNT)
    whole = [alias_json(a) for a in aliases.list_aliases()]
    assert d.cli("alias", "list", "--json").stdout == render.json_text(whole) + "\n"
    d.cli("alias", "remove", "hello@example.com")
    assert d.cli("alias", "list", "--domain", "example.org", "--json", expect=1)
    assert d.cli("alias", "list", "--search", "nothing-like-it", "--json").stdout == "[]\n"


@pytest.mark.parametrize("value", [
    {"a": "x\x1b[31my", "b": "\u202eevil", "c": "\x7f", "d": [], "e": {}, "f": None, "g": 1.5, "h": True},
    {"nested": {"list": ["é", 3, [None]], "empty": []}, "n": -3},
    {1: "non-string key"}, {"set": {1}}, {"t": ("tuple", 2)},
])
def test_a_streamed_json_item_reads_as_json_text_has_it(value: Any) -> None:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        render.stream_json([value, value])
    assert buffer.getvalue() == render.json_text([value, value]) + "\n"


class _Sink(io.TextIOBase):
    """A stdout that keeps only the size and the end of what it is given."""

    def __init__(self) -> None:
        self.size = 0
        self.tail = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.size += len(text)
        self.tail = (self.tail + text)[-400:]
        return len(text)


def test_a_large_listing_streams_in_flat_memory(d: Daemon) -> None:
    _many(d, 20_000)
    d.cli("alias", "list", "--domain", "d00.example")  # opens the store in this process
    sink = _Sink()
    tracemalloc.start()
    try:
        with redirect_stdout(sink):
            count = render.stream_json(alias_json(a) for a in aliases.iter_aliases())
        _, streamed = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = store.list_aliases()
        _, loaded = tracemalloc.get_traced_memory()
        del whole
    finally:
        tracemalloc.stop()
    assert count == 20_000 and sink.size > 5_000_000
    assert sink.tail.endswith('"address": "user19999@d19.example"'[:0] + "}\n]\n")
    assert streamed < loaded / 10, (streamed, loaded)


def test_imported_aliases_are_found_by_the_mx_lookup(d: Daemon) -> None:
    """An import writes its rows with plain SQL: each exact alias must carry the key the MX looks it up
    by, whatever the case of its local part, as `alias add` gives it."""
    d.cli("domain", "add", "found.test", "--account", ACCOUNT)
    d.cli("alias", "import", write(d, "Mixed.Case@found.test dest@elsewhere.test\n"
                                      "@found.test all@elsewhere.test\n"))
    with opened(d):
        found = store.lookup_aliases("found.test", ["mixed.case"])
        assert found is not None
        record = found.exact["mixed.case"]
        assert record is not None and record.destinations == ("dest@elsewhere.test",)
        assert [r.kind for r in found.rules or ()] == ["catch-all"]


def _import_peak(d: Daemon, count: int, start: int) -> int:
    """Peak traced memory (bytes) of importing `count` new aliases in this process."""
    path = write(d, "".join(f"n{i:06}@d{i % 10}.example dest{i}@example.org\n"
                            for i in range(start, start + count)))
    tracemalloc.start()
    try:
        d.cli("alias", "import", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def test_an_import_checks_and_writes_in_flat_memory(d: Daemon) -> None:
    """The checked file is not held in memory: ten times the lines cost far less than ten times the
    memory (a hash per alias stays, ~70 bytes; holding each checked line took ~1 KB)."""
    d.cli("alias", "import", write(d, "".join(f"d{i}.example x\n" for i in range(10))), "--account", ACCOUNT)
    small = _import_peak(d, 2_000, 0)
    large = _import_peak(d, 20_000, 2_000)
    assert len(listed(d, "--domain", "d3.example")) == 2_200
    assert (large - small) / 18_000 < 250, (small, large)
