"""ARC (RFC 8617): validating the chain a message arrives with, and sealing the copy we forward.

Untrusted input: the ARC-Seal, ARC-Message-Signature and ARC-Authentication-Results headers of an
inbound message, and the keys their signers publish (fetched beforehand, served by a lookup function).
Sealing uses the receiving domain's DKIM key. Both directions are CPU work for `ctx.blocking.cpu`:
the message is parsed once (`dkimcore.Message`), the body hashed once, and RSA runs in OpenSSL.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Iterable

import dkim

from fwdmail.auth import dkim_core as dkimcore
from fwdmail.auth import rsa
from fwdmail.auth.dkim_core import Message
from fwdmail.auth.dkim_sign import ALSO_SIGNED, ALWAYS_SIGNED
from fwdmail.mail.headers import MAX_HEADER_BYTES

__all__ = ["MAX_HEADER_BYTES", "MAX_INSTANCES", "MAX_VERIFIED_SETS", "key_names",
           "seal", "verify_chain"]

log = logging.getLogger("fwdmail.arc")

MAX_INSTANCES = 50  # RFC 8617 4.2.1: a chain longer than this fails
MAX_VERIFIED_SETS = 10

AAR, AMS, AS = b"arc-authentication-results", b"arc-message-signature", b"arc-seal"
_SET_ORDER = (AAR, AMS, AS)  # the order of a set's fields in the hash of an ARC-Seal (RFC 8617 5.1.1)
_ARC_SIGNED = (AS, AMS)
_AAR_INSTANCE = re.compile(rb"i ?= ?([0-9]{1,9})")
_COMMENT = re.compile(rb"\([^()]*\)")
_ARC_RESULT = re.compile(rb"(?i);\s*arc\s*=\s*([a-z]+)")
_AMS_ALSO_SIGNED = (*ALSO_SIGNED, b"dkim-signature")  # RFC 8617 4.1.2: DKIM-Signatures SHOULD be signed


def key_names(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """The key record names (s._domainkey.d) of every ARC-Seal and ARC-Message-Signature, deduplicated."""
    names: dict[str, None] = {}
    for name, value in headers:
        if name not in _ARC_SIGNED:
            continue
        try:
            tags = dkim.util.parse_tag_value(value)
        except Exception:
            continue
        key = dkimcore.key_name(tags)
        if key:
            names[key] = None
        if len(names) >= 2 * MAX_INSTANCES:
            break
    return list(names)


def _instance(name: bytes, value: bytes) -> int:
    """The i= of an ARC header field, 0 if it has none we can read."""
    if name == AAR:
        first = dkimcore.relaxed_field(name, value)[1].split(b";", 1)[0].strip()
        match = _AAR_INSTANCE.fullmatch(first)
        return int(match.group(1)) if match else 0
    try:
        text = dkimcore.parse_tags(value).get(b"i", b"")
    except dkimcore.SignatureError:
        return 0
    return int(text) if text.isdigit() and len(text) <= 9 else 0


def _sets(message: Message) -> tuple[dict[int, dict[bytes, int]], bool]:
    """The ARC sets of `message` (instance -> field name -> index into message.headers), and whether
    any ARC field is malformed: no readable instance, out of range, or a second one of its kind."""
    sets: dict[int, dict[bytes, int]] = {}
    malformed = False
    for index, (name, value) in enumerate(message.headers):
        lowered = name.lower()
        if lowered not in _SET_ORDER:
            continue
        instance = _instance(lowered, value)
        if not 1 <= instance <= MAX_INSTANCES or lowered in sets.get(instance, {}):
            malformed = True
            continue
        sets.setdefault(instance, {})[lowered] = index
    return sets, malformed


def _key(keys: dkimcore.Keys, tags: dict[bytes, bytes]) -> dkimcore.PublicKey:
    name = dkimcore.key_name(tags)
    if not name:
        raise dkimcore.KeyRecordError("bad d= or s=")
    return keys.get(name)


class _Broken(Exception):
    """The chain does not validate; the text is one of our fixed reasons (never quotes the message)."""


def _validate(message: Message, keys: dkimcore.Keys) -> str:
    sets, malformed = _sets(message)
    if not sets and not malformed:
        return "none"
    count = max(sets, default=0)
    if malformed or sorted(sets) != list(range(1, count + 1)) or any(len(s) != 3 for s in sets.values()):
        raise _Broken("malformed ARC set")
    if count > MAX_VERIFIED_SETS:
        raise _Broken(f"more than {MAX_VERIFIED_SETS} ARC sets")
    headers, canonical = message.headers, message.canonical_headers(True)
    seals = {}
    for i, fields in sets.items():
        tags = dkimcore.parse_tags(headers[fields[AS]][1])
        try:
            dkim.validate_signature_fields(tags, [b"i", b"a", b"b", b"cv", b"d", b"s"], True)
        except (dkim.DKIMException, ValueError, IndexError):
            raise _Broken(f"ARC-Seal[{i}] is malformed") from None
        if b"h" in tags:
            raise _Broken(f"ARC-Seal[{i}] has h=")
        if tags[b"cv"] != (b"none" if i == 1 else b"pass"):
            raise _Broken(f"ARC-Seal[{i}] reports cv={'fail' if tags[b'cv'] == b'fail' else 'invalid'}")
        seals[i] = tags
    ams = headers[sets[count][AMS]]
    tags = dkimcore.parse_tags(ams[1])
    try:
        dkim.validate_signature_fields(tags, [b"i", b"a", b"b", b"bh", b"d", b"h", b"s"], True)
    except (dkim.DKIMException, ValueError, IndexError):
        raise _Broken("most recent ARC-Message-Signature is malformed") from None
    include = dkimcore.signed_names(tags)
    if AS in include:
        raise _Broken("most recent ARC-Message-Signature signs ARC-Seal")
    if dkimcore.check(message, ams, tags, _key(keys, tags), include, b"relaxed/relaxed") != "pass":
        raise _Broken("most recent ARC-Message-Signature did not validate")
    for i in range(count, 0, -1):
        covered = [canonical[sets[j][name]] for j in range(1, i + 1) for name in _SET_ORDER]
        digest = dkimcore.header_digest(covered[:-1], headers[sets[i][AS]], relaxed=True)
        if not dkimcore.verify_digest(_key(keys, seals[i]), seals[i], digest, "sha256"):
            raise _Broken(f"ARC-Seal[{i}] did not validate")
    return "pass"


def verify_chain(message: bytes | Message, keys: dkimcore.Keys | Callable[[str], bytes | None]) -> str:
    """"none" (no ARC header fields), "pass" or "fail": the chain validation status (RFC 8617 5.2).

    Every ARC-Seal is checked, and the most recent ARC-Message-Signature (the only one that must
    validate, and the only one that hashes the body). A chain of more than MAX_VERIFIED_SETS sets fails.
    `keys` serves the signers' key records (a `dkimcore.Keys`, or a function name -> record).
    """
    if not isinstance(keys, dkimcore.Keys):
        keys = dkimcore.Keys(keys)
    try:
        parsed = message if isinstance(message, Message) else Message(message)
        return _validate(parsed, keys)
    except _Broken as exc:
        log.debug("ARC chain does not validate: %s", exc)
    except (dkimcore.MessageFormatError, dkimcore.SignatureError):
        log.debug("ARC chain does not validate: malformed message or ARC header field")
    except (dkimcore.KeyRecordError, dkimcore.KeyUnavailable):
        log.debug("ARC chain does not validate: no usable key")
    except Exception as exc:  # bad input never raises: whatever else it trips on fails the chain
        log.debug("ARC chain does not validate: %s", exc.__class__.__name__)
    return "fail"


def _own_results(message: Message, authserv_id: str) -> tuple[str, str] | None:
    """(value, arc= result) of the first Authentication-Results of `authserv_id` in `message`, if any."""
    for name, value in message.headers:
        if name.lower() != b"authentication-results":
            continue
        bare = _COMMENT.sub(b" ", value)
        if bare.split(b";", 1)[0].strip().lower() != authserv_id.lower().encode("ascii", "replace"):
            continue
        found = _ARC_RESULT.findall(bare)
        cv = found[0].lower().decode("ascii") if len(found) == 1 else "fail" if found else "none"
        return value.strip().decode("ascii"), cv
    return None


def _arc_set(message: bytes, authserv_id: str, domain: str, selector: str, private_key_pem: str,
             timestamp: int, authres: str | None, cv: str | None, body_hash: bytes | None) -> bytes:
    key = rsa.private_key(private_key_pem)
    parsed = Message(message)
    if authres is None or cv is None:
        own = _own_results(parsed, authserv_id)
        if own is None:
            return b""
        authres, cv = own
    sets, malformed = _sets(parsed)
    instance = max(sets, default=0) + 1
    fits = {"none": instance == 1 and not malformed, "pass": instance > 1 and not malformed,
            "fail": instance > 1}
    if not fits.get(cv, False):
        raise ValueError("the chain status does not fit the ARC sets present")
    if instance > MAX_INSTANCES:
        raise ValueError("ARC chain too long")
    common = [(b"d", domain.encode("ascii")), (b"s", selector.encode("ascii")),
              (b"t", str(int(timestamp)).encode("ascii"))]
    i = (b"i", str(instance).encode("ascii"))
    aar = (b"ARC-Authentication-Results", f" i={instance}; {authres}\r\n".encode("ascii"))
    include = dkimcore.names_to_sign(parsed.headers, ALWAYS_SIGNED, _AMS_ALSO_SIGNED)
    ams_tags = [i, (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), *common, (b"h", b" : ".join(include)),
                (b"bh", base64.b64encode(body_hash or parsed.body_hash(relaxed=True))), (b"b", b"")]
    ams = dkimcore.signed_field(b"ARC-Message-Signature", ams_tags, parsed.select(include, relaxed=True), key)
    canonical = parsed.canonical_headers(True)
    sealed = [] if cv == "fail" else [canonical[sets[j][n]] for j in range(1, instance) for n in _SET_ORDER]
    sealed += [dkimcore.relaxed_field(*aar), dkimcore.relaxed_field(*ams)]
    as_tags = [i, (b"cv", cv.encode("ascii")), (b"a", b"rsa-sha256"), *common, (b"b", b"")]
    arc_seal = dkimcore.signed_field(b"ARC-Seal", as_tags, sealed, key)
    return b"".join(name + b":" + value for name, value in (arc_seal, ams, aar))


def seal(message: bytes, authserv_id: str, domain: str, selector: str, private_key_pem: str, timestamp: int,
         *, authres: str | None = None, cv: str | None = None, body_hash: bytes | None = None) -> bytes:
    """`message` with a new ARC set on top, sealed with the key of `domain` (d=) at `selector` (s=).

    The ARC-Authentication-Results copies our Authentication-Results: `authres` (its value,
    "authserv-id; results") and `cv` (the status of the chain the message arrived with) when given,
    else the first such field of `authserv_id` in `message` and its arc= result. `body_hash`, if
    given, is the relaxed SHA-256 hash of this same body, computed when the message was checked.
    Without our Authentication-Results, or
    when the set cannot be made (chain too long or inconsistent, unusable key), the message goes
    unsealed: sealing never stops delivery.
    """
    try:
        arc_set = _arc_set(message, authserv_id, domain, selector, private_key_pem, timestamp, authres, cv,
                           body_hash)
    except Exception as exc:
        log.warning("ARC seal for %s not added: %s", domain, exc.__class__.__name__)
        return message
    return arc_set + message
