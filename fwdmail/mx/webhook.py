"""POSTing a forwarded message to webhook destinations, signed, during the SMTP session.

Untrusted input: the webhook URL (an alias owner wrote it: its host is checked by `policy.ssrf` and the
connection goes to the address checked, with TLS verified against the host name), and the hook's
answer: its status decides (2xx accepted; 5xx, 408, 429, a timeout or a broken connection temporary;
anything else, redirects included, which are never followed, permanent); its body is never read: the
connection is dropped once the status is in. The JSON POSTed is at most `max_body_size` bytes. Nothing
of the message is stored; no log line names the URL.

The body is signed: `X-Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`, keyed
with the domain's webhook key as `fwdmail domain webhook-key` prints it (made on first use).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import ssl
import time
from typing import Any

import yarl

from fwdmail import store
from fwdmail.auth.resolver import async_resolver
from fwdmail.config import Config, ConfigError
from fwdmail.mail.jsonmail import Envelope, TooBig, payload
from fwdmail.policy import ssrf
from fwdmail.runtime.executor import Blocking
from fwdmail.smtp import replies
from fwdmail.smtp.replies import SmtpError

__all__ = ["WebhookClient", "signature"]

log = logging.getLogger("fwdmail.webhook")

_TEMPORARY_STATUS = frozenset({408, 429})


def signature(key: str, timestamp: int, body: bytes) -> str:
    """The X-Webhook-Signature value of `body` sent at `timestamp`."""
    mac = hmac.new(key.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class WebhookClient:
    """Sends one message's JSON to webhook URLs, at most `[webhooks] max_connections` POSTs at once."""

    def __init__(self, config: Config, blocking: Blocking) -> None:
        self.cfg = config.webhooks
        self.hostname = config.server_hostname
        self.dns_timeout = config.dns.timeout
        self.blocking = blocking
        self.resolver = async_resolver(config.dns)
        self.tls = ssl.create_default_context()
        if self.cfg.ca_file:
            try:
                self.tls.load_verify_locations(cafile=self.cfg.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"webhooks.ca_file: cannot load {self.cfg.ca_file!r}: "
                                  f"{getattr(exc, 'strerror', None) or exc}") from None
        self._slots = asyncio.Semaphore(self.cfg.max_connections)

    async def _key(self, domain: str) -> str:
        key = await self.blocking.db(store.webhook_key, domain)
        if key is None:
            key = await self.blocking.db(store.set_webhook_key, domain, secrets.token_hex(32),
                                         store.utcnow(), False)
        return key

    async def send(self, domain: str, envelope: Envelope, urls: list[str],
                   message: bytes) -> dict[str, SmtpError | None]:
        """POST `message` (the copy as forwarded) to each of `urls`; per URL None (accepted) or the error."""
        try:
            key = await self._key(domain)
            body = await self.blocking.cpu_for(len(message))(
                payload, message, envelope, self.hostname, self.cfg.max_attachment_size,
                store.utcnow().isoformat(timespec="seconds") + "Z", self.cfg.max_body_size)
        except TooBig:
            return dict.fromkeys(urls, replies.WEBHOOK_TOO_BIG)
        except Exception as exc:
            log.warning("webhook message not prepared: %s", type(exc).__name__)
            return dict.fromkeys(urls, replies.WEBHOOK_TEMPFAIL)
        results = await asyncio.gather(*(self._post(url, key, body) for url in urls))
        return dict(zip(urls, results, strict=True))

    async def _post(self, url: str, key: str, body: bytes) -> SmtpError | None:
        target = yarl.URL(url, encoded=True)
        try:
            address = await ssrf.public_address(self.resolver, target.raw_host or "",
                                                self.cfg.allow_private, self.dns_timeout)
        except ssrf.Refused as exc:
            log.info("webhook refused: %s", exc)
            return replies.WEBHOOK_REFUSED.with_text(f"Webhook destination refused: {exc}")
        except ssrf.Unresolved as exc:
            if exc.temporary:
                return replies.WEBHOOK_TEMPFAIL.with_text("Webhook destination: cannot resolve its host now")
            return replies.WEBHOOK_REJECTED.with_text("Webhook destination: its host does not exist")
        stamp = int(time.time())
        headers = {"Content-Type": "application/json", "User-Agent": "fwdmail",
                   "X-Webhook-Signature": signature(key, stamp, body)}
        async with self._slots:
            return await self._request(target, address, headers, body)

    async def _request(self, target: yarl.URL, address: str, headers: dict[str, str],
                       body: bytes) -> SmtpError | None:
        import aiohttp  # here, not at the top: only a POST needs it (memory, see smtp.pinning)

        from fwdmail.smtp.pinning import OneAddress

        connector = aiohttp.TCPConnector(resolver=OneAddress(address), ssl=self.tls, limit=1,
                                         force_close=True, use_dns_cache=False)
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout)
        session_args: dict[str, Any] = {"connector": connector, "timeout": timeout, "trust_env": False,
                                        "auto_decompress": False}
        try:
            async with aiohttp.ClientSession(**session_args) as session, session.post(
                    target, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                if resp.connection is not None and resp.connection.transport is not None:
                    resp.connection.transport.abort()  # the status decides; a TLS close would read on
        except TimeoutError:
            return replies.WEBHOOK_TEMPFAIL.with_text(
                "Webhook destination did not answer in time, try again later")
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            log.debug("webhook POST failed: %s", type(exc).__name__)
            return replies.WEBHOOK_TEMPFAIL.with_text(
                f"Webhook destination unreachable ({type(exc).__name__}), try again later")
        if 200 <= status < 300:
            return None
        if status >= 500 or status in _TEMPORARY_STATUS:
            return replies.WEBHOOK_TEMPFAIL.with_text(
                f"Webhook destination answered HTTP {status}, try again later")
        why = "a redirect (not followed)" if 300 <= status < 400 else f"HTTP {status}"
        return replies.WEBHOOK_REJECTED.with_text(f"Webhook destination refused the message: {why}")
