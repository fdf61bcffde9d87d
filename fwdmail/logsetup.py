"""Logging for the daemon: one stderr handler whose filter scrubs addresses and IPs from every line.

The privacy contract forbids log lines naming a mail address or an IP; code should not write them,
and this filter makes sure third-party loggers (aiosmtpd, asyncio) cannot either.
"""

from __future__ import annotations

import logging
import re
import sys

_EMAIL = re.compile(r"[^\s<>\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?![\w:.])")


def scrub(text: str) -> str:
    """Replace anything that looks like a mail address or an IP address."""
    text = _EMAIL.sub("[address]", text)
    text = _IPV4.sub("[ip]", text)
    return _IPV6.sub(_ipv6, text)


def _ipv6(m: re.Match[str]) -> str:
    token = m.group(0)
    return "[ip]" if "::" in token or token.count(":") >= 7 else token


class ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = scrub(msg), None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


def setup(level: str = "info") -> None:
    """Send fwdmail's logs to stderr at `level`, scrubbed; quiet aiosmtpd's per-session chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("peewee").setLevel(logging.WARNING)  # at debug it logs every SQL value
