"""`[delivery] tls_policy` on the shared SMTP client: MTA-STS and DANE against a real TLS sink, the loopback
DNS (TLSA records, AD bit) and a loopback HTTPS policy server, all on loopback with the test CA."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fwdmail.config import from_dict
from fwdmail.smtp.client import Delivery
from fwdmail.smtp.replies import SmtpError
from tests.support.dns_server import LoopbackDNS
from tests.support.mtasts_server import PolicyServer, policy_text
from tests.support.smtp_sink import BREAK_TLS, SmtpSink
from tests.support.tls import ca, ca_cert_file, server_cert_files, server_context

MSG = b"From: a@src.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nhello\r\n"
_names = itertools.count()


@pytest.fixture(scope="module")
def policies() -> Iterator[PolicyServer]:
    with PolicyServer([f"mta-sts.sts{i}.test" for i in range(40)]) as server:
        yield server


@pytest.fixture
def domain(dns_server: LoopbackDNS) -> str:
    """A fresh recipient domain whose MX is mx.<domain> on 127.0.0.1 (records with TTL 0: no caching)."""
    name = f"sts{next(_names)}.test"
    dns_server.add(name, "MX", f"10 mx.{name}.", ttl=0)
    dns_server.add(f"mx.{name}", "A", "127.0.0.1", ttl=0)
    dns_server.add(f"mta-sts.{name}", "A", "127.0.0.1", ttl=0)
    return name


def tls_sink(*names: str) -> SmtpSink:
    return SmtpSink(tls_context=server_context(names))


def make(dns_server: LoopbackDNS, sink: SmtpSink, tmp_path: Path, policies: PolicyServer | None = None,
         **delivery: Any) -> Delivery:
    cfg = from_dict({
        "hostname": "mx.fwdmail.test",
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "delivery": {"connect_timeout": 3, "command_timeout": 3, "data_timeout": 3, "port": sink.port,
                     "tls_ca_file": str(ca_cert_file(tmp_path)), "mta_sts_timeout": 3,
                     "mta_sts_port": policies.port if policies else 443,
                     "mta_sts_allow_private": policies is not None, **delivery},
    })
    return Delivery(cfg)


def send(d: Delivery, domain: str, times: int = 1) -> list[SmtpError | None]:
    async def go() -> list[SmtpError | None]:
        out = []
        try:
            for _ in range(times):
                out.append((await d.send("s@src.test", [f"b@{domain}"], MSG))[f"b@{domain}"])
        finally:
            await d.close()
        return out
    return asyncio.run(go())


def publish(dns_server: LoopbackDNS, policies: PolicyServer, domain: str, mode: str, mx: list[str],
            ident: str = "1") -> None:
    dns_server.remove(f"_mta-sts.{domain}", "TXT")
    dns_server.add(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={ident}", ttl=0)
    policies.serve(domain, policy_text(mode, mx))


def spki_sha256(tmp_path: Path, *names: str) -> str:
    """The "3 1 1" data of the sink certificate for `names`."""
    cert = x509.load_pem_x509_certificate(server_cert_files(tmp_path, names)[0].read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def deferred_by(err: SmtpError | None, policy: str, host: str) -> bool:
    return err is not None and err.code == 451 and policy in err.text and host in err.text


# ------------------------------------------------------------------ MTA-STS


def test_enforce_delivers_over_verified_tls(dns_server: LoopbackDNS, policies: PolicyServer, domain: str,
                                            tmp_path: Path) -> None:
    publish(dns_server, policies, domain, "enforce", [f"mx.{domain}"])
    with tls_sink(f"mx.{domain}") as sink:
        assert send(make(dns_server, sink, tmp_path, policies), domain) == [None]
        assert sink.wait_for(1)[0].tls is True
    assert policies.fetches.count(domain) == 1


def test_enforce_with_a_certificate_for_another_name_defers(dns_server: LoopbackDNS, policies: PolicyServer,
                                                             domain: str, tmp_path: Path) -> None:
    publish(dns_server, policies, domain, "enforce", [f"mx.{domain}"])
    with tls_sink("other.test") as sink:
        (err,) = send(make(dns_server, sink, tmp_path, policies), domain)
        assert sink.messages == []
    assert deferred_by(err, "MTA-STS", f"mx.{domain}"), err
    assert err is not None and err.enhanced_code == "4.7.5"


def test_enforce_skips_an_mx_the_policy_does_not_list(dns_server: LoopbackDNS, policies: PolicyServer,
                                                       domain: str, tmp_path: Path) -> None:
    publish(dns_server, policies, domain, "enforce", [f"*.elsewhere.{domain}"])
    with tls_sink(f"mx.{domain}") as sink:
        (err,) = send(make(dns_server, sink, tmp_path, policies), domain)
        assert sink.connections == 0
    assert deferred_by(err, "MTA-STS", f"mx.{domain}"), err


def test_enforce_wildcard_pattern_covers_one_label(dns_server: LoopbackDNS, policies: PolicyServer,
                                                   domain: str, tmp_path: Path) -> None:
    publish(dns_server, policies, domain, "enforce", [f"*.{domain}"])
    with tls_sink(f"mx.{domain}") as sink:
        assert send(make(dns_server, sink, tmp_path, policies), domain) == [None]


def test_testing_mode_delivers_and_logs(dns_server: LoopbackDNS, policies: PolicyServer, domain: str,
                                        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    publish(dns_server, policies, domain, "testing", [f"mx.{domain}"])
    caplog.set_level(logging.INFO, "fwdmail.delivery")
    with tls_sink("other.test") as sink:
        assert send(make(dns_server, sink, tmp_path, policies), domain) == [None]
        assert len(sink.wait_for(1)) == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"MTA-STS policy of {domain}" in logged and f"mx.{domain}" in logged and "testing" in logged


def test_unfetchable_policy_without_a_cached_one_delivers(dns_server: LoopbackDNS, policies: PolicyServer,
                                                          domain: str, tmp_path: Path) -> None:
    """RFC 8461 5: a TXT record but no policy and nothing cached -> as if the domain had no MTA-STS."""
    publish(dns_server, policies, domain, "enforce", [f"mx.{domain}"])
    policies.serve(domain, "", status=500)
    with tls_sink("other.test") as sink:
        assert send(make(dns_server, sink, tmp_path, policies), domain) == [None]
    assert policies.fetches.count(domain) == 1


def test_a_policy_host_on_a_non_public_address_is_not_fetched(
        dns_server: LoopbackDNS, policies: PolicyServer, domain: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """mta-sts.<domain> resolving to loopback (the fixture's 127.0.0.1) with `mta_sts_allow_private` off:
    no request is made, the policy counts as unfetchable (delivered as without MTA-STS) and it is logged."""
    publish(dns_server, policies, domain, "enforce", [f"*.elsewhere.{domain}"])
    caplog.set_level(logging.INFO, "fwdmail.delivery")
    with tls_sink("other.test") as sink:
        assert send(make(dns_server, sink, tmp_path, policies, mta_sts_allow_private=False), domain) == [None]
    assert policies.fetches.count(domain) == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"mta-sts.{domain}" in logged and "loopback" in logged and "127.0.0.1" not in logged, logged


def test_a_redirect_is_not_followed(dns_server: LoopbackDNS, policies: PolicyServer, domain: str,
                                    tmp_path: Path) -> None:
    publish(dns_server, policies, domain, "enforce", [f"*.elsewhere.{domain}"])
    policies.serve(domain, policy_text("enforce", ["nothing.test"]), status=302)
    with tls_sink(f"mx.{domain}") as sink:
        assert send(make(dns_server, sink, tmp_path, policies), domain) == [None]
    assert policies.fetches.count(domain) == 1


def test_the_cached_policy_serves_until_the_id_changes_and_survives_a_failed_fetch(
        dns_server: LoopbackDNS, policies: PolicyServer, domain: str, tmp_path: Path) -> None:
    publish(dns_server, policies, domain, "enforce", [f"mx.{domain}"])
    with tls_sink(f"mx.{domain}") as sink:
        d = make(dns_server, sink, tmp_path, policies)

        async def go() -> list[SmtpError | None]:
            out = []
            try:
                for step in range(3):
                    if step == 2:  # a new id, but the server fails: the cached policy still applies
                        publish(dns_server, policies, domain, "enforce", [f"mx.{domain}"], ident="2")
                        policies.serve(domain, "", status=503)
                        dns_server.remove(domain, "MX")
                        dns_server.add(domain, "MX", f"10 mx2.{domain}.", ttl=0)
                        dns_server.add(f"mx2.{domain}", "A", "127.0.0.1", ttl=0)
                    out.append((await d.send("s@src.test", [f"b@{domain}"], MSG))[f"b@{domain}"])
            finally:
                await d.close()
            return out

        first, second, third = asyncio.run(go())
    assert first is None and second is None
    assert deferred_by(third, "MTA-STS", f"mx2.{domain}"), third
    assert policies.fetches.count(domain) == 2  # once for id 1, once (failing) for id 2


# ------------------------------------------------------------------ DANE


def test_dane_ee_match_delivers_and_wins_over_mta_sts(dns_server: LoopbackDNS, policies: PolicyServer,
                                                      domain: str, tmp_path: Path) -> None:
    """DANE-EE checks the key, not the name; MTA-STS enforce listing another MX does not apply."""
    publish(dns_server, policies, domain, "enforce", [f"*.elsewhere.{domain}"])
    with tls_sink("other.test") as sink:
        tlsa = f"_{sink.port}._tcp.mx.{domain}"
        dns_server.add(tlsa, "TLSA", f"3 1 1 {spki_sha256(tmp_path, 'other.test')}", ttl=0)
        dns_server.set_authenticated(tlsa)
        assert send(make(dns_server, sink, tmp_path, policies), domain) == [None]
        assert sink.wait_for(1)[0].tls is True


def test_dane_mismatch_defers(dns_server: LoopbackDNS, domain: str, tmp_path: Path) -> None:
    with tls_sink(f"mx.{domain}") as sink:
        tlsa = f"_{sink.port}._tcp.mx.{domain}"
        dns_server.add(tlsa, "TLSA", "3 1 1 " + "ab" * 32, ttl=0)
        dns_server.add(tlsa, "TLSA", f"3 0 1 {'cd' * 32}", ttl=0)
        dns_server.set_authenticated(tlsa)
        (err,) = send(make(dns_server, sink, tmp_path), domain)
        assert sink.messages == []
    assert deferred_by(err, "DANE", f"mx.{domain}"), err


def test_tlsa_without_the_ad_bit_is_ignored(dns_server: LoopbackDNS, domain: str, tmp_path: Path) -> None:
    with tls_sink(f"mx.{domain}") as sink:
        dns_server.add(f"_{sink.port}._tcp.mx.{domain}", "TLSA", "3 1 1 " + "ab" * 32, ttl=0)
        assert send(make(dns_server, sink, tmp_path), domain) == [None]


def test_dane_ta_names_the_issuer_and_the_name_must_match(dns_server: LoopbackDNS, domain: str,
                                                          tmp_path: Path) -> None:
    issuer = ca().create_child_ca()
    issuer_der = x509.load_pem_x509_certificate(issuer.cert_pem.bytes()).public_bytes(Encoding.DER)
    for name, ok in ((f"mx.{domain}", True), ("other.test", False)):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        issuer.issue_cert(name).configure_cert(context)  # presents the leaf and the issuer
        with SmtpSink(tls_context=context) as sink:
            tlsa = f"_{sink.port}._tcp.mx.{domain}"
            dns_server.remove(tlsa)
            dns_server.add(tlsa, "TLSA", f"2 0 1 {hashlib.sha256(issuer_der).hexdigest()}", ttl=0)
            dns_server.set_authenticated(tlsa)
            (err,) = send(make(dns_server, sink, tmp_path), domain)
        assert (err is None) if ok else deferred_by(err, "DANE", f"mx.{domain}"), (name, err)


def test_authenticated_but_unusable_tlsa_requires_starttls_and_checks_no_certificate(
        dns_server: LoopbackDNS, policies: PolicyServer, domain: str, tmp_path: Path) -> None:
    """RFC 7672 2.2/3.1.3: PKIX-TA/EE usages and unknown usage, selector or matching type are unusable; with
    only those, TLS is required (any certificate) and DANE still wins over MTA-STS."""
    publish(dns_server, policies, domain, "enforce", [f"*.elsewhere.{domain}"])
    for sink in (tls_sink("other.test"), SmtpSink()):
        with sink:
            tlsa = f"_{sink.port}._tcp.mx.{domain}"
            dns_server.remove(tlsa)
            for record in ("0 0 1 ", "1 1 1 ", "4 1 1 ", "3 7 1 ", "2 1 9 "):
                dns_server.add(tlsa, "TLSA", record + "ab" * 32, ttl=0)
            dns_server.set_authenticated(tlsa)
            (err,) = send(make(dns_server, sink, tmp_path, policies), domain)
            if sink.tls_context is not None:
                assert err is None and sink.wait_for(1)[0].tls is True, err
            else:
                assert sink.messages == []
                assert deferred_by(err, "DANE", f"mx.{domain}") and "STARTTLS" in err.text, err


def test_a_failed_tlsa_lookup_defers_a_host_whose_zone_is_signed(dns_server: LoopbackDNS, domain: str,
                                                                   tmp_path: Path) -> None:
    """RFC 7672 2.2.2: SERVFAIL on TLSA with authenticated addresses -> that host is not used; unsigned
    addresses, or an authenticated NXDOMAIN/NODATA, mean no DANE."""
    with SmtpSink() as sink:
        tlsa = f"_{sink.port}._tcp.mx.{domain}"
        dns_server.set_failure(tlsa, "SERVFAIL")
        dns_server.set_authenticated(f"mx.{domain}")
        (err,) = send(make(dns_server, sink, tmp_path), domain)
        assert sink.connections == 0
        assert deferred_by(err, "DANE", f"mx.{domain}") and "TLSA" in err.text, err

        dns_server.add(domain, "MX", f"20 mx2.{domain}.", ttl=0)  # a second MX without DANE takes it
        dns_server.add(f"mx2.{domain}", "A", "127.0.0.1", ttl=0)
        assert send(make(dns_server, sink, tmp_path), domain) == [None]
        dns_server.remove(domain, "MX")
        dns_server.add(domain, "MX", f"10 mx.{domain}.", ttl=0)

        dns_server.set_authenticated(f"mx.{domain}", False)  # unsigned: the failure means no DANE
        assert send(make(dns_server, sink, tmp_path), domain) == [None]

        dns_server.clear_failure(tlsa)
        dns_server.set_authenticated(f"mx.{domain}")
        dns_server.set_authenticated(tlsa)  # authenticated NXDOMAIN, then NODATA: no DANE
        assert send(make(dns_server, sink, tmp_path), domain) == [None]
        dns_server.add(tlsa, "TXT", "not a TLSA record", ttl=0)
        assert send(make(dns_server, sink, tmp_path), domain) == [None]
        assert len(sink.wait_for(4)) == 4


# ------------------------------------------------------------------ verify, opportunistic, overrides


def test_verify_requires_a_valid_certificate(dns_server: LoopbackDNS, domain: str, tmp_path: Path) -> None:
    with tls_sink(f"mx.{domain}") as sink:
        assert send(make(dns_server, sink, tmp_path, tls_policy="verify"), domain) == [None]
    with tls_sink("other.test") as sink:
        (err,) = send(make(dns_server, sink, tmp_path, tls_policy="verify"), domain)
    assert deferred_by(err, "verify", f"mx.{domain}"), err
    with SmtpSink() as plain:
        (err,) = send(make(dns_server, plain, tmp_path, tls_policy="verify"), domain)
    assert deferred_by(err, "verify", f"mx.{domain}") and err is not None and "STARTTLS" in err.text


def test_a_domain_override_beats_the_default(dns_server: LoopbackDNS, domain: str, tmp_path: Path) -> None:
    with tls_sink("other.test") as sink:
        d = make(dns_server, sink, tmp_path, tls_policy="verify", policy={domain: "opportunistic"})
        assert send(d, domain) == [None]
    with tls_sink("other.test") as sink:
        d = make(dns_server, sink, tmp_path, policy={"*": "verify"})
        (err,) = send(d, domain)
    assert deferred_by(err, "verify", f"mx.{domain}"), err


def test_a_routed_domain_is_opportunistic_unless_listed(dns_server: LoopbackDNS, tmp_path: Path) -> None:
    with tls_sink("other.test") as sink:
        assert send(make(dns_server, sink, tmp_path, tls_policy="verify",
                         routes={"routed.test": sink.address}), "routed.test") == [None]
        (err,) = send(make(dns_server, sink, tmp_path, routes={"routed.test": sink.address},
                           policy={"routed.test": "verify"}), "routed.test")
    assert deferred_by(err, "verify", "127.0.0.1"), err


def test_a_policy_over_64_kib_is_not_read(dns_server: LoopbackDNS, policies: PolicyServer, domain: str,
                                          tmp_path: Path) -> None:
    """Read whole it would be a valid enforce policy listing another MX; cut at the limit it is none."""
    publish(dns_server, policies, domain, "enforce", [])
    padding = "".join(f"x-pad{i}: {'p' * 60}\r\n" for i in range(1200))
    policies.serve(domain, padding + policy_text("enforce", [f"*.elsewhere.{domain}"]))
    with tls_sink("other.test") as sink:
        assert send(make(dns_server, sink, tmp_path, policies), domain) == [None]
    assert policies.fetches.count(domain) == 1


def test_a_broken_starttls_under_a_policy_names_it(dns_server: LoopbackDNS, domain: str,
                                                   tmp_path: Path) -> None:
    with tls_sink(f"mx.{domain}") as sink:
        sink.behaviour.starttls = BREAK_TLS
        (err,) = send(make(dns_server, sink, tmp_path, tls_policy="verify"), domain)
        assert sink.messages == []
    assert deferred_by(err, "verify", f"mx.{domain}") and err is not None and "STARTTLS" in err.text, err
