"""The one header-section scanner, and the views each part needs on top of it.

Untrusted input: the header section of any message, as a client wrote it (any bytes, any line ends,
lines that are not fields, no blank line at all). `scan` walks it once, line by line, and returns the
span of each field (continuation lines included) with its lowercased name; it stops at the first empty
line (CRLF or bare LF) or after `limit` bytes, so a message without a blank line costs no more than a
large header. The views (`fields`, `raw_fields`, `head`, `split`, `dkim_fields`, `first`) read those
spans; none of them copies the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_HEADER_BYTES", "MalformedSection", "Section", "Span", "dkim_fields", "fields", "first",
           "head", "raw_fields", "scan", "section_end", "split"]

MAX_HEADER_BYTES = 256 * 1024

Span = tuple[int, int, bytes]
"""(start, end, lowercased name) of one header field in the message; the name is b"" for a line that is
not a field (no colon)."""

_BLANK_LINE = re.compile(rb"\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_DKIM_NAME = re.compile(rb"([\x21-\x7e]+?):")


class MalformedSection(ValueError):
    """A header section that a strict reader (DKIM) cannot take: a line that is not a field."""


@dataclass(frozen=True, slots=True)
class Section:
    """The header fields of a message and where its body starts: after the blank line, len(message)
    when the message has none, None when scanning stopped at the byte limit first."""

    fields: list[Span]
    body_start: int | None


def scan(message: bytes, limit: int | None = None) -> Section:
    """The header section of `message`, scanning at most `limit` bytes (all of them if None).

    A line starting with a space or tab continues the field above it (the first line of the message
    starts a field of its own); the name is what comes before the first colon, stripped and lowercased.
    The last line scanned is taken whole when it ends past `limit`.
    """
    spans: list[Span] = []
    total = len(message)
    size = total if limit is None or limit > total else limit
    find = message.find
    pos = 0
    while pos < size:
        nl = find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        lead = message[pos]
        if lead == 32 or lead == 9:  # SP, HT
            if spans:
                spans[-1] = (spans[-1][0], end, spans[-1][2])
                pos = end
                continue
        elif lead == 10 or (lead == 13 and end - pos == 2 and nl >= 0):
            return Section(spans, end)
        colon = find(b":", pos, end)
        spans.append((pos, end, message[pos:colon].strip().lower() if colon > pos else b""))
        pos = end
    return Section(spans, total if pos >= total else None)


def fields(message: bytes, limit: int = MAX_HEADER_BYTES) -> list[Span]:
    """The spans of the header fields of `message`, scanning at most `limit` bytes."""
    return scan(message, limit).fields


def raw_fields(message: bytes, limit: int = MAX_HEADER_BYTES) -> list[tuple[bytes, bytes]]:
    """(lowercased name, raw value after the colon, line ends kept) of each header field; a line that
    is not a field gives (b"", the line)."""
    out = []
    for start, end, name in scan(message, limit).fields:
        raw = message[start:end]
        out.append((name, raw[raw.find(b":") + 1:] if name else raw))
    return out


def first(message: bytes, name: bytes, limit: int | None = None) -> Span | None:
    """The span of the topmost field called `name` (lowercase), if any."""
    for span in scan(message, limit).fields:
        if span[2] == name:
            return span
    return None


def section_end(message: bytes) -> tuple[int, int]:
    """(end of the last header line, start of the body) by the rule `scan` uses (the first empty line,
    CRLF or bare LF), found in one regex search; (len, len) without a blank line. Unbounded."""
    if message[:1] == b"\n" or message[:2] == b"\r\n":
        return 0, message.index(b"\n") + 1
    blank = _BLANK_LINE.search(message)
    return (len(message), len(message)) if blank is None else (blank.start() + 1, blank.end())


def head(message: bytes) -> bytes:
    """The header section of `message`, up to and including its last line end (the whole message when
    there is no blank line)."""
    end = section_end(message)[0]
    return message if end == len(message) else message[:end]


def split(message: bytes) -> tuple[bytes, bytes]:
    """(header section, body): the section ends in a CRLF (one is added when the message has neither a
    blank line nor a final line end) and holds no blank line; the body follows the blank line."""
    end, body = section_end(message)
    block = message if end == len(message) else message[:end]
    if block and not block.endswith(b"\r\n"):
        block += b"\r\n"
    return block, message[body:]


def _crlf_value(raw: bytes) -> bytes:
    if raw.count(b"\n") != raw.count(b"\r\n"):
        raw = _LINE_END.sub(b"\r\n", raw)
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def dkim_fields(message: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """((name, value) per field, where the body starts), read as dkimpy's `rfc822_parse` reads them:
    the name as written, the value after the colon with every line end made CRLF; mbox "From " lines
    are skipped. Raises MalformedSection for any other line that is not a field, or a section that
    starts with a continuation line. Unbounded: the caller bounds the message."""
    section = scan(message)
    out: list[tuple[bytes, bytes]] = []
    for start, end, _ in section.fields:
        match = _DKIM_NAME.match(message, start, end)
        if match is not None:
            out.append((match.group(1), _crlf_value(message[match.end():end])))
            continue
        if message[start] in (32, 9):
            raise MalformedSection("the header section starts with a continuation line")
        if not message.startswith(b"From ", start):
            raise MalformedSection("a header line that is not a header field")
        nl = message.find(b"\n", start, end)
        if 0 <= nl < end - 1:  # continuation lines under a "From " line join the field above it
            if not out:
                raise MalformedSection("the header section starts with a continuation line")
            name, value = out[-1]
            out[-1] = (name, value + _crlf_value(message[nl + 1:end]))
    return out, len(message) if section.body_start is None else section.body_start
