"""Helpers for the sender-authentication tests (no tests here): keys, messages, signing, DNS records."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import dkim
import dns.asyncresolver
import dns.resolver

from fwdmail.auth.resolver import async_resolver, sync_resolver
from fwdmail.config import DnsConfig
from fwdmail.runtime.keys import dkim_public_record, generate_dkim_key
from tests.support.dns_server import LoopbackDNS

T = TypeVar("T")

_counter = itertools.count(1)


@functools.cache
def key(name: str) -> str:
    """A 1024-bit RSA key (PKCS#1 PEM) per name, made once per test session."""
    return generate_dkim_key(1024)


def unique_domain(prefix: str = "s") -> str:
    """A fresh sender domain under the unlisted TLD `.authtest` (so its org domain is itself)."""
    return f"{prefix}{next(_counter)}-{os.getpid()}.authtest"


def resolver(dns_server: LoopbackDNS) -> dns.asyncresolver.Resolver:
    return async_resolver(DnsConfig(nameservers=(dns_server.address,), timeout=2.0))


def sync_dnsfunc(dns_server: LoopbackDNS) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` reading TXT records from the loopback DNS server (for dkimpy's verifiers)."""
    r = sync_resolver(DnsConfig(nameservers=(dns_server.address,), timeout=2.0))

    def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        try:
            answer = r.resolve(text, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(next(iter(answer)).strings)

    return get_txt


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def publish_key(dns_server: LoopbackDNS, domain: str, selector: str, pem: str) -> None:
    dns_server.add(f"{selector}._domainkey.{domain}", "TXT", dkim_public_record(pem))


def message(from_: str, to: str = "alias@hosted.test", subject: str = "Hello",
            body: str = "Hi there.\r\nSecond line.\r\n", extra: str = "") -> bytes:
    head = (f"From: {from_}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
            f"Message-ID: <{next(_counter)}@example.test>\r\n{extra}")
    return (head + "\r\n" + body).encode()


def sign(msg: bytes, domain: str, selector: str, pem: str) -> bytes:
    """`msg` with a DKIM-Signature of `domain` prepended."""
    sig = dkim.sign(msg, selector.encode(), domain.encode(), pem.encode(),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + msg


def arc_seal(msg: bytes, authserv_id: str, domain: str, selector: str, pem: str, results: str) -> bytes:
    """`msg` as an upstream forwarder would pass it on: its A-R (`results`) and ARC set prepended."""
    stamped = f"Authentication-Results: {authserv_id}; {results}\r\n".encode() + msg
    arc_set = dkim.arc_sign(stamped, selector.encode(), domain.encode(), pem.encode(), authserv_id.encode())
    assert arc_set, "dkimpy made no ARC set"
    return b"".join(arc_set) + stamped
