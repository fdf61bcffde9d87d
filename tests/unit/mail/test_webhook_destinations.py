"""Webhook URLs as alias destinations: https only, host normalised, no credentials or fragment; and the
JSON body built from a message, whatever its MIME."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from fwdmail.mail.addresses import AddressError, parse_destinations
from fwdmail.mail.jsonmail import MAX_MULTIPARTS, MAX_PARTS, Envelope, TooBig, payload


def test_urls_and_addresses_mix_and_urls_keep_their_case_past_the_host() -> None:
    got = parse_destinations(["https://Hook.Example.COM:8443/In/A?k=V", "u@Ex.test", "https://[::1]/x",
                              "https://hook.example.com:8443/In/A?k=V", "https://bücher.test"])
    assert got == ["https://hook.example.com:8443/In/A?k=V", "u@ex.test", "https://[::1]/x",
                   "https://xn--bcher-kva.test/"]


@pytest.mark.parametrize(("bad", "why"), [
    ("http://hook.test/", "only https://"), ("https://user:pw@hook.test/", "credentials"),
    ("https://hook.test/#frag", "bad characters"), ("https://hook.test/a b", "bad characters"),
    ("https://hook.test:0/", "bad port"), ("https://hook.test:99999/", "bad port"),
    ("https://[nope]/", "IPv6"), ("https://hook.test/\u202e", "bad characters"),
    ("https://" + "a" * 2000 + ".test/", "longer than"), ("ftp://hook.test/", "no domain"),
])
def test_bad_urls_are_refused(bad: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        parse_destinations([bad])


def test_payload_of_broken_mime_and_unknown_charset_is_still_json() -> None:
    msg = (b"Authentication-Results: mx.us.test; spf=pass\r\nAuthentication-Results: evil.test; spf=pass\r\n"
           b"Subject: =?utf-8?q?hi?=\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/plain; charset=x-nonexistent\r\n\r\nt\xff\xfex\r\n"
           b"--B\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64\r\n"
           b"--B\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\n\r\n" + b"%" * 50 + b"\r\n")  # no end
    doc = json.loads(payload(msg, Envelope("s@src.test", "a@us.test", "a@us.test"), "mx.us.test", 10, "T"))
    assert doc["authentication_results"] == ["mx.us.test; spf=pass"]
    assert doc["text"].startswith("t") and doc["html"] is None
    png, pdf = doc["attachments"]
    assert png["content_type"] == "image/png" and png["sha256"]
    assert pdf["filename"] == "r.pdf" and pdf["truncated"] is True and pdf["content"] is None


def _nested(depth: int) -> bytes:
    levels = (b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    return b"Subject: x\r\n" + b"".join(levels) + b"hi\r\n"


@pytest.mark.parametrize(("msg", "parsed"), [
    (_nested(MAX_MULTIPARTS), True), (_nested(MAX_MULTIPARTS + 1), False), (_nested(5000), False),
    (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + b"--B\r\n\r\nx\r\n" * (2 * MAX_PARTS + 1), False),
])
def test_mime_too_deep_or_too_many_parts_is_sent_whole_instead_of_parsed(msg: bytes, parsed: bool) -> None:
    doc = json.loads(payload(msg, Envelope("s@src.test", "a@us.test", "a@us.test"), "mx.us.test", 10**7, "T"))
    assert doc["mime_parsed"] is parsed
    if not parsed:
        assert doc["attachments"] == [] and doc["text"] is None
        assert base64.b64decode(doc["raw"]["content"]) == msg
        assert doc["raw"]["sha256"] == hashlib.sha256(msg).hexdigest()


def test_attachment_contents_are_left_out_largest_first_until_the_body_fits() -> None:
    atts = b"".join(b"--B\r\nContent-Type: application/x\r\nContent-Disposition: attachment; filename=f%d\r\n"
                    b"\r\n" % n + b"z" * size + b"\r\n" for n, size in enumerate((3000, 1000, 2000)))
    msg = b"Content-Type: multipart/mixed; boundary=B\r\n\r\n" + atts + b"--B--\r\n"
    env = Envelope("s@src.test", "a@us.test", "a@us.test")
    whole = payload(msg, env, "mx.us.test", 10**6, "T")
    trimmed = payload(msg, env, "mx.us.test", 10**6, "T", max_body=len(whole) - 3000)
    assert len(trimmed) <= len(whole) - 3000
    kept = {a["filename"]: a["content"] is not None for a in json.loads(trimmed)["attachments"]}
    assert kept == {"f0": False, "f1": True, "f2": True}
    with pytest.raises(TooBig):
        payload(msg, env, "mx.us.test", 10**6, "T", max_body=500)
