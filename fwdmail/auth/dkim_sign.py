"""DKIM signing of outbound mail: rsa-sha256, relaxed/relaxed, d=<domain>, s=<selector>.

Untrusted input: the submitted message (headers and body as the user's client wrote them). `dkimcore`
parses and canonicalises it as dkimpy does and lays out the header field; the RSA signature comes from
OpenSSL (`rsa`), with the private key parsed once per key. CPU-bound: the daemon calls `sign` through
`ctx.blocking.cpu`.
"""

from __future__ import annotations

import base64
import datetime as dt

from fwdmail.auth import dkim_core as dkimcore
from fwdmail.auth import rsa

__all__ = ["ALSO_SIGNED", "ALWAYS_SIGNED", "DkimError", "sign", "signed_message"]

HEADER = b"DKIM-Signature"
ALWAYS_SIGNED = (b"from", b"to", b"subject", b"date", b"message-id")
"""Signed even when absent (and once more than present), so nobody can add them later."""
ALSO_SIGNED = (b"cc", b"reply-to", b"in-reply-to", b"references", b"mime-version", b"content-type",
               b"content-transfer-encoding", b"list-unsubscribe", b"list-unsubscribe-post")
"""Signed as many times as they are present."""


class DkimError(ValueError):
    """The message or key cannot be signed."""


def sign(message: bytes, domain: str, selector: str, private_key_pem: str, now: dt.datetime) -> bytes:
    """The DKIM-Signature header field (ending in CRLF) to put on top of `message` (CRLF line endings)."""
    try:
        key = rsa.private_key(private_key_pem)
    except rsa.RsaKeyError as exc:
        raise DkimError(f"unusable DKIM private key: {exc}") from None
    try:
        parsed = dkimcore.Message(message)
    except dkimcore.MessageFormatError as exc:
        raise DkimError(f"cannot sign a malformed message: {exc}") from None
    include = dkimcore.names_to_sign(parsed.headers, ALWAYS_SIGNED, ALSO_SIGNED)
    timestamp = int(now.replace(tzinfo=dt.UTC).timestamp())
    tags = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", domain.encode("ascii")),
        (b"s", selector.encode("ascii")), (b"t", str(timestamp).encode("ascii")),
        (b"h", b" : ".join(include)), (b"bh", base64.b64encode(parsed.body_hash(relaxed=True))), (b"b", b""),
    ]
    name, value = dkimcore.signed_field(HEADER, tags, parsed.select(include, relaxed=True), key)
    return name + b":" + value


def signed_message(message: bytes, domain: str, selector: str, private_key_pem: str,
                   now: dt.datetime) -> bytes:
    """`message` with its DKIM-Signature header field on top."""
    return sign(message, domain, selector, private_key_pem, now) + message
