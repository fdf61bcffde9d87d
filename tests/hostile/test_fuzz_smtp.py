"""Property-based fuzzing (hypothesis): address parsing, SRS and alias resolution raise nothing but their
documented errors; and one real daemon, fed random SMTP dialogues over fresh sockets, always answers with
well-formed replies, closes only after a 421 or 221, logs no traceback and still forwards mail after.

Examples are derandomized (the same ones every run, so CI is reproducible); set FWDMAIL_FUZZ_RANDOM=1
to draw new ones.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fwdmail import store
from fwdmail.mail import srs
from fwdmail.mail.addresses import (
    AddressError,
    normalize_address,
    normalize_domain,
    parse_address,
    parse_alias_spec,
    parse_destinations,
)
from fwdmail.policy.routing import Directory, Route, resolve
from fwdmail.smtp.replies import SmtpError
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.hostile import (
    TALLY,
    Closed,
    Session,
    assert_clean_log,
    delivered,
    no_tls_check,
    register_summary,
)
from tests.support.mx import cli_batch
from tests.support.smtp_sink import SmtpSink

RANDOM = bool(os.environ.get("FWDMAIL_FUZZ_RANDOM"))
SECRET = b"fuzz-secret"
SRS_DOMAIN = "srs.fwdmail.test"

# Address parsing

_SPECIALS = "@%!\"\\:;<>[](),. \t\r\n\x00+=-_/'`~|{}?*$&#^"
address_text = st.one_of(
    st.text(max_size=120),
    st.text(alphabet=st.sampled_from("ab.-@" + _SPECIALS + "ÄßΩоxn-"), max_size=80),
    st.builds(lambda local, labels: local + "@" + ".".join(labels),
              st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=70),
              st.lists(st.one_of(st.from_regex(r"[a-z0-9-]{0,66}", fullmatch=True),
                                 st.sampled_from(["xn--", "xn--zz", "xn--bcher-kva", "bücher", "ОURS", "ﬁ",
                                                  "\u200b", "\u00ad", "1", "", "[127.0.0.1]"])),
                       min_size=0, max_size=6)),
)
moments = st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(9000, 1, 1))
FUZZ_SETTINGS = settings(max_examples=300, deadline=None, derandomize=not RANDOM, database=None)


@FUZZ_SETTINGS
@given(text=address_text)
def test_address_parsing_raises_only_address_error(text: str) -> None:
    TALLY.hostile_inputs_tried += 1
    try:
        addr = parse_address(text)
    except AddressError:
        return
    again = parse_address(str(addr))
    assert again == addr, "a parsed address parses again to itself"
    assert normalize_domain(addr.domain) == addr.domain
    assert normalize_address(str(addr)) == str(addr)
    assert len(addr.local.encode()) <= 64 and len(addr.domain) <= 253
    assert not any(c in str(addr) for c in " \t\r\n\x00<>()[],;:\"\\")


@FUZZ_SETTINGS
@given(text=address_text)
def test_domain_alias_and_destination_parsing_raise_only_address_error(text: str) -> None:
    TALLY.hostile_inputs_tried += 1
    for parse in (normalize_domain, parse_alias_spec, lambda t: parse_destinations([t, t.upper()])):
        try:
            parse(text)
        except AddressError:
            pass
    for prefix in ("/", "*@", "/^"):
        try:
            parse_alias_spec(prefix + text)
        except AddressError:
            pass


srs_locals = st.one_of(
    st.text(max_size=100),
    st.builds(lambda tag, sep, parts: tag + sep + "=".join(parts),
              st.sampled_from(["SRS0", "SRS1", "srs0", "SrS1", "SRS2"]), st.sampled_from(["=", "+", "-", ""]),
              st.lists(st.text(alphabet="AZaz27=+-/.!@é\x00", max_size=12), max_size=7)),
)


@FUZZ_SETTINGS
@given(local=srs_locals, now=moments, max_age=st.integers(min_value=0, max_value=2000))
def test_srs_reverse_raises_only_srs_error(local: str, now: dt.datetime, max_age: int) -> None:
    TALLY.hostile_inputs_tried += 1
    try:
        srs.reverse(local, SECRET, now, max_age)
    except srs.SrsError:
        pass


@FUZZ_SETTINGS
@given(text=address_text, now=moments)
def test_srs_forward_of_any_parsed_sender_reverses_to_it(text: str, now: dt.datetime) -> None:
    TALLY.hostile_inputs_tried += 1
    try:
        sender = str(parse_address(text))
    except AddressError:
        return
    rewritten = srs.forward(sender, SECRET, SRS_DOMAIN, now)
    local, _, domain = rewritten.rpartition("@")
    assert domain == SRS_DOMAIN
    if srs.is_srs(local) and local[:4].upper() == "SRS0":
        assert srs.reverse(local, SECRET, now, 21) == sender


def _directory() -> Directory:
    now = dt.datetime(2026, 1, 1)
    domains = [store.DomainRecord(id=i, name=name, account_email="owner@owner.test",
                                  verification_token="", dkim_selector="sel", dkim_private_key="",
                                  retention_days=0, verified_at=None, auth_policy="enforce",
                                  friendly_from=False, require_tls_inbound=False, created_at=now)
               for i, name in enumerate(["ours.test", "xn--bcher-kva.test"])]
    specs = [("exact", "ok", ("one@dest.test",)),
             ("regex", r"^(.+)-sales$", ("$1@dest.test", "team@dest.test")),
             ("regex", r"(a|a)+$", ("slow@dest.test",)),
             ("catch-all", "*", ("catch@dest.test",))]
    aliases = [store.AliasRecord(id=i, domain="ours.test", kind=kind, local=local, destinations=dests,
                                 state="enabled", has_password=False, account_email="owner@owner.test",
                                 created_at=now)
               for i, (kind, local, dests) in enumerate(specs)]
    return Directory.build(domains, aliases)


DIRECTORY = _directory()


@FUZZ_SETTINGS
@given(text=address_text)
def test_alias_resolution_answers_every_parsed_recipient(text: str) -> None:
    TALLY.hostile_inputs_tried += 1
    try:
        addr = parse_address(text)
    except AddressError:
        return
    route = resolve(DIRECTORY, addr)
    assert isinstance(route, Route | SmtpError)
    if isinstance(route, Route):
        assert route.domain == "ours.test" and addr.domain == "ours.test"
        for dest in route.destinations:
            assert parse_address(dest).domain == "dest.test", "a recipient never picks the destination domain"


# The SMTP dialogue, against one real daemon

ALICE = "alice@example.test"
SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["domain", "add", "catch.test", "--account", "owner@owner.test"],
    ["domain", "add", "example.test", "--account", "owner@owner.test"],
    ["alias", "add", "ok@ours.test", "one@dest.test"],
    ["alias", "add", "/^(.+)-sales$/@ours.test", "$1@dest.test"],
    ["alias", "add", "*@catch.test", "catch@dest.test"],
    ["alias", "add", ALICE, "alice@dest.test"],
]
GOOD_LOGIN = b"<good login>"  # stands for AUTH PLAIN with alice's real credentials


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


@pytest.fixture(scope="module")
def downstream() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
           downstream: SmtpSink) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("fuzz-smtp"), {
        "dns": {"nameservers": [dns_server.address]},
        "srs": {"secret": SECRET.decode()},
        "delivery": {"routes": {"*": downstream.address}},
        "mx": {"max_recipients": 10, "max_message_size": 200_000},
        "submission": {"max_message_size": 200_000, "auth_failures_per_hour": 100_000,
                       "max_errors_per_session": 1_000},
        "abuse": {"max_messages_per_ip_per_minute": 100_000, "max_connections_per_ip": 1_000},
    })
    cli_batch(d, SETUP)
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def good_login(daemon: Daemon) -> bytes:
    password = json.loads(daemon.cli("alias", "password", ALICE, "--json").output)["password"]
    return b"AUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0{password}".encode())


COMMANDS = [b"EHLO client.test", b"HELO client.test", b"EHLO", b"MAIL FROM:<alice@src.test>", b"MAIL FROM:<>",
            b"MAIL FROM:<alice@src.test> SMTPUTF8 BODY=8BITMIME SIZE=100",
            b"MAIL FROM:<alice@src.test> SIZE=x", b"MAIL FROM:<alice@example.test>",
            b"RCPT TO:<ok@ours.test>", b"RCPT TO:<bob-sales@ours.test>", b"RCPT TO:<r@catch.test>",
            b"RCPT TO:<victim@other.test>", b"RCPT TO:<" + srs.forward("b@src.test", SECRET, SRS_DOMAIN,
                                                                       dt.datetime.now()).encode() + b">",
            b"RCPT TO:<SRS0=AAAA=AA=x.test=y@" + SRS_DOMAIN.encode() + b">", b"DATA", b"DATA", b"DATA",
            b"RSET", b"NOOP", b"VRFY ok@ours.test", b"EXPN list", b"HELP", b"HELP MAIL", b"AUTH PLAIN AAAA",
            b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH LOGIN YWxpY2U=", b"AUTH PLAIN =", b"AUTH CRAM-MD5",
            GOOD_LOGIN, GOOD_LOGIN, b"STARTTLS x", b"BDAT 10 LAST", b"QUIT", b""]
VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"MAIL", b"RCPT", b"VRFY", b"NOOP", b"RSET", b"HELP",
         b"AUTH", b"AUTH PLAIN", b"AUTH LOGIN", b"DATA", b"QUIT", b"XCLIENT", b"ETRN"]
no_newline = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" "))
long_lines = st.builds(lambda verb, n: verb + b"x" * n,
                       st.sampled_from([b"NOOP ", b"MAIL FROM:<", b"", b"RCPT TO:<", b"AUTH PLAIN "]),
                       st.sampled_from([998, 1001, 5000, 13_000, 70_000, 300_000]))
command_lines = st.one_of(
    st.sampled_from(COMMANDS),
    st.sampled_from(COMMANDS),
    st.builds(lambda verb, sep, arg: verb + sep + arg, st.sampled_from(VERBS),
              st.sampled_from([b" ", b"", b"  "]), no_newline),
    st.builds(lambda verb, addr: verb + b"<" + addr.encode("utf-8", "surrogatepass") + b">",
              st.sampled_from([b"MAIL FROM:", b"RCPT TO:"]),
              address_text.map(lambda t: t.replace("\n", " "))),
    no_newline,
    long_lines,
)
transactions = st.builds(
    lambda mail, rcpts: [mail, *rcpts, b"DATA"],
    st.sampled_from([b"MAIL FROM:<alice@src.test>", b"MAIL FROM:<>", b"MAIL FROM:<alice@src.test> SMTPUTF8",
                     b"MAIL FROM:<alice@example.test>", b"MAIL FROM:<alice@src.test> BODY=8BITMIME"]),
    st.lists(st.sampled_from([b"RCPT TO:<ok@ours.test>", b"RCPT TO:<bob-sales@ours.test>",
                              b"RCPT TO:<r@catch.test>", b"RCPT TO:<nobody@ours.test>",
                              b"RCPT TO:<bob@dest.test>"]),
             min_size=1, max_size=3),
)
unknown_commands = st.from_regex(rb"\A[A-Za-z]{1,10}( [ -~]{0,40})?\Z")
garbage_bursts = st.lists(st.one_of(no_newline, unknown_commands, unknown_commands), min_size=4, max_size=7)
greetings = st.sampled_from([[b"EHLO client.test"], [b"EHLO client.test", GOOD_LOGIN], [b"HELO client.test"],
                             []])
dialogues = st.builds(
    lambda greeting, parts: [*greeting, *(line for part in parts for line in part)],
    greetings,
    st.lists(st.one_of(transactions, transactions, garbage_bursts, command_lines.map(lambda line: [line])),
             min_size=1, max_size=10),
).flatmap(lambda lines: st.tuples(*(st.tuples(st.just(line), st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
                                    for line in lines)))
bodies = st.one_of(
    st.binary(max_size=2000),
    st.lists(st.sampled_from([b"Subject: x", b"", b".", b"..", b". ", b"\r", b"\n", b"\x00", b"\xff\xfe",
                              b"From: a@src.test", b"From: alice@example.test",
                              b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000",
                              b"Content-Type: multipart/mixed; boundary=b", b"--b", b"--b--",
                              b"Bcc: x@y.test",
                              b"Date: Mon, 1 Jan 2024 00:00:00 +0000", b"Date: soon", b"x" * 5000,
                              b"\r\n.\n", b"\n.\r\n"]), max_size=40).map(b"\r\n".join),
    st.sampled_from([b"", b"x" * 250_000]),
)
auth_answers = st.one_of(no_newline, long_lines, st.sampled_from([b"*", b"=", b"AGFsaWNlAHg="]))


def _data_payload(body: bytes) -> bytes:
    """`body` as a client sends it after 354: dot-stuffed, then the end marker."""
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in body.split(b"\r\n"))
    return stuffed + (b"" if stuffed.endswith(b"\r\n") or not stuffed else b"\r\n") + b".\r\n"


@settings(max_examples=150, deadline=None, derandomize=not RANDOM, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(listener=st.sampled_from(["mx", "mx", "submission"]), dialogue=dialogues, data=st.data())
def test_random_dialogues_get_well_formed_replies(daemon: Daemon, good_login: bytes, listener: str,
                                                  dialogue: tuple[tuple[bytes, bytes], ...],
                                                  data: st.DataObject) -> None:
    """Against the MX, or submission over implicit TLS (where AUTH is offered)."""
    if listener == "mx":
        s = Session(daemon.mx_port, timeout=60)
    else:
        s = Session(daemon.submission_tls_port, timeout=60, tls=no_tls_check())
    with s:
        for line, end in dialogue:
            TALLY.hostile_inputs_tried += 1
            s.send((good_login if line == GOOD_LOGIN else line) + end)
            try:
                code, lines = s.reply()
                while code in (334, 354):
                    event(f"{listener}: sent data after {code}")
                    payload = (_data_payload(data.draw(bodies, label="body")) if code == 354
                               else data.draw(auth_answers, label="auth answer") + b"\r\n")
                    s.send(payload)
                    code, lines = s.reply()
            except Closed as closed:
                raise AssertionError(f"closed without a 421 or 221 after {line[:80]!r}") from closed
            ended = code in (220, 221, 421)
            event(f"{listener}: " + (f"ended on {code}" if ended else f"reply {code // 100}xx"))
            if code in (421, 221):
                assert s.closed(), f"the server said {lines!r} and kept the connection open"
                break
            if code == 220:  # STARTTLS: the rest would be a TLS handshake
                break
        else:
            assert s.cmd(b"QUIT") == 221
    TALLY.faults_injected += 1  # counted once the whole dialogue was sent (hypothesis may abort one early)
    TALLY.faults_survived += 1


def test_after_the_fuzzing_the_daemon_still_forwards_and_logged_no_traceback(daemon: Daemon,
                                                                             downstream: SmtpSink) -> None:
    downstream.reset()
    msg = (b"From: a@src.test\r\nSubject: after the fuzzing\r\n"
           + f"Message-ID: <{uuid.uuid4().hex}@src.test>\r\n\r\nstill here\r\n".encode())
    with Session(daemon.mx_port) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<alice@src.test>") == 250
        assert s.cmd(b"RCPT TO:<ok@ours.test>") == 250
        assert s.cmd(b"DATA") == 354
        s.send(msg + b".\r\n")
        assert s.reply()[0] == 250
        assert s.cmd(b"QUIT") == 221
    [got] = delivered(downstream, 1)
    assert got.rcpt_tos == ["one@dest.test"] and got.data.endswith(msg)
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert_clean_log(daemon)
