"""DKIM signing of outbound mail: rsa-sha256, relaxed/relaxed, d=<domain>, s=<selector>.

Untrusted input: the submitted message (headers and body as the user's client wrote them). dkimpy parses
it, canonicalises it and lays out the header; the RSA signature itself comes from `cryptography`
(OpenSSL), not dkimpy's pure-Python RSA. CPU-bound: the daemon calls `sign` through `ctx.blocking.cpu`.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from dkim.canonicalization import CanonicalizationPolicy

__all__ = ["ALWAYS_SIGNED", "DkimError", "sign", "signed_message"]

HEADER = b"DKIM-Signature"
ALWAYS_SIGNED = (b"from", b"to", b"subject", b"date", b"message-id")
"""Signed even when absent (and once more than present), so nobody can add them later."""
ALSO_SIGNED = (b"cc", b"reply-to", b"in-reply-to", b"references", b"mime-version", b"content-type",
               b"content-transfer-encoding", b"list-unsubscribe", b"list-unsubscribe-post")
"""Signed as many times as they are present."""

_POLICY = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


class DkimError(ValueError):
    """The message or key cannot be signed."""


class _Collect:
    """Stands in for dkimpy's hasher: keeps the exact bytes to sign so OpenSSL can hash and sign them."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def update(self, data: bytes) -> None:
        self.parts.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


@functools.lru_cache(maxsize=128)
def _private_key(pem: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise DkimError(f"unusable DKIM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DkimError("the DKIM private key is not an RSA key")
    return key


def _headers_to_sign(headers: list[list[bytes]]) -> list[bytes]:
    counts: dict[bytes, int] = {}
    for name, _ in headers:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    names = [n for n in ALWAYS_SIGNED for _ in range(counts.get(n, 0) + 1)]
    names += [n for n in ALSO_SIGNED for _ in range(counts.get(n, 0))]
    return names


def _fold_base64(value: bytes, width: int = 72) -> bytes:
    return b"\r\n ".join(value[i:i + width] for i in range(0, len(value), width))


def sign(message: bytes, domain: str, selector: str, private_key_pem: str, now: dt.datetime) -> bytes:
    """The DKIM-Signature header field (ending in CRLF) to put on top of `message` (CRLF line endings)."""
    key = _private_key(private_key_pem)
    try:
        headers, body = dkim.rfc822_parse(message)
    except dkim.MessageFormatError as exc:
        raise DkimError(f"cannot sign a malformed message: {exc}") from None
    include = _headers_to_sign(headers)
    body_hash = base64.b64encode(hashlib.sha256(_POLICY.canonicalize_body(body)).digest())
    timestamp = int(now.replace(tzinfo=dt.UTC).timestamp())
    tags = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", domain.encode("ascii")),
        (b"s", selector.encode("ascii")), (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include)), (b"bh", body_hash), (b"b", b""),
    ]
    unsigned = dkim.fold(b"; ".join(b"=".join(t) for t in tags), namelen=len(HEADER))
    collected = _Collect()
    dkim.hash_headers(collected, _POLICY, _POLICY.canonicalize_headers(headers), include,
                      (HEADER, b" " + unsigned), None)
    signature = key.sign(collected.data, padding.PKCS1v15(), hashes.SHA256())
    return HEADER + b": " + unsigned + b"\r\n " + _fold_base64(base64.b64encode(signature)) + b"\r\n"


def signed_message(message: bytes, domain: str, selector: str, private_key_pem: str,
                   now: dt.datetime) -> bytes:
    """`message` with its DKIM-Signature header field on top."""
    return sign(message, domain, selector, private_key_pem, now) + message
