"""The whole file: top-level keys (data_dir, hostname, log_level, ...) and one field per table.

Holds the paths and names derived from the administrator's settings (data, TLS files, host names).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from fwdmail.config.checks import ConfigError, _hostname, _positive
from fwdmail.config.mail import (
    AbuseConfig,
    DeliveryConfig,
    MxConfig,
    SrsConfig,
    SubmissionConfig,
    WebhooksConfig,
)
from fwdmail.config.service import (
    ClusterConfig,
    DatabaseConfig,
    DnsConfig,
    ErrorLogConfig,
    HttpConfig,
    MetricsConfig,
    QueueConfig,
    RetentionConfig,
    StoreConfig,
    TlsConfig,
)

DEFAULT_DATA_DIR = "./fwdmail-data"
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
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)

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

