"""The admin CLI, command by command: what it prints, what it changes, and every refusal as one line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fwdmail import store
from fwdmail.cli import cli
from fwdmail.runtime import keys
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.rows import files_containing


@pytest.fixture
def d(tmp_path: Path) -> Daemon:
    daemon = Daemon(tmp_path)
    daemon.cli("init")
    return daemon


@pytest.fixture
def dom(d: Daemon) -> Daemon:
    """`d` with account you@example.org owning example.com."""
    d.cli("account", "add", "you@example.org")
    d.cli("domain", "add", "example.com", "--account", "you@example.org")
    return d


def as_json(result: Result) -> Any:
    return json.loads(result.output)


def refused(d: Daemon, *args: str, code: int = 1, input: str | None = None) -> str:
    """Run a command that must fail: exit `code`, one line on output, no traceback; return that line."""
    result = d.cli(*args, expect=code, input=input)
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    return lines[-1]


# ------------------------------------------------------------------ init


def test_init_creates_a_private_data_dir_in_the_working_directory(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FWDMAIL_CONFIG", raising=False)
    old = os.umask(0o022)  # a usual umask: the modes below must come from fwdmail, not from it
    try:
        result = CliRunner().invoke(cli, ["init"], catch_exceptions=False)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    data = tmp_path / "fwdmail-data"
    assert f"data dir ready: {data}" in result.output
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(data) == 0o700 and mode(data / "tls") == 0o700
    for name in ("fwdmail.db", "srs.secret", "tls/cert.pem", "tls/key.pem"):
        assert mode(data / name) == 0o600, name
    for f in data.rglob("*"):
        if f.is_file():
            assert mode(f) == 0o600, f
    secret = (data / "srs.secret").read_bytes()
    for name in ("fwdmail.db", "srs.secret", "tls/key.pem"):
        (data / name).chmod(0o644)  # loosened by hand, or by a careless restore from backup
    (data / "tls").chmod(0o755)
    again = CliRunner().invoke(cli, ["init"], catch_exceptions=False)
    assert again.exit_code == 0
    assert (data / "srs.secret").read_bytes() == secret  # nothing regenerated
    for name in ("fwdmail.db", "srs.secret", "tls/key.pem"):
        assert mode(data / name) == 0o600, f"{name} was not made private again"
    assert mode(data / "tls") == 0o700


def test_init_problems_are_config_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    d = Daemon(tmp_path, {"data_dir": str(blocker / "data")})
    assert refused(d, "init", code=2).startswith("Error: data_dir: cannot set up")
    d = Daemon(tmp_path, {"data_dir": str(blocker)})
    assert refused(d, "account", "list", code=2) == (
        f"Error: data_dir: {blocker} exists and is not a directory")

    tls = {"cert": str(tmp_path / "no-cert.pem"), "key": str(tmp_path / "no-key.pem")}
    d = Daemon(tmp_path, {"tls": tls})
    assert refused(d, "init", code=2).startswith("Error: tls.cert: cannot read")
    (tmp_path / "no-cert.pem").write_text("not a cert")
    (tmp_path / "no-key.pem").write_text("not a key")
    assert "not a PEM certificate chain" in refused(d, "account", "list", code=2)


@pytest.mark.parametrize("value,message", [
    ("x", "its schema version 'x' is not a number (not written by fwdmail?)"),
    ("99", f"its schema version 99 is newer than this fwdmail supports ({store.SCHEMA_VERSION}); "
           "upgrade fwdmail"),
])
def test_a_database_of_another_schema_is_named(d: Daemon, value: str, message: str) -> None:
    import sqlite3

    db = d.data_dir / "fwdmail.db"
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (value,))
    con.close()
    for args in (("account", "list", "--json"), ("account", "add", "a@example.org")):
        assert refused(d, *args) == f"Error: cannot open database {db}: {message}"


def test_version_and_help() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "fwdmail" in result.output
    for group in ([], ["account"], ["domain"], ["alias"]):
        result = CliRunner().invoke(cli, [*group, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


# ------------------------------------------------------------------ accounts


def test_account_add_list_delete(d: Daemon) -> None:
    assert d.cli("account", "add", "You@Example.ORG").output == "account you@example.org added\n"
    added = as_json(d.cli("account", "add", "other@bücher.example", "--json"))
    assert added["email"] == "other@xn--bcher-kva.example"
    listed = as_json(d.cli("account", "list", "--json"))
    assert [a["email"] for a in listed] == ["other@xn--bcher-kva.example", "you@example.org"]
    assert listed[0]["domains"] == []
    table = d.cli("account", "list").output
    assert "you@example.org" in table and "other@xn--bcher-kva.example" in table

    out = d.cli("account", "delete", "YOU@example.org", "--yes").output
    assert out.startswith("account you@example.org deleted: 0 domains, 0 aliases")
    remaining = as_json(d.cli("account", "list", "--json"))
    assert [a["email"] for a in remaining] == ["other@xn--bcher-kva.example"]


def test_account_delete_asks_first(dom: Daemon) -> None:
    result = dom.cli("account", "delete", "you@example.org", input="n\n", expect=1)
    assert "Delete account you@example.org and everything it owns?" in result.output
    assert "aborted, nothing was changed" in result.output
    assert len(as_json(dom.cli("domain", "list", "--json"))) == 1
    result = dom.cli("account", "delete", "you@example.org", "--json", input="y\n")
    assert '"deleted": "you@example.org"' in result.output and '"domains": 1' in result.output
    assert as_json(dom.cli("domain", "list", "--json")) == []


@pytest.mark.parametrize("args,message", [
    (("account", "add", "not-an-address"), "invalid address 'not-an-address': no domain"),
    (("account", "add", "a@localhost"), "invalid domain 'localhost'"),
    (("account", "add", "a b@example.com"), "invalid address"),
    (("account", "delete", "nobody@example.org", "--yes"), "no account nobody@example.org"),
    (("account", "delete", "bad", "--yes"), "invalid address"),
])
def test_account_refusals(d: Daemon, args: tuple[str, ...], message: str) -> None:
    assert message in refused(d, *args)


def test_account_duplicate(d: Daemon) -> None:
    d.cli("account", "add", "you@example.org")
    assert refused(d, "account", "add", "YOU@example.org") == "Error: account you@example.org exists already"


def test_account_delete_removes_aliases_keys_and_passwords(dom: Daemon) -> None:
    dom.cli("alias", "add", "hello@example.com", "you@example.org")
    password = as_json(dom.cli("alias", "password", "hello@example.com", "--json"))["password"]
    dkim_key = store_dkim_key(dom, "example.com")
    dom.cli("account", "delete", "you@example.org", "--yes")
    assert as_json(dom.cli("alias", "list", "--json")) == []
    assert files_containing(dom.data_dir, dkim_key.splitlines()[1]) == []
    assert files_containing(dom.data_dir, password) == []
    assert files_containing(dom.data_dir, "example.com") == []


def store_dkim_key(d: Daemon, name: str) -> str:
    store.open_store(d.data_dir / "fwdmail.db")
    try:
        return store.get_domain(name).dkim_private_key
    finally:
        store.close_store()


# ------------------------------------------------------------------ domains


def test_domain_add_prints_the_records_to_publish(d: Daemon) -> None:
    d.cli("account", "add", "you@example.org")
    out = d.cli("domain", "add", "Example.COM", "--account", "You@example.org").output
    assert out.startswith("domain example.com added for you@example.org; publish these records:")
    for needle in ("MX", "10 mx.fwdmail.test.", "v=spf1 a:mx.fwdmail.test -all", "._domainkey.example.com",
                   "_dmarc.example.com", "fwdmail-verification="):
        assert needle in out, needle
    listed = as_json(d.cli("domain", "list", "--json"))
    assert [(x["name"], x["account"], x["retention_days"], x["verified_at"]) for x in listed] == [
        ("example.com", "you@example.org", 0, None)]
    assert "example.com" in d.cli("domain", "list").output
    assert as_json(d.cli("account", "list", "--json"))[0]["domains"] == ["example.com"]


def test_domain_add_json_and_idn(d: Daemon) -> None:
    d.cli("account", "add", "you@example.org")
    out = as_json(d.cli("domain", "add", "bücher.example", "--account", "you@example.org", "--json"))
    assert out["name"] == "xn--bcher-kva.example"
    assert {r["type"] for r in out["dns"]} == {"MX", "TXT"}
    assert refused(d, "domain", "add", "BÜCHER.example", "--account", "you@example.org") == (
        "Error: domain xn--bcher-kva.example exists already")
    d.cli("domain", "remove", "xn--bcher-kva.example", "--yes")
    assert as_json(d.cli("domain", "list", "--json")) == []


def test_domain_dns_json(dom: Daemon) -> None:
    records = as_json(dom.cli("domain", "dns", "example.com", "--json"))
    assert all(set(r) == {"type", "name", "value"} for r in records)
    key = store_dkim_key(dom, "example.com")
    selector = as_json(dom.cli("domain", "list", "--json"))[0]["dkim_selector"]
    by_purpose = {(r["type"], r["name"], r["value"].split("=")[0]): r["value"] for r in records}
    assert by_purpose[("MX", "example.com", "10 mx.fwdmail.test.")] == "10 mx.fwdmail.test."
    assert by_purpose[("TXT", "example.com", "v")].startswith("v=spf1 ")
    assert by_purpose[("TXT", f"{selector}._domainkey.example.com", "v")] == keys.dkim_public_record(key)
    assert by_purpose[("TXT", "_dmarc.example.com", "v")].startswith("v=DMARC1;")
    assert by_purpose[("TXT", "example.com", "fwdmail-verification")].startswith("fwdmail-verification=")
    assert len(records) == 5
    table = dom.cli("domain", "dns", "example.com").output
    assert "DKIM" in table and "verification" in table


def test_domain_remove_asks_first(dom: Daemon) -> None:
    dom.cli("alias", "add", "a@example.com", "you@example.org")
    result = dom.cli("domain", "remove", "example.com", input="n\n", expect=1)
    assert "aborted" in result.output
    assert len(as_json(dom.cli("alias", "list", "--json"))) == 1
    result = dom.cli("domain", "remove", "EXAMPLE.com.", "--json", input="y\n")
    assert "Remove domain example.com" in result.stderr
    out = json.loads(result.stdout)  # the question went to stderr: stdout is JSON only
    assert out == {"removed": "example.com", "aliases": 1, "emails": 0, "smtp_error_logs": 0}
    assert as_json(dom.cli("alias", "list", "--json")) == []


def test_domain_set(dom: Daemon) -> None:
    out = as_json(dom.cli("domain", "set", "example.com", "--retention-days", "30", "--json"))
    assert out["retention_days"] == 30
    assert "retention_days=0" in dom.cli("domain", "set", "example.com", "--retention-days", "0").output
    out = as_json(dom.cli("domain", "set", "example.com", "--auth-policy", "report-only", "--friendly-from",
                          "--require-tls-inbound", "--json"))
    assert (out["auth_policy"], out["friendly_from"], out["require_tls_inbound"]) == (
        "report-only", True, True)
    assert as_json(dom.cli("domain", "list", "--json"))[0]["retention_days"] == 0


@pytest.mark.parametrize("args,message", [
    (("domain", "add", "example.net", "--account", "nobody@example.org"), "no account nobody@example.org"),
    (("domain", "add", "not_a_domain", "--account", "you@example.org"), "invalid domain"),
    (("domain", "add", "com", "--account", "you@example.org"), "invalid domain 'com'"),
    (("domain", "add", "example.com", "--account", "you@example.org"), "domain example.com exists already"),
    (("domain", "remove", "example.net", "--yes"), "no domain example.net"),
    (("domain", "dns", "example.net"), "no domain example.net"),
    (("domain", "verify", "example.net"), "no domain example.net"),
    (("domain", "set", "example.net", "--retention-days", "3"), "no domain example.net"),
    (("domain", "set", "example.com", "--retention-days", "31"), "between 0 and 30, got 31"),
    (("domain", "set", "example.com", "--retention-days", "-1"), "between 0 and 30, got -1"),
    (("domain", "set", "example.com"), "nothing to set"),
])
def test_domain_refusals(dom: Daemon, args: tuple[str, ...], message: str) -> None:
    assert message in refused(dom, *args)


@pytest.mark.parametrize("args", [
    ("domain", "add", "example.net"),
    ("domain", "set", "example.com", "--retention-days", "ten"),
    ("domain", "set", "example.com", "--auth-policy", "maybe"),
    ("domain", "bogus"),
])
def test_domain_usage_errors_exit_2(dom: Daemon, args: tuple[str, ...]) -> None:
    result = dom.cli(*args, expect=2)
    assert "Traceback" not in result.output and "Error" in result.output


# ------------------------------------------------------------------ domain verify, against real DNS


@pytest.fixture
def dns_d(tmp_path: Path, dns_server: LoopbackDNS) -> Daemon:
    d = Daemon(tmp_path, {"dns": {"nameservers": [dns_server.address], "timeout": 1}})
    d.cli("init")
    d.cli("account", "add", "you@example.org")
    return d


def publish(dns_server: LoopbackDNS, records: list[dict[str, str]]) -> None:
    for r in records:
        dns_server.add(r["name"], r["type"], r["value"])


def test_domain_verify_passes_when_the_printed_records_are_published(dns_d: Daemon,
                                                                      dns_server: LoopbackDNS) -> None:
    name = "verify-ok.test"
    records = as_json(dns_d.cli("domain", "add", name, "--account", "you@example.org", "--json"))["dns"]
    assert records == as_json(dns_d.cli("domain", "dns", name, "--json"))
    before = dns_d.cli("domain", "verify", name, expect=1).output.strip().splitlines()[-1]
    assert before == "missing or wrong: receive mail, SPF, DKIM, DMARC, verification"
    publish(dns_server, records)
    dns_server.add(name, "TXT", "some-other-site-verification=abc")  # unrelated TXT records are fine
    try:
        result = dns_d.cli("domain", "verify", name)
        assert "MISSING" not in result.output and "ok" in result.output
        assert as_json(dns_d.cli("domain", "list", "--json"))[0]["verified_at"] is not None
        out = as_json(dns_d.cli("domain", "verify", name, "--json"))
        assert out["domain"] == name and all(r["ok"] for r in out["records"])
    finally:
        dns_server.remove(name)
        dns_server.remove(f"_dmarc.{name}")
        dns_server.remove(next(r["name"] for r in records if "_domainkey" in r["name"]))


@pytest.mark.parametrize("drop,named", [
    ("_domainkey", "DKIM"),
    ("_dmarc", "DMARC"),
    ("MX", "receive mail"),
    ("fwdmail-verification", "verification"),
])
def test_domain_verify_names_what_is_missing(dns_d: Daemon, dns_server: LoopbackDNS, drop: str,
                                             named: str) -> None:
    name = f"verify-{named.replace(' ', '-').lower()}.test"
    records = as_json(dns_d.cli("domain", "add", name, "--account", "you@example.org", "--json"))["dns"]
    def dropped(r: dict[str, str]) -> bool:  # by type for MX: a random DKIM key may contain "MX"
        return r["type"] == "MX" if drop == "MX" else drop in r["name"] or r["value"].startswith(drop)

    kept = [r for r in records if not dropped(r)]
    assert len(kept) == 4
    publish(dns_server, kept)
    try:
        result = dns_d.cli("domain", "verify", name, expect=1)
        assert result.output.strip().splitlines()[-1] == f"missing or wrong: {named}"
        assert "MISSING" in result.output
        out = as_json(dns_d.cli("domain", "verify", name, "--json", expect=1))
        assert [r["type"] for r in out["records"] if not r["ok"]] == ["MX" if drop == "MX" else "TXT"]
    finally:
        for r in records:
            dns_server.remove(r["name"])


def test_domain_verify_wrong_values_and_spf_variants(dns_d: Daemon, dns_server: LoopbackDNS) -> None:
    name = "verify-wrong.test"
    records = as_json(dns_d.cli("domain", "add", name, "--account", "you@example.org", "--json"))["dns"]
    dkim_name = next(r["name"] for r in records if "_domainkey" in r["name"])
    other_key = keys.dkim_public_record(keys.generate_dkim_key(1024))
    dns_server.add(name, "MX", "10 mx.elsewhere.test.")
    dns_server.add(name, "TXT", "v=spf1 include:_spf.elsewhere.test -all")
    dns_server.add(name, "TXT", "fwdmail-verification=not-the-token")
    dns_server.add(dkim_name, "TXT", other_key)
    dns_server.add(f"_dmarc.{name}", "TXT", "v=DMARC1; p=none")
    try:
        result = dns_d.cli("domain", "verify", name, expect=1)
        assert "missing or wrong: receive mail, SPF, DKIM, verification" in result.output
        assert as_json(dns_d.cli("domain", "list", "--json"))[0]["verified_at"] is None
        dns_server.remove(name)
        dns_server.add(name, "MX", "5 MX.FWDMAIL.TEST.")
        dns_server.add(name, "TXT", "v=spf1 mx ~all")
        dns_server.add(name, "TXT", next(r["value"] for r in records if "verification" in r["value"]))
        dns_server.remove(dkim_name)
        dns_server.add(dkim_name, "TXT", next(r["value"] for r in records if r["name"] == dkim_name))
        dns_d.cli("domain", "verify", name)
        dns_server.add(name, "TXT", "v=spf1 -all")  # two SPF records are a permanent error
        assert "missing or wrong: SPF" in dns_d.cli("domain", "verify", name, expect=1).output
    finally:
        for n in (name, dkim_name, f"_dmarc.{name}"):
            dns_server.remove(n)


def test_domain_verify_dns_failure_is_one_line(dns_d: Daemon, dns_server: LoopbackDNS) -> None:
    name = "verify-broken.test"
    dns_d.cli("domain", "add", name, "--account", "you@example.org")
    dns_server.set_failure(name, "SERVFAIL")
    try:
        line = refused(dns_d, "domain", "verify", name)
        assert line.startswith(f"Error: DNS lookup of {name} MX failed")
    finally:
        dns_server.clear_failure(name)


# ------------------------------------------------------------------ aliases


def test_alias_add_list_remove(dom: Daemon) -> None:
    assert dom.cli("alias", "add", "Hello@Example.com", "you@example.org").output == (
        "alias hello@example.com -> you@example.org\n")
    dom.cli("alias", "add", "*@example.com", "you@example.org", "backup@example.net")
    out = as_json(dom.cli("alias", "add", "/^(.+)-sales$/@example.com", "sales+$1@example.org", "--json"))
    assert out["address"] == "/^(.+)-sales$/@example.com" and out["kind"] == "regex"
    assert out["destinations"] == ["sales+$1@example.org"]
    listed = as_json(dom.cli("alias", "list", "--json"))
    assert [(a["address"], a["kind"], a["state"], a["has_password"]) for a in listed] == [
        ("*@example.com", "catch-all", "enabled", False),
        ("hello@example.com", "exact", "enabled", False),
        ("/^(.+)-sales$/@example.com", "regex", "enabled", False),
    ]
    assert listed[0]["destinations"] == ["you@example.org", "backup@example.net"]
    table = dom.cli("alias", "list").output
    assert "hello@example.com" in table and "catch-all" in table
    assert dom.cli("alias", "remove", "HELLO@example.com").output == "alias hello@example.com removed\n"
    assert dom.cli("alias", "remove", "/^(.+)-sales$/@EXAMPLE.com").output == (
        "alias /^(.+)-sales$/@example.com removed\n")
    assert [a["address"] for a in as_json(dom.cli("alias", "list", "--json"))] == ["*@example.com"]


def test_alias_list_by_domain(dom: Daemon) -> None:
    dom.cli("domain", "add", "bücher.example", "--account", "you@example.org")
    dom.cli("alias", "add", "a@example.com", "you@example.org")
    dom.cli("alias", "add", "b@bücher.example", "you@example.org")
    listed = as_json(dom.cli("alias", "list", "--domain", "BÜCHER.example", "--json"))
    assert [a["address"] for a in listed] == ["b@xn--bcher-kva.example"]
    assert len(as_json(dom.cli("alias", "list", "--json"))) == 2
    assert refused(dom, "alias", "list", "--domain", "example.net") == "Error: no domain example.net"


@pytest.mark.parametrize("command", [("alias", "list"), ("logs",), ("emails", "list")])
def test_an_empty_domain_filter_is_refused_not_ignored(dom: Daemon, command: tuple[str, ...]) -> None:
    """`--domain "$D"` with D unset must not silently list every domain's rows."""
    dom.cli("alias", "add", "a@example.com", "you@example.org")
    assert refused(dom, *command, "--domain", "", "--json") == "Error: empty domain"


def test_alias_disable_and_enable(dom: Daemon) -> None:
    dom.cli("alias", "add", "a@example.com", "you@example.org")

    def state() -> str:
        return as_json(dom.cli("alias", "list", "--json"))[0]["state"]

    assert dom.cli("alias", "disable", "a@example.com").output == "alias a@example.com disabled (reject)\n"
    assert state() == "reject"
    for mode in ("quiet", "tempfail", "reject"):
        dom.cli("alias", "disable", "a@example.com", "--mode", mode)
        assert state() == mode
    assert dom.cli("alias", "enable", "A@example.com").output == "alias a@example.com enabled\n"
    assert state() == "enabled"
    dom.cli("alias", "disable", "a@example.com", "--mode", "silent", expect=2)
    assert state() == "enabled"


def test_alias_password_is_shown_once_and_only_hashed(dom: Daemon) -> None:
    dom.cli("alias", "add", "hello@example.com", "you@example.org")
    out = dom.cli("alias", "password", "hello@example.com").output
    assert "hello@example.com" in out and "shown once" in out
    first = out.split("password: ")[1].strip()
    data = as_json(dom.cli("alias", "password", "Hello@Example.com", "--json"))
    assert set(data) == {"address", "password"} and data["address"] == "hello@example.com"
    second = data["password"]
    assert second != first and len(second) >= 20
    assert as_json(dom.cli("alias", "list", "--json"))[0]["has_password"] is True
    store.open_store(dom.data_dir / "fwdmail.db")
    try:
        stored = store.alias_password_hash("example.com", "exact", "hello")
    finally:
        store.close_store()
    assert keys.verify_password(second, stored) and not keys.verify_password(first, stored)
    assert stored is not None and stored.startswith("scrypt$")
    assert files_containing(dom.data_dir, second) == []
    assert files_containing(dom.data_dir, first) == []
    assert files_containing(dom.data_dir, stored.split("$")[-1]) != []  # the probe does see the hash


@pytest.mark.parametrize("args,message", [
    (("alias", "add", "a@example.net", "you@example.org"), "no domain example.net"),
    (("alias", "add", "a@", "you@example.org"), "invalid"),
    (("alias", "add", "a+b@example.com", "you@example.org"), "plus-addressing"),
    (("alias", "add", "/(/@example.com", "you@example.org"), "invalid regex alias"),
    (("alias", "add", "a@example.com", "not-an-address"), "invalid address 'not-an-address'"),
    (("alias", "add", "a@example.com", *(f"d{i}@example.org" for i in range(11))), "1 to 10 destinations"),
    (("alias", "add", "a@example.com", "x+$1@example.org"), "only for /regex/ aliases"),
    (("alias", "add", "/^a$/@example.com", "x+$1@example.org"), "uses $1 but the pattern has 0 group(s)"),
    (("alias", "add", "a@example.com", "A@EXAMPLE.com"), "cannot forward to itself"),
    (("alias", "add", "dup@example.com", "you@example.org"), "alias dup@example.com exists already"),
    (("alias", "remove", "nobody@example.com"), "no alias nobody@example.com"),
    (("alias", "remove", "nobody@example.net"), "no alias nobody@example.net"),
    (("alias", "disable", "nobody@example.com"), "no alias nobody@example.com"),
    (("alias", "enable", "nobody@example.com"), "no alias nobody@example.com"),
    (("alias", "password", "nobody@example.com"), "no alias nobody@example.com"),
    (("alias", "password", "/^dup$/@example.com"), "regex aliases cannot log in"),
])
def test_alias_refusals(dom: Daemon, args: tuple[str, ...], message: str) -> None:
    dom.cli("alias", "add", "dup@example.com", "you@example.org")
    before = dom.cli("alias", "list", "--json").output
    assert message in refused(dom, *args)
    assert dom.cli("alias", "list", "--json").output == before


def test_alias_add_needs_a_destination(dom: Daemon) -> None:
    result = dom.cli("alias", "add", "a@example.com", expect=2)
    assert "Missing argument" in result.output


# ------------------------------------------------------------------ the README tour


README = Path(__file__).resolve().parents[3] / "README.md"


def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    blocks: list[tuple[str, list[str]]] = []
    lang, lines, inside = "", [], False
    for line in text.splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append((lang, lines))
            lang, lines, inside = line[3:].strip(), [], not inside
        elif inside:
            lines.append(line)
    return blocks


def test_readme_tour_commands_work(d: Daemon) -> None:
    import shlex

    ran = []
    for lang, lines in code_blocks(README.read_text()):
        if lang != "sh":
            continue
        for line in "\n".join(lines).replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words or words[0] != "fwdmail" or "serve" in words:
                continue
            result = d.cli(*words[1:])
            ran.append(words[1:3])
            if words[1:3] == ["domain", "dns"]:
                assert {r["type"] for r in as_json(result)} == {"MX", "TXT"}
    assert ["account", "add"] in ran and ["alias", "password"] in ran and len(ran) >= 8
    addresses = {a["address"] for a in as_json(d.cli("alias", "list", "--json"))}
    assert addresses == {"hello@example.com", "*@example.com", "/^(.+)-sales$/@example.com"}


def test_readme_trial_config_is_valid(tmp_path: Path) -> None:
    from fwdmail.config import load

    tomls = [lines for lang, lines in code_blocks(README.read_text()) if lang == "toml"]
    assert tomls
    for lines in tomls:
        path = tmp_path / "trial.toml"
        path.write_text("\n".join(lines) + "\n")
        load(path)
