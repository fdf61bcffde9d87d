"""The DKIM machinery shared by outbound DKIM signing, inbound DKIM verification and ARC.

Untrusted input: message bytes as any client wrote them, signature header fields, and the key records
their signers publish. A message is parsed once, as dkimpy parses it (`mail.headers.dkim_fields`); each
canonical body (simple, relaxed) is made once and each body hash computed once per message, however
many signatures ask for it; every RSA operation goes through `rsa` (OpenSSL). dkimpy supplies the
tag-list parser, the signature field checks, header selection and header canonicalisation.
Bodies are canonicalised and hashed in pieces of about `BODY_PIECE` bytes, never copied whole.

Longer than ~400 lines on purpose: the parsed `Message` and its per-message body-hash memo are what
signing, verifying and ARC share; split apart, the memo would have to cross modules as a bare dict.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError, Relaxed

from fwdmail.auth import rsa
from fwdmail.mail import headers as mailheaders

__all__ = [
    "MIN_KEY_BITS", "Field", "KeyRecordError", "KeyUnavailable", "Keys", "Message", "MessageFormatError",
    "PublicKey", "SignatureError", "body_hash", "body_pieces", "check", "hash_body", "header_digest",
    "key_name", "names_to_sign", "parse_key_record", "parse_tags", "relaxed_body", "relaxed_field",
    "signed_field", "signed_names", "simple_body", "verify_digest", "verify_dkim",
]

MIN_KEY_BITS = 1024
BODY_PIECE = 256 * 1024
HASHES = {b"rsa-sha256": "sha256", b"rsa-sha1": "sha1"}
Field = tuple[bytes, bytes]  # (name, value): the value as it follows the colon, CRLF-terminated

_LINE_END = re.compile(rb"\r?\n")
_CUTTABLE = re.compile(rb"[^ \t\r]")
_WSP = re.compile(rb"\s+")
_H_LIST = re.compile(rb"\s*:\s*")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class MessageFormatError(ValueError):
    """A header section that DKIM cannot parse."""


class SignatureError(ValueError):
    """A signature that cannot be evaluated: malformed, or an algorithm we do not verify (permerror)."""


class KeyRecordError(ValueError):
    """No usable RSA key at the name: missing, revoked, malformed, too small, or not for email."""


class KeyUnavailable(Exception):
    """The key record could not be looked up (temporary)."""


# parsing and canonicalisation

def _parse(message: bytes) -> tuple[list[Field], int]:
    """(header fields, where the body starts) as `dkim.rfc822_parse` reads them (`mailheaders.dkim_fields`);
    `_crlf_body` of the raw body (message[start:]) is the body it gives."""
    try:
        return mailheaders.dkim_fields(message)
    except mailheaders.MalformedSection as exc:
        raise MessageFormatError(str(exc)) from None


def _crlf_body(body: bytes) -> bytes:
    """`body` with every bare LF made CRLF."""
    if b"\n" in body and body.count(b"\n") != body.count(b"\r\n"):
        return _LINE_END.sub(b"\r\n", body)
    return body


def _crlf_run_start(data: bytes) -> int:
    """Where the run of CRLF pairs that ends `data` starts (len(data) if `data` does not end in CRLF)."""
    if not data.endswith(b"\r\n"):
        return len(data)
    base = max(len(data) - 64, 0)
    kept = base + len(data[base:].rstrip(b"\r\n"))  # a short tail, without copying all of `data`
    if kept == base:
        kept = len(data.rstrip(b"\r\n"))
    tail = data[kept:]
    if not tail.endswith(b"\r\n"):
        return len(data)
    start = max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1
    return kept + start + (len(tail) - start) % 2


def simple_body(body: bytes) -> bytes:
    """The "simple" canonical body (RFC 6376 3.4.3) of a CRLF body."""
    return body[:_crlf_run_start(body)] + b"\r\n"


def _relaxed_lines(body: bytes) -> bytes:
    """The "relaxed" rules that work within a line: tabs made spaces, runs of spaces one space, and
    spaces at the end of a line removed."""
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    return body.replace(b" \r\n", b"\r\n")


def relaxed_body(body: bytes) -> bytes:
    """The "relaxed" canonical body (RFC 6376 3.4.4) of a CRLF body, by bytes methods rather than regexes."""
    body = _relaxed_lines(body)
    end = _crlf_run_start(body)
    return body[:end] + b"\r\n" if end else b""


def body_pieces(message: bytes, start: int = 0, size: int = BODY_PIECE) -> Iterator[bytes]:
    """message[start:] in pieces of about `size` bytes, each ending after a LF, or within a longer line
    after a byte that is not a space, tab or CR: no CRLF, run of blanks or blank before a line end
    straddles two pieces, so each canonical rule can be applied to each piece alone."""
    total = len(message)
    while start < total:
        end = start + size
        if end >= total:
            end = total
        else:
            lf = message.rfind(b"\n", start, end)
            if lf >= 0:
                end = lf + 1
            else:
                cut = _CUTTABLE.search(message, end)
                end = total if cut is None else cut.end()
        yield message[start:end]
        start = end


def hash_body(pieces: Iterable[bytes], relaxed: bool, hasher: Any, length: int | None = None) -> None:
    """Feed the simple or relaxed canonical form of the body given in `pieces` (cut as `body_pieces`
    cuts, bare LFs not yet made CRLF) to `hasher`, at most its first `length` bytes. The same bytes as
    `simple_body`/`relaxed_body` of the whole body: a trailing run of CRLFs (and a CR after it) is held
    back until more content follows, since the canonical body ends in exactly one CRLF."""
    left = -1 if length is None else length
    sent = False

    def emit(data: bytes | memoryview) -> None:
        nonlocal left, sent
        if not data or left == 0:
            return
        if left > 0:
            data = data[:left]
            left -= len(data)
        sent = True
        hasher.update(data)

    def emit_held(pairs: int, cr: bool) -> None:
        while pairs:
            step = min(pairs, 32768)
            emit(b"\r\n" * step)
            pairs -= step
        if cr:
            emit(b"\r")

    pairs, cr = 0, False  # held back: that many CRLFs, then a CR if `cr`
    for piece in pieces:
        piece = _crlf_body(piece)
        if relaxed:
            piece = _relaxed_lines(piece)
        if not piece:
            continue
        ends_cr = piece.endswith(b"\r")
        t = len(piece) - ends_cr
        run = _crlf_run_start(piece[:t]) if t else 0
        if run == 0 and not cr:
            pairs += t // 2
        elif run == 1 and cr and piece[:1] == b"\n":
            pairs += 1 + (t - 1) // 2
        else:
            emit_held(pairs, cr)
            emit(memoryview(piece)[:run])
            pairs = (t - run) // 2
        cr = ends_cr
    if cr:
        emit_held(pairs, cr)
        emit(b"\r\n")
    elif sent or not relaxed:
        emit(b"\r\n")


def body_hash(message: bytes, start: int, relaxed: bool, algorithm: str = "sha256",
              length: int | None = None) -> bytes:
    """The hash of the canonical form of the body message[start:] (its first `length` bytes if given),
    computed piece by piece."""
    hasher = hashlib.new(algorithm)
    hash_body(body_pieces(message, start), relaxed, hasher, length)
    return hasher.digest()


def relaxed_field(name: bytes, value: bytes) -> Field:
    """One header field in "relaxed" canonical form (RFC 6376 3.4.2), as dkimpy makes it: line breaks
    removed, runs of spaces and tabs made one space, the value stripped."""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    while b"  " in value:
        value = value.replace(b"  ", b" ")
    return name.lower().rstrip(), value.strip() + b"\r\n"


class Message:
    """A message parsed once: its header fields as dkimpy reads them, and where its body starts. The
    canonical header lists and body hashes are made on first use and kept; the body is never copied."""

    __slots__ = ("_body_start", "_digests", "_headers", "_message", "headers")

    def __init__(self, message: bytes) -> None:
        """Raises MessageFormatError when the header section cannot be parsed."""
        self.headers, self._body_start = _parse(message)
        self._message = message
        self._headers: dict[bool, list[Field]] = {}
        self._digests: dict[tuple[bool, str, int | None], bytes] = {}

    @property
    def body(self) -> bytes:
        """The body with CRLF line ends (a copy: for tests and small messages)."""
        return _crlf_body(self._message[self._body_start:])

    def canonical_headers(self, relaxed: bool) -> list[Field]:
        found = self._headers.get(relaxed)
        if found is None:
            found = [relaxed_field(*f) for f in self.headers] if relaxed else list(self.headers)
            self._headers[relaxed] = found
        return found

    def select(self, include: Sequence[bytes], relaxed: bool) -> list[Field]:
        """The canonical fields a signature with h=`include` (lowercased) covers, in hash order:
        each name picks the lowest field of that name not picked yet (RFC 6376 5.4.2)."""
        return dkim.select_headers(self.canonical_headers(relaxed), list(include))

    def body_hash(self, relaxed: bool, algorithm: str = "sha256", length: int | None = None) -> bytes:
        """The hash of the canonical body (its first `length` bytes if given, as l= asks)."""
        key = (relaxed, algorithm, length)
        digest = self._digests.get(key)
        if digest is None:
            digest = self._digests[key] = body_hash(self._message, self._body_start, relaxed, algorithm,
                                                    length)
        return digest


# header hashes

def header_digest(fields: Iterable[Field], signature: Field, relaxed: bool,
                  algorithm: str = "sha256") -> bytes:
    """The hash a signature signs: the canonical `fields` in order, then its own header field
    (`signature`, raw) canonicalised with the b= value removed and without its final CRLF."""
    hasher = hashlib.new(algorithm)
    for name, value in fields:
        hasher.update(name + b":" + value)
    own = (signature[0], dkim.RE_BTAG.sub(rb"\1", signature[1]))
    name, value = relaxed_field(*own) if relaxed else own
    hasher.update(name + b":" + value.rstrip())
    return hasher.digest()


def _fold_base64(value: bytes, width: int = 72) -> bytes:
    return b"\r\n ".join(value[i:i + width] for i in range(0, len(value), width))


def signed_field(name: bytes, tags: Sequence[tuple[bytes, bytes]], fields: Iterable[Field],
                 key: RSAPrivateKey) -> Field:
    """The header field `name` carrying `tags` (the last one b=, empty) and, after b=, the rsa-sha256
    signature over the canonical (relaxed) `fields` and the field itself."""
    unsigned = dkim.fold(b"; ".join(b"=".join(t) for t in tags), namelen=len(name))
    digest = header_digest(fields, (name, b" " + unsigned), relaxed=True)
    signature = _fold_base64(base64.b64encode(rsa.sign(key, digest)))
    return name, b" " + unsigned + b"\r\n " + signature + b"\r\n"


def names_to_sign(headers: Iterable[Field], always: Sequence[bytes], also: Sequence[bytes]) -> list[bytes]:
    """An h= list: each name of `always` once more than present (so none can be added later), each
    of `also` as many times as present."""
    counts: dict[bytes, int] = {}
    for name, _ in headers:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    return ([n for n in always for _ in range(counts.get(n, 0) + 1)]
            + [n for n in also for _ in range(counts.get(n, 0))])


# keys

@dataclass(frozen=True)
class PublicKey:
    key: RSAPublicKey
    bits: int


def parse_key_record(record: bytes) -> PublicKey:
    """The RSA key of a DKIM key record (RFC 6376 3.6.1), with the checks dkimpy makes; KeyRecordError
    when there is none we may use: empty p= (revoked), another k= or v=, s= not for email, under 1024 bits."""
    if not record:
        raise KeyRecordError("no key")
    try:
        tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList:
        raise KeyRecordError("malformed key record") from None
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise KeyRecordError("bad v= in the key record")
    if tags.get(b"k", b"rsa") != b"rsa":
        raise KeyRecordError("unsupported key type")
    if tags.get(b"s", b"*") not in (b"*", b"email"):
        raise KeyRecordError("key not for email")
    if b"p" not in tags:
        raise KeyRecordError("incomplete key record")
    try:
        key = rsa.public_key(base64.b64decode(tags[b"p"]))
    except (binascii.Error, ValueError):
        raise KeyRecordError("unusable public key") from None
    if key.key_size < MIN_KEY_BITS:
        raise KeyRecordError(f"public key too small: {key.key_size} bits")
    return PublicKey(key, key.key_size)


def _dns_name(text: str) -> bool:
    return 0 < len(text) <= 253 and all(_LABEL.fullmatch(label) for label in text.split("."))


def key_name(tags: dict[bytes, bytes]) -> str:
    """s._domainkey.d of a signature's tags, lowercased; "" when d= or s= cannot make a DNS name."""
    d = _WSP.sub(b"", tags.get(b"d", b"")).decode("ascii", "replace").lower().rstrip(".")
    s = _WSP.sub(b"", tags.get(b"s", b"")).decode("ascii", "replace").lower()
    name = f"{s}._domainkey.{d}"
    return name if d and s and _dns_name(name) else ""


class Keys:
    """The public keys of one message's signers: each record read through `lookup` (which answers from
    records fetched beforehand) and parsed once, whatever number of signatures use it."""

    def __init__(self, lookup: Callable[[str], bytes | None]) -> None:
        self._lookup = lookup
        self._found: dict[str, PublicKey | KeyRecordError | KeyUnavailable] = {}

    def get(self, name: str) -> PublicKey:
        """The key at `name`; raises KeyRecordError (none usable) or KeyUnavailable (lookup failed)."""
        found = self._found.get(name)
        if found is None:
            try:
                record = self._lookup(name)
            except Exception:
                found = KeyUnavailable(name)
            else:
                try:
                    found = parse_key_record(record or b"")
                except KeyRecordError as exc:
                    found = exc
            self._found[name] = found
        if isinstance(found, Exception):
            raise found
        return found


# verification

def verify_digest(key: PublicKey, tags: dict[bytes, bytes], digest: bytes, algorithm: str) -> bool:
    """Whether b= of `tags` is `key`'s signature of `digest`."""
    try:
        signature = base64.b64decode(_WSP.sub(b"", tags[b"b"]))
    except (binascii.Error, ValueError, KeyError):
        raise SignatureError("malformed b=") from None
    return rsa.verify(key.key, signature, digest, algorithm)


def check(message: Message, field: Field, tags: dict[bytes, bytes], key: PublicKey, include: Sequence[bytes],
          default_c: bytes = b"simple/simple") -> str:
    """"pass", "body hash mismatch" or "bad signature" for a DKIM-style signature (DKIM-Signature or
    ARC-Message-Signature) whose tags passed `dkim.validate_signature_fields`; `field` is its raw header
    field, `include` the lowercased names it signs. SignatureError when it cannot be evaluated."""
    algorithm = HASHES.get(tags.get(b"a", b""))
    if algorithm is None:
        raise SignatureError("unsupported signature algorithm")
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", default_c))
    except InvalidCanonicalizationPolicyError:
        raise SignatureError("invalid c=") from None
    relaxed_headers = policy.header_algorithm is Relaxed
    if b"bh" in tags:
        try:
            length = int(tags[b"l"]) if b"l" in tags else None
        except ValueError:
            raise SignatureError("malformed l=") from None
        try:
            expected = base64.b64decode(_WSP.sub(b"", tags[b"bh"]))
        except (binascii.Error, ValueError):
            raise SignatureError("malformed bh=") from None
        if message.body_hash(policy.body_algorithm is Relaxed, algorithm, length) != expected:
            return "body hash mismatch"
    digest = header_digest(message.select(include, relaxed_headers), field, relaxed_headers, algorithm)
    return "pass" if verify_digest(key, tags, digest, algorithm) else "bad signature"


def parse_tags(value: bytes) -> dict[bytes, bytes]:
    """The tag=value list of a signature header field; SignatureError when malformed."""
    try:
        return dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        raise SignatureError("malformed tag list") from None


def signed_names(tags: dict[bytes, bytes]) -> list[bytes]:
    """The lowercased names of h=, with From once more, as dkimpy verifies: a message with a From field
    the signature does not cover fails."""
    names = [n.lower() for n in _H_LIST.split(tags[b"h"])]
    return [*names, b"from"] if b"from" in names else names


def verify_dkim(message: Message, index: int, key: PublicKey) -> str:
    """`check` of the `index`-th DKIM-Signature field (0 is the topmost)."""
    fields = [f for f in message.headers if f[0].lower() == b"dkim-signature"]
    if index >= len(fields):
        raise SignatureError("no such signature")
    tags = parse_tags(fields[index][1])
    try:
        dkim.validate_signature_fields(tags)
    except (dkim.DKIMException, ValueError, IndexError) as exc:
        raise SignatureError(f"invalid signature fields: {exc.__class__.__name__}") from None
    return check(message, fields[index], tags, key, signed_names(tags))
