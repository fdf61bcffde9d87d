"""Addresses, domains and alias specs: what is accepted, how it is normalised, what is refused and why."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwdmail.mail.addresses import (
    Address,
    AddressError,
    AliasSpec,
    normalize_address,
    normalize_domain,
    parse_address,
    parse_alias_spec,
    parse_destinations,
)


@pytest.mark.parametrize("value,expected", [
    ("example.com", "example.com"),
    ("Example.COM.", "example.com"),
    ("  mail.example.co.uk ", "mail.example.co.uk"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ("a-b.c1", "a-b.c1"),
    ("x" * 63 + ".com", "x" * 63 + ".com"),
])
def test_domains_are_lowercase_a_labels(value: str, expected: str) -> None:
    assert normalize_domain(value) == expected
    assert normalize_domain(expected) == expected


@pytest.mark.parametrize("value", [
    "", ".", "com", "localhost", "-a.com", "a-.com", "a..com", ".a.com", "a_b.com", "a b.com",
    "x" * 64 + ".com", ".".join(["a" * 60] * 5), "example.123", "127.0.0.1", "[127.0.0.1]",
    "xn--zz.com", "b\x00d.com", "a@b.com", "💩.la",
])
def test_bad_domains_are_refused(value: str) -> None:
    with pytest.raises(AddressError, match="domain"):
        normalize_domain(value)


@pytest.mark.parametrize("value,local,domain", [
    ("user@example.com", "user", "example.com"),
    ("<User.Name@Example.COM>", "User.Name", "example.com"),
    ("first.last+tag@sub.example.org", "first.last+tag", "sub.example.org"),
    ("o'brien@example.com", "o'brien", "example.com"),
    ("jörg@bücher.example", "jörg", "xn--bcher-kva.example"),
    ("a!#$%&'*+/=?^_`{|}~-@example.com", "a!#$%&'*+/=?^_`{|}~-", "example.com"),
])
def test_addresses_keep_the_local_part_and_normalise_the_domain(value: str, local: str, domain: str) -> None:
    assert parse_address(value) == Address(local, domain)
    assert normalize_address(value) == f"{local}@{domain}"


@pytest.mark.parametrize("value,why", [
    ("", "no domain"),
    ("user", "no domain"),
    ("user@", "domain"),
    ("@example.com", "empty local part"),
    ("@a.example,@b.example:user@c.example", "source routes"),
    ('"quoted"@example.com', "quoted"),
    ("back\\slash@example.com", "quoted"),
    ("a@b@example.com", "more than one @"),
    ("a b@example.com", "invalid address"),
    ("a\r\nRCPT TO:<x@y.com>@example.com", "invalid address"),
    ("user@[127.0.0.1]", "invalid address"),
    ("user@example.com.", "trailing dot"),
    (".user@example.com", "bad local part"),
    ("user.@example.com", "bad local part"),
    ("us..er@example.com", "bad local part"),
    ("x" * 65 + "@example.com", "bad local part"),
    ("ü" * 33 + "@example.com", "bad local part"),
    ("user@exa mple.com", "invalid address"),
])
def test_bad_addresses_say_why(value: str, why: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_address(value)
    assert why in str(exc.value)
    assert "\n" not in str(exc.value).replace("\\n", "")


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_any_text_parses_or_raises_address_error(text: str) -> None:
    try:
        addr = parse_address(text)
    except AddressError:
        return
    assert "@" not in addr.local and addr.domain == normalize_domain(addr.domain)
    assert parse_address(str(addr)) == addr


@pytest.mark.parametrize("value,spec", [
    ("Hello@Example.com", AliasSpec("exact", "hello", "example.com")),
    ("*@Bücher.example", AliasSpec("catch-all", "*", "xn--bcher-kva.example")),
    ("/^(.+)-sales$/@example.com", AliasSpec("regex", "^(.+)-sales$", "example.com")),
    ("/a/b/@example.com", AliasSpec("regex", "a/b", "example.com")),
    ("/^Case$/@EXAMPLE.com", AliasSpec("regex", "^Case$", "example.com")),
])
def test_alias_specs(value: str, spec: AliasSpec) -> None:
    assert parse_alias_spec(value) == spec
    assert parse_alias_spec(spec.address) == spec


@pytest.mark.parametrize("value,why", [
    ("user+tag@example.com", "plus-addressing"),
    ("/(unclosed/@example.com", "invalid regex alias"),
    ("//@example.com", "empty pattern"),
    ("/abc@example.com", "write it as /pattern/@domain"),
    ("/abc/@", "domain"),
    ("*@", "domain"),
    ("*@com", "domain"),
    ("*", "no domain"),
    ("user@nodot", "domain"),
])
def test_bad_alias_specs(value: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        parse_alias_spec(value)


def test_destinations_are_normalised_deduplicated_and_ordered() -> None:
    assert parse_destinations(["B@Example.org", "<a@bücher.example>", "b@example.ORG", "c@example.org"]) == [
        "B@example.org", "a@xn--bcher-kva.example", "c@example.org",
    ]
    assert parse_destinations(["sales+$1@example.org"]) == ["sales+$1@example.org"]


def test_destination_count_is_1_to_10() -> None:
    ten = [f"u{i}@example.org" for i in range(10)]
    assert parse_destinations(ten) == ten
    with pytest.raises(AddressError, match="1 to 10 destinations, got 11"):
        parse_destinations([*ten, "u10@example.org"])
    with pytest.raises(AddressError, match="1 to 10 destinations, got 0"):
        parse_destinations([])
    assert len(parse_destinations([*ten, "U0@EXAMPLE.org"])) == 10  # a duplicate is not an 11th


@pytest.mark.parametrize("value,why", [
    ("not-an-address", "no domain"),
    ("a@$1.example.com", "invalid domain"),
    ("a@b@c.com", "more than one @"),
    ("user@localhost", "domain"),
])
def test_bad_destinations(value: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        parse_destinations(["ok@example.org", value])


@pytest.mark.parametrize("parse", [parse_address, normalize_domain, parse_alias_spec])
def test_undecodable_input_is_refused(parse: object) -> None:
    """Bytes that are not UTF-8 arrive from argv as lone surrogates; they are refused, never stored."""
    for value in ("\udcff@example.com", "ex\udcffample.com", "/\udcff/@example.com"):
        with pytest.raises(AddressError):
            parse(value)  # type: ignore[operator]
    with pytest.raises(AddressError, match="not valid UTF-8"):
        parse("\udcff")  # type: ignore[operator]


HIDDEN = ["\x1b", "\x07", "\x7f", "\x85", "\x9b", "\u202e", "\u202d", "\u2066", "\u2069", "\u200f", "\u200b",
          "\u2028", "\ufeff", "\U000e0041", "\u00ad"]


@pytest.mark.parametrize("ch", HIDDEN, ids=lambda c: f"U+{ord(c):04X}")
def test_control_and_bidi_characters_are_refused_in_what_is_kept_as_written(
        ch: str, request: pytest.FixtureRequest) -> None:
    """An alias or destination that hides or reorders text would lie to whoever lists it later."""
    from tests.support.hostile import TALLY, register_summary

    register_summary(request.config)
    for parse, value in (
        (parse_address, f"us{ch}er@example.com"),
        (parse_address, f"user{ch}@example.com"),
        (parse_alias_spec, f"al{ch}ias@example.com"),
        (parse_alias_spec, f"/^a{ch}b$/@example.com"),
        (lambda v: parse_destinations([v]), f"dest{ch}@example.org"),
    ):
        with pytest.raises(AddressError, match="control, invisible or bidi characters are refused") as exc:
            parse(value)  # type: ignore[operator]
        assert ch not in str(exc.value)  # the message names it as an escape, never raw
    TALLY.item("13.3 hidden characters in addresses", 5, "refused in local parts and patterns")


@pytest.mark.parametrize("ch", HIDDEN, ids=lambda c: f"U+{ord(c):04X}")
def test_domains_with_hidden_characters_are_refused_or_cleaned_by_idna(ch: str) -> None:
    """UTS 46 refuses controls and bidi characters in a domain and maps invisible ones away: what is
    stored is plain ASCII either way."""
    for value in (f"exa{ch}mple.com", f"user@exa{ch}mple.com", f"*@exa{ch}mple.com"):
        try:
            result = str(parse_alias_spec(value).domain) if "@" in value else normalize_domain(value)
        except AddressError:
            continue
        assert result == "example.com", (value, result)


def test_surrounding_blanks_and_line_ends_are_still_stripped() -> None:
    assert normalize_address(" user@example.com\r\n") == "user@example.com"
    assert parse_alias_spec("\thello@example.com ") == AliasSpec("exact", "hello", "example.com")
