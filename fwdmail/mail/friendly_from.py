"""Friendly-From: the From rewrite of a forwarded copy whose sender's DMARC policy would make it bounce.

Untrusted input: the From and Reply-To headers of an inbound message (any bytes, possibly RFC 2047
encoded words or raw UTF-8). A From we cannot read leaves the message unchanged.

The copy goes out as `"Original Name" <alias@our-domain>` with `Reply-To:` the original From, so
replies still reach the sender. An existing Reply-To is kept as it is. Whether a copy needs it is the
MX policy's decision (`policy.auth_verdict.needs_rewrite`).
"""

from __future__ import annotations

import base64
import email.header
import email.utils
import re
import unicodedata

from fwdmail.mail.headers import fields as header_fields

__all__ = ["from_header", "rewrite_from"]

_NAME_LIMIT = 200
_LINE = 78
_WORD_BYTES = 45  # base64 of 45 bytes is 60 characters: "=?utf-8?b?" + 60 + "?=" is 72, one per line
_PLAIN_NAME = re.compile(r"[\x20-\x7e]*")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PHRASE = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
"""A display name of atoms separated by single spaces: written as it is, needing no quotes."""
_ALIAS = re.compile(r'[^\s<>"@,;:()\\\[\]]+@[^\s<>"@,;:()\\\[\]]+')


def _display_name(raw_value: bytes) -> tuple[str, str]:
    """(decoded display name, address) of a From value; ("", "") if it holds no single address."""
    text = re.sub(r"\r?\n(?=[ \t])", "", raw_value.decode("utf-8", "replace")).strip()
    pairs = [(n, a) for n, a in email.utils.getaddresses([text]) if "@" in a]
    if len(pairs) != 1:
        return "", ""
    name, addr = pairs[0]
    try:
        name = str(email.header.make_header(email.header.decode_header(name)))
    except (ValueError, LookupError, UnicodeError):
        pass
    return " ".join(name.split()), addr


def rewrite_from(message: bytes, alias: str) -> bytes:
    """`message` with From set to `alias` (keeping the display name) and Reply-To to the original From."""
    if not _ALIAS.fullmatch(alias):
        return message
    fields = header_fields(message)
    froms = [(s, e) for s, e, n in fields if n == b"from"]
    if len(froms) != 1:
        return message
    start, end = froms[0]
    original = message[start:end]
    name, addr = _display_name(original.partition(b":")[2])
    if not addr:
        return message
    if not name:
        local, _, domain = addr.rpartition("@")
        name = f"{local} at {domain}"
    eol = b"\r\n" if original.endswith(b"\r\n") else b"\n"
    replacement = from_header(name, alias).replace(b"\r\n", eol)
    if not any(n == b"reply-to" for _, _, n in fields):
        value = original.partition(b":")[2].rstrip(b"\r\n")
        replacement += b"Reply-To:" + value + eol
    return message[:start] + replacement + message[end:]


def _clean_name(name: str) -> str:
    """The display name without control or format characters, whitespace runs as one space, cut short."""
    kept = "".join(" " if c.isspace() else c for c in name
                   if c.isspace() or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    return " ".join(kept.split())[:_NAME_LIMIT].strip()


def _encoded_words(name: str) -> list[str]:
    """`name` as RFC 2047 base64 words of whole UTF-8 characters: atoms holding no specials at all."""
    words: list[str] = []
    chunk, size = "", 0
    for char in name:
        width = len(char.encode("utf-8"))
        if chunk and size + width > _WORD_BYTES:
            words.append(chunk)
            chunk, size = "", 0
        chunk, size = chunk + char, size + width
    if chunk:
        words.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(w.encode('utf-8')).decode('ascii')}?=" for w in words]


def _addr_spec(alias: str) -> str:
    local, _, domain = alias.rpartition("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return f"{local}@{domain}"


def from_header(name: str, alias: str) -> bytes:
    """A complete `From:` field (CRLF-terminated) naming exactly one mailbox, `alias`, with `name` shown.

    We write the field ourselves rather than let a folding algorithm split a quoted string: a plain ASCII
    name that fits on the line is a quoted string with its quotes and backslashes escaped; any other
    name (long, non-ASCII, or looking like an encoded word) is a run of base64 encoded words, one per
    line, which cannot hold a comma, quote or angle bracket that a reader would take for structure.
    """
    name = _clean_name(name)
    angle = f"<{_addr_spec(alias)}>"
    if not name:
        return f"From: {angle}\r\n".encode()
    quoted = name if _PHRASE.fullmatch(name) else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if _PLAIN_NAME.fullmatch(name) and "=?" not in name and len(f"From: {quoted} {angle}") <= _LINE:
        return f"From: {quoted} {angle}\r\n".encode("ascii")
    lines = [f"From: {w}" if i == 0 else f" {w}" for i, w in enumerate(_encoded_words(name))]
    if len(lines[-1]) + 1 + len(angle) <= _LINE:
        lines[-1] += f" {angle}"
    else:
        lines.append(f" {angle}")
    return ("\r\n".join(lines) + "\r\n").encode()
