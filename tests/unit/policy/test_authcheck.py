"""SPF, DKIM and DMARC of inbound mail against real records on the loopback DNS server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import authres
import dkim as dkimpy
import pytest
import spf as spflib

from fwdmail.auth import check as auth_check
from fwdmail.auth import dmarc as auth_dmarc
from fwdmail.auth import results as auth_results
from fwdmail.auth import spf as auth_spf
from fwdmail.auth.dkim_check import DkimResult
from fwdmail.auth.dmarc import DmarcResult
from fwdmail.auth.results import AuthReport
from fwdmail.auth.spf import SpfResult
from fwdmail.policy import auth_verdict
from fwdmail.runtime import keys
from fwdmail.smtp.replies import AUTH_TEMPFAIL, DMARC_REJECTED, SPF_REJECTED
from tests.support.auth import key, message, publish_key, resolver, run, sign, unique_domain
from tests.support.dns_server import LoopbackDNS

IP = "192.0.2.10"
OTHER_IP = "198.51.100.7"


def spf(dns_server: LoopbackDNS, mail_from: str, ip: str = IP, helo: str = "mail.client.test") -> SpfResult:
    return run(auth_spf.check_spf(resolver(dns_server), ip, mail_from, helo))


def check(dns_server: LoopbackDNS, msg: bytes, mail_from: str, ip: str = IP,
          helo: str = "mail.client.test") -> AuthReport:
    return run(auth_check.check_sender(msg, mail_from, ip, helo, resolver(dns_server), timeout=10))


# SPF

@pytest.mark.parametrize(("record", "expected"), [
    (f"v=spf1 ip4:{IP} -all", "pass"),
    ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
    (f"v=spf1 ip4:{OTHER_IP} -all", "fail"),
    (f"v=spf1 ip4:{OTHER_IP} ~all", "softfail"),
    (f"v=spf1 ip4:{OTHER_IP} ?all", "neutral"),
    ("v=spf1 ip4:192.0.2.999 -all", "permerror"),
    ("v=spf1 frobnicate -all", "permerror"),
])
def test_spf_results_of_a_record(dns_server: LoopbackDNS, record: str, expected: str) -> None:
    dom = unique_domain()
    dns_server.add(dom, "TXT", record)
    got = spf(dns_server, f"bounce@{dom}")
    assert (got.result, got.domain, got.identity) == (expected, dom, "mailfrom")


def test_spf_none_without_a_record_and_with_only_other_txt(dns_server: LoopbackDNS) -> None:
    assert spf(dns_server, f"x@{unique_domain()}").result == "none"
    dom = unique_domain()
    dns_server.add(dom, "TXT", "google-site-verification=abc")
    assert spf(dns_server, f"x@{dom}").result == "none"


def test_spf_two_records_is_permerror(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    dns_server.add(dom, "TXT", f"v=spf1 ip4:{IP} -all")
    dns_server.add(dom, "TXT", "v=spf1 -all")
    assert spf(dns_server, f"x@{dom}").result == "permerror"


def test_spf_temperror_when_dns_fails(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    dns_server.set_failure(dom, "SERVFAIL")
    assert spf(dns_server, f"x@{dom}").result == "temperror"


def test_spf_temperror_inside_an_include(dns_server: LoopbackDNS) -> None:
    dom, inc = unique_domain(), unique_domain("inc")
    dns_server.add(dom, "TXT", f"v=spf1 include:{inc} -all")
    dns_server.set_failure(inc, "SERVFAIL")
    assert spf(dns_server, f"x@{dom}").result == "temperror"


def test_spf_follows_include_redirect_a_and_mx(dns_server: LoopbackDNS) -> None:
    dom, inc, red = unique_domain(), unique_domain("inc"), unique_domain("red")
    dns_server.add(dom, "TXT", f"v=spf1 include:{inc} redirect={red}")
    dns_server.add(inc, "TXT", "v=spf1 ip4:203.0.113.0/24 -all")
    dns_server.add(red, "TXT", f"v=spf1 a:web.{red} mx -all")
    dns_server.add(f"web.{red}", "A", "198.51.100.80")
    dns_server.add(red, "MX", f"10 mx1.{red}.")
    dns_server.add(red, "MX", f"20 mx2.{red}.")
    dns_server.add(f"mx1.{red}", "A", "198.51.100.1")
    dns_server.add(f"mx2.{red}", "A", IP)
    assert spf(dns_server, f"x@{dom}", ip="203.0.113.9").result == "pass"  # via include
    assert spf(dns_server, f"x@{dom}", ip="198.51.100.80").result == "pass"  # a: of the redirect
    assert spf(dns_server, f"x@{dom}", ip=IP).result == "pass"  # mx of the redirect
    assert spf(dns_server, f"x@{dom}", ip="198.51.100.2").result == "fail"


def test_spf_ipv6_client(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    dns_server.add(dom, "TXT", "v=spf1 ip6:2001:db8::/32 mx -all")
    dns_server.add(dom, "MX", f"10 mx.{dom}.")
    dns_server.add(f"mx.{dom}", "AAAA", "2001:db9::25")
    assert spf(dns_server, f"x@{dom}", ip="2001:db8::1").result == "pass"
    assert spf(dns_server, f"x@{dom}", ip="2001:db9::25").result == "pass"
    assert spf(dns_server, f"x@{dom}", ip="2001:dba::1").result == "fail"


def test_spf_lookup_limit_is_permerror(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    includes = [unique_domain("inc") for _ in range(11)]
    dns_server.add(dom, "TXT", "v=spf1 " + " ".join(f"include:{i}" for i in includes) + " -all")
    for inc in includes:
        dns_server.add(inc, "TXT", "v=spf1 ip4:203.0.113.1 -all")
    assert spf(dns_server, f"x@{dom}").result == "permerror"


def test_spf_include_loop_terminates(dns_server: LoopbackDNS) -> None:
    a, b = unique_domain(), unique_domain()
    dns_server.add(a, "TXT", f"v=spf1 include:{b} -all")
    dns_server.add(b, "TXT", f"v=spf1 include:{a} -all")
    assert spf(dns_server, f"x@{a}").result == "permerror"


def test_spf_rounds_are_few_and_run_through_the_cpu_seam(dns_server: LoopbackDNS) -> None:
    dom, mx = unique_domain(), unique_domain("mx")
    includes = [unique_domain("inc") for _ in range(8)]
    dns_server.add(dom, "TXT", "v=spf1 " + " ".join(f"include:{i}" for i in includes) + f" mx:{mx} -all")
    for n, inc in enumerate(includes):
        dns_server.add(inc, "TXT", f"v=spf1 ip4:203.0.113.{n} -all")
    dns_server.add(mx, "MX", f"10 mx.{mx}.")
    dns_server.add(f"mx.{mx}", "A", IP)
    rounds: list[str] = []

    async def counting(fn: Callable[..., Any], *args: Any) -> Any:
        rounds.append(fn.__name__)
        return fn(*args)

    got = run(auth_spf.check_spf(resolver(dns_server), IP, f"x@{dom}", "h.test", cpu=counting))
    assert got.result == "pass"
    assert rounds and set(rounds) == {"_spf_round"}
    assert len(rounds) <= 3  # include and mx targets are fetched with the record that names them
    limited = run(auth_spf.check_spf(resolver(dns_server), IP, f"x@{dom}", "h.test", max_rounds=1))
    assert limited.result == "temperror"


def test_spf_oversized_record_is_permerror(dns_server: LoopbackDNS) -> None:
    dom, inc = unique_domain(), unique_domain("inc")
    big = "v=spf1 " + " ".join(f"ip4:10.{n // 256}.{n % 256}.0/24" for n in range(400)) + " -all"
    assert len(big) > auth_spf.MAX_SPF_TXT_BYTES
    dns_server.add(dom, "TXT", f"v=spf1 include:{inc} ip4:{IP} -all")
    dns_server.add(inc, "TXT", big)
    assert spf(dns_server, f"x@{dom}").result == "permerror"


def test_spf_leaves_pyspf_alone_and_never_uses_its_dns(dns_server: LoopbackDNS,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    own = (getattr(spflib, "DNSLookup_dnspython", None), getattr(spflib, "DNSLookup_pydns", None))
    assert spflib.DNSLookup in own
    asked: list[tuple[Any, ...]] = []

    def pyspf_dns(*args: Any) -> list[Any]:
        asked.append(args)
        raise spflib.TempError("pyspf's own DNS was used")

    monkeypatch.setattr(spflib, "DNSLookup", pyspf_dns)
    dom, red = unique_domain(), unique_domain("red")
    dns_server.add(dom, "TXT", f"v=spf1 a mx include:{red} -all")
    dns_server.add(dom, "A", "192.0.2.99")
    dns_server.add(dom, "MX", f"10 mx.{dom}.")
    dns_server.add(f"mx.{dom}", "A", "192.0.2.98")
    dns_server.add(red, "TXT", f"v=spf1 ip4:{OTHER_IP} -all")
    for ip in ("192.0.2.99", "192.0.2.98", OTHER_IP):  # a, mx, include
        assert spf(dns_server, f"x@{dom}", ip=ip).result == "pass"
    assert spf(dns_server, f"x@{dom}").result == "fail"
    assert asked == []


def test_spf_null_sender_checks_helo(dns_server: LoopbackDNS) -> None:
    helo = f"mail.{unique_domain()}"
    dns_server.add(helo, "TXT", f"v=spf1 ip4:{IP} -all")
    got = spf(dns_server, "", helo=helo)
    assert (got.result, got.domain, got.identity) == ("pass", helo, "helo")
    assert spf(dns_server, "", ip=OTHER_IP, helo=helo).result == "fail"


def test_spf_garbage_identities_do_not_raise(dns_server: LoopbackDNS) -> None:
    assert spf(dns_server, "", helo="[192.0.2.1]").result in ("none", "permerror")
    assert spf(dns_server, "x@" + "a" * 70 + ".test").result in ("none", "permerror")
    assert spf(dns_server, "x@dom.test", ip="not-an-ip").result == "permerror"


# DKIM

def test_dkim_pass_fail_and_key_problems(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    publish_key(dns_server, dom, "good", key("a"))
    signed = sign(message(f"a@{dom}"), dom, "good", key("a"))
    r = resolver(dns_server)
    [res] = run(auth_check.check_dkim(signed, r))
    assert (res.result, res.domain, res.selector) == ("pass", dom, "good")
    assert res.b and signed.decode().replace("\r\n ", "").find(f"b={res.b}") > 0

    [res] = run(auth_check.check_dkim(signed.replace(b"Second line.", b"Second line!"), r))
    assert (res.result, res.reason) == ("fail", "body hash mismatch")
    [res] = run(auth_check.check_dkim(signed.replace(b"Subject: Hello", b"Subject: Hellp"), r))
    assert res.result == "fail"

    no_key = sign(message(f"a@{dom}"), dom, "missing", key("a"))
    assert run(auth_check.check_dkim(no_key, r))[0].result == "permerror"

    publish_key(dns_server, dom, "other", key("b"))
    wrong_key = sign(message(f"a@{dom}"), dom, "other", key("a"))
    assert run(auth_check.check_dkim(wrong_key, r))[0].result == "fail"

    dns_server.add(f"broken._domainkey.{dom}", "TXT", "v=DKIM1; k=rsa; p=!!notbase64")
    broken = sign(message(f"a@{dom}"), dom, "broken", key("a"))
    assert run(auth_check.check_dkim(broken, r))[0].result == "permerror"

    dns_server.set_failure(f"down._domainkey.{dom}", "SERVFAIL")
    down = sign(message(f"a@{dom}"), dom, "down", key("a"))
    assert run(auth_check.check_dkim(down, r))[0].result == "temperror"


def test_dkim_none_malformed_and_several_signatures(dns_server: LoopbackDNS) -> None:
    dom, other = unique_domain(), unique_domain()
    publish_key(dns_server, dom, "s1", key("a"))
    publish_key(dns_server, other, "s2", key("b"))
    r = resolver(dns_server)
    assert run(auth_check.check_dkim(message(f"a@{dom}"), r)) == []
    garbage = b"DKIM-Signature: v=1; this is = not; = a signature\r\n" + message(f"a@{dom}")
    assert [x.result for x in run(auth_check.check_dkim(garbage, r))] == ["permerror"]
    twice = sign(sign(message(f"a@{dom}"), dom, "s1", key("a")), other, "s2", key("b"))
    results = run(auth_check.check_dkim(twice, r))
    assert [(x.result, x.domain) for x in results] == [("pass", other), ("pass", dom)]
    broken_first = twice.replace(b"s=s2;", b"s=s3;", 1)
    assert [x.result for x in run(auth_check.check_dkim(broken_first, r))] == ["permerror", "pass"]



@pytest.mark.parametrize("options", [
    {"canonicalize": (b"simple", b"simple")},
    {"canonicalize": (b"relaxed", b"simple"), "length": True},
    {"canonicalize": (b"simple", b"relaxed"), "signature_algorithm": b"rsa-sha1"},
], ids=["simple", "relaxed-simple-l", "simple-relaxed-sha1"])
def test_dkim_canonicalisations_and_algorithms_dkimpy_verifies(dns_server: LoopbackDNS,
                                                               options: dict[str, object]) -> None:
    dom = unique_domain()
    publish_key(dns_server, dom, "sel", key("a"))
    msg = message(f"a@{dom}", body="Some  text \r\n\r\nend\r\n\r\n")
    signed = dkimpy.sign(msg, b"sel", dom.encode(), key("a").encode(), **options) + msg  # type: ignore[arg-type]
    r = resolver(dns_server)
    assert [(x.result, x.reason) for x in run(auth_check.check_dkim(signed, r))] == [("pass", "")]
    changed = signed.replace(b"Some  text", b"Some other text")
    assert [(x.result, x.reason) for x in run(auth_check.check_dkim(changed, r))] == [
        ("fail", "body hash mismatch")]


def test_dkim_keys_we_may_not_use_are_permerrors(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    public = keys.dkim_public_record(key("a")).split("p=")[1]
    dns_server.add(f"tls._domainkey.{dom}", "TXT", f"v=DKIM1; k=rsa; s=tlsrpt; p={public}")
    dns_server.add(f"revoked._domainkey.{dom}", "TXT", "v=DKIM1; k=rsa; p=")
    dns_server.add(f"ed._domainkey.{dom}", "TXT", f"v=DKIM1; k=ed25519; p={public}")
    r = resolver(dns_server)
    for selector in ("tls", "revoked", "ed"):
        signed = sign(message(f"a@{dom}"), dom, selector, key("a"))
        assert [(x.result, x.reason) for x in run(auth_check.check_dkim(signed, r))] == [
            ("permerror", "bad key")], selector


def test_arc_fields_that_make_no_chain_fail_it(dns_server: LoopbackDNS) -> None:
    dom = unique_domain()
    msg = b"ARC-Seal: garbage without tags\r\n" + message(f"a@{dom}")
    assert check(dns_server, msg, f"x@{dom}").arc == "fail"
    assert check(dns_server, message(f"a@{dom}"), f"x@{dom}").arc == "none"


# DMARC

def test_org_domain_and_alignment() -> None:
    assert auth_dmarc.org_domain("a.b.example.co.uk") == "example.co.uk"
    assert auth_dmarc.org_domain("mail.example.com") == "example.com"
    assert auth_dmarc.org_domain("x.y.sender.authtest") == "sender.authtest"
    assert auth_dmarc.aligned("bounce.example.com", "example.com", "r")
    assert not auth_dmarc.aligned("bounce.example.com", "example.com", "s")
    assert auth_dmarc.aligned("Example.COM.", "example.com", "s")
    assert not auth_dmarc.aligned("example.co.uk", "other.co.uk", "r")
    assert not auth_dmarc.aligned("", "example.com", "r")


@pytest.mark.parametrize(("text", "expected"), [
    ("v=DMARC1; p=reject", auth_dmarc.DmarcRecord("reject")),
    ("v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=30",
     auth_dmarc.DmarcRecord("quarantine", "none", "s", "s", 30)),
    ("v=DMARC1; p=bogus; rua=mailto:x@y.test", auth_dmarc.DmarcRecord("none")),
    ("v=DMARC1; p=none; pct=500; adkim=x", auth_dmarc.DmarcRecord("none")),
    ("v=DMARC1; rua=mailto:x@y.test", auth_dmarc.DmarcRecord("none")),
    ("v=DMARC1; sp=reject", None),
    ("p=reject; v=DMARC1", None),
    ("v=spf1 -all", None),
])
def test_parse_dmarc(text: str, expected: auth_dmarc.DmarcRecord | None) -> None:
    assert auth_dmarc.parse_dmarc(text) == expected


def _sender(dns_server: LoopbackDNS, dmarc: str | None, spf_record: str = f"v=spf1 ip4:{IP} -all",
            selector: str = "sel") -> str:
    dom = unique_domain()
    dns_server.add(dom, "TXT", spf_record)
    if dmarc:
        dns_server.add(f"_dmarc.{dom}", "TXT", dmarc)
    publish_key(dns_server, dom, selector, key("a"))
    return dom


def test_dmarc_pass_by_spf_and_by_dkim(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, "v=DMARC1; p=reject")
    plain = message(f"Alice <alice@{dom}>")
    rep = check(dns_server, plain, f"bounce@{dom}")
    assert (rep.spf.result, rep.dkim, rep.dmarc.result, rep.dmarc.policy) == ("pass", (), "pass", "reject")
    assert auth_verdict.verdict(rep) is None

    signed = sign(plain, dom, "sel", key("a"))
    rep = check(dns_server, signed, f"bounce@{dom}", ip=OTHER_IP)
    assert (rep.spf.result, rep.dkim[0].result, rep.dmarc.result) == ("fail", "pass", "pass")
    assert rep.aligned_dkim_pass


def test_dmarc_fail_with_reject_quarantine_and_none(dns_server: LoopbackDNS) -> None:
    for policy, expected in (("reject", DMARC_REJECTED), ("quarantine", None), ("none", None)):
        dom = _sender(dns_server, f"v=DMARC1; p={policy}")
        rep = check(dns_server, message(f"a@{dom}"), f"bounce@{dom}", ip=OTHER_IP)
        assert (rep.dmarc.result, rep.dmarc.policy) == ("fail", policy)
        v = auth_verdict.verdict(rep)
        assert (v.error if v else None) == expected
    assert v is None


def test_dmarc_relaxed_and_strict_alignment_of_subdomains(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, "v=DMARC1; p=reject")
    dns_server.add(f"bounce.{dom}", "TXT", f"v=spf1 ip4:{IP} -all")
    publish_key(dns_server, f"mail.{dom}", "sub", key("b"))
    plain = message(f"a@{dom}")
    # relaxed (default): a subdomain's SPF pass and a subdomain's signature both align
    assert check(dns_server, plain, f"x@bounce.{dom}").dmarc.result == "pass"
    sub_signed = sign(plain, f"mail.{dom}", "sub", key("b"))
    assert check(dns_server, sub_signed, f"x@{dom}", ip=OTHER_IP).dmarc.result == "pass"

    strict = _sender(dns_server, "v=DMARC1; p=reject; adkim=s; aspf=s")
    dns_server.add(f"bounce.{strict}", "TXT", f"v=spf1 ip4:{IP} -all")
    publish_key(dns_server, f"mail.{strict}", "sub", key("b"))
    plain = message(f"a@{strict}")
    rep = check(dns_server, plain, f"x@bounce.{strict}")
    assert (rep.spf.result, rep.dmarc.result) == ("pass", "fail")
    rep = check(dns_server, sign(plain, f"mail.{strict}", "sub", key("b")), f"x@{strict}", ip=OTHER_IP)
    assert (rep.dkim[0].result, rep.dmarc.result) == ("pass", "fail")
    assert auth_verdict.verdict(rep).error == DMARC_REJECTED
    rep = check(dns_server, sign(plain, strict, "sel", key("a")), f"x@{strict}", ip=OTHER_IP)
    assert rep.dmarc.result == "pass"


def test_dmarc_unaligned_passes_do_not_count(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, "v=DMARC1; p=reject")
    third = _sender(dns_server, None)
    signed = sign(message(f"a@{dom}"), third, "sel", key("a"))
    rep = check(dns_server, signed, f"bounce@{third}")
    assert (rep.spf.result, rep.dkim[0].result, rep.dmarc.result) == ("pass", "pass", "fail")
    assert not rep.aligned_dkim_pass
    assert auth_verdict.verdict(rep).error == DMARC_REJECTED


def test_dmarc_subdomain_uses_org_record_and_sp(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, "v=DMARC1; p=none; sp=reject")
    rep = check(dns_server, message(f"a@news.{dom}"), f"b@news.{dom}")
    assert (rep.dmarc.result, rep.dmarc.policy, rep.dmarc.from_domain) == ("fail", "reject", f"news.{dom}")
    rep = check(dns_server, message(f"a@{dom}"), f"b@{dom}", ip=OTHER_IP)
    assert (rep.dmarc.result, rep.dmarc.policy) == ("fail", "none")
    # a record at the subdomain itself wins over the organisational one
    dns_server.add(f"_dmarc.shop.{dom}", "TXT", "v=DMARC1; p=quarantine")
    rep = check(dns_server, message(f"a@shop.{dom}"), f"b@shop.{dom}")
    assert rep.dmarc.policy == "quarantine"


def test_dmarc_none_temperror_and_permerror(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, None)
    rep = check(dns_server, message(f"a@{dom}"), f"b@{dom}")
    assert (rep.dmarc.result, rep.dmarc.policy) == ("none", "")

    down = _sender(dns_server, None)
    dns_server.set_failure(f"_dmarc.{down}", "SERVFAIL")
    rep = check(dns_server, message(f"a@{down}"), f"b@{down}")
    assert rep.dmarc.result == "temperror"
    assert auth_verdict.verdict(rep).error == AUTH_TEMPFAIL

    two = _sender(dns_server, "v=DMARC1; p=reject")
    dns_server.add(f"_dmarc.{two}", "TXT", "v=DMARC1; p=none")
    assert check(dns_server, message(f"a@{two}"), f"b@{two}", ip=OTHER_IP).dmarc.result == "none"

    rep = check(dns_server, b"Subject: no from\r\n\r\nx\r\n", f"b@{dom}")
    assert (rep.dmarc.result, rep.dmarc.reason) == ("permerror", "no From header")
    assert auth_verdict.verdict(rep) is None
    rep = check(dns_server, message("undisclosed-recipients:;"), f"b@{dom}")
    assert (rep.dmarc.result, rep.dmarc.reason) == ("permerror", "no usable From address")


def test_dmarc_checks_every_author_domain_and_the_strictest_fails(dns_server: LoopbackDNS) -> None:
    own = _sender(dns_server, None)
    bank = _sender(dns_server, "v=DMARC1; p=reject", spf_record=f"v=spf1 ip4:{OTHER_IP} -all")
    quiet = _sender(dns_server, "v=DMARC1; p=quarantine", spf_record=f"v=spf1 ip4:{OTHER_IP} -all")
    rep = check(dns_server, message(f"me@{own}, ceo@{bank}, x@{quiet}"), f"b@{own}")
    assert (rep.dmarc.result, rep.dmarc.policy, rep.dmarc.from_domain) == ("fail", "reject", bank)
    assert auth_verdict.verdict(rep).error == DMARC_REJECTED
    second_field = message(f"me@{own}", extra=f"From: ceo@{bank}\r\n")
    assert auth_verdict.verdict(check(dns_server, second_field, f"b@{own}")).error == DMARC_REJECTED
    rep = check(dns_server, message(f"me@{own}, x@{quiet}"), f"b@{own}")
    assert (rep.dmarc.result, rep.dmarc.policy) == ("fail", "quarantine")
    assert auth_verdict.verdict(rep) is None
    rep = check(dns_server, message(f"me@{own}, you@{own}"), f"b@{own}")
    assert (rep.dmarc.result, rep.dmarc.from_domain) == ("none", own)

    many = ", ".join(f"x@d{n}.{own}" for n in range(auth_check.MAX_FROM_DOMAINS + 1))
    rep = check(dns_server, message(many), f"b@{own}")
    assert (rep.dmarc.result, rep.dmarc.reason) == ("permerror", auth_check.TOO_MANY_FROM_DOMAINS)
    assert auth_verdict.verdict(rep).error == DMARC_REJECTED


def test_dmarc_temperror_when_the_aligned_check_fails_temporarily(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, "v=DMARC1; p=reject")
    dns_server.remove(dom, "TXT")
    dns_server.set_failure(dom, "SERVFAIL")
    rep = check(dns_server, message(f"a@{dom}"), f"b@{dom}")
    assert (rep.spf.result, rep.dmarc.result) == ("temperror", "temperror")
    assert auth_verdict.verdict(rep).error == AUTH_TEMPFAIL


def test_dmarc_pct_samples_the_reject_policy(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, "v=DMARC1; p=reject; pct=0")
    rep = check(dns_server, message(f"a@{dom}"), f"b@{dom}", ip=OTHER_IP)
    assert (rep.dmarc.result, rep.dmarc.pct) == ("fail", 0)
    assert auth_verdict.verdict(rep) is None
    assert auth_verdict.verdict(rep, rng=lambda: 0.0) is None
    half = DmarcResult("fail", dom, "reject", 50)
    rep50 = AuthReport(rep.spf, (), half)
    assert auth_verdict.verdict(rep50, rng=lambda: 0.49).error == DMARC_REJECTED
    assert auth_verdict.verdict(rep50, rng=lambda: 0.5) is None


def test_spf_fail_rejected_only_without_dmarc_and_without_valid_dkim(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, None)
    rep = check(dns_server, message(f"a@{dom}"), f"b@{dom}", ip=OTHER_IP)
    assert (rep.spf.result, rep.dmarc.result, rep.dkim) == ("fail", "none", ())
    assert auth_verdict.verdict(rep).error == SPF_REJECTED

    rep = check(dns_server, sign(message(f"a@{dom}"), dom, "sel", key("a")), f"b@{dom}", ip=OTHER_IP)
    assert auth_verdict.verdict(rep) is None  # valid DKIM

    with_dmarc = _sender(dns_server, "v=DMARC1; p=none")
    rep = check(dns_server, message(f"a@{with_dmarc}"), f"b@{with_dmarc}", ip=OTHER_IP)
    assert (rep.spf.result, rep.dmarc.result) == ("fail", "fail")
    assert auth_verdict.verdict(rep) is None  # DMARC record says none

    soft = _sender(dns_server, None, spf_record=f"v=spf1 ip4:{IP} ~all")
    assert auth_verdict.verdict(check(dns_server, message(f"a@{soft}"), f"b@{soft}", ip=OTHER_IP)) is None


def test_sender_checks_respect_the_time_budget(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, None)
    dns_server.set_failure(f"_dmarc.{dom}", "timeout")
    rep = run(auth_check.check_sender(message(f"a@{dom}"), f"b@{dom}", IP, "h.test", resolver(dns_server),
                                     timeout=0.5))
    assert (rep.spf.result, rep.dmarc.result) == ("pass", "temperror")


# Authentication-Results

def test_header_lists_every_result_with_our_authserv_id(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, "v=DMARC1; p=quarantine")
    signed = sign(message(f"Alice <alice@{dom}>"), dom, "sel", key("a"))
    rep = check(dns_server, signed, f"bounce@{dom}", ip=OTHER_IP)
    field = rep.header("mx.fwdmail.test")
    assert field.startswith(b"Authentication-Results: mx.fwdmail.test;") and field.endswith(b"\r\n")
    assert b"@" not in field.split(b"\r\n", 1)[1]  # domains only, no sender addresses
    parsed = authres.AuthenticationResultsHeader.parse(field.decode().rstrip())
    assert parsed.authserv_id == "mx.fwdmail.test"
    by_method = {r.method: r for r in parsed.results}
    assert by_method["spf"].result == "fail"
    assert by_method["dkim"].result == "pass"
    assert by_method["dmarc"].result == "pass"
    assert by_method["arc"].result == "none"
    props = {(p.type, p.name): p.value for r in parsed.results for p in r.properties}
    assert props[("smtp", "mailfrom")] == dom
    assert props[("header", "d")] == dom
    assert props[("header", "s")] == "sel"
    assert props[("header", "from")] == dom
    assert b"(p=quarantine)" in field


def test_header_for_null_sender_and_unsigned_mail() -> None:
    rep = AuthReport(SpfResult("none", "we ird", "helo"), (),
                     DmarcResult("permerror", reason="no From header"))
    text = rep.header("mx.test").decode()
    parsed = authres.AuthenticationResultsHeader.parse(text.rstrip())
    assert [str(r) for r in parsed.results] == ['spf=none smtp.helo="we ird"', "dkim=none", "dmarc=permerror",
                                                "arc=none"]
    assert "(no From header)" in text
    fail = AuthReport(SpfResult("pass", "a.test"), (DkimResult("fail", "a.test", "s", "ab/c+d=", "bad"),),
                      DmarcResult("fail", "a.test", "reject"), arc="fail")
    assert 'dkim=fail (bad) header.d=a.test header.s=s header.b="ab/c+d="' in fail.header("mx.test").decode()


def test_stamp_prepends_ours_and_drops_forged_ones_only() -> None:
    original = (b"Authentication-Results: MX.fwdmail.test; dkim=pass\r\n header.d=forged.test\r\n"
                b"Authentication-Results: other.test; spf=pass smtp.mailfrom=x.test\r\n"
                b"Authentication-Results: (comment) mx.fwdmail.test; dmarc=pass\r\n"
                b"From: a@x.test\r\nSubject: s\r\n\r\nAuthentication-Results: mx.fwdmail.test; body\r\n")
    rep = AuthReport(SpfResult("none", "x.test"), (), DmarcResult("none", "x.test"))
    out = auth_results.stamp(original, rep, "mx.fwdmail.test")
    assert out.startswith(rep.header("mx.fwdmail.test"))
    rest = out[len(rep.header("mx.fwdmail.test")):]
    assert rest == (b"Authentication-Results: other.test; spf=pass smtp.mailfrom=x.test\r\n"
                    b"From: a@x.test\r\nSubject: s\r\n\r\nAuthentication-Results: mx.fwdmail.test; body\r\n")
    clean = b"From: a@x.test\r\n\r\nbody\r\n"
    assert auth_results.stamp(clean, rep, "mx.fwdmail.test") == rep.header("mx.fwdmail.test") + clean


def test_summary_has_no_addresses(dns_server: LoopbackDNS) -> None:
    dom = _sender(dns_server, "v=DMARC1; p=reject")
    rep = check(dns_server, message(f"alice@{dom}"), f"bounce@{dom}", ip=OTHER_IP)
    assert "@" not in rep.summary()
    assert f"header.from={dom}" in rep.summary() and "dmarc=fail" in rep.summary()
