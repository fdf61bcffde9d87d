"""MTA-STS (RFC 8461): a recipient domain's `_mta-sts` TXT record and HTTPS policy, fetched and cached.

Untrusted input: the TXT record and the policy file a recipient domain publishes (bounded: at most
`MAX_POLICY_BYTES`, `[delivery] mta_sts_timeout` seconds, no redirects, certificate verified for
mta-sts.<domain>) and the DNS answers for mta-sts.<domain>: resolved once through the daemon's resolver,
refused when any address is non-public (loopback, private, link-local ...: `mail.ipranges`) unless
`[delivery] mta_sts_allow_private`, and connected to as checked, never resolved again (DNS rebinding).
Nothing here decides delivery; `tlspolicy` does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception

from fwdmail.mail.ipranges import non_public

if TYPE_CHECKING:
    import aiohttp

    from fwdmail.smtp.pinning import PerHost

log = logging.getLogger("fwdmail.delivery")

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3 suggests senders accept at most 64 KiB
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 3.2: one year
CACHE_ENTRIES = 10_000
MAX_ADDRESSES = 16  # per record type of mta-sts.<domain>
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_MX_PATTERN = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?", re.IGNORECASE)


@dataclass(frozen=True)
class StsPolicy:
    """A parsed policy: mode ("enforce", "testing" or "none"), MX patterns and max_age (seconds)."""

    mode: str
    mx: tuple[str, ...]
    max_age: int

    def allows(self, host: str) -> bool:
        """Whether `host` matches an `mx:` pattern (RFC 8461 4.1: "*." covers exactly one label)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                if host.partition(".")[2] == pattern[2:] and host.partition(".")[0]:
                    return True
            elif host == pattern:
                return True
        return False


def txt_id(records: list[str]) -> str | None:
    """The policy id of the `_mta-sts` TXT record set, or None when there is not exactly one valid
    "v=STSv1" record (RFC 8461 3.1)."""
    found = [r for r in records if r.startswith("v=STSv1")]
    if len(found) != 1:
        return None
    fields = dict(f.strip().partition("=")[::2] for f in found[0].split(";") if f.strip())
    ident = fields.get("id", "")
    return ident if fields.get("v") == "STSv1" and _ID.fullmatch(ident) else None


def parse_policy(text: str) -> StsPolicy | None:
    """The policy file as RFC 8461 3.2 defines it, or None if it is not one."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "mx":
            if not _MX_PATTERN.fullmatch(value):
                return None
            mx.append(value.lower().rstrip("."))
        else:
            fields.setdefault(key, value)
    mode, age = fields.get("mode"), fields.get("max_age", "")
    if fields.get("version") != "STSv1" or mode not in ("enforce", "testing", "none"):
        return None
    if not age.isdigit() or len(age) > 10 or (mode != "none" and not mx):
        return None
    return StsPolicy(mode, tuple(mx), min(int(age), MAX_AGE_LIMIT))


@dataclass
class _Cached:
    policy: StsPolicy
    ident: str
    expires: float


class StsFetcher:
    """Finds the MTA-STS policy of a domain: cached by max_age, fetched again when the TXT id changes, the
    cached one kept while a new fetch fails (RFC 8461 5.1)."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, tls: ssl.SSLContext, timeout: float,
                 port: int, allow_private: bool) -> None:
        self.resolver = resolver
        self.tls = tls
        self.timeout = timeout
        self.port = port
        self.allow_private = allow_private
        self._pinned: PerHost | None = None
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._fetching: dict[str, asyncio.Future[StsPolicy | None]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def policy(self, domain: str) -> StsPolicy | None:
        """The policy to apply to `domain` now, or None (the domain has no MTA-STS, as far as we know)."""
        ident = await self._txt_id(domain)
        now = time.monotonic()
        cached = self._cache.get(domain)
        if cached is not None and cached.expires <= now:
            del self._cache[domain]
            cached = None
        if ident is None or (cached is not None and cached.ident == ident):
            return cached.policy if cached else None
        fetched = await self._fetch_once(domain)
        if fetched is None:
            if cached is not None:
                log.warning("MTA-STS policy of %s could not be fetched; using the cached one", domain)
                return cached.policy
            log.warning("MTA-STS policy of %s could not be fetched; delivering as without MTA-STS", domain)
            return None
        self._cache[domain] = _Cached(fetched, ident, now + fetched.max_age)
        self._cache.move_to_end(domain)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return fetched

    async def _txt_id(self, domain: str) -> str | None:
        try:
            answer = await self.resolver.resolve(f"_mta-sts.{domain}", "TXT")
        except dns.exception.DNSException:
            return None
        texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
        return txt_id(texts)

    async def _fetch_once(self, domain: str) -> StsPolicy | None:
        """One fetch per domain at a time; concurrent deliveries share its result."""
        running = self._fetching.get(domain)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[StsPolicy | None] = asyncio.get_running_loop().create_future()
        self._fetching[domain] = future
        try:
            result = await self._fetch(domain)
            future.set_result(result)
            return result
        except BaseException:
            future.set_result(None)
            raise
        finally:
            del self._fetching[domain]

    async def _addresses(self, host: str) -> list[str]:
        """The addresses of `host` through the daemon's resolver (a bounded number, within the time limit)."""
        found: list[str] = []
        for rtype in ("A", "AAAA"):
            try:
                async with asyncio.timeout(self.timeout):
                    answer = await self.resolver.resolve(host, rtype, search=False)
            except (dns.exception.DNSException, TimeoutError):
                continue
            found += [r.address for r in list(answer)[:MAX_ADDRESSES]]
        return found

    async def _fetch(self, domain: str) -> StsPolicy | None:
        host = f"mta-sts.{domain}"
        addresses = await self._addresses(host)
        if not addresses:
            log.info("MTA-STS policy of %s: %s does not resolve", domain, host)
            return None
        if not self.allow_private:
            for address in addresses:
                why = non_public(ipaddress.ip_address(address))
                if why is not None:
                    log.warning("MTA-STS policy of %s: %s resolves to a %s address; not fetched "
                                "([delivery] mta_sts_allow_private)", domain, host, why)
                    return None
        import aiohttp  # here, not at the top: only a policy fetch needs it (memory, see smtp.pinning)

        from fwdmail.smtp.pinning import PerHost

        if self._pinned is None:
            self._pinned = PerHost()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._pinned, use_dns_cache=False, ssl=self.tls,
                                               limit=20),
                timeout=aiohttp.ClientTimeout(total=self.timeout))
        port = "" if self.port == 443 else f":{self.port}"
        url = f"https://{host}{port}/.well-known/mta-sts.txt"
        self._pinned.addresses[host] = addresses
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                if resp.status != 200 or resp.content_type != "text/plain":
                    log.info("MTA-STS policy of %s: HTTP %d %s", domain, resp.status, resp.content_type)
                    return None
                body = b""
                while len(body) <= MAX_POLICY_BYTES:
                    chunk = await resp.content.read(MAX_POLICY_BYTES + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.info("MTA-STS policy of %s: fetch failed (%s)", domain, type(exc).__name__)
            return None
        finally:
            self._pinned.addresses.pop(host, None)
        if len(body) > MAX_POLICY_BYTES:
            return None
        return parse_policy(body.decode("utf-8", "replace"))
