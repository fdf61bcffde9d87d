"""The tables of mail handling: [mx], [submission], [srs], [delivery], [abuse], [webhooks].

One frozen dataclass per table, each key beside its default; `validate` checks the administrator's
values and raises `ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fwdmail.config.checks import ConfigError, _at_most, _host_port, _hostname, _positive


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
    dns_aliases_cache_max_entries: int = 10_000
    dns_aliases_cache_max_bytes: int = 8 * 1024 * 1024

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
        if not 10 <= self.dns_aliases_cache_max_entries <= 10_000_000:
            raise ConfigError(f"{key}.dns_aliases_cache_max_entries: must be from 10 to 10000000, "
                              f"got {self.dns_aliases_cache_max_entries}")
        if not 1 << 20 <= self.dns_aliases_cache_max_bytes <= 1 << 32:
            raise ConfigError(f"{key}.dns_aliases_cache_max_bytes: must be from 1048576 (1 MiB) to "
                              f"4294967296 (4 GiB), got {self.dns_aliases_cache_max_bytes}")


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
    mta_sts_allow_private: bool = False  # fetch policies from non-public addresses (tests, closed networks)

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
class WebhooksConfig:
    """issue 17: how the MX POSTs to webhook destinations."""

    allow_private: bool = False
    timeout: float = 30.0
    max_body_size: int = 100 * 1024 * 1024
    max_attachment_size: int = 10 * 1024 * 1024
    max_connections: int = 20
    ca_file: str = ""

    def validate(self, key: str) -> None:
        for name in ("timeout", "max_body_size", "max_attachment_size", "max_connections"):
            _positive(f"{key}.{name}", getattr(self, name))
        if self.ca_file and Path(self.ca_file).is_absolute() and not Path(self.ca_file).is_file():
            raise ConfigError(f"{key}.ca_file: no such file {self.ca_file!r}")
