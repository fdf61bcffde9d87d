"""Sender list patterns as the admin types them, and what they match."""

from __future__ import annotations

import pytest

from fwdmail.mail.addresses import AddressError
from fwdmail.policy.senderlists import SenderLists, parse_pattern


@pytest.mark.parametrize(("typed", "stored"), [
    ("Boss@Corp.TEST", "boss@corp.test"), ("@Corp.Test", "@corp.test"),
    ("@bücher.test", "@xn--bcher-kva.test"), ("192.0.2.7", "192.0.2.7"), ("192.0.2.7/24", "192.0.2.0/24"),
    ("2001:DB8::1", "2001:db8::1"), ("2001:db8::/32", "2001:db8::/32"), ("::ffff:192.0.2.7", "192.0.2.7"),
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
])
def test_patterns_are_stored_normalised(typed: str, stored: str) -> None:
    assert parse_pattern(typed) == stored


@pytest.mark.parametrize("bad", ["", "   ", "not a pattern", "@", "@-bad-.test", "a@b@c.test", "300.1.1.1",
                                 "10.0.0.0/33", "@x.test\u202e"])
def test_bad_patterns_are_refused_with_a_message(bad: str) -> None:
    with pytest.raises(AddressError):
        parse_pattern(bad)


def test_matching_address_domain_ip_cidr_and_allow_over_deny() -> None:
    lists = SenderLists.of(["boss@corp.test", "203.0.113.9"],
                           ["@corp.test", "x@spam.test", "192.0.2.0/24", "2001:db8::/32"])
    assert lists.verdict("Boss@Corp.test", "198.51.100.1") == "allow"
    assert lists.verdict("intern@corp.test", "198.51.100.1") == "deny"
    assert lists.verdict("intern@sub.corp.test", "198.51.100.1") == ""
    assert lists.verdict("X@spam.test", "198.51.100.1") == "deny"
    assert lists.verdict("", "192.0.2.200") == "deny"
    assert lists.verdict("", "::ffff:192.0.2.1") == "deny"
    assert lists.verdict("", "2001:db8:1::5") == "deny"
    assert lists.verdict("intern@corp.test", "203.0.113.9") == "allow"
    assert lists.verdict("someone@else.test", "not an ip") == ""
