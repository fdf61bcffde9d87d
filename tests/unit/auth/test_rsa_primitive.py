"""The OpenSSL RSA primitive of DKIM and ARC against dkimpy's pure-Python RSA.

PKCS#1 v1.5 signatures are deterministic, so the same key and data must give the very same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import math

import dkim.crypto
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa

from fwdmail.auth import rsa
from fwdmail.runtime.keys import generate_dkim_key


@functools.cache
def pem(bits: int) -> str:
    return generate_dkim_key(bits)


def der(pem_text: str, fmt: serialization.PublicFormat) -> bytes:
    key = serialization.load_pem_private_key(pem_text.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.DER, fmt)


DATA = [b"", b"x", b"from:Alice <a@example.test>\r\nsubject:hi\r\n", bytes(range(256)) * 40]


@pytest.mark.parametrize("bits", [1024, 2048])
@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_signatures_are_byte_for_byte_those_of_dkimpy(bits: int, algorithm: str) -> None:
    key = rsa.private_key(pem(bits))
    pure_key = dkim.crypto.parse_pem_private_key(pem(bits).encode())
    for data in DATA:
        ours = rsa.sign(key, hashlib.new(algorithm, data).digest(), algorithm)
        theirs = bytes(dkim.crypto.RSASSA_PKCS1_v1_5_sign(hashlib.new(algorithm, data), pure_key))
        assert ours == theirs
        assert len(ours) == bits // 8


def test_verify_agrees_with_dkimpy_and_refuses_any_change() -> None:
    key = rsa.private_key(pem(2048))
    spki = der(pem(2048), serialization.PublicFormat.SubjectPublicKeyInfo)
    public, pure_public = rsa.public_key(spki), dkim.crypto.parse_public_key(spki)
    digest = hashlib.sha256(b"signed data").digest()
    signature = rsa.sign(key, digest)
    assert rsa.verify(public, signature, digest)
    assert dkim.crypto.RSASSA_PKCS1_v1_5_verify(hashlib.sha256(b"signed data"), signature, pure_public)
    assert not rsa.verify(public, signature, hashlib.sha256(b"signed dat4").digest())
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not rsa.verify(public, flipped, digest)
    assert not rsa.verify(public, signature, hashlib.sha1(b"signed data").digest(), "sha1")
    other = rsa.public_key(der(pem(1024), serialization.PublicFormat.SubjectPublicKeyInfo))
    assert not rsa.verify(other, signature, digest)


def test_signature_length_must_be_the_modulus_length() -> None:
    """RFC 8017 8.2.2 step 1 (dkimpy would accept the padded form: it reads the signature as a number)."""
    key = rsa.private_key(pem(2048))
    public = rsa.public_key(der(pem(2048), serialization.PublicFormat.SubjectPublicKeyInfo))
    digest = hashlib.sha256(b"data").digest()
    signature = rsa.sign(key, digest)
    assert rsa.verify(public, signature, digest)
    assert not rsa.verify(public, b"\0" + signature, digest)
    assert not rsa.verify(public, signature[:-1], digest)


def test_public_keys_in_both_encodings_dkimpy_reads() -> None:
    spki = der(pem(2048), serialization.PublicFormat.SubjectPublicKeyInfo)
    pkcs1 = der(pem(2048), serialization.PublicFormat.PKCS1)
    modulus = dkim.crypto.parse_public_key(spki)["modulus"]
    assert dkim.crypto.parse_public_key(pkcs1)["modulus"] == modulus
    for data in (spki, pkcs1):
        assert rsa.public_key(data).public_numbers().n == modulus


def test_unusable_keys_are_clear_errors() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
    ec_der = ec_key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(rsa.RsaKeyError, match="not an RSA key"):
        rsa.private_key(ec_pem)
    with pytest.raises(rsa.RsaKeyError, match="not an RSA key"):
        rsa.public_key(ec_der)
    with pytest.raises(rsa.RsaKeyError, match="unusable private key"):
        rsa.private_key("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(rsa.RsaKeyError, match="unusable public key"):
        rsa.public_key(b"\x30\x03\x02\x01\x01")


def test_a_private_key_is_parsed_once() -> None:
    text = pem(1024)
    first = rsa.private_key(text)
    before = rsa.private_key.cache_info().hits
    assert rsa.private_key("".join(text)) is first  # an equal text from elsewhere, not the same object
    assert rsa.private_key.cache_info().hits == before + 1


def test_a_huge_public_exponent_is_refused_not_computed() -> None:
    """A hostile key record cannot make each verification cost seconds: over 3072 bits of modulus,
    OpenSSL refuses exponents over 64 bits. dkimpy's pure-Python RSA accepts the same valid signature."""
    numbers = crypto_rsa.generate_private_key(public_exponent=65537, key_size=3584).private_numbers()
    p, q = numbers.p, numbers.q
    phi = (p - 1) * (q - 1)
    e = (1 << 1023) + 1
    while math.gcd(e, phi) != 1:
        e += 2
    d = pow(e, -1, phi)
    n = p * q
    data = hashlib.sha256(b"hostile")
    encoded = dkim.crypto.EMSA_PKCS1_v1_5_encode(data, 448)
    signature = pow(int.from_bytes(encoded, "big"), d, n).to_bytes(448, "big")
    assert dkim.crypto.RSASSA_PKCS1_v1_5_verify(hashlib.sha256(b"hostile"), signature,
                                                {"modulus": n, "publicExponent": e})
    record = crypto_rsa.RSAPublicNumbers(e, n).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert not rsa.verify(rsa.public_key(record), signature, data.digest())
