"""The X-Webhook-Signature value: HMAC-SHA256 of "<t>." + the exact body, keyed with the key as printed."""

from __future__ import annotations

import hashlib
import hmac

from fwdmail.mx.webhook import signature


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    want = hmac.new(b"k3y", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k3y", 1700000000, body) == f"t=1700000000,v1={want}"
