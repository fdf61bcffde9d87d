"""A forwarded message as the JSON body a webhook destination is POSTed.

Untrusted input: the whole message (any bytes, broken MIME, unknown charsets). Header fields come from
the one header scanner (`mail.headers`); the MIME tree from the standard library's parser, read
leniently: a part that cannot be decoded is given with its bytes decoded as UTF-8 with replacement. An
attachment over `max_attachment` bytes is listed with its size and SHA-256 but without its content. A
message with more than about `MAX_PARTS` boundary lines or `MAX_MULTIPARTS` multipart containers
(counted before parsing, so the parser's CPU time stays bounded), or that the parser fails on, is not
taken apart: it is sent whole as `raw` (within the same cap), with `"mime_parsed": false`. A body over
`max_body` bytes drops attachment contents, largest first, until it fits. No I/O; the caller runs it off
the event loop.
"""

from __future__ import annotations

import base64
import codecs
import email.parser
import email.policy
import hashlib
import json
import re
from dataclasses import dataclass
from email.message import Message

from fwdmail.mail import headers as header_section

__all__ = ["MAX_MULTIPARTS", "MAX_PARTS", "Envelope", "TooBig", "payload"]

MAX_PARTS = 1000
MAX_MULTIPARTS = 50  # containers (each may nest in the one before): the parser's time grows with depth
_MULTIPART = re.compile(rb"multipart/", re.IGNORECASE)


class TooBig(ValueError):
    """The message's JSON does not fit the body limit even without any attachment's content."""


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_to: str  # the address the alias was reached at
    alias: str


def _text(raw: bytes) -> str:
    return " ".join(raw.decode("utf-8", "replace").split())


def _charset(part: Message) -> str:
    name = part.get_content_charset() or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _decoded(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    return str(name) if name else None


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("Content-Disposition", "")).split(";", 1)[0].strip().lower()
    return disposition == "attachment" or _filename(part) is not None


def _attachment(name: str | None, ctype: str, data: bytes, max_attachment: int) -> dict[str, object]:
    capped = len(data) > max_attachment
    return {"filename": name, "content_type": ctype, "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "truncated": capped,
            "content": None if capped else base64.b64encode(data).decode("ascii")}


def _parts(message: bytes, max_attachment: int, text: list[str], html: list[str],
           attachments: list[dict[str, object]]) -> None:
    tree = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(message)
    for count, part in enumerate(tree.walk()):
        if count >= MAX_PARTS:
            break
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if not _is_attachment(part) and ctype in ("text/plain", "text/html"):
            body = _decoded(part).decode(_charset(part), "replace")
            (text if ctype == "text/plain" else html).append(body)
            continue
        attachments.append(_attachment(_filename(part), ctype, _decoded(part), max_attachment))


def payload(message: bytes, envelope: Envelope, authserv_id: str, max_attachment: int,
            received_at: str, max_body: int = 1 << 62) -> bytes:
    """The JSON (UTF-8) body for one webhook POST of `message` (the copy as forwarded: our Received and
    Authentication-Results on top), at most `max_body` bytes (see `_fitted`)."""
    fields = header_section.raw_fields(message)
    headers = [{"name": name.decode("ascii", "replace"), "value": _text(value)}
               for name, value in fields if name]
    ours = [h["value"] for h in headers if h["name"] == "authentication-results"
            and h["value"].split(";", 1)[0].strip().lower() == authserv_id.lower()]
    text: list[str] = []
    html: list[str] = []
    attachments: list[dict[str, object]] = []
    parsed = (message.count(b"\n--") <= 2 * MAX_PARTS  # a boundary line opens and closes each part
              and len(_MULTIPART.findall(message, 0, len(message))) <= MAX_MULTIPARTS)
    if parsed:
        try:
            _parts(message, max_attachment, text, html, attachments)
        except Exception:  # RecursionError: nested deeper than the parser goes
            parsed = False
            text, html, attachments = [], [], []
    doc = {
        "envelope": {"mail_from": envelope.mail_from, "rcpt_to": envelope.rcpt_to, "alias": envelope.alias},
        "received_at": received_at,
        "headers": headers,
        "text": "\n".join(text) if text else None,
        "html": "\n".join(html) if html else None,
        "attachments": attachments,
        "authentication_results": ours,
        "mime_parsed": parsed,
    }
    if not parsed:  # too many parts or too deep to take apart: the whole message, as an attachment is
        doc["raw"] = _attachment(None, "message/rfc822", message, max_attachment)
    return _fitted(doc, [*attachments, *([doc["raw"]] if not parsed else [])], max_body)


def _encoded(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def _fitted(doc: dict[str, object], parts: list[dict[str, object]], max_body: int) -> bytes:
    """`doc` encoded, with attachment contents dropped (largest first) until it fits `max_body` bytes;
    raises TooBig if it does not fit even without them."""
    body = _encoded(doc)
    excess = len(body) - max_body
    if excess <= 0:
        return body
    carried = sorted((p for p in parts if isinstance(p["content"], str)),
                     key=lambda p: -len(str(p["content"])))
    for part in carried:
        if excess <= 0:
            break
        excess -= len(str(part["content"]))
        part["content"], part["truncated"] = None, True
    body = _encoded(doc)
    if len(body) > max_body:
        raise TooBig(f"{len(body)} bytes without attachment contents")
    return body
