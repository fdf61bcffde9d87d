"""Friendly-From: when it applies, and what the rewritten headers look like."""

from __future__ import annotations

import email
import email.policy

import pytest

from fwdmail.auth.dkim_check import DkimResult
from fwdmail.auth.dmarc import DmarcResult
from fwdmail.auth.results import AuthReport
from fwdmail.auth.spf import SpfResult
from fwdmail.mail.friendly_from import rewrite_from
from fwdmail.policy.auth_verdict import needs_rewrite

ALIAS = "alias@hosted.test"


def _report(policy: str, dkim: tuple[DkimResult, ...] = (), result: str = "pass") -> AuthReport:
    return AuthReport(SpfResult("pass", "sender.test"), dkim, DmarcResult(result, "sender.test", policy))


@pytest.mark.parametrize(("report", "expected"), [
    (_report("reject"), True),
    (_report("quarantine", result="fail"), True),
    (_report("none"), False),
    (_report(""), False),
    (_report("reject", (DkimResult("pass", "mail.sender.test", "s"),)), False),  # aligned DKIM survives
    (_report("reject", (DkimResult("pass", "other.test", "s"),)), True),  # unaligned does not help
    (_report("reject", (DkimResult("fail", "sender.test", "s"),)), True),
])
def test_needs_rewrite(report: AuthReport, expected: bool) -> None:
    assert needs_rewrite(report) is expected


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_from_becomes_the_alias_with_the_name_and_reply_to_the_sender() -> None:
    raw = (b"Subject: hi\r\nFrom: \"Smith, Alice\" <alice@sender.test>\r\nTo: alias@hosted.test\r\n"
           b"\r\nbody\r\n")
    out = rewrite_from(raw, ALIAS)
    msg = _parse(out)
    assert msg["From"].addresses[0].display_name == "Smith, Alice"
    assert msg["From"].addresses[0].addr_spec == ALIAS
    assert msg["Reply-To"].addresses[0].addr_spec == "alice@sender.test"
    assert msg["Reply-To"].addresses[0].display_name == "Smith, Alice"
    assert out.startswith(b"Subject: hi\r\n") and out.endswith(b"To: alias@hosted.test\r\n\r\nbody\r\n")
    assert b"\n" not in out.replace(b"\r\n", b"")


def test_encoded_and_utf8_names_and_folded_from() -> None:
    raw = b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?=\r\n <j@sender.test>\r\n\r\nbody\r\n"
    msg = _parse(rewrite_from(raw, ALIAS))
    assert str(msg["From"]) == f"Jürgen Müller <{ALIAS}>"
    assert msg["Reply-To"].addresses[0].addr_spec == "j@sender.test"
    raw8 = "From: Zoë <z@sender.test>\r\n\r\nbody\r\n".encode()
    out = rewrite_from(raw8, ALIAS)
    assert out.split(b"\r\n")[0].isascii()  # the new From is RFC 2047 encoded
    assert str(_parse(out)["From"]) == f"Zoë <{ALIAS}>"


def test_no_display_name_and_existing_reply_to() -> None:
    raw = b"From: bob@sender.test\r\nReply-To: list@lists.test\r\n\r\nbody\r\n"
    out = rewrite_from(raw, ALIAS)
    msg = _parse(out)
    assert str(msg["From"]) == f'"bob at sender.test" <{ALIAS}>'
    assert msg.get_all("Reply-To") == ["list@lists.test"]


def test_unusable_from_leaves_the_message_alone() -> None:
    for raw in (b"Subject: none\r\n\r\nbody\r\n",
                b"From: a@x.test\r\nFrom: b@y.test\r\n\r\nbody\r\n",
                b"From: a@x.test, b@y.test\r\n\r\nbody\r\n",
                b"From: undisclosed\r\n\r\nbody\r\n"):
        assert rewrite_from(raw, ALIAS) == raw
    assert rewrite_from(b"From: a@x.test\r\n\r\nb\r\n", "not an address") == b"From: a@x.test\r\n\r\nb\r\n"


def test_from_in_the_body_is_not_touched() -> None:
    raw = b"Subject: s\r\n\r\nFrom: a@x.test\r\n"
    assert rewrite_from(raw, ALIAS) == raw
