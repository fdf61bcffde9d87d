"""The tables of the running service: [tls], [http], [metrics], [error_log], [dns], [queue],
[retention], [store], [database], [cluster].

One frozen dataclass per table, each key beside its default; `validate` checks the administrator's
values and raises `ConfigError` naming the key (URLs quoted with their password masked).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from fwdmail.config.checks import ConfigError, _at_most, _host_port, _ip_port, _positive, _shown_url


@dataclass(frozen=True)
class TlsConfig:
    cert: str = ""
    key: str = ""

    def validate(self, key: str) -> None:
        if bool(self.cert) != bool(self.key):
            raise ConfigError(f"{key}: set both cert and key, or neither (a self-signed pair is generated)")


@dataclass(frozen=True)
class HttpConfig:
    listen: tuple[str, ...] = ("127.0.0.1:8080",)
    trusted_proxies: tuple[str, ...] = ()
    max_connections: int = 256
    max_connections_per_ip: int = 20
    max_body_size: int = 64 * 1024
    # slow clients (slowloris): seconds to send a request's headers, then its body
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    public_url: str = ""
    login_failures_per_client_per_hour: int = 20
    login_failures_per_account_per_hour: int = 10
    login_failures_total_per_minute: int = 60

    def validate(self, key: str) -> None:
        for addr in self.listen:
            _host_port(f"{key}.listen", addr)
        if self.public_url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", self.public_url):
            raise ConfigError(f"{key}.public_url: not an http(s) URL without query: {self.public_url!r}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(f"{key}.trusted_proxies: not an IP address or network: {proxy!r}") from None
        for name in ("max_connections", "max_connections_per_ip", "max_body_size",
                     "login_failures_per_client_per_hour", "login_failures_per_account_per_hour",
                     "login_failures_total_per_minute"):
            _positive(f"{key}.{name}", getattr(self, name))
        _at_most(f"{key}.max_body_size", self.max_body_size, 16 * 1024 * 1024, "the API takes small JSON")
        for name in ("header_timeout", "body_timeout"):
            _positive(f"{key}.{name}", getattr(self, name))


_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, ...] = ()
    token: str = ""

    def validate(self, key: str) -> None:
        for addr in self.listen:
            _host_port(f"{key}.listen", addr, min_port=1)
        if self.token and not _TOKEN.fullmatch(self.token):
            raise ConfigError(f"{key}.token: must be empty (off) or 16 to 256 letters, digits and -._~+/= "
                              f"(e.g. from `openssl rand -hex 32`), got {len(self.token)} character(s)")


@dataclass(frozen=True)
class ErrorLogConfig:
    max_rows_per_client_per_minute: int = 20
    max_rows_per_minute: int = 120

    def validate(self, key: str) -> None:
        _positive(f"{key}.max_rows_per_client_per_minute", self.max_rows_per_client_per_minute)
        _positive(f"{key}.max_rows_per_minute", self.max_rows_per_minute)


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0

    def validate(self, key: str) -> None:
        for ns in self.nameservers:
            _ip_port(f"{key}.nameservers", ns)
        _positive(f"{key}.timeout", self.timeout)


@dataclass(frozen=True)
class QueueConfig:
    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    max_lifetime: float = 5 * 86400.0
    delay_notice_after: float = 4 * 3600.0
    concurrency: int = 20
    poll_interval: float = 1.0
    claim_timeout: float = 600.0
    max_crashes: int = 3
    workers: int = 0

    def validate(self, key: str) -> None:
        for name in ("min_backoff", "max_backoff", "max_lifetime", "delay_notice_after", "poll_interval",
                     "claim_timeout"):
            _positive(f"{key}.{name}", getattr(self, name))
        if self.max_backoff < self.min_backoff:
            raise ConfigError(f"{key}.max_backoff: must not be less than min_backoff ({self.min_backoff})")
        _positive(f"{key}.concurrency", self.concurrency)
        _positive(f"{key}.max_crashes", self.max_crashes)
        if not 0 <= self.workers <= 64:
            raise ConfigError(f"{key}.workers: must be from 0 to 64, got {self.workers}")
        if self.workers > self.concurrency:
            raise ConfigError(f"{key}.workers: must not be more than {key}.concurrency ({self.concurrency}), "
                              f"which the workers share, got {self.workers}")


@dataclass(frozen=True)
class RetentionConfig:
    interval: float = 3600.0
    error_log_days: int = 7
    outbound_record_days: int = 30
    batch_size: int = 500

    def validate(self, key: str) -> None:
        _positive(f"{key}.interval", self.interval)
        _positive(f"{key}.error_log_days", self.error_log_days)
        _at_most(f"{key}.error_log_days", self.error_log_days, 7, "the privacy promise; shorter is fine")
        _positive(f"{key}.outbound_record_days", self.outbound_record_days)
        _at_most(f"{key}.outbound_record_days", self.outbound_record_days, 30,
                 "the privacy promise; shorter is fine")
        _positive(f"{key}.batch_size", self.batch_size)



@dataclass(frozen=True)
class StoreConfig:
    write_lock_timeout: float = 1.0

    def validate(self, key: str) -> None:
        _positive(f"{key}.write_lock_timeout", self.write_lock_timeout)
        _at_most(f"{key}.write_lock_timeout", self.write_lock_timeout, 60,
                 "clients wait that long for a reply; keep it short")


DATABASE_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""

    def validate(self, key: str) -> None:
        if not self.url:
            return
        shown = _shown_url(self.url)
        bad = (f"{key}.url: must be empty (SQLite in data_dir) or postgresql://user@host:port/dbname, "
               f"got {shown!r}")
        try:
            parts = urllib.parse.urlsplit(self.url)
            port = parts.port
        except ValueError:
            raise ConfigError(bad) from None
        socket_dir = "host=/" in parts.query  # postgresql:///dbname?host=/run/postgresql
        named = parts.path.strip("/")
        if parts.scheme not in DATABASE_SCHEMES or not (parts.hostname or socket_dir) or not named:
            raise ConfigError(bad)
        if port == 0 or any(c.isspace() for c in self.url):
            raise ConfigError(bad)


REDIS_SCHEMES = ("redis", "rediss", "unix")
NODE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


@dataclass(frozen=True)
class ClusterConfig:
    node_id: str = ""
    redis_url: str = ""
    redis_timeout: float = 2.0
    redis_max_connections: int = 64
    redis_prefix: str = "fwdmail:"
    allow_persistent_redis: bool = False

    def validate(self, key: str) -> None:
        if self.node_id and (len(self.node_id) > 64 or not set(self.node_id) <= NODE_ID_CHARS):
            raise ConfigError(f"{key}.node_id: must be empty (the default) or up to 64 letters, digits, "
                              f"'.', '-' and '_', got {self.node_id[:80]!r}")
        if self.redis_url:
            try:
                parts = urllib.parse.urlsplit(self.redis_url)
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError:
                parts = None
            if (parts is None or parts.scheme not in REDIS_SCHEMES or not (parts.hostname or parts.path)
                    or any(c.isspace() for c in self.redis_url)):
                raise ConfigError(f"{key}.redis_url: must be empty (in-memory, one node) or "
                                  f"redis://host:port/db, rediss://... or unix:///path, "
                                  f"got {_shown_url(self.redis_url)!r}")
        _positive(f"{key}.redis_timeout", self.redis_timeout)
        _positive(f"{key}.redis_max_connections", self.redis_max_connections)
        _at_most(f"{key}.redis_max_connections", self.redis_max_connections, 10_000)
        if not 1 <= len(self.redis_prefix) <= 64 or not set(self.redis_prefix) <= NODE_ID_CHARS | {":"}:
            raise ConfigError(f"{key}.redis_prefix: must be 1 to 64 letters, digits, '.', '-', '_' and ':', "
                              f"got {self.redis_prefix[:80]!r}")

