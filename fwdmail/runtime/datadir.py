"""The data directory: database, SRS secret and self-signed TLS pair, created on first use; the node id.

On PostgreSQL (`[database] url`) the SRS secret lives in the database instead, so every node shares it:
a bounce to an address one node minted is reversed by any other."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from fwdmail import store
from fwdmail.config import Config, ConfigError
from fwdmail.runtime import keys


class DataDirInUse(store.StoreError):
    """Another `fwdmail serve` runs on this data dir."""


@dataclass(frozen=True)
class Runtime:
    """What `init` produced: the config plus the secrets read from the data dir."""

    config: Config
    srs_secret: bytes
    cert_path: Path
    key_path: Path
    node_id: str = ""


SRS_SECRET_KEY = "srs_secret"


def node_id(cfg: Config) -> str:
    """What this node's queue claims are tagged with: `[cluster] node_id`, or this machine's hostname and
    a hash of the data dir's absolute path, the same on every start of this node."""
    if cfg.cluster.node_id:
        return cfg.cluster.node_id
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:48] or "node"
    where = hashlib.sha256(str(cfg.data_path.absolute()).encode()).hexdigest()[:8]
    return f"{host}-{where}"


def _shared_srs_secret(path: Path) -> bytes:
    """The SRS secret every node of a PostgreSQL store shares, kept in the database: made once by the
    first node to start (from this data dir's old secret if it has one, so its addresses stay valid),
    read by every later one."""
    old = path.read_bytes().strip() if path.is_file() else b""
    candidate = old if keys.secret_ok(old) else keys.new_secret()
    shared = store.meta_once(SRS_SECRET_KEY, candidate.decode("ascii")).encode("ascii", "replace")
    if not keys.secret_ok(shared):
        raise keys.DamagedKeyFile(f"kept in the database ({SRS_SECRET_KEY} in table meta) is not a whole "
                                  "secret: restore it from a backup")
    return shared.strip()


def prepare(cfg: Config, *, open_db: bool = True, create: bool = False) -> Runtime:
    """Open the data dir: secrets and cert made if missing, the database opened and migrated.

    Only with `create` (init, serve) is a missing data dir made (0700): any other command run from the
    wrong directory, or without the config, would otherwise work on a new empty store nobody reads.
    """
    data = cfg.data_path
    if data.exists() and not data.is_dir():
        raise ConfigError(f"data_dir: {data} exists and is not a directory")
    if not create and not data.exists():
        raise ConfigError(f"data_dir: no data dir at {data.absolute()}; give the config with --config PATH "
                          "(or FWDMAIL_CONFIG), or run `fwdmail init` to make one here")
    try:
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)
        _tighten(cfg)
        shared = bool(cfg.database.url) and open_db and not cfg.srs.secret
        secret = (cfg.srs.secret.encode() if cfg.srs.secret or shared
                  else keys.ensure_secret(data / "srs.secret"))
        if not cfg.tls.cert:
            keys.ensure_self_signed_cert(cfg.cert_path, cfg.key_path, cfg.server_hostname)
    except keys.DamagedKeyFile as exc:
        raise ConfigError(f"data_dir: the SRS secret {exc}") from None
    except OSError as exc:
        raise ConfigError(f"data_dir: cannot set up {data}: {exc.strerror or exc}") from None
    check_tls(cfg)
    if open_db:
        store.open_store(cfg.db_path, cfg.database.url)
    if shared:
        try:
            secret = _shared_srs_secret(data / "srs.secret")
        except keys.DamagedKeyFile as exc:
            raise ConfigError(f"database: the SRS secret {exc}") from None
    return Runtime(cfg, secret, cfg.cert_path, cfg.key_path, node_id(cfg))


def _tighten(cfg: Config) -> None:
    """Put the private files fwdmail created back to 0600, in case someone loosened them."""
    db = str(cfg.db_path)
    private = [Path(db), Path(f"{db}-wal"), Path(f"{db}-shm"), cfg.data_path / "srs.secret"]
    if not cfg.tls.cert:
        private += [cfg.cert_path, cfg.key_path]
        if cfg.key_path.parent.is_dir():
            os.chmod(cfg.key_path.parent, 0o700)
    for path in private:
        if path.is_file() and path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)


def check_tls(cfg: Config) -> None:
    """The TLS pair can be read and is a matching PEM chain and key (a generated pair cut short by a
    crash is named as such, not generated again over the admin's head)."""
    for key, path in (("tls.cert", cfg.cert_path), ("tls.key", cfg.key_path)):
        try:
            path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cfg.cert_path, cfg.key_path)
    except ssl.SSLError as exc:
        if cfg.tls.cert:
            raise ConfigError(f"tls.cert: {cfg.cert_path} and tls.key {cfg.key_path} are not a PEM "
                              f"certificate chain and its key ({exc.reason or exc})") from None
        raise ConfigError(f"data_dir: the generated TLS pair {cfg.cert_path} and {cfg.key_path} does not "
                          f"load ({exc.reason or exc}; cut short by a crash?): delete both files to "
                          "generate a new pair") from None


def lock_for_serve(cfg: Config) -> int:
    """Take the data dir's serve lock for the life of this process; return its descriptor.

    Two daemons on one store would each take back the other's queue claims at start and deliver the
    same messages twice, so a second `serve` is refused before it touches anything. The lock is an
    flock on `serve.lock` (never SQLite's own locks), released by the kernel when the process ends.
    """
    path = cfg.data_path / "serve.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"data_dir: cannot create {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise DataDirInUse(f"another fwdmail serve{f' (pid {pid})' if pid.isdigit() else ''} is running "
                           f"on data dir {cfg.data_path.resolve()}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
