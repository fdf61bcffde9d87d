"""The one header-section scanner (mail/headers.py) and its views."""

from __future__ import annotations

import dkim
import pytest

from fwdmail.mail import headers

MESSAGE = b"From: a@example.com\r\nSubject: one\r\n two\r\nnot a field\r\n\r\nbody\r\n\r\nX: not a header\r\n"


def test_spans_cover_continuations_and_stop_at_the_blank_line() -> None:
    section = headers.scan(MESSAGE)
    assert [(MESSAGE[s:e], n) for s, e, n in section.fields] == [
        (b"From: a@example.com\r\n", b"from"), (b"Subject: one\r\n two\r\n", b"subject"),
        (b"not a field\r\n", b"")]
    assert MESSAGE[section.body_start:] == b"body\r\n\r\nX: not a header\r\n"


def test_the_limit_bounds_a_message_without_blank_line() -> None:
    message = b"X: y\r\n" * 100_000
    section = headers.scan(message, limit=600)
    assert len(section.fields) == 100 and section.body_start is None
    assert headers.scan(b"X: y\r\n").body_start == len(b"X: y\r\n")


def test_head_and_split() -> None:
    assert headers.head(MESSAGE) == b"From: a@example.com\r\nSubject: one\r\n two\r\nnot a field\r\n"
    assert headers.split(MESSAGE) == (headers.head(MESSAGE), b"body\r\n\r\nX: not a header\r\n")
    assert headers.split(b"\r\nbody") == (b"", b"body")
    assert headers.split(b"X: y") == (b"X: y\r\n", b"")
    assert headers.head(b"X: y") == b"X: y"


@pytest.mark.parametrize("message", [
    MESSAGE.replace(b"not a field\r\n", b""), b"From x@y Mon\r\nA: b\n c\n\nbody",
    b"A: b\r\nFrom z\r\n w\r\n\r\n",
    b"A:b", b"\nbody", b"a b: c\r\n\r\n", b" A: b\r\n\r\n", MESSAGE,
])
def test_dkim_view_reads_as_dkimpy(message: bytes) -> None:
    try:
        expected = [tuple(f) for f in dkim.rfc822_parse(message)[0]]
    except Exception:
        with pytest.raises(headers.MalformedSection):
            headers.dkim_fields(message)
        return
    assert headers.dkim_fields(message)[0] == expected


def test_first_and_raw_fields() -> None:
    start, end, _ = headers.first(MESSAGE, b"subject") or (0, 0, b"")
    assert MESSAGE[start:end] == b"Subject: one\r\n two\r\n"
    assert headers.first(MESSAGE, b"to") is None
    assert headers.raw_fields(MESSAGE)[1] == (b"subject", b" one\r\n two\r\n")
