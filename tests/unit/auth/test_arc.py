"""ARC: the chain an inbound message carries is validated, and the forwarded copy is sealed so that
dkimpy's own ARC verifier (reading keys from the loopback DNS server) accepts the chain."""

from __future__ import annotations

import datetime as dt
import re

import dkim

from fwdmail.auth import arc
from fwdmail.auth import check as auth_check
from fwdmail.auth import dkim_core as dkimcore
from fwdmail.auth import forwarded as auth_forwarded
from fwdmail.auth import results as auth_results
from fwdmail.mail.friendly_from import rewrite_from
from fwdmail.runtime.keys import dkim_public_record
from fwdmail.store import DomainRecord
from tests.support.auth import (
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
from tests.support.dns_server import LoopbackDNS

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
             ) -> tuple[auth_results.AuthReport, bytes]:
    report = run(auth_check.check_sender(msg, f"bounce@{sender}", IP, "h.test", resolver(dns_server)))
    stamped = auth_results.stamp(msg, report, US)
    return report, arc.seal(stamped, US, hosted, "fwd", key("hosted"), 1_700_000_000)


def _arc_headers(msg: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in auth_check._headers(msg) if n.startswith(b"arc-")]


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
    names = [n for n, _ in auth_check._headers(sealed)[:4]]
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
    report = run(auth_check.check_sender(msg, f"bounce@{sender}", IP, "h.test", resolver(dns_server)))
    rewritten = rewrite_from(msg, f"alias@{hosted}")
    stamped = auth_results.stamp(rewritten, report, US)
    sealed = arc.seal(stamped, US, hosted, "fwd", key("hosted"), 1_700_000_000)
    cv, _, _ = dkim.arc_verify(sealed, dnsfunc=sync_dnsfunc(dns_server))
    assert cv == dkim.CV_Pass
    assert f"From: Alice <alias@{hosted}>".encode() in sealed


def test_seal_without_usable_key_or_results_leaves_the_message_unsealed(dns_server: LoopbackDNS) -> None:
    sender, hosted, msg = _setup(dns_server)
    report = run(auth_check.check_sender(msg, f"bounce@{sender}", IP, "h.test", resolver(dns_server)))
    stamped = auth_results.stamp(msg, report, US)
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


# the fast path: results, chain status and body hash handed over instead of read again

def test_seal_from_the_report_is_the_seal_read_from_the_message(dns_server: LoopbackDNS) -> None:
    sender, hosted, msg = _setup(dns_server)
    report = run(auth_check.check_sender(msg, f"bounce@{sender}", IP, "h.test", resolver(dns_server)))
    assert report.body_hash == dkimcore.Message(msg).body_hash(relaxed=True)
    stamped = auth_results.stamp(msg, report, US)
    read = arc.seal(stamped, US, hosted, "fwd", key("hosted"), 1_700_000_000)
    handed = arc.seal(stamped, US, hosted, "fwd", key("hosted"), 1_700_000_000,
                      authres=report.header_value(US), cv=report.arc, body_hash=report.body_hash)
    assert read != stamped and handed == read  # PKCS#1 v1.5 is deterministic: equal inputs, equal bytes
    domain = _domain(hosted, key("hosted"))
    assert auth_forwarded.forwarded_copy(msg, report, US, domain, "", 1_700_000_000) == read


def _domain(name: str, pem: str) -> DomainRecord:
    now = dt.datetime(2024, 1, 1)
    return DomainRecord(1, name, "owner@example.test", "token", "fwd", pem, 0, now, "enforce", False, False,
                        now)


def test_our_seal_covers_the_senders_dkim_signature(dns_server: LoopbackDNS) -> None:
    sender, hosted, msg = _setup(dns_server)
    _, sealed = _forward(dns_server, msg, sender, hosted)
    ams = dict(auth_check._headers(sealed))[b"arc-message-signature"]
    assert b"dkim-signature" in re.sub(rb"\s+", b"", ams)
    assert dkim.arc_verify(sealed, dnsfunc=sync_dnsfunc(dns_server))[0] == dkim.CV_Pass
    altered = sealed.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1;  ")
    altered = altered.replace(b"; d=" + sender.encode(), b";  d=" + sender.encode())
    assert altered != sealed
    assert dkim.arc_verify(altered, dnsfunc=sync_dnsfunc(dns_server))[1][0]["ams-valid"]  # relaxed: same
    forged = sealed.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; x=1;", 1)
    assert not dkim.arc_verify(forged, dnsfunc=sync_dnsfunc(dns_server))[1][0]["ams-valid"]


def _seal(msg: bytes, cv: str) -> bytes:
    return arc.seal(msg, US, "h.test", "fwd", key("hosted"), 1, authres=f"mx.test; arc={cv}", cv=cv)


def test_a_chain_status_that_does_not_fit_the_message_leaves_it_unsealed() -> None:
    plain = b"Authentication-Results: mx.test; arc=none\r\n" + message("a@x.test")
    assert _seal(plain, "pass") == plain
    assert _seal(plain, "fail") == plain
    assert _seal(plain, "none").startswith(b"ARC-Seal: i=1; cv=none;")
    chained = arc_seal(plain, "mx.up.test", "up.test", "arc", key("upstream"), "spf=pass")
    assert _seal(chained, "none") == chained
    assert _seal(chained, "pass").startswith(b"ARC-Seal: i=2; cv=pass;")


def test_no_seal_past_instance_fifty() -> None:
    fake = (b"ARC-Seal: i=50; cv=pass; a=rsa-sha256; d=up.test; s=arc; b=AAAA\r\n"
            b"ARC-Message-Signature: i=50; a=rsa-sha256; d=up.test; s=arc; h=from; bh=AAAA; b=AAAA\r\n"
            b"ARC-Authentication-Results: i=50; mx.up.test; spf=pass\r\n")
    msg = fake + message("a@x.test")
    assert _seal(msg, "fail") == msg
    assert _seal(msg.replace(b"i=50", b"i=49"), "fail").startswith(b"ARC-Seal: i=50; cv=fail;")


# chain validation: the same verdict as dkimpy's arc_verify

RECORDS = {f"{s}._domainkey.{d}": dkim_public_record(key(k)).encode()
           for s, d, k in (("arc", "up.test", "upstream"), ("fwd", "h.test", "hosted"), ("a", "s.test", "a"))}


def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
    text = name.decode() if isinstance(name, bytes) else name
    return RECORDS.get(text.rstrip(".").lower())


def _dkimpy_hop(msg: bytes, n: int, cv: str) -> bytes:
    results = f"arc={cv}" if n > 1 else "spf=pass"
    return arc_seal(msg, f"mx{n}.up.test", "up.test", "arc", key("upstream"), results)


def _our_hop(msg: bytes, n: int, cv: str) -> bytes:
    stamped = f"Authentication-Results: {US}; spf=pass smtp.mailfrom=s.test; arc={cv}\r\n".encode() + msg
    return arc.seal(stamped, US, "h.test", "fwd", key("hosted"), 1_700_000_000 + n)


def _chains() -> dict[str, bytes]:
    base = sign(message("Alice <alice@s.test>"), "s.test", "a", key("a"))
    chains = {"plain": base}
    for name in ("dkimpy", "ours", "dkimpy,dkimpy", "dkimpy,ours", "ours,dkimpy", "ours,ours,dkimpy",
                 "dkimpy,ours,dkimpy,ours"):
        hops = [hop[0] for hop in name.split(",")]
        msg = base
        for n, hop in enumerate(hops, 1):
            msg = (_dkimpy_hop if hop == "d" else _our_hop)(msg, n, "none" if n == 1 else "pass")
        chains[name] = msg
    return chains


def _tamperings(msg: bytes) -> dict[str, bytes]:
    first_aar = msg.rfind(b"ARC-Authentication-Results: i=1;")
    top_seal_end = msg.find(b"\r\nARC-Message-Signature:")
    return {
        "unchanged": msg,
        "body": msg.replace(b"Second line.", b"Second line!"),
        "subject": msg.replace(b"Subject: Hello", b"Subject: Hallo"),
        "refolded subject": msg.replace(b"Subject: Hello", b"Subject:\r\n   Hello  "),
        "oldest AAR": msg[:first_aar] + msg[first_aar:].replace(b"spf=pass", b"spf=fail", 1)
        if first_aar >= 0 else msg,
        "top seal removed": msg[top_seal_end + 2:] if msg.startswith(b"ARC-Seal:") else msg,
        "top cv changed": msg.replace(b"cv=pass", b"cv=fail", 1),
        "instance renumbered": msg.replace(b"i=1;", b"i=7;"),
        "extra From on top": b"From: mallory@evil.test\r\n" + msg,
    }


def test_chain_verdicts_match_dkimpy() -> None:
    seen = set()
    for chain_name, chain in _chains().items():
        for tamper_name, msg in _tamperings(chain).items():
            cv = dkim.arc_verify(msg, dnsfunc=lookup)[0]
            theirs = {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")
            ours = arc.verify_chain(msg, lookup)
            assert ours == theirs, (chain_name, tamper_name)
            seen.add((tamper_name, ours))
    assert {("unchanged", "pass"), ("unchanged", "none"), ("body", "fail"), ("oldest AAR", "fail"),
            ("top seal removed", "fail"), ("top cv changed", "fail"), ("extra From on top", "fail")} <= seen


def test_verify_chain_with_a_message_parsed_once_and_shared_keys() -> None:
    chain = _chains()["dkimpy,ours,dkimpy,ours"]
    asked: list[str] = []

    def counting(name: str) -> bytes | None:
        asked.append(name)
        return lookup(name)

    parsed = dkimcore.Message(chain)
    assert arc.verify_chain(parsed, dkimcore.Keys(counting)) == "pass"
    assert sorted(asked) == ["arc._domainkey.up.test", "fwd._domainkey.h.test"]  # one lookup per key
    assert len(parsed._digests) == 1  # only the newest AMS hashes the body


def test_malformed_tags_in_the_newest_set_fail_the_chain_without_raising() -> None:
    chain = _chains()["dkimpy,ours"]
    top_ams, top_seal = b"ARC-Message-Signature: i=2;", b"ARC-Seal: i=2;"
    assert chain.count(top_ams) == 1 and chain.count(top_seal) == 1
    edits = [(top_ams, b" l=;"), (top_ams, b" l=x;"), (top_ams, b" h=a;"), (top_seal, b" cv=maybe;"),
             (top_seal, b" x=1;")]
    for field, extra in edits:
        assert arc.verify_chain(chain.replace(field, field + extra), lookup) == "fail", extra
