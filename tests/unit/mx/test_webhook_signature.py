"""The X-Webhook-Signature value: HMAC-SHA256 of "<t>." + the exact body, keyed with the key as printed."""

from __future__ import annotations

import hashlib
import hmac

from fwdmail.mx.webhook import signature


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    want = hmac.new(b"k3y", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k3y", 1700000000, body) == f"t=1700000000,v1={want}"


def test_the_readme_verifier_accepts_our_signature_and_refuses_a_replay_or_a_changed_body() -> None:
    import time
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    [block] = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:] if "def verified(" in b]
    scope: dict[str, object] = {}
    exec(block, scope)  # the README's own lines
    verified = scope["verified"]
    assert callable(verified)
    now = int(time.time())
    assert verified("k3y", signature("k3y", now, b"{}"), b"{}")
    assert not verified("k3y", signature("k3y", now, b"{}"), b"{} ")
    assert not verified("k3y", signature("k3y", now - 3600, b"{}"), b"{}")
    assert not verified("other", signature("k3y", now, b"{}"), b"{}")
