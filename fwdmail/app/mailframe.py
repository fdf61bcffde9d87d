"""A stored outbound message as the "My Account" pages show it: decoded headers, attachments (name,
size, type), and the document of the preview frame (the HTML part sanitized by `htmlsafe`, else the text
part escaped, else a note saying the body was redacted).

Untrusted input: the stored submitted message (any MIME, any header, any HTML). It is parsed leniently;
whatever the parser trips on becomes a note in the frame, never an exception. Inline (`cid:`) images
become data URLs of a few raster types only, bounded in number and bytes.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import html
from dataclasses import dataclass

from fwdmail.app import htmlsafe
from fwdmail.app.emails import EmailRecord, raw_message
from fwdmail.app.preview import clean

__all__ = ["Attachment", "Frame", "MailView", "frame", "view"]

MAX_PARTS = 200
MAX_INLINE_BYTES = 5 * 1024 * 1024
MAX_HEADER_CHARS = 2000

_STYLE = ("body{font-family:system-ui,sans-serif;margin:8px;overflow-wrap:anywhere;color:#111;"
          "background:#fff}img{max-width:100%}pre{white-space:pre-wrap;font-family:inherit}"
          ".fwdmail-note{color:#555;font-style:italic}")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class MailView:
    """What the detail page lists; `remote_images` counts the remote images its preview holds back."""

    headers: list[tuple[str, str]]
    attachments: list[Attachment]
    redacted: bool
    remote_images: int = 0


@dataclass(frozen=True)
class Frame:
    """The preview frame's whole document; `remote_origins` are the image hosts to allow in its CSP."""

    document: str
    remote_images: int
    remote_origins: tuple[str, ...]
    redacted: bool


def _parse(record: EmailRecord) -> email.message.EmailMessage:
    return email.message_from_bytes(raw_message(record), policy=email.policy.default)  # type: ignore[return-value]


def _header(msg: email.message.Message, name: str, raw: str) -> tuple[str, str]:
    try:
        value = str(msg.policy.header_fetch_parse(name, raw))
    except Exception:  # malformed headers: shown as written
        value = raw
    return clean(name)[:200], clean(" ".join(value.split()))[:MAX_HEADER_CHARS]


def _size(part: email.message.Message) -> int:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # undecodable transfer encoding: counted as what is stored
        payload = None
    return len(payload) if isinstance(payload, bytes) else len(str(part.get_payload()))


def _attachments(msg: email.message.EmailMessage) -> list[Attachment]:
    found: list[Attachment] = []
    if not msg.is_multipart():
        return found
    try:
        for i, part in enumerate(msg.iter_attachments()):
            if i >= MAX_PARTS:
                break
            found.append(Attachment(clean(part.get_filename() or "")[:200], part.get_content_type(),
                                    _size(part)))
    except Exception:  # broken MIME: what was listed so far stands
        pass
    return found


def _remote_images(msg: email.message.EmailMessage) -> int:
    try:
        part = msg.get_body(preferencelist=("html",))
        return 0 if part is None else htmlsafe.sanitize(part.get_content()).remote_images
    except Exception:  # as in `frame`: nothing to count in what cannot be decoded
        return 0


def view(record: EmailRecord) -> MailView:
    """Decoded headers, the attachments and the remote images held back (none once redacted)."""
    msg = _parse(record)
    headers = [_header(msg, name, raw) for name, raw in msg.raw_items()]
    if record.body is None:
        return MailView(headers, [], True)
    return MailView(headers, _attachments(msg), False, _remote_images(msg))


def _inline_images(msg: email.message.Message) -> dict[str, str]:
    """Content-ID (lower case, no brackets) -> data URL, for the raster image parts with one."""
    found: dict[str, str] = {}
    budget = MAX_INLINE_BYTES
    for i, part in enumerate(msg.walk()):
        if i >= MAX_PARTS:
            break
        cid = str(part.get("Content-ID", "")).strip().strip("<>").strip().lower()
        kind = part.get_content_type()
        if not cid or kind not in htmlsafe.INLINE_TYPES:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or len(payload) > budget:
            continue
        budget -= len(payload)
        found[cid] = f"data:{kind};base64,{base64.b64encode(payload).decode('ascii')}"
    return found


def _document(body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def _note(text: str) -> str:
    return f'<p class="fwdmail-note">{html.escape(text)}</p>'


def frame(record: EmailRecord, remote: bool = False) -> Frame:
    """The preview document of `record`; `remote` keeps its remote images (the reader asked, this once)."""
    if record.body is None:
        return Frame(_document(_note("The body of this message was redacted: fwdmail keeps only its headers "
                                     "once it is delivered (or after the domain's retention days).")),
                     0, (), True)
    try:
        msg = _parse(record)
        part = msg.get_body(preferencelist=("html", "plain"))
        if part is None:
            return Frame(_document(_note("This message has no text to show.")), 0, (), False)
        content = part.get_content()
        if part.get_content_type() != "text/html":
            return Frame(_document(f"<pre>{html.escape(clean(content))}</pre>"), 0, (), False)
        safe = htmlsafe.sanitize(content, _inline_images(msg), remote)
    except Exception:  # untrusted MIME: shown as a note, never raised
        return Frame(_document(_note("The text of this message cannot be decoded.")), 0, (), False)
    return Frame(_document(safe.html), safe.remote_images, safe.remote_origins, False)
