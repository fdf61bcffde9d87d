"""The data directory: database, SRS secret and self-signed TLS pair, created on first use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import keys, store
from .config import Config


@dataclass(frozen=True)
class Runtime:
    """What `init` produced: the config plus the secrets read from the data dir."""

    config: Config
    srs_secret: bytes
    cert_path: Path
    key_path: Path


def prepare(cfg: Config, *, open_db: bool = True) -> Runtime:
    """Create the data dir (0700), secrets and cert if missing; open and migrate the database."""
    data = cfg.data_path
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    secret = cfg.srs.secret.encode() if cfg.srs.secret else keys.ensure_secret(data / "srs.secret")
    if not cfg.tls.cert:
        keys.ensure_self_signed_cert(cfg.cert_path, cfg.key_path, cfg.server_hostname)
    if open_db:
        store.open_store(cfg.db_path)
    return Runtime(cfg, secret, cfg.cert_path, cfg.key_path)
