"""The shared DKIM core against dkimpy: the same parse, the same canonical forms, the same verdicts.

dkimcore replaces dkimpy's message parsing, body canonicalisation and RSA (for speed), so each is
compared with dkimpy's own on edge cases and on seeded random input, and whole signatures made by
dkimpy in every canonicalisation are verified by both, unchanged and tampered with.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import random
from collections.abc import Callable

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings
from hypothesis import strategies as st

from fwdmail.auth import dkim_core as dkimcore
from fwdmail.runtime.keys import dkim_public_record, generate_dkim_key

EDGE_MESSAGES = [
    b"", b"\r\n", b"\n", b"\r\n\r\n", b"A: b", b"A: b\r\n", b"A: b\r\n\r\n", b"A: b\n\nbody\n",
    b"A: b\r\n\r\nbody", b"A: b\r\n\tcont\r\n  more\r\nC:d\r\n\r\nx\r\n\r\n\r\n",
    b"From alice@example.test Mon Jan  1 10:00:00 2024\r\nA: b\r\n\r\nbody\r\n",
    b"A: b\r\n\r\nline\nbare lf\r\nand \r lone cr\r\n", b"A: b\r\r\n\r\nbody", b"A: b\n\r\nbody\r\n",
    b"\tcontinuation first\r\nA: b\r\n\r\n", b"no colon here\r\n\r\nbody", b"Bad Name: x\r\n\r\n",
    b"A:\r\n\r\n", b"A: b\r\n\r\n\r\n\r\n", b"A: b\r\n\r\n \t \r\n\t\r\n",
    b"A: b\r\n\r\nx \t y  \t\r\nz\t\r\n",
]
ALPHABET = [b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\r\n ", b":", b"From ", b"X-H: v", b"\x0b"]


def random_inputs(seed: int, count: int, max_parts: int = 30) -> list[bytes]:
    rng = random.Random(seed)
    return [b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, max_parts))) for _ in range(count)]


def dkimpy_parse(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
    try:
        headers, body = dkim.rfc822_parse(message)
    except Exception:  # MessageFormatError, or IndexError for a continuation line first
        return None
    return [(name, value) for name, value in headers], body


def our_parse(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
    try:
        parsed = dkimcore.Message(message)
    except dkimcore.MessageFormatError:
        return None
    return parsed.headers, parsed.body


def test_messages_parse_as_dkimpy_parses_them() -> None:
    for message in EDGE_MESSAGES + random_inputs(1, 4000):
        assert our_parse(message) == dkimpy_parse(message), message


def test_canonical_bodies_are_dkimpy_s() -> None:
    bodies = [b"", b"\r\n", b"\r\n\r\n", b"x", b"x\r\n", b"x\r\n\r\n\r\n", b" ", b" \r\n", b"a\r\r\n",
              b"a\n\r\n", b"a  b\t\tc \t\r\n\r\n", b"a\r\n\r\n \r\n", b"\t\r\n"]
    for body in bodies + random_inputs(2, 6000):
        assert dkimcore.relaxed_body(body) == Relaxed.canonicalize_body(body), body
        assert dkimcore.simple_body(body) == Simple.canonicalize_body(body), body


def test_relaxed_header_fields_are_dkimpy_s() -> None:
    rng = random.Random(3)
    for value in [*random_inputs(4, 6000, 20), b" a \r\n\tb\r\n", b"\r\n", b"", b" x\x0c\r\n"]:
        name = rng.choice([b"Subject", b"X-Y ", b"FROM\t"])
        assert dkimcore.relaxed_field(name, value) == Relaxed.canonicalize_headers([(name, value)])[0]


def test_each_canonical_body_is_hashed_once() -> None:
    parsed = dkimcore.Message(b"A: b\r\n\r\nhello  world \r\n\r\n")
    first = parsed.body_hash(relaxed=True)
    assert parsed.body_hash(relaxed=True) is first
    assert parsed.body_hash(relaxed=False) != first
    assert parsed.body_hash(relaxed=True, length=3) != first


class _Collect:
    """A stand-in hasher that keeps what it is fed."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []

    def update(self, data: bytes) -> None:
        self.fed.append(bytes(data))


_BODY_PARTS = st.sampled_from([b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\r\n ", b"x  ", b"\r\n\r\n"])


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(_BODY_PARTS, max_size=40), size=st.integers(1, 16), relaxed=st.booleans(),
       length=st.none() | st.integers(0, 40))
def test_the_body_canonicalised_in_pieces_is_the_whole_body_canonicalised(
        parts: list[bytes], size: int, relaxed: bool, length: int | None) -> None:
    head = b"A: b\r\n\r\n"
    message = head + b"".join(parts)
    whole = dkimcore.Message(message).body
    expected = (dkimcore.relaxed_body if relaxed else dkimcore.simple_body)(whole)
    fed = _Collect()
    dkimcore.hash_body(dkimcore.body_pieces(message, len(head), size), relaxed, fed, length)
    assert b"".join(fed.fed) == (expected if length is None else expected[:length])
    pieces = list(dkimcore.body_pieces(message, len(head), size))
    assert b"".join(pieces) == message[len(head):]
    assert all(p[-1:] not in (b" ", b"\t", b"\r") for p in pieces[:-1])


def test_a_large_body_hashes_as_dkimpy_hashes_it() -> None:
    rng = random.Random(5)
    lines = [b"." * rng.randint(0, 30) + b" \t " * rng.randint(0, 3) for _ in range(40_000)]
    body = b"\r\n".join(lines) + b"x" * 300_000 + b"  \r\n" * 5000 + b"\r\n" * 70_000
    parsed = dkimcore.Message(b"A: b\r\n\r\n" + body)
    for relaxed, canon in ((True, Relaxed), (False, Simple)):
        assert parsed.body_hash(relaxed) == hashlib.sha256(canon.canonicalize_body(body)).digest()


def test_names_to_sign() -> None:
    headers = [(b"From", b" a\r\n"), (b"Cc", b" b\r\n"), (b"cc", b" c\r\n"), (b"Received", b" x\r\n")]
    assert dkimcore.names_to_sign(headers, (b"from", b"to"), (b"cc", b"reply-to")) == [
        b"from", b"from", b"to", b"cc", b"cc"]


# key records

@functools.cache
def pem(name: str, bits: int = 1024) -> str:
    return generate_dkim_key(bits)


def record(name: str) -> bytes:
    return dkim_public_record(pem(name)).encode()


def test_key_records_dkimpy_accepts_or_refuses() -> None:
    p = record("a").split(b"p=")[1]
    assert dkimcore.parse_key_record(record("a")).bits == 1024
    assert dkimcore.parse_key_record(b"p=" + p).bits == 1024  # v= and k= are optional
    assert dkimcore.parse_key_record(b"v=DKIM1; k=rsa; s=email; p=" + p).bits == 1024
    for bad in (b"", b"v=DKIM1; k=rsa; p=", b"v=DKIM2; p=" + p, b"k=ed25519; p=" + p, b"s=tlsrpt; p=" + p,
                b"v=DKIM1; k=rsa", b"v=DKIM1; p=!!notbase64", b"not a tag list"):
        with pytest.raises(dkimcore.KeyRecordError):
            dkimcore.parse_key_record(bad)


def test_keys_under_1024_bits_are_refused() -> None:
    small = crypto_rsa.generate_private_key(public_exponent=65537, key_size=1024).private_numbers()
    n = small.p * (small.q >> 300 | 1)  # a 724-bit odd modulus: loadable, too small
    der = crypto_rsa.RSAPublicNumbers(65537, n).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(dkimcore.KeyRecordError, match="too small"):
        dkimcore.parse_key_record(b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))


def test_keys_are_looked_up_and_parsed_once_per_message() -> None:
    asked: list[str] = []

    def lookup(name: str) -> bytes | None:
        asked.append(name)
        if name == "down._domainkey.x.test":
            raise TimeoutError
        return record("a") if name.startswith("a.") else None

    keys = dkimcore.Keys(lookup)
    assert keys.get("a._domainkey.x.test") is keys.get("a._domainkey.x.test")
    with pytest.raises(dkimcore.KeyRecordError):
        keys.get("b._domainkey.x.test")
    with pytest.raises(dkimcore.KeyUnavailable):
        keys.get("down._domainkey.x.test")
    with pytest.raises(dkimcore.KeyUnavailable):
        keys.get("down._domainkey.x.test")
    assert asked == ["a._domainkey.x.test", "b._domainkey.x.test", "down._domainkey.x.test"]


# whole signatures: dkimcore and dkimpy give the same verdict

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@dest.test\r\nSubject: Hello   there\r\n"
           b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\nMessage-ID: <m1@example.test>\r\nX-Extra: one\r\n"
           b"\r\nLine one  \r\n\tindented\r\n\r\nLine two\r\n\r\n\r\n")

TAMPERINGS: list[Callable[[bytes], bytes]] = [
    lambda m: m,
    lambda m: m.replace(b"Line two", b"Line 2"),
    lambda m: m.replace(b"Line one  \r\n", b"Line one\r\n"),
    lambda m: m.replace(b"Line one  ", b"Line  one "),
    lambda m: m + b"appended\r\n",
    lambda m: m + b"\r\n\r\n",
    lambda m: m.replace(b"Subject: Hello   there", b"Subject: Hello there"),
    lambda m: m.replace(b"Subject: Hello   there", b"subject:Hello\r\n   there  "),
    lambda m: m.replace(b"Subject: Hello", b"Subject: Hallo"),
    lambda m: m.replace(b"X-Extra: one", b"X-Extra: two"),
    lambda m: m.replace(b"\r\n\r\nLine one", b"\r\nFrom: mallory@evil.test\r\n\r\nLine one"),
    lambda m: b"From: mallory@evil.test\r\n" + m,
    lambda m: m.replace(b"\r\n\r\nLine one", b"\r\nCc: added@evil.test\r\n\r\nLine one"),
    lambda m: m.replace(b"\r\n", b"\n"),
]

SIGNINGS = [
    {"canonicalize": (b"relaxed", b"relaxed")},
    {"canonicalize": (b"simple", b"simple")},
    {"canonicalize": (b"relaxed", b"simple")},
    {"canonicalize": (b"simple", b"relaxed")},
    {"canonicalize": (b"relaxed", b"relaxed"), "length": True},
    {"canonicalize": (b"simple", b"simple"), "length": True},
    {"canonicalize": (b"relaxed", b"relaxed"), "signature_algorithm": b"rsa-sha1"},
    {"canonicalize": (b"relaxed", b"relaxed"),
     "include_headers": [b"from", b"subject", b"cc", b"cc", b"from"]},
    {"canonicalize": (b"relaxed", b"relaxed"), "include_headers": [b"From", b"X-Extra", b"Date"]},
]


@pytest.mark.parametrize("options", SIGNINGS, ids=lambda o: repr(sorted(o.items())))
def test_dkim_verdicts_match_dkimpy(options: dict[str, object]) -> None:
    signature = dkim.sign(MESSAGE, b"sel", b"example.test", pem("a").encode(), **options)  # type: ignore[arg-type]
    key = dkimcore.parse_key_record(record("a"))
    verdicts = []
    for tamper in TAMPERINGS:
        message = tamper(signature + MESSAGE)
        theirs = dkim.verify(message, dnsfunc=lambda name, timeout=5: record("a"))
        ours = dkimcore.verify_dkim(dkimcore.Message(message), 0, key)
        assert (ours == "pass") == theirs, (options, message)
        verdicts.append(ours)
    assert verdicts[0] == "pass"
    assert "body hash mismatch" in verdicts and "bad signature" in verdicts


def test_a_wrong_key_is_a_bad_signature() -> None:
    message = dkim.sign(MESSAGE, b"sel", b"example.test", pem("a").encode()) + MESSAGE
    other = dkimcore.parse_key_record(record("b"))
    assert dkimcore.verify_dkim(dkimcore.Message(message), 0, other) == "bad signature"


@pytest.mark.parametrize("edit", [
    lambda s: s.replace(b"v=1", b"v=2"),
    lambda s: s.replace(b"a=rsa-sha256", b"a=rsa-md5"),
    lambda s: s.replace(b"c=relaxed/relaxed", b"c=fancy/relaxed"),
    lambda s: s.replace(b"bh=", b"bh=!!"),
    lambda s: s.replace(b"; h=", b"; x=1; h="),
    lambda s: s.replace(b"d=example.test", b"d=exa(mple.test"),
    lambda s: s.replace(b"v=1;", b"v=1; v=1;"),
])
def test_malformed_signatures_are_errors_as_in_dkimpy(edit: Callable[[bytes], bytes]) -> None:
    signature = edit(dkim.sign(MESSAGE, b"sel", b"example.test", pem("a").encode(),
                               canonicalize=(b"relaxed", b"relaxed")))
    message = signature + MESSAGE
    assert not dkim.verify(message, dnsfunc=lambda name, timeout=5: record("a"))
    with pytest.raises(dkimcore.SignatureError):
        dkimcore.verify_dkim(dkimcore.Message(message), 0, dkimcore.parse_key_record(record("a")))
