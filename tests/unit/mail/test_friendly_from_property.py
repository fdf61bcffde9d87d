"""Friendly-From, as a property: whatever the sender's display name holds (length, quotes, commas,
backslashes, encoded words, angle brackets, non-ASCII, controls), the rewritten From parsed by Python's
email package is exactly one mailbox, the alias, and no line of the header is longer than 998 bytes."""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fwdmail.mail.friendly_from import rewrite_from
from tests.support.hostile import TALLY, register_summary

ALIAS = "alias@hosted.test"
SENDER = "someone@sender.test"

_PIECES = st.sampled_from([
    '"', "\\", ",", "<", ">", "@", ";", ":", "(", ")", " ", "\t", "=?utf-8?q?a=2C_b?=", "=?", "?=",
    "evil@attacker.test", "<evil@attacker.test>", '", evil@attacker.test, "', "ü", "日本", "\u200b",
    "a" * 40, "x,y", "\\\"", "\x00", "\x7f",
])
NAMES = st.lists(st.one_of(_PIECES, st.text(max_size=20)), max_size=30).map("".join)


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> None:
    register_summary(request.config)


def _from_fields(raw: bytes) -> list[str]:
    msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
    return msg.get_all("From") or []


def _as_sent(name: str) -> bytes:
    """The original From field carrying `name`, the way a sender's MUA would write it."""
    name = name.replace("\r", " ").replace("\n", " ")
    return f"From: {email.utils.formataddr((name, SENDER))}\r\n".encode("utf-8", "surrogateescape")


def _check(original_from: bytes) -> bytes:
    raw = original_from + b"Subject: hi\r\n\r\nbody\r\n"
    out = rewrite_from(raw, ALIAS)
    if out == raw:
        return out  # an unreadable From is left as it was (not rewritten)
    head = out.partition(b"\r\n\r\n")[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    [field] = _from_fields(out)
    mailboxes = email.utils.getaddresses([str(field)])
    assert [addr for _, addr in mailboxes] == [ALIAS], (head, mailboxes)
    parsed = email.message_from_bytes(out, policy=email.policy.default)["From"]
    assert [a.addr_spec for a in parsed.addresses] == [ALIAS], (head, parsed.addresses)
    assert not parsed.defects, (head, parsed.defects)
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(NAMES)
@example("A" * 70 + ", evil@attacker.test")
@example('"' * 90)
@example("\\" * 90 + ", evil@attacker.test")
@example("=?utf-8?q?evil=40attacker.test?= " * 4)
def test_rewritten_from_is_one_mailbox_ours(name: str) -> None:
    TALLY.hostile_inputs_tried += 1
    _check(_as_sent(name))
    TALLY.item("13.4 friendly-From", 1, "every rewritten From parsed as exactly one mailbox, the alias")


@settings(max_examples=300, deadline=None)
@given(NAMES)
def test_raw_display_names_too(name: str) -> None:
    """The display name as raw bytes between quotes, as a hostile client would write it."""
    escaped = name.replace("\r", "").replace("\n", "").replace("\\", "\\\\").replace('"', '\\"')
    _check(f'From: "{escaped}" <{SENDER}>\r\n'.encode("utf-8", "surrogateescape"))


def test_a_long_name_with_a_comma_stays_the_display_name() -> None:
    name = "Very Long Display Name Of Someone Important, " + "x" * 60
    out = _check(_as_sent(name))
    # RFC 2047 decoding, which drops the folding between encoded words (the email package's header
    # registry keeps a space there, a known quirk of its own)
    [(shown, addr)] = email.utils.getaddresses([email.message_from_bytes(out)["From"]])
    assert addr == ALIAS
    assert str(email.header.make_header(email.header.decode_header(shown))) == name
    from_lines = out.partition(b"\r\nReply-To:")[0].split(b"\r\n")
    assert len(from_lines) > 1 and all(len(line) <= 78 for line in from_lines)


def test_a_short_plain_name_stays_readable() -> None:
    out = _check(b'From: "Smith, Alice \\"Al\\"" <alice@sender.test>\r\n')
    assert out.startswith(b'From: "Smith, Alice \\"Al\\"" <alias@hosted.test>\r\n')
