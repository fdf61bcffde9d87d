"""Sender allow and deny lists on the real MX: deny by address, @domain, IP and CIDR (550 5.7.1 at
RCPT, for that domain only), changes seen without a restart, and an allowed sender passing a DNSBL
listing and the sender-authentication refusal while still stamped in Authentication-Results."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.support.auth import unique_domain
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.mx import cli, cli_batch, message, send, start_daemon
from tests.support.smtp_sink import SmtpSink

LISTED_IP = "127.0.0.5"  # in the DNSBL zone below; other source addresses are not


@pytest.fixture(scope="module")
def zone() -> str:
    return unique_domain("bl")


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS, downstream: SmtpSink,
       zone: str) -> Iterator[Daemon]:
    dns_server.add(f"5.0.0.127.{zone}", "A", "127.0.0.2")
    d = start_daemon(tmp_path_factory.mktemp("sender-lists"), {
        "dns": {"nameservers": [dns_server.address]},
        "delivery": {"routes": {"dest.test": downstream.address}},
        "abuse": {"max_messages_per_ip_per_minute": 10_000, "dnsbl_zones": [zone]},
    }, [["account", "add", "owner@owner.test"]])
    yield d
    d.stop()


@pytest.fixture
def sink(clean_downstream: SmtpSink) -> SmtpSink:
    return clean_downstream


def hosted(d: Daemon, *list_commands: list[str]) -> str:
    """A new hosted domain with `a@` forwarding to dest.test, then `list_commands` (args after NAME)."""
    name = f"d{uuid.uuid4().hex[:10]}.test"
    cli_batch(d, [["domain", "add", name, "--account", "owner@owner.test"],
                  ["alias", "add", f"a@{name}", f"{name}@dest.test"],
                  *[["domain", c[0], name, *c[1:]] for c in list_commands]])
    return name


def rcpt_code(d: Daemon, sender: str, domain: str, source: str | None = None) -> tuple[int, str]:
    out = send(d, sender, [f"a@{domain}"], message(), source=source)
    code, text = out.rcpts[0]
    return code, text.decode()


def test_deny_by_address_refuses_at_rcpt_for_that_domain_only(mx: Daemon, sink: SmtpSink) -> None:
    listing = hosted(mx, ["deny", "Spammer@Src.test"])
    other = hosted(mx)
    code, text = rcpt_code(mx, "spammer@src.test", listing)
    assert (code, text[:5]) == (550, "5.7.1") and "Sender refused" in text
    assert rcpt_code(mx, "friend@src.test", listing)[0] == 250
    out = send(mx, "spammer@src.test", [f"a@{other}"], message())
    assert out.rcpts[0][0] == 250 and out.code == 250
    assert [m.rcpt_tos for m in sink.messages] == [[f"{listing}@dest.test"], [f"{other}@dest.test"]]


def test_deny_by_domain(mx: Daemon) -> None:
    name = hosted(mx, ["deny", "@spam.test"])
    assert rcpt_code(mx, "anyone@spam.test", name)[0] == 550
    assert rcpt_code(mx, "anyone@sub.spam.test", name)[0] == 250
    assert rcpt_code(mx, "anyone@src.test", name)[0] == 250


def test_deny_by_ip_and_cidr(mx: Daemon) -> None:
    by_ip = hosted(mx, ["deny", "127.0.0.2"])
    by_cidr = hosted(mx, ["deny", "127.0.0.8/29"])
    assert rcpt_code(mx, "x@src.test", by_ip, source="127.0.0.2")[0] == 550
    assert rcpt_code(mx, "x@src.test", by_ip, source="127.0.0.3")[0] == 250
    assert rcpt_code(mx, "x@src.test", by_cidr, source="127.0.0.9")[0] == 550
    assert rcpt_code(mx, "x@src.test", by_cidr, source="127.0.0.16")[0] == 250
    assert rcpt_code(mx, "", by_cidr, source="127.0.0.15")[0] == 550  # the null sender too


def test_removing_an_entry_is_seen_without_a_restart(mx: Daemon) -> None:
    name = hosted(mx, ["deny", "@later.test"])
    assert rcpt_code(mx, "x@later.test", name)[0] == 550
    cli(mx, "domain", "deny", name, "@later.test", "--remove")
    assert rcpt_code(mx, "x@later.test", name)[0] == 250
    cli(mx, "domain", "deny", name, "@later.test")
    assert rcpt_code(mx, "x@later.test", name)[0] == 550


def test_allow_wins_over_deny(mx: Daemon) -> None:
    name = hosted(mx, ["deny", "@corp.test"], ["allow", "boss@corp.test"])
    assert rcpt_code(mx, "boss@corp.test", name)[0] == 250
    assert rcpt_code(mx, "intern@corp.test", name)[0] == 550


def test_domain_show_lists_both(mx: Daemon) -> None:
    name = hosted(mx, ["deny", "@spam.test", "192.0.2.0/24"],
                  ["allow", "Friend@Ok.test", "::ffff:127.0.0.9"])
    doc = json.loads(cli(mx, "domain", "show", name, "--json").stdout)
    assert doc["senders"] == {"allow": ["friend@ok.test", "127.0.0.9"],
                              "deny": ["@spam.test", "192.0.2.0/24"]}
    table = cli(mx, "domain", "show", name).stdout
    assert "@spam.test" in table and "friend@ok.test" in table
    bad = cli(mx, "domain", "deny", name, "not a pattern", expect=None)
    assert bad.returncode != 0 and "invalid sender pattern" in bad.stderr + bad.stdout


def test_dnsbl_listed_client_passes_only_where_allowed(mx: Daemon, sink: SmtpSink, zone: str) -> None:
    allowing = hosted(mx, ["allow", "@friend.test"])
    by_ip = hosted(mx, ["allow", LISTED_IP])
    strict = hosted(mx)
    out = send(mx, "someone@friend.test", [f"a@{allowing}", f"a@{strict}", f"a@{by_ip}"], message(),
               source=LISTED_IP)
    codes = [c for c, _ in out.rcpts]
    assert codes == [250, 550, 250], out.rcpts
    assert zone in out.rcpts[1][1].decode()
    assert out.code == 250
    got = sorted(m.rcpt_tos[0] for m in sink.messages)
    assert got == sorted([f"{allowing}@dest.test", f"{by_ip}@dest.test"])
    assert rcpt_code(mx, "stranger@src.test", allowing, source=LISTED_IP)[0] == 550
    assert rcpt_code(mx, "stranger@src.test", strict, source="127.0.0.6")[0] == 250  # not listed


def test_allowed_sender_skips_the_sender_auth_refusal_but_is_still_stamped(
        mx: Daemon, sink: SmtpSink, dns_server: LoopbackDNS) -> None:
    spoofed = unique_domain("spf")
    dns_server.add(spoofed, "TXT", "v=spf1 ip4:192.0.2.1 -all")  # we send from 127.0.0.1: SPF fail
    enforced = hosted(mx)
    allowing = hosted(mx, ["allow", f"@{spoofed}"])
    msg = message()
    refused = send(mx, f"x@{spoofed}", [f"a@{enforced}"], msg)
    assert refused.code == 550 and "SPF" in refused.text, refused.text
    out = send(mx, f"x@{spoofed}", [f"a@{allowing}"], message())
    assert out.code == 250, out.text
    [got] = sink.messages
    head = got.data.split(b"\r\n\r\n", 1)[0]
    assert b"Authentication-Results: mx.fwdmail.test" in head and b"spf=fail" in head
