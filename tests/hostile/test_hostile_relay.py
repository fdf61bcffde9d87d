"""Open-relay tricks against the real daemon: none may get a message anywhere but to a hosted alias.

The MX is tried with recipients (percent hack, source routes, quoted locals, bang paths, IDN lookalikes,
trailing dots, forged SRS, CR/LF/NUL, over-long parts) and submission with dialogues of a logged-in user
who tries to send as someone else or to smuggle recipients. Every route of the daemon leads to a real
SMTP sink, so anything relayed would arrive there; each trick must be refused with a 5xx (or a clear
4xx) and leave the sink empty.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass

import idna
import pytest

from fwdmail.mail import srs
from tests.support.daemon import Daemon
from tests.support.dns_server import LoopbackDNS
from tests.support.hostile import (
    TALLY,
    assert_clean_log,
    delivered,
    no_tls_check,
    register_summary,
    session,
)
from tests.support.mx import cli_batch, message
from tests.support.smtp_sink import SmtpSink

SECRET = "hostile-relay-secret"
SRS_DOMAIN = "srs.fwdmail.test"
ALICE = "alice@example.test"
_NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _srs(sender: str, days_ago: int = 0, secret: str = SECRET, domain: str = SRS_DOMAIN) -> str:
    return srs.forward(sender, secret.encode(), domain, _NOW - dt.timedelta(days=days_ago))


def _stamp(days_ago: int) -> str:
    return srs.timestamp(_NOW - dt.timedelta(days=days_ago))


@dataclass(frozen=True)
class Dialogue:
    """A logged-in submission attempt: the login, envelope and From header it tries."""

    login: str
    mail_from: str
    rcpts: tuple[str, ...] = ("bob@dest.test",)
    header_from: str = ALICE
    extra: bytes = b""


# (name, MX recipient as sent between < and >) or (name, submission dialogue)
RELAY_TRICKS: list[tuple[str, str | Dialogue]] = [
    ("plain-foreign", "victim@other.test"),
    ("foreign-uppercase", "VICTIM@OTHER.TEST"),
    ("percent-hack", "victim%other.test@ours.test"),
    ("percent-hack-reversed", "victim@other.test%ours.test"),
    ("percent-encoded-at", "victim%40other.test@ours.test"),
    ("source-route", "@ours.test:victim@other.test"),
    ("source-route-chain", "@ours.test,@relay.test:victim@other.test"),
    ("quoted-local", '"victim@other.test"@ours.test'),
    ("quoted-local-percent", '"victim%other.test"@ours.test'),
    ("backslash-escaped-at", "victim\\@other.test@ours.test"),
    ("bang-path", "other.test!victim@ours.test"),
    ("bang-path-bare", "other.test!victim"),
    ("double-at", "victim@other.test@ours.test"),
    ("double-at-reversed", "ok@ours.test@other.test"),
    ("trailing-dot-foreign", "victim@other.test."),
    ("trailing-dot-hosted", "ok@ours.test."),
    ("hosted-as-subdomain", "ok@ours.test.other.test"),
    ("hosted-as-suffix", "ok@evilours.test"),
    ("ip-literal", "victim@[127.0.0.1]"),
    ("ipv6-literal", "victim@[IPv6:::1]"),
    ("port-in-domain", "victim@other.test:25"),
    ("comment-in-local", "victim(ours.test)@other.test"),
    ("space-in-address", "victim@other.test ours.test"),
    ("two-recipients-in-one", "victim@other.test>,<ok@ours.test"),
    ("nested-brackets", "<victim@other.test>"),
    ("cyrillic-homoglyph", "ok@оurs.test"),
    ("greek-homoglyph", "ok@οurs.test"),
    ("homoglyph-punycode", "ok@" + idna.encode("оurs.test", uts46=True).decode()),
    ("small-capital-homoglyph", "ok@ᴏurs.test"),
    ("idn-lookalike-of-idn", "info@bucher.test"),
    ("bare-postmaster", "postmaster"),
    ("foreign-postmaster", "postmaster@other.test"),
    ("empty-local", "@ours.test"),
    ("empty-domain", "victim@"),
    ("null-recipient", ""),
    ("cr-in-address", "victim@other.test\rok@ours.test"),
    ("crlf-injected-rcpt", "victim@other.test>\r\nRCPT TO:<victim2@other.test"),
    ("nul-in-address", "ok@ours.test\x00@other.test"),
    ("nul-at-end", "victim@other.test\x00"),
    ("long-local", "v" * 65 + "@ours.test"),
    ("long-label", "victim@" + "a" * 64 + ".test"),
    ("long-domain", "victim@" + ".".join(["a" * 60] * 5) + ".test"),
    ("srs-domain-plain-local", f"victim@{SRS_DOMAIN}"),
    ("srs-domain-percent-hack", f"victim%other.test@{SRS_DOMAIN}"),
    ("srs0-forged-hash", f"SRS0=AAAA={_stamp(0)}=other.test=victim@{SRS_DOMAIN}"),
    ("srs0-garbage-hash", f"SRS0=!!!!={_stamp(0)}=other.test=victim@{SRS_DOMAIN}"),
    ("srs0-no-hash", f"SRS0=={_stamp(0)}=other.test=victim@{SRS_DOMAIN}"),
    ("srs0-expired", _srs("victim@other.test", days_ago=30)),
    ("srs0-future-timestamp", _srs("victim@other.test", days_ago=-5)),
    ("srs0-other-secret", _srs("victim@other.test", secret="not our secret")),
    ("srs0-tampered-user", _srs("victim@other.test").replace("=victim@", "=victin@")),
    ("srs0-tampered-domain", _srs("victim@other.test").replace("=other.test=", "=otter.test=")),
    ("srs0-truncated", f"SRS0=AAAA@{SRS_DOMAIN}"),
    ("srs0-non-ascii-hash", f"SRS0=ÄÄÄÄ={_stamp(0)}=other.test=victim@{SRS_DOMAIN}"),
    ("srs1-forged", f"SRS1=AAAA=first.test==BBBB={_stamp(0)}=other.test=victim@{SRS_DOMAIN}"),
    ("srs1-malformed", f"SRS1=AAAA=first.test@{SRS_DOMAIN}"),
    ("srs-for-foreign-domain", _srs("victim@other.test", domain="other.test")),
    ("srs-at-hosted-domain", _srs("victim@other.test", domain="ours.test")),
    ("srs-of-srs-forged", f"SRS0=AAAA={_stamp(0)}={SRS_DOMAIN}=SRS0=BBBB=AA=other.test=victim@{SRS_DOMAIN}"),
    # Not relaying: these are ours, written another way, and reach only the alias's destination.
    ("hosted-mixed-case", "Ok@OuRs.TeSt"),
    ("hosted-fullwidth", "ok@ｏｕｒｓ.test"),
    ("hosted-soft-hyphen", "ok@ours\u00ad.test"),
    ("hosted-idn-uppercase", "info@BÜCHER.test"),
    ("hosted-idn-punycode", "info@xn--bcher-kva.test"),
    # Submission: a logged-in user tries to send as someone else, or to smuggle recipients.
    ("sub-other-local", Dialogue(ALICE, "bob@example.test")),
    ("sub-other-domain", Dialogue(ALICE, "alice@other.test")),
    ("sub-subdomain-lookalike", Dialogue(ALICE, "alice@example.test.other.test")),
    ("sub-homoglyph-domain", Dialogue(ALICE, "alice@еxample.test")),
    ("sub-percent-hack", Dialogue(ALICE, "alice%other.test@example.test")),
    ("sub-quoted-local", Dialogue(ALICE, '"alice@example.test"@other.test')),
    ("sub-source-route", Dialogue(ALICE, "@example.test:alice@other.test")),
    ("sub-double-at", Dialogue(ALICE, "alice@example.test@other.test")),
    ("sub-null-sender", Dialogue(ALICE, "")),
    ("sub-header-from-other", Dialogue(ALICE, ALICE, header_from="boss@other.test")),
    ("sub-header-from-two", Dialogue(ALICE, ALICE, header_from=f"{ALICE}, boss@other.test")),
    ("sub-header-from-display", Dialogue(ALICE, ALICE, header_from=f'"{ALICE}" <boss@other.test>')),
    ("sub-header-from-encoded", Dialogue(ALICE, ALICE, header_from="=?utf-8?q?alice=40example.test?= "
                                                                   "<boss@other.test>")),
    ("sub-header-from-twice", Dialogue(ALICE, ALICE, extra=b"From: boss@other.test\r\n")),
    ("sub-header-from-folded", Dialogue(ALICE, ALICE, header_from=f"{ALICE},\r\n boss@other.test")),
    ("sub-catch-all-other-domain", Dialogue("*@catch.test", "anyone@example.test",
                                            header_from="anyone@example.test")),
    ("sub-rcpt-list-smuggled", Dialogue(ALICE, ALICE, rcpts=("bob@dest.test>,<eve@other.test",))),
]

ACCEPTED = {
    "hosted-mixed-case": "one@dest.test",
    "hosted-fullwidth": "one@dest.test",
    "hosted-soft-hyphen": "one@dest.test",
    "hosted-idn-uppercase": "idn@dest.test",
    "hosted-idn-punycode": "idn@dest.test",
}
MX_TRICKS = [(name, t) for name, t in RELAY_TRICKS if isinstance(t, str)]
SUBMISSION_TRICKS = [(name, t) for name, t in RELAY_TRICKS if isinstance(t, Dialogue)]
# a CR/LF inside a trick makes more than one command line; each gets a reply
_CRLF = "\r\n"

SETUP = [
    ["account", "add", "owner@owner.test"],
    ["domain", "add", "ours.test", "--account", "owner@owner.test"],
    ["domain", "add", "bücher.test", "--account", "owner@owner.test"],
    ["domain", "add", "example.test", "--account", "owner@owner.test"],
    ["domain", "add", "catch.test", "--account", "owner@owner.test"],
    ["alias", "add", "ok@ours.test", "one@dest.test"],
    ["alias", "add", "postmaster@ours.test", "pm@dest.test"],
    ["alias", "add", "info@bücher.test", "idn@dest.test"],
    ["alias", "add", ALICE, "alice@dest.test"],
    ["alias", "add", "*@catch.test", "catch@dest.test"],
]


def test_the_list_is_long_enough() -> None:
    assert len(RELAY_TRICKS) >= 30
    assert len({name for name, _ in RELAY_TRICKS}) == len(RELAY_TRICKS)
    assert set(ACCEPTED) <= {name for name, _ in MX_TRICKS}


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


@pytest.fixture
def sink(clean_downstream: SmtpSink) -> SmtpSink:
    return clean_downstream


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, dns_server: LoopbackDNS,
           downstream: SmtpSink) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("hostile-relay"), {
        "dns": {"nameservers": [dns_server.address]},
        # every forged SRS trick must get its 5xx here; the guessing budgets have tests of their own
        "srs": {"secret": SECRET, "max_age_days": 21, "max_invalid_per_client": 10_000,
                "max_invalid_total": 10_000},
        "delivery": {"routes": {"*": downstream.address}},  # anything relayed anywhere would land here
        "abuse": {"max_messages_per_ip_per_minute": 10_000, "max_errors_per_session": 1_000,
                  "max_connections_per_ip": 1_000},
        "submission": {"auth_failures_per_hour": 1_000},
    })
    cli_batch(d, SETUP)
    d.start()
    yield d
    d.stop()
    assert_clean_log(d)


@pytest.fixture(scope="module")
def passwords(daemon: Daemon) -> dict[str, str]:
    out = {}
    for login in (ALICE, "*@catch.test"):
        out[login] = json.loads(daemon.cli("alias", "password", login, "--json").output)["password"]
    return out


@pytest.mark.parametrize(("name", "rcpt"), MX_TRICKS, ids=[n for n, _ in MX_TRICKS])
def test_mx_relay_trick(daemon: Daemon, sink: SmtpSink, name: str, rcpt: str) -> None:
    TALLY.hostile_inputs_tried += 1
    lines = rcpt.split(_CRLF)
    with session(daemon.mx_port) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<alice@src.test> SMTPUTF8") == 250
        s.send(b"RCPT TO:<" + rcpt.encode("utf-8") + b">\r\n")
        codes = [s.reply()[0] for _ in lines]
        if name in ACCEPTED:
            assert codes == [250], codes
            assert s.cmd(b"DATA") == 354
            s.send(message(name) + b".\r\n")
            assert s.reply()[0] == 250
        else:
            assert all(550 <= c < 560 or c in (501, 500) for c in codes), codes
            assert s.cmd(b"DATA") == 503, "no recipient was accepted"
        assert s.cmd(b"QUIT") == 221
    if name in ACCEPTED:
        got = delivered(sink, 1)
        assert [m.rcpt_tos for m in got] == [[ACCEPTED[name]]]
    assert [r for m in sink.messages for r in m.rcpt_tos if r != ACCEPTED.get(name)] == []


def _submit(d: Daemon, password: str, trick: Dialogue) -> list[int]:
    """The codes the dialogue gets: MAIL, each RCPT line, and DATA's final reply if it got that far."""
    with session(d.submission_port) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"STARTTLS") == 220
        s.starttls(no_tls_check())
        assert s.cmd(b"EHLO client.test") == 250
        blob = base64.b64encode(f"\0{trick.login}\0{password}".encode()).decode()
        assert s.cmd(f"AUTH PLAIN {blob}".encode()) == 235
        codes = [s.cmd(f"MAIL FROM:<{trick.mail_from}>".encode())]
        for rcpt in trick.rcpts:
            s.send(f"RCPT TO:<{rcpt}>\r\n".encode())
            codes += [s.reply()[0] for _ in rcpt.split(_CRLF)]
        code = s.cmd(b"DATA")
        if code == 354:
            body = (f"From: {trick.header_from}\r\nTo: bob@dest.test\r\n".encode() + trick.extra +
                    b"Subject: trick\r\n\r\nhello\r\n.\r\n")
            s.send(body)
            code = s.reply()[0]
        codes.append(code)
        assert s.cmd(b"QUIT") == 221
    return codes


def _queued(d: Daemon) -> int:
    return len(json.loads(d.cli("emails", "list", "--json").output))


@pytest.mark.parametrize(("name", "trick"), SUBMISSION_TRICKS, ids=[n for n, _ in SUBMISSION_TRICKS])
def test_submission_relay_trick(daemon: Daemon, passwords: dict[str, str], sink: SmtpSink, name: str,
                                trick: Dialogue) -> None:
    TALLY.hostile_inputs_tried += 1
    before = _queued(daemon)
    codes = _submit(daemon, passwords[trick.login], trick)
    assert codes[-1] in (503, 550, 553), codes
    assert _queued(daemon) == before, "a refused submission must not be queued"
    assert sink.messages == []


def test_a_legitimate_submission_still_goes_out_with_only_its_envelope_recipient(
        daemon: Daemon, passwords: dict[str, str], sink: SmtpSink) -> None:
    """The control for the tricks above: the same path works for the real sender, and a Bcc header
    adds no recipient."""
    codes = _submit(daemon, passwords[ALICE], Dialogue(ALICE, ALICE, extra=b"Bcc: eve@other.test\r\n"))
    assert codes[-1] == 250, codes
    got = delivered(sink, 1)
    assert [m.rcpt_tos for m in got] == [["bob@dest.test"]]
    assert b"eve@other.test" not in got[0].data


def test_unauthenticated_submission_relays_nothing(daemon: Daemon, sink: SmtpSink) -> None:
    TALLY.hostile_inputs_tried += 1
    with session(daemon.submission_port) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<alice@example.test>") == 530, "not before STARTTLS"
        assert s.cmd(b"STARTTLS") == 220
        s.starttls(no_tls_check())
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<alice@example.test>") == 530
        assert s.cmd(b"RCPT TO:<victim@other.test>") in (503, 530)
        assert s.cmd(b"DATA") in (503, 530)
    assert sink.messages == []


def test_all_relay_tricks_in_one_pipelined_session(daemon: Daemon, sink: SmtpSink) -> None:
    """Every MX trick in one write, with the hosted variants left out: no recipient is accepted."""
    refused = [t for n, t in MX_TRICKS if n not in ACCEPTED]
    TALLY.hostile_inputs_tried += len(refused)
    batch = b"".join(b"RCPT TO:<" + t.encode() + b">\r\n" for t in refused)
    with session(daemon.mx_port) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<alice@src.test> SMTPUTF8") == 250
        s.send(batch + b"DATA\r\n")
        codes = [s.reply()[0] for t in refused for _ in t.split(_CRLF)]
        assert [c for c in codes if c < 500] == []
        assert s.reply()[0] == 503
        assert s.cmd(b"QUIT") == 221
    assert sink.messages == []


def test_the_daemon_still_forwards_after_the_tricks(daemon: Daemon, sink: SmtpSink) -> None:
    with session(daemon.mx_port) as s:
        assert s.cmd(b"EHLO client.test") == 250
        assert s.cmd(b"MAIL FROM:<alice@src.test>") == 250
        assert s.cmd(b"RCPT TO:<ok@ours.test>") == 250
        assert s.cmd(b"DATA") == 354
        s.send(message("after the tricks") + b".\r\n")
        assert s.reply()[0] == 250
    assert [m.rcpt_tos for m in delivered(sink, 1)] == [["one@dest.test"]]
