"""What MTA-STS TXT records and policy files mean (RFC 8461 3), and which TLSA records match a chain
(RFC 6698 2.1, RFC 7672 3): pure functions over untrusted input."""

from __future__ import annotations

import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fwdmail.smtp import dane, mtasts


@pytest.mark.parametrize(("records", "expected"), [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=STSv1;id=abc"], "abc"),
    (["v=spf1 -all", "v=STSv1; id=x1"], "x1"),
    (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # two records: none (RFC 8461 3.1)
    (["v=STSv1; id=not-alnum"], None),
    (["v=STSv1; id=" + "a" * 33], None),
    (["v=STSv1"], None),
    ([], None),
])
def test_txt_id(records: list[str], expected: str | None) -> None:
    assert mtasts.txt_id(records) == expected


def test_policy_file() -> None:
    policy = mtasts.parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
                                 "mx: *.example.net\r\nmax_age: 604800\r\n")
    assert policy == mtasts.StsPolicy("enforce", ("mail.example.com", "*.example.net"), 604800)
    assert policy.allows("MAIL.example.com.") and policy.allows("mx1.example.net")
    assert not policy.allows("a.b.example.net") and not policy.allows("example.net")
    assert not policy.allows("mail.example.com.evil.test")


@pytest.mark.parametrize("text", [
    "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
    "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmax_age: 1\n",  # no mx in enforce
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999999\n",
    "version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
    "<html>not a policy</html>",
])
def test_not_a_policy(text: str) -> None:
    assert mtasts.parse_policy(text) is None


def test_max_age_is_capped_at_a_year() -> None:
    policy = mtasts.parse_policy("version: STSv1\nmode: none\nmax_age: 999999999\n")
    assert policy is not None and policy.max_age == mtasts.MAX_AGE_LIMIT


def _der(cert: trustme.LeafCert | trustme.CA) -> x509.Certificate:
    pem = cert.cert_pem.bytes() if isinstance(cert, trustme.CA) else cert.cert_chain_pems[0].bytes()
    return x509.load_pem_x509_certificate(pem)


def test_tlsa_matching() -> None:
    root = trustme.CA()
    issuer = root.create_child_ca()
    leaf = _der(issuer.issue_cert("mx.example.test"))
    inter = _der(issuer)
    chain = [leaf.public_bytes(Encoding.DER), inter.public_bytes(Encoding.DER)]
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    full = leaf.public_bytes(Encoding.DER)
    for rec in (dane.Tlsa(3, 1, 1, hashlib.sha256(spki).digest()),
                dane.Tlsa(3, 0, 1, hashlib.sha256(full).digest()),
                dane.Tlsa(3, 1, 2, hashlib.sha512(spki).digest()), dane.Tlsa(3, 0, 0, full)):
        assert dane.verify([rec], chain, ["other.name"]) is None, rec  # DANE-EE: no name check
    ta = dane.Tlsa(2, 0, 1, hashlib.sha256(inter.public_bytes(Encoding.DER)).digest())
    assert dane.verify([ta], chain, ["mx.example.test"]) is None
    assert dane.verify([ta], chain, ["other.name"]) is not None  # DANE-TA: the name must match
    assert dane.verify([ta], chain[:1], ["mx.example.test"]) is not None  # the TA must be presented
    stranger = _der(trustme.CA())
    forged = [chain[0], stranger.public_bytes(Encoding.DER)]
    bad_ta = dane.Tlsa(2, 0, 1, hashlib.sha256(forged[1]).digest())
    assert dane.verify([bad_ta], forged, ["mx.example.test"]) is not None  # it did not issue the leaf
    assert dane.verify([dane.Tlsa(3, 1, 1, b"\0" * 32)], chain, ["mx.example.test"]) is not None
    assert dane.verify([dane.Tlsa(3, 1, 1, b"\0" * 32)], [b"garbage"], ["x"]) == "unreadable certificate"
