"""A stored outbound message as readable text: decoded headers, the text part (HTML rendered as text),
attachment names. Apart from `emails` so that the CLI loads the MIME and HTML parsers only for `show`.

Handles untrusted input: stored submitted messages (any MIME, any header) are parsed leniently and
shown as plain text with control characters removed, so a message cannot drive the admin's terminal.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from fwdmail.app.emails import EmailRecord, raw_message

__all__ = ["Preview", "clean", "html_to_text", "preview"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """`text` without control or bidi-override characters (tabs and newlines stay)."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


class _HtmlText(HTMLParser):
    """A readable plain-text rendering of HTML: blocks become paragraphs, scripts and styles vanish."""

    _PARAGRAPH = {"p", "div", "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre",
                  "hr", "section", "article", "header", "footer"}
    _LINE = {"br", "tr", "li"}
    _HIDDEN = {"script", "style", "head", "title", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._hidden = 0
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._PARAGRAPH:
            self.out.append("\n\n")
        elif tag in self._LINE:
            self.out.append("\n- " if tag == "li" else "\n")
        elif tag == "a":
            self._href.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._PARAGRAPH:
            self.out.append("\n\n")
        elif tag == "a" and self._href:
            href = self._href.pop()
            if href and href.startswith(("http://", "https://", "mailto:")):
                self.out.append(f" <{href}>")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):
        pass
    lines = [" ".join(line.split()) for line in "".join(parser.out).split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


@dataclass(frozen=True)
class Preview:
    headers: list[tuple[str, str]]
    text: str | None
    text_type: str | None
    attachments: list[tuple[str, str]]
    redacted: bool

    def as_json(self) -> dict[str, Any]:
        return {"headers": [list(h) for h in self.headers], "text": self.text, "text_type": self.text_type,
                "attachments": [{"filename": f, "content_type": t} for f, t in self.attachments],
                "redacted": self.redacted}


def _header(msg: email.message.Message, name: str, raw: str) -> tuple[str, str]:
    """One header, RFC 2047-decoded when it can be, as printable text."""
    try:
        value = str(msg.policy.header_fetch_parse(name, raw))
    except Exception:  # the parser gives up on some malformed headers: show them as written
        value = raw
    return clean(name), clean(" ".join(value.split()))


def preview(record: EmailRecord) -> Preview:
    """Decoded headers, and the text part (or the HTML part as text) unless the body is redacted."""
    msg = email.message_from_bytes(raw_message(record), policy=email.policy.default)
    headers = [_header(msg, name, raw) for name, raw in msg.raw_items()]
    if record.body is None:
        return Preview(headers, None, None, [], True)
    text = text_type = None
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is not None:
            content = part.get_content()
            text_type = part.get_content_type()
            text = clean(html_to_text(content) if text_type == "text/html" else content).strip("\n")
    except Exception:  # untrusted MIME: whatever the parser trips on is shown as such, never raised
        text, text_type = "(the text of this message cannot be decoded)", None
    attachments: list[tuple[str, str]] = []
    if msg.is_multipart():
        try:
            attachments = [(clean(p.get_filename() or ""), p.get_content_type())
                           for p in msg.iter_attachments()]
        except Exception:  # as above
            attachments = []
    return Preview(headers, text, text_type, attachments, False)
