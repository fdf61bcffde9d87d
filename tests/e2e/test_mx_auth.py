"""End to end: sender authentication and abuse controls of the real MX (`fwdmail serve` subprocess),
driven by smtplib on loopback, resolving against the loopback DNS server, forwarding to `SmtpSink`."""

from __future__ import annotations

import json
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Callable, Sequence

import authres
import dkim
import pytest

from tests.support.auth import (
    arc_seal,
    key,
    message,
    publish_key,
    sign,
    sync_dnsfunc,
    unique_domain,
)
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.smtp_sink import SmtpSink

US = "mx.fwdmail.test"
DEST = "dest.test"

_BATCH = """
import json, sys
from click.testing import CliRunner
from fwdmail.cli import cli
out = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(cli, args)
    if r.exit_code:
        sys.exit(f"fwdmail {' '.join(args)} exited {r.exit_code}: {r.output}")
    out.append(r.output)
print(json.dumps(out))
"""


def cli(d: Daemon, *commands: Sequence[str]) -> list[str]:
    """Run CLI commands in one subprocess (the daemon's store is not opened by the test process)."""
    init = d.init_args()
    args = init + [["--config", str(d.config_path), *c] for c in commands]
    proc = subprocess.run([sys.executable, "-c", _BATCH, json.dumps(args)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(proc.stdout)[len(init):]


def hosted_domain(d: Daemon, dns_server: LoopbackDNS, *settings: str) -> str:
    """A hosted domain (its DKIM key published in DNS) with alias `a@` -> `<domain>@dest.test`."""
    name = unique_domain("hosted")
    out = cli(d, ["account", "add", f"owner@{name}"],
              ["domain", "add", name, "--account", f"owner@{name}", "--json"],
              ["alias", "add", f"a@{name}", f"{name}@{DEST}"],
              *([["domain", "set", name, *settings]] if settings else []))
    for record in json.loads(out[1])["dns"]:
        if "._domainkey." in record["name"]:
            dns_server.add(record["name"], "TXT", record["value"])
    return name


def sender_domain(dns_server: LoopbackDNS, spf: str = "v=spf1 ip4:127.0.0.1 -all",
                  dmarc: str | None = "v=DMARC1; p=reject") -> str:
    name = unique_domain("sender")
    dns_server.add(name, "TXT", spf)
    if dmarc:
        dns_server.add(f"_dmarc.{name}", "TXT", dmarc)
    publish_key(dns_server, name, "sel", key("sender"))
    return name


def transact(d: Daemon, mail_from: str, rcpt: str, data: bytes, *, starttls: bool = False
             ) -> tuple[int, int, int | None, str]:
    """(MAIL code, RCPT code, DATA code or None, last reply text) of one transaction."""
    with smtplib.SMTP("127.0.0.1", d.mx_port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        if starttls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo()
        mail, text = s.mail(mail_from)
        rcpt, text = s.rcpt(rcpt) if mail == 250 else (0, text)
        if rcpt != 250:
            return mail, rcpt, None, text.decode()
        code, text = s.data(data)
        return mail, rcpt, code, text.decode()


def assert_ip_only_in_abuse_events(d: Daemon, ip: str = "127.0.0.1") -> None:
    """The client IP may be in abuse events (7 days); never in the error log nor in a log line (not even
    scrubbed: "[ip]" would mean code logged it and only the scrubber hid it)."""
    db = sqlite3.connect(f"file:{d.data_dir / 'fwdmail.db'}?mode=ro", uri=True, timeout=10)
    try:
        errors = db.execute("SELECT * FROM smtp_error_log").fetchall()
    finally:
        db.close()
    assert errors and ip not in str(errors), errors
    logs = d.logs()
    assert ip not in logs and "[ip]" not in logs, logs


def abuse_events(d: Daemon) -> list[tuple[str, str | None, str]]:
    db = sqlite3.connect(f"file:{d.data_dir / 'fwdmail.db'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT kind, client_ip, detail FROM abuse_event ORDER BY id").fetchall()
    finally:
        db.close()


def _auth_results(data: bytes) -> authres.AuthenticationResultsHeader:
    for line in data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ").split(b"\r\n"):
        if line.startswith(b"Authentication-Results: " + US.encode()):
            return authres.AuthenticationResultsHeader.parse(line.decode())
    raise AssertionError("no Authentication-Results of ours")


@pytest.fixture
def auth_daemon(make_daemon: Callable[..., Daemon], sink: SmtpSink) -> Daemon:
    return make_daemon({"delivery": {"routes": {DEST: sink.address}}})


def test_authenticated_mail_is_forwarded_with_results_and_a_valid_arc_seal(
        auth_daemon: Daemon, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    hosted = hosted_domain(auth_daemon, dns_server)
    sender = sender_domain(dns_server)
    original = sign(message(f"Alice <alice@{sender}>", to=f"a@{hosted}"), sender, "sel", key("sender"))
    assert transact(auth_daemon, f"bounce@{sender}", f"a@{hosted}", original)[:3] == (250, 250, 250)
    [got] = sink.wait_for(1)
    assert got.data.endswith(original)  # only headers were prepended: the sender's signature survives
    assert dkim.verify(got.data, dnsfunc=sync_dnsfunc(dns_server))
    results = {r.method: r.result for r in _auth_results(got.data).results}
    assert results == {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": "none"}
    cv, sets, reason = dkim.arc_verify(got.data, dnsfunc=sync_dnsfunc(dns_server))
    assert (cv, reason) == (dkim.CV_Pass, "success")
    assert [(s["instance"], s["as-domain"]) for s in sets] == [(1, hosted.encode())]
    ours = got.data[:-len(original)]
    assert f"alice@{sender}".encode() not in ours and b"127.0.0.1" not in ours
    assert abuse_events(auth_daemon) == []

    # a message that already carries an ARC set: ours becomes instance 2 and the chain still validates
    sink.reset()
    upstream = unique_domain("list")
    publish_key(dns_server, upstream, "arc", key("upstream"))
    relayed = arc_seal(original, f"mx.{upstream}", upstream, "arc", key("upstream"),
                       f"dkim=pass header.d={sender}")
    assert transact(auth_daemon, f"bounce@{sender}", f"a@{hosted}", relayed)[2] == 250
    [got] = sink.wait_for(1)
    assert {r.method: r.result for r in _auth_results(got.data).results}["arc"] == "pass"
    cv, sets, _ = dkim.arc_verify(got.data, dnsfunc=sync_dnsfunc(dns_server))
    assert cv == dkim.CV_Pass and [s["instance"] for s in sets] == [2, 1]


def test_enforced_policy_refuses_spoofing_and_records_it(
        auth_daemon: Daemon, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    hosted = hosted_domain(auth_daemon, dns_server)
    rcpt = f"a@{hosted}"
    # DMARC p=reject, SPF does not allow 127.0.0.1, no signature
    spoofed = sender_domain(dns_server, spf="v=spf1 ip4:192.0.2.1 -all")
    code, text = transact(auth_daemon, f"x@{spoofed}", rcpt, message(f"ceo@{spoofed}", to=rcpt))[2:]
    assert (code, text.split()[0]) == (550, "5.7.1")
    # SPF -all without DMARC and without a valid signature
    no_dmarc = sender_domain(dns_server, spf="v=spf1 ip4:192.0.2.1 -all", dmarc=None)
    code, text = transact(auth_daemon, f"x@{no_dmarc}", rcpt, message(f"x@{no_dmarc}", to=rcpt))[2:]
    assert (code, text.split()[0]) == (550, "5.7.1")
    # ... but a valid signature lets the same mail through
    signed = sign(message(f"x@{no_dmarc}", to=rcpt), no_dmarc, "sel", key("sender"))
    assert transact(auth_daemon, f"x@{no_dmarc}", rcpt, signed)[2] == 250
    # DMARC record lookup fails: try again later
    flaky = sender_domain(dns_server, dmarc=None)
    dns_server.set_failure(f"_dmarc.{flaky}", "SERVFAIL")
    code, text = transact(auth_daemon, f"x@{flaky}", rcpt, message(f"x@{flaky}", to=rcpt))[2:]
    assert (code, text.split()[0]) == (451, "4.7.0")

    assert len(sink.wait_for(1)) == 1
    events = abuse_events(auth_daemon)
    assert [(k, ip) for k, ip, _ in events] == [("dmarc-reject", "127.0.0.1"), ("spf-reject", "127.0.0.1")]
    assert f"header.from={spoofed}" in events[0][2] and "@" not in events[0][2]
    log = auth_daemon.logs()
    assert "127.0.0.1" not in log and f"@{spoofed}" not in log
    listed = json.loads(cli(auth_daemon, ["abuse", "--kind", "dmarc-reject", "--json"])[0])
    assert [(e["kind"], e["client_ip"], e["domain"]) for e in listed] == [
        ("dmarc-reject", "127.0.0.1", hosted)]
    assert_ip_only_in_abuse_events(auth_daemon)


def test_report_only_and_off_policies(auth_daemon: Daemon, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    reporting = hosted_domain(auth_daemon, dns_server, "--auth-policy", "report-only")
    off = hosted_domain(auth_daemon, dns_server, "--auth-policy", "off")
    spoofed = sender_domain(dns_server, spf="v=spf1 ip4:192.0.2.1 -all")
    msg = message(f"ceo@{spoofed}")
    assert transact(auth_daemon, f"x@{spoofed}", f"a@{reporting}", msg)[2] == 250
    [got] = sink.wait_for(1)
    results = {r.method: r.result for r in _auth_results(got.data).results}
    assert (results["spf"], results["dmarc"]) == ("fail", "fail")
    assert dkim.arc_verify(got.data, dnsfunc=sync_dnsfunc(dns_server))[0] == dkim.CV_Pass
    sink.reset()
    assert transact(auth_daemon, f"x@{spoofed}", f"a@{off}", msg)[2] == 250
    [got] = sink.wait_for(1)
    assert b"Authentication-Results:" not in got.data and b"ARC-Seal:" not in got.data
    assert abuse_events(auth_daemon) == []
    # the policy follows the CLI while the daemon runs (settings are re-read within 0.2 s)
    cli(auth_daemon, ["domain", "set", off, "--auth-policy", "enforce"])
    assert transact(auth_daemon, f"x@{spoofed}", f"a@{off}", msg)[2] == 550


def test_policy_matrix_every_cell(auth_daemon: Daemon, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    hosted = {p: hosted_domain(auth_daemon, dns_server, "--auth-policy", p)
              for p in ("off", "report-only", "enforce")}
    flaky = sender_domain(dns_server, dmarc=None)
    dns_server.set_failure(f"_dmarc.{flaky}", "SERVFAIL")
    senders = {
        "dmarc-reject": sender_domain(dns_server, spf="v=spf1 ip4:192.0.2.1 -all"),
        "spf-reject": sender_domain(dns_server, spf="v=spf1 ip4:192.0.2.1 -all", dmarc=None),
        "temperror": flaky,
        "authenticated": sender_domain(dns_server),
    }
    enforced = {"dmarc-reject": (550, "5.7.1"), "spf-reject": (550, "5.7.1"), "temperror": (451, "4.7.0"),
                "authenticated": (250, "2.0.0")}
    for policy, domain in hosted.items():
        for case, sender in senders.items():
            rcpt = f"a@{domain}"
            code, text = transact(auth_daemon, f"x@{sender}", rcpt, message(f"x@{sender}", to=rcpt))[2:]
            expected = enforced[case] if policy == "enforce" else (250, "2.0.0")
            assert (code, text.split()[0]) == expected, (policy, case, text)
            if code != 250:
                continue
            [got] = sink.wait_for(1)
            sink.reset()
            head = got.data.split(b"\r\n\r\n", 1)[0]
            assert (b"Authentication-Results: " + US.encode() in head) is (policy != "off"), (policy, case)
            assert (b"ARC-Seal:" in head) is (policy != "off"), (policy, case)
    assert [k for k, _, _ in abuse_events(auth_daemon)] == ["dmarc-reject", "spf-reject"]


def test_friendly_from_and_require_tls_inbound(
        auth_daemon: Daemon, dns_server: LoopbackDNS, sink: SmtpSink) -> None:
    friendly = hosted_domain(auth_daemon, dns_server, "--friendly-from")
    sender = sender_domain(dns_server)  # p=reject, SPF passes here but will not at the destination
    msg = message(f"Alice Example <alice@{sender}>", to=f"a@{friendly}")
    assert transact(auth_daemon, f"b@{sender}", f"a@{friendly}", msg)[2] == 250
    [got] = sink.wait_for(1)
    head = got.data.split(b"\r\n\r\n", 1)[0]
    assert f"From: Alice Example <a@{friendly}>".encode() in head
    assert f"Reply-To: Alice Example <alice@{sender}>".encode() in head
    assert dkim.arc_verify(got.data, dnsfunc=sync_dnsfunc(dns_server))[0] == dkim.CV_Pass
    # with a signature that survives forwarding, From stays as it was
    sink.reset()
    signed = sign(msg, sender, "sel", key("sender"))
    assert transact(auth_daemon, f"b@{sender}", f"a@{friendly}", signed)[2] == 250
    [got] = sink.wait_for(1)
    assert got.data.endswith(signed)

    tls_only = hosted_domain(auth_daemon, dns_server, "--require-tls-inbound")
    mail, rcpt, _, text = transact(auth_daemon, f"b@{sender}", f"a@{tls_only}", msg)
    assert (mail, rcpt, text.split()[0]) == (250, 530, "5.7.0")
    assert transact(auth_daemon, f"b@{sender}", f"a@{tls_only}", msg, starttls=True)[1:3] == (250, 250)


def _greeting(d: Daemon) -> tuple[int, str]:
    s = smtplib.SMTP(local_hostname="client.test", timeout=30)
    try:
        code, text = s.connect("127.0.0.1", d.mx_port)
    except smtplib.SMTPServerDisconnected:
        return 0, ""
    finally:
        s.close()
    return code, text.decode()


def test_per_ip_limits(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon({"abuse": {"max_connections_per_ip": 2, "max_messages_per_ip_per_minute": 3,
                               "max_errors_per_session": 3}})
    held = [smtplib.SMTP("127.0.0.1", d.mx_port, local_hostname="client.test", timeout=30) for _ in range(2)]
    try:
        code, text = _greeting(d)
        assert (code, text.split()[0]) == (421, "4.7.0")
    finally:
        for s in held:
            s.quit()
    # slots come back when sessions end
    for _ in range(50):
        if _greeting(d)[0] == 220:
            break
    else:
        raise AssertionError("connection slots were not released")

    with smtplib.SMTP("127.0.0.1", d.mx_port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        codes = []
        for _ in range(4):
            codes.append(s.mail("x@sender.test")[0])
            s.rset()
        assert codes == [250, 250, 250, 451]

    with smtplib.SMTP("127.0.0.1", d.mx_port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert [s.docmd("RCPT", "TO:<a@elsewhere.test>")[0] for _ in range(4)] == [503] * 4
        code, text = s.docmd("NOOP")  # answered by the notice sent after the fourth error
        assert (code, text.split()[0]) == (421, b"4.7.0")
        with pytest.raises((smtplib.SMTPServerDisconnected, OSError)):
            s.docmd("NOOP")
            s.docmd("NOOP")

    kinds = [(k, ip) for k, ip, _ in abuse_events(d)]
    assert kinds == [("too-many-connections", "127.0.0.1"), ("rate-limit", "127.0.0.1")]
    assert_ip_only_in_abuse_events(d)


def test_timeouts_close_idle_and_slow_clients(make_daemon: Callable[..., Daemon], dns_server: LoopbackDNS,
                                             sink: SmtpSink) -> None:
    d = make_daemon({"delivery": {"routes": {DEST: sink.address}},
                     "abuse": {"idle_timeout": 1.5, "command_timeout": 0.5}})
    hosted = hosted_domain(d, dns_server, "--auth-policy", "off")
    with socket.create_connection(("127.0.0.1", d.mx_port), timeout=30) as sock:
        assert sock.recv(1024).startswith(b"220")
        rest = b""
        for _ in range(100):  # a silent client is disconnected (we only wait for it, bounded)
            chunk = sock.recv(1024)
            if not chunk:
                break
            rest += chunk
        else:
            raise AssertionError("idle client not disconnected")
    with socket.create_connection(("127.0.0.1", d.mx_port), timeout=30) as sock:
        f = sock.makefile("rwb")
        f.readline()
        for line in (b"EHLO client.test", b"MAIL FROM:<x@sender.test>", f"RCPT TO:<a@{hosted}>".encode(),
                     b"DATA"):
            f.write(line + b"\r\n")
            f.flush()
            while (reply := f.readline())[3:4] == b"-":
                pass
        assert reply.startswith(b"354")
        tail = b""
        sock.settimeout(0.2)
        for _ in range(150):  # dribble header lines until the server gives up on the message data
            try:
                f.write(b"X-Slow: line\r\n")
                f.flush()
                tail = sock.recv(1024)
            except TimeoutError:
                continue
            except OSError:
                break
            if tail:
                break
        assert tail.startswith(b"421 4.4.2")


def test_dnsbl_listed_client_is_refused_at_connect(make_daemon: Callable[..., Daemon],
                                                   dns_server: LoopbackDNS) -> None:
    zone, quiet = unique_domain("bl"), unique_domain("bl")
    dns_server.add(f"1.0.0.127.{zone}", "A", "127.0.0.2", ttl=0)
    d = make_daemon({"abuse": {"dnsbl_zones": [quiet, zone]}})
    code, text = _greeting(d)
    assert code == 554 and zone in text and "5.7.1" in text
    [(kind, ip, detail)] = abuse_events(d)
    assert (kind, ip, detail) == ("dnsbl", "127.0.0.1", f"listed in {zone}")
    assert_ip_only_in_abuse_events(d)
    dns_server.remove(f"1.0.0.127.{zone}")
    dns_server.add(f"1.0.0.127.{quiet}", "TXT", "not an A record", ttl=0)
    assert _greeting(d)[0] == 220
