"""The preview frame's document and the detail's lists from stored messages as clients send them: odd
charsets, broken MIME, no text at all, inline images of unsafe types or past the budget, hostile file
names, redacted bodies. Nothing raises; nothing unsafe is inlined."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from email.policy import SMTP

from fwdmail.app import mailframe
from fwdmail.store import EmailRecord

T0 = dt.datetime(2030, 1, 1)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def record(raw: bytes, redacted: bool = False) -> EmailRecord:
    headers, _, body = raw.partition(b"\r\n\r\n")
    return EmailRecord(1, "Q1", "example.test", "a@example.test", "queued", "s", None, len(raw), T0, None, T0,
                       None, 0, 0, None, T0 if redacted else None, False, False, (), headers + b"\r\n",
                       None if redacted else body)


def html_message(html: str, charset: str = "utf-8") -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["Subject"] = "=?utf-8?q?caf=C3=A9?= \x1b[31m"
    msg.set_content(html, subtype="html", charset=charset)
    return msg


def test_an_html_part_in_latin1_is_decoded_and_sanitized() -> None:
    raw = html_message("<p>caf\xe9</p><script>x()</script>", "iso-8859-1").as_bytes()
    frame = mailframe.frame(record(raw))
    assert "<p>caf\xe9</p>" in frame.document and "<script>x" not in frame.document
    assert frame.document.startswith("<!doctype html>")
    assert not frame.redacted and frame.remote_images == 0


def test_headers_are_decoded_without_control_characters() -> None:
    shown = mailframe.view(record(html_message("<p>x</p>").as_bytes()))
    assert ("Subject", "café [31m") in shown.headers


def test_broken_mime_is_a_note_never_an_exception() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=\"nope\"\r\nSubject: broken\r\n\r\n"
           b"--other\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!notbase64\r\n")
    frame = mailframe.frame(record(raw))
    assert "fwdmail-note" in frame.document or "<pre>" in frame.document
    assert mailframe.view(record(raw)).redacted is False


def test_a_message_with_only_an_attachment_has_no_text_to_show() -> None:
    msg = EmailMessage(policy=SMTP)
    msg.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="a\u202egpj.pdf")
    frame = mailframe.frame(record(msg.as_bytes()))
    assert "no text to show" in frame.document
    (attachment,) = mailframe.view(record(msg.as_bytes())).attachments
    assert attachment == mailframe.Attachment("agpj.pdf", "application/pdf", 4)


def test_inline_images_only_of_raster_types_within_the_budget() -> None:
    msg = html_message('<img src="cid:ok@x"><img src="cid:svg@x"><img src="cid:big@x">')
    msg.add_related(PNG, "image", "png", cid="<ok@x>")
    msg.add_related(b"<svg onload='x()'/>", "image", "svg+xml", cid="<svg@x>")
    msg.add_related(b"\x89PNG" + b"\x00" * (mailframe.MAX_INLINE_BYTES), "image", "png", cid="<big@x>")
    document = mailframe.frame(record(msg.as_bytes())).document
    assert document.count('src="data:image/png;base64,') == 1
    assert "svg" not in document.split("<body>", 1)[1]
    assert document.count("<img>") == 2


def test_a_redacted_message_says_so_and_lists_no_attachment() -> None:
    raw = html_message("<p>secret</p>").as_bytes()
    frame = mailframe.frame(record(raw, redacted=True))
    assert frame.redacted and "was redacted" in frame.document and "secret" not in frame.document
    shown = mailframe.view(record(raw, redacted=True))
    assert shown.redacted and shown.attachments == [] and shown.remote_images == 0


def test_remote_images_are_counted_for_the_detail_and_kept_only_when_asked() -> None:
    raw = html_message('<img src="https://img.example.test/a.png"><img src="http://b.example.test/b">').as_bytes()
    assert mailframe.view(record(raw)).remote_images == 2
    held = mailframe.frame(record(raw))
    assert "img.example.test" not in held.document and held.remote_origins == ()
    shown = mailframe.frame(record(raw), remote=True)
    assert shown.remote_origins == ("https://img.example.test", "http://b.example.test")
    assert 'src="https://img.example.test/a.png"' in shown.document
