"""The log scrubber, the last line of defence: every form of a mail address or IP it must catch."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from fwdmail.runtime.logsetup import ScrubFilter, scrub


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


def test_unexpected_session_error_is_logged_without_its_message(caplog: pytest.LogCaptureFixture) -> None:
    """An exception's message may quote client input; the 451's log line keeps its type and place."""
    from fwdmail.smtp.server import SmtpServer

    async def fail() -> str:
        server = SmtpServer(object(), hostname="mx.test", data_size_limit=1000)
        address, ip = "private.sender@sender-domain.test", "127.0.0.2"
        try:
            raise ValueError(f"cannot route <{address}> from {ip}")
        except ValueError as exc:
            return await server.handle_exception(exc)

    with caplog.at_level(logging.ERROR, logger="fwdmail.smtp"):
        assert asyncio.run(fail()).startswith("451 ")
    [record] = caplog.records
    text = logging.Formatter().format(record)
    assert "ValueError" in text and "in fail" in text
    assert "private.sender" not in text and "127.0.0.2" not in text, text
