"""Logging for the daemon: one stderr handler whose filter scrubs addresses and IPs from every line.

The privacy contract forbids log lines naming a mail address or an IP; code should not write them,
and this filter makes sure third-party loggers (aiosmtpd, asyncio) cannot either.
"""

from __future__ import annotations

import logging
import re
import sys

# local part: quoted ("a b"@x) or plain; "@" or percent-encoded "%40"; domain: a name or a [literal]
_EMAIL = re.compile(r"(?:\"[^\"\r\n]*\"|[^\s<>\"'(),;:\[\]]+)(?:@|%40)"
                    r"(?:\[[^\[\]\s]*\]|[^\s<>\"'(),;:\[\]]+)")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?:(?<=[Ii][Pp][Vv]6:)|(?<![\w:.]))[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?![\w:.])")


def scrub(text: str) -> str:
    """Replace anything that looks like a mail address or an IP address."""
    text = _EMAIL.sub("[address]", text)
    text = _IPV6.sub(_ipv6, text)
    return _IPV4.sub("[ip]", text)


def _ipv6(m: re.Match[str]) -> str:
    token = m.group(0)
    colons = token.count(":")
    return "[ip]" if "::" in token or colons >= 7 or (colons == 6 and "." in token) else token


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
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # its warnings name the client's IP
    logging.getLogger("peewee").setLevel(logging.WARNING)  # at debug it logs every SQL value
