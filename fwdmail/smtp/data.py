"""The message data of an SMTP DATA command, read from the client's stream.

Untrusted input: every byte a client sends after the 354. Only <CRLF>.<CRLF> ends the data (never bare
LF, `\\n.\\n` or `\\r.\\r`); a message with a bare CR or LF is refused as a whole (SMTP smuggling), as is
one over the size limit; long lines are accepted; the input is always read to its real end, so the
session stays in step. The stream comes from the aiosmtpd adapter (`server`), which alone reaches into
aiosmtpd; this module knows only asyncio's stream.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError

__all__ = ["MessageData", "read_data"]

_DATA_READ_LIMIT = 256 * 1024
_PROGRESS_BYTES = 1 << 20
_END_OF_DATA = b"\r\n.\r\n"
_LINE_START, _AFTER_CR, _MID, _ENDED = range(4)


@dataclass(frozen=True)
class MessageData:
    """A message as read: dot-unstuffed, without the end marker, and its digest (b"" without a hash)."""

    content: bytes
    digest: bytes


def _unstuffed(piece: bytes, last: bytes) -> bytes:
    """`piece` of message data without the dot that starts a line (RFC 5321 4.5.2); `last` is the two
    bytes before it, so a CRLF or CRLF "." split between two pieces is seen as well."""
    if piece[:1] == b"." and last == b"\r\n":
        piece = piece[1:]
    elif piece[:2] == b"\n." and last[-1:] == b"\r":
        piece = b"\n" + piece[2:]
    return piece.replace(b"\r\n.", b"\r\n")


async def read_data(reader: asyncio.StreamReader, size_limit: int, data_hash: Callable[[], Any] | None,
                    progress: Callable[[], None]) -> MessageData | SmtpError | None:
    """The message up to <CRLF>.<CRLF>; an SmtpError if refused; None if the input ended first.

    `size_limit`: most bytes kept (0: no limit; the rest is read and dropped); `data_hash`: a hashlib
    constructor for `MessageData.digest`, fed as the data is read (no pass of its own); `progress` is
    called after each MB read. The body is read in large pieces (up to the end marker, or as much as is
    buffered), not line by line; lines are only looked at while the input sits at the start of the message.
    """
    # The stream's limit (private in asyncio) is the command line limit; the body gets a larger one, so
    # it arrives in large pieces and the transport is not paused every 2 KB.
    line_limit = reader._limit
    reader._limit = _DATA_READ_LIMIT
    try:
        return await _read_raw_data(reader, size_limit, data_hash, progress)
    finally:
        reader._limit = line_limit


async def _read_raw_data(reader: asyncio.StreamReader, limit: int, data_hash: Callable[[], Any] | None,
                         progress: Callable[[], None]) -> MessageData | SmtpError | None:
    """The message up to the end marker, without its ".<CRLF>", unstuffed piece by piece into one
    buffer whose bytes are then taken without a copy (BytesIO.getvalue). Bare CRs and LFs are
    counted as it goes: the CRs, the LFs and the CRLFs (one may straddle two pieces) must agree."""
    out: io.BytesIO | None = io.BytesIO()
    hasher = data_hash() if data_hash is not None else None
    size = since_progress = crs = lfs = crlfs = 0
    last = b"\r\n"  # the CRLF of the DATA line: the first byte is at the start of a line
    where = _LINE_START
    while where != _ENDED:
        try:
            piece, where = await _next_piece(reader, where)
        except asyncio.IncompleteReadError:
            return None
        if not piece:
            continue
        size += len(piece)
        since_progress += len(piece)
        if since_progress >= _PROGRESS_BYTES:
            since_progress = 0
            progress()
        if limit and size > limit:
            out = None
        if out is None:
            continue
        crs += piece.count(b"\r")
        lfs += piece.count(b"\n")
        crlfs += piece.count(b"\r\n") + (last[-1:] == b"\r" and piece[:1] == b"\n")
        unstuffed = _unstuffed(piece, last)
        out.write(unstuffed)
        if hasher is not None:
            hasher.update(unstuffed)
        last = (last + piece[-2:])[-2:]
    if out is None:
        return replies.MESSAGE_TOO_BIG
    if not crs == lfs == crlfs:
        return replies.BARE_NEWLINE
    return MessageData(out.getvalue(), hasher.digest() if hasher is not None else b"")


async def _next_piece(reader: asyncio.StreamReader, where: int) -> tuple[bytes, int]:
    """The next piece of message data and where the input then is.

    In the middle of the data one search finds the end marker <CRLF>.<CRLF>: its CRLF is still
    unread, and a piece taken when the search gives up leaves the marker's length minus one bytes
    buffered, so no marker straddles two pieces. Only the start of the message (where the CRLF of
    the DATA line is already read) and a CR just read (maybe the marker's) go byte by byte.
    """
    if where == _MID:
        try:
            piece = await reader.readuntil(_END_OF_DATA)
        except asyncio.LimitOverrunError as exc:
            return await reader.readexactly(exc.consumed), _MID
        return piece[:-3], _ENDED
    byte = await reader.readexactly(1)
    if byte == b"\r":
        return byte, _AFTER_CR
    if where == _AFTER_CR:
        return byte, _LINE_START if byte == b"\n" else _MID
    if byte != b".":
        return byte, _MID
    rest, complete = await _read_line(reader)
    if rest == b"\r\n":
        return b"", _ENDED
    return byte + rest, _LINE_START if complete else _MID


async def _read_line(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Up to and including the next CRLF (complete), or as much of a longer line as is buffered."""
    try:
        return await reader.readuntil(b"\r\n"), True
    except asyncio.LimitOverrunError as exc:
        return await reader.readexactly(exc.consumed), False
