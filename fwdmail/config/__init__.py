"""Configuration: a TOML file read into frozen dataclasses, with defaults and validation.

Every key has a default, so fwdmail runs with no file at all. Unknown keys, wrong types and bad values
raise `ConfigError` with a one-line message naming the key. One dataclass per table: `mail` holds the
mail-handling tables, `service` the running service's, `root` the whole file, `checks` the shared
validators, `loading` the TOML reading; import from here, not from those modules.
"""

from __future__ import annotations

from fwdmail.config.checks import MAX_INT, MAX_SECONDS, ConfigError, parse_host_port
from fwdmail.config.loading import as_dict, from_dict, load
from fwdmail.config.mail import (
    TLS_POLICIES,
    AbuseConfig,
    DeliveryConfig,
    MxConfig,
    SrsConfig,
    SubmissionConfig,
    WebhooksConfig,
)
from fwdmail.config.root import DEFAULT_DATA_DIR, EVENT_LOOPS, Config, hostname_problem
from fwdmail.config.service import (
    DATABASE_SCHEMES,
    NODE_ID_CHARS,
    REDIS_SCHEMES,
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

__all__ = [
    "DATABASE_SCHEMES", "DEFAULT_DATA_DIR", "EVENT_LOOPS", "MAX_INT", "MAX_SECONDS", "NODE_ID_CHARS",
    "REDIS_SCHEMES", "TLS_POLICIES", "AbuseConfig", "ClusterConfig", "Config", "ConfigError",
    "DatabaseConfig", "DeliveryConfig", "DnsConfig", "ErrorLogConfig", "HttpConfig", "MetricsConfig",
    "MxConfig", "QueueConfig", "RetentionConfig", "SrsConfig", "StoreConfig", "SubmissionConfig",
    "TlsConfig", "WebhooksConfig", "as_dict", "from_dict", "hostname_problem", "load", "parse_host_port",
]
