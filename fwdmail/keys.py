"""Key material: DKIM keys, the self-signed TLS pair, secrets, and SMTP password hashes."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def generate_dkim_key(bits: int = 2048) -> str:
    """A new RSA private key as PKCS#1 PEM text."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def dkim_public_record(private_pem: str) -> str:
    """The TXT value to publish at <selector>._domainkey.<domain>."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def new_selector(now: dt.datetime) -> str:
    return f"fwd{now:%Y%m}"


def new_token() -> str:
    return secrets.token_hex(16)


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def hash_password(password: str) -> str:
    """scrypt hash in the form `scrypt$N$r$p$salt$hash` (base64 parts)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str | None) -> bool:
    """Constant-time check of `password` against a `hash_password` result; False if malformed."""
    if not encoded:
        return False
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected))
    except (ValueError, TypeError, OverflowError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def ensure_secret(path: Path) -> bytes:
    """Read the secret at `path`, creating a random one (mode 0600) if missing or empty."""
    if not path.exists() or not path.read_bytes().strip():
        _write_private(path, base64.b64encode(os.urandom(32)) + b"\n")
    return path.read_bytes().strip()


def ensure_self_signed_cert(cert_path: Path, key_path: Path, hostname: str) -> bool:
    """Create a self-signed certificate for `hostname` and 127.0.0.1 if none exists; True if created."""
    if cert_path.exists() and key_path.exists():
        return False
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                   x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                   x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return True
