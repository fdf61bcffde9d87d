"""The `forward-email=` TXT parser: every syntax Forward Email documents, and junk skipped and counted."""

from __future__ import annotations

from fwdmail.mail.forwardemail_txt import MAX_TEXT, TxtAliases, parse_records

DOMAIN = "dns.test"


def parse(*records: str | bytes, accept_url: object = None) -> TxtAliases:
    return parse_records(list(records), DOMAIN, "owner@owner.test", accept_url)  # type: ignore[arg-type]


def table(result: TxtAliases) -> dict[tuple[str, str], tuple[tuple[str, ...], str]]:
    return {(a.kind, a.local): (a.destinations, a.state) for a in result.aliases}


def test_exact_catch_all_and_regex() -> None:
    got = parse("forward-email=hello:one@dest.test,two@dest.test,/^(.+)-sales$/:$1@dest.test")
    assert table(got) == {
        ("exact", "hello"): (("one@dest.test",), "enabled"),
        ("catch-all", "*"): (("two@dest.test",), "enabled"),
        ("regex", "^(.+)-sales$"): (("$1@dest.test",), "enabled"),
    }
    assert got.skipped == 0 and got.records == 1
    assert all(a.domain == DOMAIN and a.account_email == "owner@owner.test" for a in got.aliases)


def test_several_records_and_repeated_names_join() -> None:
    got = parse("forward-email=hello:a@dest.test", "v=spf1 -all",
                "forward-email=hello:B@Dest.test,x@dest.test", "forward-email=HELLO:a@DEST.test, y@dest.test")
    assert table(got) == {
        ("exact", "hello"): (("a@dest.test", "B@dest.test"), "enabled"),
        ("catch-all", "*"): (("x@dest.test", "y@dest.test"), "enabled"),
    }
    assert got.records == 3


def test_each_disabled_mode() -> None:
    got = parse("forward-email=!quiet:q@dest.test,!!soft:s@dest.test,!!!hard:h@dest.test,!bare,"
                "!/^spam$/:x@dest.test")
    assert table(got) == {
        ("exact", "quiet"): ((), "quiet"),
        ("exact", "soft"): ((), "tempfail"),
        ("exact", "hard"): ((), "reject"),
        ("exact", "bare"): ((), "quiet"),
        ("regex", "^spam$"): ((), "quiet"),
    }


def test_a_disabled_entry_beside_an_enabled_one_drops_only_its_destination() -> None:
    got = parse("forward-email=hello:a@dest.test,!hello:b@dest.test,!!!gone:c@dest.test,!gone:d@dest.test")
    assert table(got) == {("exact", "hello"): (("a@dest.test",), "enabled"),
                          ("exact", "gone"): ((), "reject")}


def test_other_forward_email_records_are_ignored() -> None:
    got = parse("forward-email-site-verification=abc123", "forward-email-port=2525",
                "google-site-verification=xyz", "forward-email=a:a@dest.test")
    assert table(got) == {("exact", "a"): (("a@dest.test",), "enabled")}
    assert got.records == 1 and got.skipped == 0


def test_regex_flags_are_accepted_and_matching_stays_case_insensitive() -> None:
    got = parse("forward-email=/^(info|support)$/gi:team+$1@dest.test")
    assert table(got) == {("regex", "^(info|support)$"): (("team+$1@dest.test",), "enabled")}


def test_webhook_urls_are_refused_without_the_webhook_seam() -> None:
    got = parse("forward-email=hook:https://hooks.example/in,both:https://h.example/x,both:b@dest.test,"
                "http://catch.example/")
    assert table(got) == {("exact", "hook"): ((), "reject"), ("exact", "both"): (("b@dest.test",), "enabled"),
                          ("catch-all", "*"): ((), "reject")}
    assert got.webhooks_refused == 3 and got.skipped == 0


def test_webhook_urls_are_kept_as_the_seam_returns_them() -> None:
    def accept(url: str) -> str:
        if not url.startswith("https://"):
            raise ValueError("https only")
        return url.lower()

    got = parse("forward-email=hook:https://Hooks.example/In,bad:http://plain.example/", accept_url=accept)
    assert table(got) == {("exact", "hook"): (("https://hooks.example/in",), "enabled")}
    assert got.skipped == 1 and got.webhooks_refused == 0


def test_junk_entries_are_skipped_and_counted() -> None:
    junk = ["", "nocolon", "a:", ":x@dest.test", "a b:x@dest.test", "a:not an address", "a+tag:x@dest.test",
            "!!!!four:x@dest.test", "/(unclosed/:x@dest.test", "/x/Q:x@dest.test", "//:x@dest.test",
            "a@b.test:x@dest.test", "a:x@dest.test\u202e", "ok:ok@dest.test"]
    got = parse("forward-email=" + ",".join(junk), b"forward-email=bad:\xff@dest.test", b"\xff\xfe",
                "forward-email=,,,")
    assert table(got) == {("exact", "ok"): (("ok@dest.test",), "enabled")}
    assert got.skipped == 13


def test_destinations_and_text_are_bounded() -> None:
    many = ",".join(f"n:d{i}@dest.test" for i in range(15))
    got = parse("forward-email=" + many)
    assert len(table(got)[("exact", "n")][0]) == 10 and got.skipped == 5
    huge = ["forward-email=" + ",".join(f"x{i}:d@dest.test" for i in range(j * 300, j * 300 + 300))
            for j in range(30)]
    got = parse(*huge)
    assert sum(len(r) for r in huge) > MAX_TEXT
    assert 0 < len(got.aliases) < 9000 and got.records < 30
