"""Before a system is timed: prove it does the real work on this config (SRS, Received, sender checks, ARC,
DKIM), by sending messages through the MX and through submission to a capturing server.

fwdmail's and the postfix-stack's (postsrsd, rspamd, OpenDKIM) checks; the input is what they forwarded.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable
from email.parser import BytesHeaderParser

import dkim
import dns.exception
import dns.resolver

from tests.support.smtp_sink import Received, SmtpSink

from . import fwd, postfix_stack
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


def loopback_txt(address: str) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` asking the bench's loopback DNS server (`127.0.0.1:PORT`) for TXT records."""
    host, _, port = address.rpartition(":")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        wanted = name.decode() if isinstance(name, bytes) else name
        try:
            answer = resolver.resolve(wanted, "TXT", lifetime=timeout)
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer[:1])

    return dnsfunc


def _stack_mx_checks(got: Received, dnsfunc: Callable[..., bytes | None]) -> dict[str, bool]:
    head = _header_block(got.data)
    results = str(BytesHeaderParser().parsebytes(got.data).get("Authentication-Results", ""))
    cv, _, _ = dkim.arc_verify(got.data, dnsfunc=dnsfunc)
    return {
        "stack MX: envelope sender rewritten with SRS (postsrsd)": got.mail_from.startswith("SRS0=")
        and got.mail_from.endswith(f"@{postfix_stack.SRS_DOMAIN}"),
        "stack MX: SPF pass in Authentication-Results": "spf=pass" in results,
        "stack MX: DMARC pass in Authentication-Results": "dmarc=pass" in results,
        "stack MX: ARC set present": b"ARC-Seal:" in head and b"ARC-Message-Signature:" in head,
        "stack MX: ARC set verifies (dkimpy arc_verify, key from the loopback DNS)": cv == dkim.CV_Pass,
    }


def check_postfix_stack(stack: postfix_stack.PostfixStack, capture: SmtpSink, dns_address: str,
                        messages: int = 1, timeout: float = 30.0) -> dict[str, bool]:
    """`messages` through the stack's MX and as many through its submission (AUTH over STARTTLS), all to
    `capture`; each named check must hold for every one of them."""
    capture.reset()
    dnsfunc = loopback_txt(dns_address)
    checks: dict[str, bool] = {}

    def merge(new: dict[str, bool]) -> None:
        for name, passed in new.items():
            checks[name] = checks.get(name, True) and passed

    with smtplib.SMTP(LOOPBACK, stack.mx_port, timeout=timeout) as client:
        for serial in range(messages):
            client.sendmail(fwd.SENDER, [fwd.CHECK_ALIAS],
                            make_message(fwd.SENDER, fwd.CHECK_ALIAS, 1024, serial))
    for got in capture.wait_for(messages, timeout)[:messages]:
        merge(_stack_mx_checks(got, dnsfunc))
    outbound = f"friend@{fwd.CHECK_DOMAIN}"
    result = asyncio.run(submit(stack.submission_port, count=messages, clients=1, size=1024, sender=fwd.ALIAS,
                                recipient=outbound, login=(fwd.ALIAS, stack.password), timeout=timeout))
    if result.accepted != messages:
        raise BenchError(f"sanity: stack submission refused: {result.errors}")
    for signed in capture.wait_for(2 * messages, timeout)[messages:2 * messages]:
        head = _header_block(signed.data)
        merge({"stack submission: DKIM-Signature present (OpenDKIM)": b"DKIM-Signature:" in head,
               "stack submission: DKIM signature verifies": bool(dkim.verify(signed.data, dnsfunc=dnsfunc)),
               "stack submission: sender not rewritten": signed.mail_from == fwd.ALIAS})
    return checks
