"""Key material: DKIM keys, the self-signed TLS pair, secrets, and SMTP password hashes."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import ipaddress
import os
import secrets
import string
import tempfile
from collections.abc import Iterator
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


_PASSWORD_ALPHABET = string.ascii_letters + string.digits


def generate_password() -> str:
    """24 letters and digits (143 bits): no character a shell, a URL or a command-line parser reads
    specially (a leading "-" made swaks take the password for an option)."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(24))


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


class DamagedKeyFile(ValueError):
    """A key file fwdmail wrote earlier is empty or cut short (a crash or a full disk while writing it)."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _creating(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for reading or making `path` (two processes starting at once must not both
    make it), and clear what an interrupted earlier write left: its temporary files hold key material."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` (mode 0600) so that a crash or a full disk leaves either the previous file
    or the whole new one, never a part: a temporary file in the same directory is written and fsynced,
    renamed over `path`, and then the directory is fsynced so the rename itself is durable."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


_SECRET_BYTES = 32


def new_secret() -> bytes:
    """A random secret as fwdmail keeps it: 32 bytes, base64."""
    return base64.b64encode(os.urandom(_SECRET_BYTES))


def secret_ok(text: bytes) -> bool:
    """Whether `text` is a whole secret (not empty, not cut short)."""
    return _secret_ok(text)


def _secret_ok(text: bytes) -> bool:
    try:
        return len(base64.b64decode(text.strip(), validate=True)) == _SECRET_BYTES
    except ValueError:
        return False


def ensure_secret(path: Path) -> bytes:
    """Read the secret at `path`, creating a random one (mode 0600) if there is no file.

    A file that is there but empty or cut short raises `DamagedKeyFile`: a new secret written over it
    would make every SRS bounce of mail forwarded before it fail, so an admin decides.
    """
    with _creating(path):
        if not path.exists():
            write_atomic(path, new_secret() + b"\n")
        text = path.read_bytes()
    if not _secret_ok(text):
        raise DamagedKeyFile(
            f"{path} is empty or cut short ({len(text)} bytes; a crash or a full disk while it was "
            "written?): restore it from a backup, or delete it to generate a new secret (bounces of mail "
            "forwarded before then will be refused)")
    return text.strip()


def ensure_self_signed_cert(cert_path: Path, key_path: Path, hostname: str) -> bool:
    """Create a self-signed certificate for `hostname` and 127.0.0.1 unless both files exist; True if
    created. The key is written first, so a crash in between leaves no certificate and both are made
    again; each file is written atomically, so neither is ever left cut short by this function."""
    with _creating(key_path), _creating(cert_path):
        if cert_path.exists() and key_path.exists():
            return False
        _make_pair(cert_path, key_path, hostname)
    return True


def _make_pair(cert_path: Path, key_path: Path, hostname: str) -> None:
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
    write_atomic(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
