"""RSASSA-PKCS1-v1_5 through OpenSSL (`cryptography`): the one RSA primitive of DKIM and ARC.

Untrusted input: public keys that signers publish in DNS (DER) and the signatures checked against them.
OpenSSL bounds the work of a hostile key: it refuses moduli over 16384 bits and, above 3072 bits,
public exponents over 64 bits, and a signature must be exactly as long as the modulus (RFC 8017 8.2.2).
Private keys are ours (PEM from the store); each is parsed once and kept, not parsed per message.
"""

from __future__ import annotations

import functools

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

__all__ = ["RsaKeyError", "private_key", "public_key", "sign", "verify"]

_PKCS1 = padding.PKCS1v15()
_PREHASHED = {"sha256": utils.Prehashed(hashes.SHA256()), "sha1": utils.Prehashed(hashes.SHA1())}


class RsaKeyError(ValueError):
    """A key that cannot be used."""


@functools.lru_cache(maxsize=256)
def private_key(pem: str) -> rsa.RSAPrivateKey:
    """The RSA private key of a PEM text (PKCS#1 or PKCS#8), loaded once per distinct text."""
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise RsaKeyError(f"unusable private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise RsaKeyError("the private key is not an RSA key")
    return key


def public_key(der: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from DER: SubjectPublicKeyInfo or a bare PKCS#1 RSAPublicKey."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise RsaKeyError(f"unusable public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise RsaKeyError("the public key is not an RSA key")
    return key


def sign(key: rsa.RSAPrivateKey, digest: bytes, algorithm: str = "sha256") -> bytes:
    """The PKCS#1 v1.5 signature of a `digest` made with `algorithm` (deterministic)."""
    return key.sign(digest, _PKCS1, _PREHASHED[algorithm])


def verify(key: rsa.RSAPublicKey, signature: bytes, digest: bytes, algorithm: str = "sha256") -> bool:
    """Whether `signature` is `key`'s PKCS#1 v1.5 signature of `digest`."""
    try:
        key.verify(signature, digest, _PKCS1, _PREHASHED[algorithm])
    except InvalidSignature:
        return False
    return True
