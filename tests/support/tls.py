"""TLS helpers for tests: one session-wide ``trustme`` CA and certificates it issues."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

import trustme

__all__ = ["DEFAULT_HOSTNAMES", "ca", "ca_cert_file", "client_context", "server_cert_files", "server_context"]

DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1")

_lock = threading.Lock()
_ca: trustme.CA | None = None
_leaves: dict[tuple[str, ...], trustme.LeafCert] = {}


def ca() -> trustme.CA:
    """The test session's CA (created on first use, shared by everything)."""
    global _ca
    with _lock:
        if _ca is None:
            _ca = trustme.CA(organization_name="fwdmail test CA")
        return _ca


def _leaf(hostnames: Sequence[str]) -> trustme.LeafCert:
    key = tuple(hostnames)
    if not key:
        raise ValueError("at least one hostname/IP is required")
    authority = ca()
    with _lock:
        leaf = _leaves.get(key)
        if leaf is None:
            leaf = _leaves[key] = authority.issue_cert(*key)
        return leaf


def server_cert_files(tmp_path: Path, hostnames: Sequence[str] = DEFAULT_HOSTNAMES) -> tuple[Path, Path]:
    """Write a CA-signed server certificate chain and its key; return ``(cert_path, key_path)``.

    The cert file holds the full chain (leaf first) in PEM; the key is PKCS#8 PEM.
    """
    leaf = _leaf(hostnames)
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    stem = "server-" + "_".join(h.replace(":", "-").replace("*", "star") for h in hostnames)
    cert_path = tmp_path / f"{stem}.crt"
    key_path = tmp_path / f"{stem}.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_path.write_bytes(leaf.private_key_pem.bytes())
    key_path.chmod(0o600)
    return cert_path, key_path


def ca_cert_file(tmp_path: Path) -> Path:
    """Write the CA certificate (PEM) so a process (e.g. the daemon) can trust it."""
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "test-ca.pem"
    ca().cert_pem.write_to_path(str(path))
    return path


def server_context(hostnames: Sequence[str] = DEFAULT_HOSTNAMES) -> ssl.SSLContext:
    """Server-side ``SSLContext`` with a CA-signed cert for ``hostnames`` (e.g. for ``SmtpSink``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _leaf(hostnames).configure_cert(ctx)
    return ctx


def client_context() -> ssl.SSLContext:
    """Client-side ``SSLContext`` that verifies certificates against the test CA (and only it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    ca().configure_trust(ctx)
    return ctx
