"""Configuration: a TOML file read into frozen dataclasses, with defaults and validation.

Every key has a default, so fwdmail runs with no file at all. Unknown keys, wrong types and bad values
raise `ConfigError` with a one-line message naming the key.

Longer than ~400 lines on purpose: one dataclass per TOML table, each key beside its default and its
check, in the order `fwdmail.example.toml` documents them; split by table, a key's default, check and
cross-table rules would sit in different files.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import socket
import tomllib
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import idna

DEFAULT_DATA_DIR = "./fwdmail-data"
# Every float key is a duration in seconds; past a year it is a typo, and far past it `now + duration`
# overflows the date range. Integer keys are counts and sizes that SQLite and the OS take as C ints.
MAX_SECONDS = 365 * 86400
MAX_INT = 2**31 - 1


class ConfigError(ValueError):
    """A configuration problem, worded for the administrator."""


def _host_port(key: str, value: str, *, min_port: int = 0) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; raise ConfigError naming `key` if malformed."""
    host, sep, port = value.rpartition(":")
    bad = ConfigError(f'{key}: expected "host:port" (IPv6 as "[addr]:port"), got {value!r}')
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise bad
    if not min_port <= int(port) <= 65535:
        raise ConfigError(f"{key}: port must be between {min_port} and 65535, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    elif not all(_HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")):
        raise bad
    return host, int(port)


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _ip_port(key: str, value: str) -> None:
    """A "host:port" whose host is an IP address (DNS servers cannot be named by name)."""
    host, _ = _host_port(key, value, min_port=1)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f'{key}: expected "ip:port" (IPv6 as "[addr]:port"), got {value!r}') from None


def _hostname(key: str, value: str) -> str:
    """Validate a host or domain name (IDN accepted); return its lowercase A-label form."""
    bad = ConfigError(f"{key}: not a valid host name: {value!r}")
    name = value.strip().removesuffix(".")
    if not name:
        raise bad
    try:
        ascii_name = name.lower() if name.isascii() else idna.encode(name, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise bad from None
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        raise bad
    return ascii_name


def parse_host_port(value: str) -> tuple[str, int]:
    """Split an already validated "host:port" string."""
    return _host_port("address", value)


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be greater than 0, got {value}")


def _at_most(key: str, value: float, limit: int, why: str = "") -> None:
    if value > limit:
        raise ConfigError(f"{key}: must be at most {limit}{f' ({why})' if why else ''}, got {value}")


@dataclass(frozen=True)
class MxConfig:
    listen: tuple[str, ...] = ("127.0.0.1:2525",)
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    max_received_headers: int = 25
    dedup_ttl: float = 3600.0
    dedup_max_entries: int = 100_000
    partial_failure_notice_interval: float = 3600.0
    workers: int = 1
    regex_match_timeout: float = 0.01
    regex_seconds_per_transaction: float = 0.05
    regex_seconds_per_ip_per_minute: float = 0.1
    regex_seconds_per_minute: float = 1.0
    directory_cache_max_entries: int = 100_000
    directory_cache_max_bytes: int = 32 * 1024 * 1024
    directory_negative_ttl: float = 5.0

    def validate(self, key: str) -> None:
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"{key}.workers: must be from 1 to 64, got {self.workers}")
        for addr in self.listen:
            _host_port(f"{key}.listen", addr)
        _positive(f"{key}.max_message_size", self.max_message_size)
        _positive(f"{key}.max_recipients", self.max_recipients)
        _positive(f"{key}.max_received_headers", self.max_received_headers)
        _positive(f"{key}.dedup_ttl", self.dedup_ttl)
        _positive(f"{key}.dedup_max_entries", self.dedup_max_entries)
        _positive(f"{key}.partial_failure_notice_interval", self.partial_failure_notice_interval)
        for name in ("regex_match_timeout", "regex_seconds_per_transaction",
                     "regex_seconds_per_ip_per_minute", "regex_seconds_per_minute"):
            _positive(f"{key}.{name}", getattr(self, name))
        if not 100 <= self.directory_cache_max_entries <= 10_000_000:
            raise ConfigError(f"{key}.directory_cache_max_entries: must be from 100 to 10000000, "
                              f"got {self.directory_cache_max_entries}")
        if not 1 << 20 <= self.directory_cache_max_bytes <= 1 << 32:
            raise ConfigError(f"{key}.directory_cache_max_bytes: must be from 1048576 (1 MiB) to "
                              f"4294967296 (4 GiB), got {self.directory_cache_max_bytes}")
        if self.directory_negative_ttl < 0:
            raise ConfigError(f"{key}.directory_negative_ttl: must be 0 or more seconds, "
                              f"got {self.directory_negative_ttl}")


@dataclass(frozen=True)
class SubmissionConfig:
    listen: tuple[str, ...] = ("127.0.0.1:2587",)
    listen_tls: tuple[str, ...] = ("127.0.0.1:2465",)
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 50
    auth_failures_per_hour: int = 10
    auth_lockout: float = 3600.0
    auth_failures_per_alias_per_hour: int = 20
    auth_failures_total_per_minute: int = 60
    auth_hash_threads: int = 1
    auth_hash_queue: int = 8
    max_future_date_days: int = 30
    max_connections_per_ip: int = 10
    max_sessions: int = 200
    max_errors_per_session: int = 20
    max_junk_commands: int = 100
    max_session_time: float = 3600.0
    login_timeout: float = 60.0
    idle_timeout: float = 300.0

    def validate(self, key: str) -> None:
        for addr in self.listen:
            _host_port(f"{key}.listen", addr)
        for addr in self.listen_tls:
            _host_port(f"{key}.listen_tls", addr)
        for name in ("max_connections_per_ip", "max_sessions", "max_errors_per_session", "max_junk_commands",
                     "max_session_time", "login_timeout", "idle_timeout"):
            _positive(f"{key}.{name}", getattr(self, name))
        _positive(f"{key}.max_message_size", self.max_message_size)
        _positive(f"{key}.max_recipients", self.max_recipients)
        _positive(f"{key}.auth_failures_per_hour", self.auth_failures_per_hour)
        _positive(f"{key}.auth_lockout", self.auth_lockout)
        _positive(f"{key}.auth_failures_per_alias_per_hour", self.auth_failures_per_alias_per_hour)
        _positive(f"{key}.auth_failures_total_per_minute", self.auth_failures_total_per_minute)
        if not 1 <= self.auth_hash_threads <= 64:
            raise ConfigError(f"{key}.auth_hash_threads: must be from 1 to 64, got {self.auth_hash_threads}")
        if self.auth_hash_queue < 0:
            raise ConfigError(f"{key}.auth_hash_queue: must be 0 or more, got {self.auth_hash_queue}")
        _positive(f"{key}.max_future_date_days", self.max_future_date_days)
        _at_most(f"{key}.max_future_date_days", self.max_future_date_days, 365, "a year")


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
class SrsConfig:
    domain: str = ""
    secret: str = ""
    max_age_days: int = 21
    hash_length: int = 4
    max_invalid_per_client: int = 10
    max_invalid_total: int = 50
    invalid_window: float = 3600.0

    def validate(self, key: str) -> None:
        if self.domain:
            _hostname(f"{key}.domain", self.domain)
        if not 1 <= self.max_age_days <= 1023:
            raise ConfigError(f"{key}.max_age_days: must be between 1 and 1023, got {self.max_age_days}")
        if not 4 <= self.hash_length <= 26:
            raise ConfigError(f"{key}.hash_length: must be from 4 to 26 characters, got {self.hash_length}")
        _positive(f"{key}.max_invalid_per_client", self.max_invalid_per_client)
        _positive(f"{key}.max_invalid_total", self.max_invalid_total)
        _positive(f"{key}.invalid_window", self.invalid_window)


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


TLS_POLICIES = ("opportunistic", "mta-sts+dane", "verify")


@dataclass(frozen=True)
class DeliveryConfig:
    routes: dict[str, str] = field(default_factory=dict)
    connect_timeout: float = 30.0
    command_timeout: float = 60.0
    data_timeout: float = 180.0
    starttls: str = "opportunistic"
    max_connections_per_host: int = 10
    idle_timeout: float = 30.0
    port: int = 25
    # issue 17: TLS policy on delivery (MTA-STS, DANE)
    tls_policy: str = "mta-sts+dane"
    policy: dict[str, str] = field(default_factory=dict)
    tls_ca_file: str = ""
    mta_sts_timeout: float = 10.0
    mta_sts_port: int = 443

    def validate(self, key: str) -> None:
        for name, value in [("tls_policy", self.tls_policy),
                            *((f'policy."{d}"', v) for d, v in self.policy.items())]:
            if value not in TLS_POLICIES:
                raise ConfigError(f"{key}.{name}: must be one of {', '.join(TLS_POLICIES)}, got {value!r}")
        for dom in self.policy:
            if dom != "*":
                _hostname(f"{key}.policy", dom)
        _positive(f"{key}.mta_sts_timeout", self.mta_sts_timeout)
        if not 1 <= self.mta_sts_port <= 65535:
            raise ConfigError(f"{key}.mta_sts_port: must be a TCP port, got {self.mta_sts_port}")
        for dom, target in self.routes.items():
            if dom != "*":
                _hostname(f"{key}.routes", dom)
            _host_port(f'{key}.routes."{dom}"', target, min_port=1)
        for name in ("connect_timeout", "command_timeout", "data_timeout", "idle_timeout"):
            _positive(f"{key}.{name}", getattr(self, name))
        _positive(f"{key}.max_connections_per_host", self.max_connections_per_host)
        if self.starttls not in ("opportunistic", "off"):
            raise ConfigError(f'{key}.starttls: must be "opportunistic" or "off", got {self.starttls!r}')
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"{key}.port: must be a TCP port, got {self.port}")


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
class AbuseConfig:
    max_connections_per_ip: int = 10
    max_messages_per_ip_per_minute: int = 60
    idle_timeout: float = 300.0
    command_timeout: float = 600.0
    max_errors_per_session: int = 20
    dnsbl_zones: tuple[str, ...] = ()
    sender_auth_timeout: float = 20.0
    max_sessions: int = 1000
    max_junk_commands: int = 100
    max_session_time: float = 3600.0

    def validate(self, key: str) -> None:
        for name in ("max_connections_per_ip", "max_messages_per_ip_per_minute", "idle_timeout",
                     "command_timeout", "max_errors_per_session", "sender_auth_timeout", "max_sessions",
                     "max_junk_commands", "max_session_time"):
            _positive(f"{key}.{name}", getattr(self, name))
        for zone in self.dnsbl_zones:
            _hostname(f"{key}.dnsbl_zones", zone)


@dataclass(frozen=True)
class StoreConfig:
    write_lock_timeout: float = 1.0

    def validate(self, key: str) -> None:
        _positive(f"{key}.write_lock_timeout", self.write_lock_timeout)
        _at_most(f"{key}.write_lock_timeout", self.write_lock_timeout, 60,
                 "clients wait that long for a reply; keep it short")


DATABASE_SCHEMES = ("postgresql", "postgres")


def _shown_url(url: str) -> str:
    """`url` as an error may quote it: any password replaced by ***."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if not sep or "@" not in netloc:
        return url
    creds, _, host = netloc.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}{slash}{path}"


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


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


@dataclass(frozen=True)
class Config:
    data_dir: str = DEFAULT_DATA_DIR
    hostname: str = ""
    log_level: str = "info"
    event_loop: str = "auto"
    shutdown_timeout: float = 30.0
    mx: MxConfig = field(default_factory=MxConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    srs: SrsConfig = field(default_factory=SrsConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    abuse: AbuseConfig = field(default_factory=AbuseConfig)
    error_log: ErrorLogConfig = field(default_factory=ErrorLogConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self, key: str = "") -> None:
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: must be debug, info, warning or error, got {self.log_level!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(f"event_loop: must be auto, asyncio or uvloop, got {self.event_loop!r}")
        if not self.data_dir:
            raise ConfigError("data_dir: must not be empty")
        if self.hostname:
            _hostname("hostname", self.hostname)
        _positive("shutdown_timeout", self.shutdown_timeout)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_path / "fwdmail.db"

    @property
    def server_hostname(self) -> str:
        """`hostname` in lowercase A-label form, or this machine's name."""
        return _hostname("hostname", self.hostname) if self.hostname else socket.gethostname()

    @property
    def srs_domain(self) -> str:
        return _hostname("srs.domain", self.srs.domain) if self.srs.domain else self.server_hostname.lower()

    @property
    def cert_path(self) -> Path:
        return Path(self.tls.cert) if self.tls.cert else self.data_path / "tls" / "cert.pem"

    @property
    def key_path(self) -> Path:
        return Path(self.tls.key) if self.tls.key else self.data_path / "tls" / "key.pem"


def hostname_problem(cfg: Config) -> str | None:
    """Why the host name cannot work in the published MX and SPF records (it has no dot), or None."""
    name = cfg.server_hostname.rstrip(".")
    if "." in name:
        return None
    source = "this machine's name" if not cfg.hostname else "hostname"
    return (f"hostname: {name!r} ({source}) has no dot, so the MX and SPF records naming it cannot work; "
            "set `hostname` in the config file to this server's public DNS name (e.g. mx.example.net)")


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list of strings"
    if origin is dict:
        return "a table of strings"
    return str(tp)


def _domain_key(name: str) -> str:
    """A table key that names a domain, in the lowercase A-label form the code looks up."""
    name = name.strip().lower().removesuffix(".")
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            pass  # left as written; validate() names it
    return name


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotated type `tp`; convert lists to tuples."""
    bad = ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        _at_most(key, value, MAX_INT)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad
        _at_most(key, value, MAX_SECONDS, "a year, in seconds")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad
        out: dict[str, str] = {}
        written: dict[str, str] = {}
        for k, v in value.items():
            name = _domain_key(k)
            if name in out:
                raise ConfigError(f"{key}: {written[name]!r} and {k!r} are the same domain; keep one")
            out[name], written[name] = v, k
        return out
    raise bad


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{key}: unknown key{hint}")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: must be a table [{key}]")
            kwargs[name] = _build(tp, value, f"{key}.")
        else:
            kwargs[name] = _coerce(key, tp, value)
    obj = cls(**kwargs)
    obj.validate(prefix.rstrip("."))
    return obj


def from_dict(data: dict[str, Any], base: Path | None = None) -> Config:
    """Build and validate a Config from parsed TOML; relative paths are taken relative to `base`."""
    cfg: Config = _build(Config, data, "")
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub):
            sub.validate(f.name)
    if base is not None:

        def anchored(value: str) -> str:
            return str(base / value) if value and not Path(value).is_absolute() else value

        cfg = dataclasses.replace(
            cfg, data_dir=anchored(cfg.data_dir),
            tls=dataclasses.replace(cfg.tls, cert=anchored(cfg.tls.cert), key=anchored(cfg.tls.key)),
            delivery=dataclasses.replace(cfg.delivery, tls_ca_file=anchored(cfg.delivery.tls_ca_file)),
        )
    if cfg.delivery.tls_ca_file and not Path(cfg.delivery.tls_ca_file).is_file():
        raise ConfigError(f"delivery.tls_ca_file: no such file: {cfg.delivery.tls_ca_file!r}")
    return cfg


def load(path: str | Path | None) -> Config:
    """Read the TOML file at `path`, or return the defaults when `path` is None.

    Relative paths in a config file (data_dir, tls.cert, tls.key; the default data_dir too) are relative
    to the file's directory, so every command finds the same data whatever its working directory.
    """
    if path is None:
        return from_dict({})
    if not str(path).strip():
        raise ConfigError("--config: empty path (leave it out, and FWDMAIL_CONFIG unset, for the defaults)")
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return from_dict(data, p.absolute().parent)


def as_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data (tuples as lists), secrets masked."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}
    if out["srs"]["secret"]:
        out["srs"]["secret"] = "********"
    if out["metrics"]["token"]:
        out["metrics"]["token"] = "********"
    out["hostname"] = cfg.server_hostname
    return out

