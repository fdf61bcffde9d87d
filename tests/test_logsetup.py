"""The log scrubber, the last line of defence: every form of a mail address or IP it must catch."""

from __future__ import annotations

import logging
import sys

import pytest

from fwdmail.logsetup import ScrubFilter, scrub


@pytest.mark.parametrize("text, secret", [
    ("<private.sender@sender-domain.test>", "private.sender"),
    ("MAIL FROM:private.sender@sender-domain.test", "private.sender"),
    ('"private sender"@sender-domain.test', "private sender"),
    ("private.sender@[127.0.0.2]", "private.sender"),
    ("private.sender@[IPv6:2001:db8::7]", "private.sender"),
    ("private.sender%40sender-domain.test", "private.sender"),
    ("%3Cprivate.sender%40sender-domain.test%3E", "private.sender"),
    ("jörg@bücher.test", "jörg"),
    ("b'j\\xc3\\xb6rg@b\\xc3\\xbccher.test'", "rg@"),
    ("SRS0=HHH=TT=sender-domain.test=private.sender@srs.fwdmail.test", "private.sender"),
    ("peer ('127.0.0.2', 40512)", "127.0.0.2"),
    ("from 127.0.0.2:40512", "127.0.0.2"),
    ("[127.0.0.2]", "127.0.0.2"),
    ("peer ('::1', 25, 0, 0)", "::1"),
    ("2001:db8::7", "2001:db8"),
    ("2001:DB8:0:0:1:2:3:4", "2001:DB8"),
    ("fe80::1%eth0", "fe80"),
    ("::ffff:127.0.0.2", "127.0.0.2"),
    ("::ffff:127.0.0.2", "ffff"),
    ("64:ff9b:1:2:3:4:192.0.2.9", "64:ff9b"),
    ("[IPv6:2001:db8::7]", "2001:db8"),
])
def test_scrub_removes_every_form(text: str, secret: str) -> None:
    out = scrub(f"x {text} y")
    assert secret not in out, out
    assert out.startswith("x ") and out.endswith(" y")


@pytest.mark.parametrize("text", [
    "2024-05-01 12:34:56,789 INFO fwdmail.mx: message forwarded to 1 destination(s)",
    "550 5.7.1 Relaying denied", "retention jobs every 3600s, next in 1.5s", "version 1.2.3",
])
def test_scrub_keeps_ordinary_text(text: str) -> None:
    assert scrub(text) == text


def test_filter_scrubs_arguments_and_tracebacks() -> None:
    try:
        raise ValueError("no route for <private.sender@sender-domain.test> from 127.0.0.2")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed for %s at %s",
                                   ("hidden.dest@dest.test", "2001:db8::7"), sys.exc_info())
    assert ScrubFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "ValueError" in text and "[address]" in text and "[ip]" in text
    for secret in ("private.sender", "hidden.dest", "127.0.0.2", "2001:db8"):
        assert secret not in text, text
