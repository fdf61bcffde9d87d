"""Before fwdmail is timed: prove it does the real work on this config (SRS, Received, sender checks, ARC,
DKIM), by sending one message through the MX and one through submission to a capturing server.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.parser import BytesHeaderParser

import dkim

from tests.support.smtp_sink import Received, SmtpSink

from . import fwd
from .clients import make_message, submit
from .procs import LOOPBACK, BenchError


def _header_block(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[0]


def _mx_checks(got: Received) -> dict[str, bool]:
    head = _header_block(got.data)
    ours = str(BytesHeaderParser().parsebytes(got.data).get("Authentication-Results", ""))
    return {
        "MX: envelope sender rewritten with SRS": got.mail_from.startswith("SRS0=")
        and got.mail_from.endswith("@srs.bench.test"),
        "MX: Received header added": b"by mx.bench.test" in head,
        "MX: SPF pass in Authentication-Results": "spf=pass" in ours,
        "MX: DMARC pass in Authentication-Results": "dmarc=pass" in ours,
        "MX: ARC set added": b"ARC-Seal:" in head and b"ARC-Message-Signature:" in head,
    }


def _dkim_checks(got: Received, key_name: str, key_value: str) -> dict[str, bool]:
    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        wanted = name.decode() if isinstance(name, bytes) else name
        return key_value.encode() if wanted.rstrip(".") == key_name.rstrip(".") else None

    return {
        "submission: DKIM-Signature present": b"DKIM-Signature:" in _header_block(got.data),
        "submission: DKIM signature verifies": bool(dkim.verify(got.data, dnsfunc=dnsfunc)),
    }


def check_fwdmail(instance: fwd.Fwdmail, capture: SmtpSink, timeout: float = 30.0) -> dict[str, bool]:
    """One message each way through the running daemon; each named check passed or not."""
    capture.reset()
    recipient = fwd.CHECK_ALIAS
    with smtplib.SMTP(LOOPBACK, instance.ports.mx, timeout=timeout) as client:
        client.sendmail(fwd.SENDER, [recipient], make_message(fwd.SENDER, recipient, 1024))
    checks = _mx_checks(capture.wait_for(1, timeout)[0])
    outbound = f"friend@{fwd.CHECK_DOMAIN}"
    result = asyncio.run(submit(instance.ports.submission, count=1, clients=1, size=1024, sender=fwd.ALIAS,
                                recipient=outbound, login=(fwd.ALIAS, instance.password), timeout=timeout))
    if result.accepted != 1:
        raise BenchError(f"sanity: submission refused: {result.errors}")
    signed = capture.wait_for(2, timeout)[1]
    checks.update(_dkim_checks(signed, *instance.dkim_record))
    return checks
