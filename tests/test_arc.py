"""ARC: the chain an inbound message carries is validated, and the forwarded copy is sealed so that
dkimpy's own ARC verifier (reading keys from the loopback DNS server) accepts the chain."""

from __future__ import annotations

import dkim

from fwdmail.daemon import arc, authcheck
from fwdmail.daemon.friendly_from import rewrite_from
from tests.support.dns_server import LoopbackDNS
from tests.test_authcheck_support import (
    arc_seal,
    key,
    message,
    publish_key,
    resolver,
    run,
    sign,
    sync_dnsfunc,
    unique_domain,
)

US = "mx.fwdmail.test"
IP = "192.0.2.10"


def _setup(dns_server: LoopbackDNS) -> tuple[str, str, bytes]:
    """A sender with SPF, DKIM and DMARC p=reject, a hosted domain with its key, and a signed message."""
    sender, hosted = unique_domain(), unique_domain("hosted")
    dns_server.add(sender, "TXT", f"v=spf1 ip4:{IP} -all")
    dns_server.add(f"_dmarc.{sender}", "TXT", "v=DMARC1; p=reject")
    publish_key(dns_server, sender, "sel", key("a"))
    publish_key(dns_server, hosted, "fwd", key("hosted"))
    msg = sign(message(f"Alice <alice@{sender}>", to=f"alias@{hosted}"), sender, "sel", key("a"))
    return sender, hosted, msg


def _forward(dns_server: LoopbackDNS, msg: bytes, sender: str, hosted: str
             ) -> tuple[authcheck.AuthReport, bytes]:
    report = run(authcheck.check_sender(msg, f"bounce@{sender}", IP, "h.test", resolver(dns_server)))
    stamped = authcheck.stamp(msg, report, US)
    return report, arc.seal(stamped, US, hosted, "fwd", key("hosted"), 1_700_000_000)


def _arc_headers(msg: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in authcheck._headers(msg) if n.startswith(b"arc-")]


def test_first_seal_validates_and_keeps_the_original_bytes(dns_server: LoopbackDNS) -> None:
    sender, hosted, msg = _setup(dns_server)
    report, sealed = _forward(dns_server, msg, sender, hosted)
    assert report.arc == "none"
    assert sealed.endswith(msg)
    cv, results, reason = dkim.arc_verify(sealed, dnsfunc=sync_dnsfunc(dns_server))
    assert (cv, reason) == (dkim.CV_Pass, "success")
    assert [(r["instance"], r["cv"], r["as-domain"], r["ams-domain"]) for r in results] == [
        (1, b"none", hosted.encode(), hosted.encode())]
    aar = results[0]["aar-value"].decode()
    assert US in aar and "dkim=pass" in aar and "spf=pass" in aar and "dmarc=pass" in aar
    assert dkim.verify(sealed, dnsfunc=sync_dnsfunc(dns_server))  # the sender's signature survives
    names = [n for n, _ in authcheck._headers(sealed)[:4]]
    assert names == [b"arc-seal", b"arc-message-signature", b"arc-authentication-results",
                     b"authentication-results"]


def test_message_with_a_valid_upstream_set_gets_instance_two(dns_server: LoopbackDNS) -> None:
    sender, hosted, msg = _setup(dns_server)
    upstream = unique_domain("list")
    publish_key(dns_server, upstream, "arc", key("upstream"))
    relayed = arc_seal(msg, f"mx.{upstream}", upstream, "arc", key("upstream"),
                       f"spf=pass smtp.mailfrom={sender}; dkim=pass header.d={sender}")
    report, sealed = _forward(dns_server, relayed, sender, hosted)
    assert report.arc == "pass"
    assert b"arc=pass" in report.header(US)
    cv, results, _ = dkim.arc_verify(sealed, dnsfunc=sync_dnsfunc(dns_server))
    assert cv == dkim.CV_Pass
    assert [(r["instance"], r["cv"], r["as-valid"], r["ams-valid"]) for r in results] == [
        (2, b"pass", True, True), (1, b"none", True, True)]
    assert sealed.endswith(relayed)


def test_broken_upstream_chain_is_reported_and_sealed_as_failed(dns_server: LoopbackDNS) -> None:
    sender, hosted, msg = _setup(dns_server)
    upstream = unique_domain("list")
    publish_key(dns_server, upstream, "arc", key("upstream"))
    relayed = arc_seal(msg, f"mx.{upstream}", upstream, "arc", key("upstream"), "spf=pass")
    tampered = relayed.replace(b"Second line.", b"Second line, changed.")
    report, sealed = _forward(dns_server, tampered, sender, hosted)
    assert report.arc == "fail"
    assert report.dkim[0].result == "fail"
    cv, results, reason = dkim.arc_verify(sealed, dnsfunc=sync_dnsfunc(dns_server))
    assert cv is None and reason == "ARC-Seal[2] reported failure, the chain is terminated"
    ours = results[0]
    assert (ours["instance"], ours["cv"], ours["ams-valid"]) == (2, b"fail", True)


def test_upstream_key_lookup_failure_fails_the_chain(dns_server: LoopbackDNS) -> None:
    sender, hosted, msg = _setup(dns_server)
    upstream = unique_domain("list")
    dns_server.set_failure(f"arc._domainkey.{upstream}", "SERVFAIL")
    relayed = arc_seal(msg, f"mx.{upstream}", upstream, "arc", key("upstream"), "spf=pass")
    report, _ = _forward(dns_server, relayed, sender, hosted)
    assert report.arc == "fail"


def test_friendly_from_rewrite_is_covered_by_our_seal(dns_server: LoopbackDNS) -> None:
    sender, hosted, msg = _setup(dns_server)
    report = run(authcheck.check_sender(msg, f"bounce@{sender}", IP, "h.test", resolver(dns_server)))
    rewritten = rewrite_from(msg, f"alias@{hosted}")
    sealed = arc.seal(authcheck.stamp(rewritten, report, US), US, hosted, "fwd", key("hosted"), 1_700_000_000)
    cv, _, _ = dkim.arc_verify(sealed, dnsfunc=sync_dnsfunc(dns_server))
    assert cv == dkim.CV_Pass
    assert f"From: Alice <alias@{hosted}>".encode() in sealed


def test_seal_without_usable_key_or_results_leaves_the_message_unsealed(dns_server: LoopbackDNS) -> None:
    sender, hosted, msg = _setup(dns_server)
    report = run(authcheck.check_sender(msg, f"bounce@{sender}", IP, "h.test", resolver(dns_server)))
    stamped = authcheck.stamp(msg, report, US)
    assert arc.seal(stamped, US, hosted, "fwd", "not a key", 1_700_000_000) == stamped
    # no Authentication-Results of ours: dkimpy makes no set
    assert arc.seal(msg, US, hosted, "fwd", key("hosted"), 1_700_000_000) == msg


def test_key_names_of_arc_headers() -> None:
    headers = [
        (b"arc-seal", b" i=1; cv=none; a=rsa-sha256; d=List.Example; s=arc1; b=abc"),
        (b"arc-message-signature", b" i=1; a=rsa-sha256; d=list.example; s=arc1; h=from; bh=x; b=y"),
        (b"arc-seal", b" i=2; d=bad!domain; s=x; b=z"),
        (b"arc-seal", b" garbage"),
        (b"dkim-signature", b" d=other.example; s=s"),
    ]
    assert arc.key_names(headers) == ["arc1._domainkey.list.example"]


def test_long_chains_are_not_validated(dns_server: LoopbackDNS) -> None:
    hop_domain = unique_domain("hop")
    publish_key(dns_server, hop_domain, "arc", key("upstream"))
    msg = message(f"a@{hop_domain}")
    for i in range(1, arc.MAX_VERIFIED_SETS + 2):
        msg = arc_seal(msg, f"mx{i}.{hop_domain}", hop_domain, "arc", key("upstream"),
                       "spf=pass" if i == 1 else "arc=pass")
        if i == arc.MAX_VERIFIED_SETS:
            at_limit = msg
    dnsfunc = sync_dnsfunc(dns_server)
    assert arc.verify_chain(at_limit, dnsfunc) == "pass"
    assert dkim.arc_verify(msg, dnsfunc=dnsfunc)[0] == dkim.CV_Pass  # valid, but too long for us
    assert arc.verify_chain(msg, dnsfunc) == "fail"
